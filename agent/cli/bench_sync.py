"""`edge-agent bench-sync`: backlog drain rate and capture→PUBACK latency against a broker.

(a) 100 000 detections are committed while no broker is configured to take
them, then one sender drains them: messages/s and detections/s until the last
PUBACK. (b) The demo runs with the broker up: capture→PUBACK p50/p95 per
detection, the time from the camera frame to the broker's acknowledgement.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

from agent.config import MqttConfig, StorageConfig, validate_config
from agent.runtime import Runtime
from agent.store.outbox import next_session
from agent.store.store import DB_NAME, Store
from agent.sync.mqtt_link import MqttLink, random_boot_id
from agent.sync.sync import Syncer
from engines import Detection

PER_FRAME = 10


def _fill_backlog(data: Path, detections: int) -> float:
    frames = detections // PER_FRAME
    store = Store(data, StorageConfig(path=data, queue_size=frames + 16, max_age_hours=None), outbox=True)
    store.start()
    dets = [Detection(i % 5, f"class_{i % 5}", 0.5 + i / 100, (10.0 * i, 20.0, 10.0 * i + 40, 80.0))
            for i in range(PER_FRAME)]
    t0 = time.monotonic()
    now_ms = int(time.time() * 1000)
    for frame in range(frames):
        store.submit(f"cam{frame % 4}", frame, now_ms, dets)
    store.stop(timeout=600)
    if store.committed_rows != frames * PER_FRAME:
        raise RuntimeError(f"backlog incomplete: {store.committed_rows} rows, {store.dropped} dropped")
    return time.monotonic() - t0


def _forget(mqtt: MqttConfig, devices: list[str]) -> None:
    """A benchmark cleans up: its throw-away devices' retained status and telemetry would otherwise show
    in `fleet list` for ever."""
    from agent.fleet.fleet import FleetClient, FleetError

    try:
        fleet = FleetClient(mqtt)
    except FleetError:
        return
    try:
        for device in devices:
            fleet.forget(device)
    finally:
        fleet.close()


def _drain(data: Path, mqtt: MqttConfig, detections: int, timeout: float, device: str) -> dict:
    db_path = data / DB_NAME
    link = MqttLink(mqtt, device, random_boot_id(), lambda: next_session(db_path))
    syncer = Syncer(link, db_path, mqtt)
    syncer.start()
    link.start()
    try:
        if not link.connected.wait(10):
            raise RuntimeError(f"cannot reach the broker: {link.last_error}")
        t0 = time.monotonic()
        deadline = t0 + timeout
        while syncer.rows_acked < detections and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a counter the sender thread updates
        elapsed = time.monotonic() - t0
        stats = syncer.stats()
    finally:
        syncer.stop()
        link.stop()
    return {
        "drained": stats["rows_acked"], "seconds": round(elapsed, 2), "messages": stats["messages_acked"],
        "messages_per_s": round(stats["messages_acked"] / elapsed, 1),
        "detections_per_s": round(stats["rows_acked"] / elapsed, 1),
        "publish_to_puback_ms": stats["publish_to_puback_ms"],
    }


def _live_latency(workdir: Path, host: str, port: int, seconds: float, device: str) -> dict:
    config = validate_config({"device": {"id": device}, "web": {"listen": None},
                              "storage": {"path": str(workdir)}, "mqtt": {"host": host, "port": port}})
    runtime = Runtime(config)
    runtime.start()
    try:
        time.sleep(seconds)  # the measurement window: the demo runs at its own pace
        status = runtime.status()
    finally:
        runtime.stop()
    sync = status["sync"]
    return {"seconds": seconds, "cameras": len(status["cameras"]), "detections_acked": sync["rows_acked"],
            "capture_to_puback_ms": sync["capture_to_puback_ms"],
            "publish_to_puback_ms": sync["publish_to_puback_ms"]}


def run_sync_bench(host: str, port: int, detections: int, seconds: float) -> dict:
    mqtt = MqttConfig(host=host, port=port)
    devices = [f"bench-{secrets.token_hex(3)}" for _ in range(2)]
    with tempfile.TemporaryDirectory(prefix="edge-bench-sync-") as tmp:
        try:
            backlog = Path(tmp) / "backlog"
            fill_s = _fill_backlog(backlog, detections)
            drain = _drain(backlog, mqtt, detections, timeout=600, device=devices[0])
            live = _live_latency(Path(tmp) / "live", host, port, seconds, device=devices[1])
        finally:
            _forget(mqtt, devices)
    return {"broker": f"{host}:{port}", "backlog": detections, "backlog_commit_s": round(fill_s, 2),
            "drain": drain, "live_demo": live}
