"""Object events: new / update / end from tracked objects, stored with their outbox messages, delivered through
a real Mosquitto across a restart, and Home Assistant discovery built on them."""

from __future__ import annotations

import base64
import itertools
import json
import sqlite3
import threading
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.capture.frames import Frame
from agent.config import AgentConfig, MqttConfig, validate_config
from agent.demo.clips import write_tracking_clip
from agent.fleet.fleet import FleetClient
from agent.pipeline.objects import CameraObjects
from agent.runtime import Runtime
from agent.store.store import DB_NAME, Store
from agent.sync.homeassistant import components, device_block
from engines import Detection
from tests.broker import Mosquitto
from tests.helpers import wait_for
from tests.mqtt_client import Collector

DEVICE = "dev-ev"


def _frame(k: int, fps: float = 10.0) -> Frame:
    return Frame("yard", k, np.full((360, 640, 3), 90, np.uint8), 1_700_000_000_000 + round(k * 1000 / fps), k / fps)


def _camera(**events) -> CameraObjects:
    config = validate_config({
        "cameras": [{"name": "yard", "source": "demo:1",
                     "zones": [{"name": "door", "points": [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]}]}],
        "tracking": {"stationary_s": 2.0, "stationary_keep_s": 5.0},
        "events": {"end_after_s": 1.0, **events},
    })
    return CameraObjects(config.cameras[0], config.tracking, config.events)


def test_an_object_that_walks_into_a_zone_stops_and_leaves_gives_new_updates_and_one_end() -> None:
    camera = _camera()
    messages = []
    for k in range(170):  # walks right for 4 s (into the door zone), stands 6 s, then is gone (kept 5 s: it was still)
        x = 100 + 60 * min(k, 40) / 4
        dets = [Detection(0, "person", 0.7 + 0.002 * min(k, 100), (x, 100, x + 40, 180))] if k < 100 else []
        messages += camera.observe(_frame(k), dets)[1]
    messages = [m for m in messages if m.type != "seen"]  # the stored state's heartbeat, never published
    kinds = [m.type for m in messages]
    assert kinds[0] == "new" and kinds.count("new") == 1 and kinds[-1] == "end" and kinds.count("end") == 1
    assert {m.event_id for m in messages} == {messages[0].event_id}
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
    assert messages[0].snapshot[:2] == b"\xff\xd8"  # a JPEG with the first message
    updates = [m for m in messages if m.type == "update"]
    times = [m.last_ms for m in updates]
    assert all(b - a >= 1000 for a, b in itertools.pairwise(times))  # at most one per second
    assert any(m.zones == ["door"] for m in updates) and messages[-1].entered_zones == ["door"]
    assert any(m.stationary for m in updates)  # it stood still for 2 s
    assert len(updates) < 20  # 100 frames of detections, a handful of messages
    assert messages[-1].last_ms == _frame(99).wall_ms and messages[-1].reason == "gone"


def test_events_only_for_objects_that_moved_when_asked() -> None:
    camera = _camera(require_motion=True)
    out = []
    for k in range(50):  # a parked car that never moves, a person walking by
        dets = [Detection(1, "car", 0.9, (400, 200, 520, 280)),
                Detection(0, "person", 0.9, (20 + 8 * k, 100, 60 + 8 * k, 180))]
        out += camera.observe(_frame(k), dets)[1]
    assert {m.label for m in out if m.type == "new"} == {"person"}


def test_events_are_stored_with_their_messages_and_a_crash_leaves_none_open(tmp_path: Path) -> None:
    config = AgentConfig()
    store = Store(tmp_path, config.storage, outbox=True)
    store.start()
    camera = _camera()
    for k in range(30):
        ids, messages = camera.observe(_frame(k), [Detection(0, "person", 0.9, (100 + k, 100, 140 + k, 180))])
        store.submit("yard", k, _frame(k).wall_ms, [Detection(0, "person", 0.9, (100 + k, 100, 140 + k, 180))], ids)
        store.submit_events(messages)
    assert store.stop()  # the object is still there: its event is open
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("SELECT count(*) FROM object_events WHERE end_ms IS NULL").fetchone()[0] == 1
    assert conn.execute("SELECT count(DISTINCT track_id), min(track_id) FROM detections").fetchone() == (1, 1)
    conn.close()
    store = Store(tmp_path, config.storage, outbox=True)  # the next run
    store.start()
    store.stop()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    payloads = [json.loads(p) for (p,) in conn.execute("SELECT payload FROM outbox WHERE kind LIKE 'events/%' "
                                                       "ORDER BY seq")]
    assert payloads[0]["type"] == "new" and payloads[-1]["type"] == "end"
    assert payloads[-1]["reason"] == "restart"
    assert _frame(29).wall_ms - 1000 <= payloads[-1]["end_ms"] <= _frame(29).wall_ms  # stored at most 1 s behind
    assert payloads[-1]["seq"] == payloads[-2]["seq"] + 1
    assert conn.execute("SELECT count(*) FROM object_events WHERE end_ms IS NULL").fetchone()[0] == 0
    snapshot = conn.execute("SELECT snapshot FROM object_events").fetchone()[0]
    assert snapshot[:2] == b"\xff\xd8"


class _Retained:
    """Every message under a topic filter, empty ones too (cleared retained configs)."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-{port}", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, _c, _u, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def tracking_clip(clip_dir: Path) -> Path:
    return write_tracking_clip(clip_dir / "tracking.mp4", seconds=12.0, seed=7, fps=10.0)


def test_events_through_a_real_broker_every_new_has_one_end_across_a_broker_restart(
        tmp_path: Path, tracking_clip: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker.port, f"edge/{DEVICE}/#")
    ha = _Retained(broker.port, "homeassistant/#")
    config = validate_config({
        "device": {"id": DEVICE},
        "cameras": [{"name": "yard", "source": str(tracking_clip), "fps": 10, "loop": False, "realtime": True}],
        "storage": {"path": str(tmp_path / "data")},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect": {"initial_s": 0.05, "max_s": 0.3}},
        "events": {"end_after_s": 1.0},
        "homeassistant": {"enabled": True},
        "telemetry": {"interval_s": 1},
    })
    runtime = Runtime(config)
    runtime.start()
    discovery = f"homeassistant/device/{DEVICE}/config"
    try:
        wait_for(lambda: ha.on(discovery), what="discovery published on connect")
        wait_for(lambda: any(e["type"] == "new" for t, e in collector.events if "/objects/" in t),
                 what="a first object event")
        broker.stop()  # events keep coming into the outbox meanwhile
        wait_for(lambda: runtime.objects.stats()["yard"]["events_started"] >= 4, timeout=60,
                 what="more events while the broker is down")
        broker.start()
        camera = runtime.cameras["yard"]
        wait_for(lambda: camera.state.value == "finished", timeout=60, what="clip finished")
        wait_for(lambda: not runtime.objects.stats().get("yard", {}).get("open_events"), timeout=30,
                 what="open events ended once the camera has no frames")
        conn = sqlite3.connect(tmp_path / "data" / DB_NAME)
        stored = {r[0] for r in conn.execute("SELECT event_id FROM object_events")}
        conn.close()
        by_event: dict[str, list[dict]] = defaultdict(list)

        def delivered() -> bool:
            by_event.clear()
            for topic, e in list(collector.events):
                if topic == f"edge/{DEVICE}/events/objects/yard":
                    by_event[e["event_id"]].append(e)
            return set(by_event) == stored and all(any(m["type"] == "end" for m in ms) for ms in by_event.values())

        wait_for(delivered, timeout=60, what=lambda: f"every stored event delivered ({len(by_event)}/{len(stored)})")
        assert 4 <= len(stored) <= 12  # five objects; a crossing or an exit may cost an id
        for messages in by_event.values():
            unique = {(m["seq"], m["type"]) for m in messages}  # duplicates (at-least-once) dropped by seq
            types = [t for _, t in sorted(unique)]
            assert types[0] == "new" and types.count("new") == 1 and types.count("end") == 1 and types[-1] == "end"
            new = next(m for m in messages if m["type"] == "new")
            assert {"event_id", "camera", "label", "track_id", "start_ms", "top_score", "box", "stationary",
                    "seq"} <= set(new)
        fleet = FleetClient(MqttConfig(host="127.0.0.1", port=broker.port))
        try:
            listed = fleet.command(DEVICE, "events", {"camera": "yard"})["result"]["events"]
            assert {e["event_id"] for e in listed} == stored and all(e["end_ms"] for e in listed)
            best = max(listed, key=lambda e: e["top_score"])
            shot = fleet.command(DEVICE, "event_snapshot", {"event_id": best["event_id"]})["result"]
            jpeg = base64.b64decode(shot["jpeg_base64"])
            assert len(jpeg) == shot["jpeg_bytes"] <= config.events.snapshots.max_bytes
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape[1] <= config.events.snapshots.max_width
            missing = fleet.command(DEVICE, "event_snapshot", {"event_id": "0" * 8 + "-0000-7000-8000-" + "0" * 12})
            assert missing["error"]["code"] == "not_found"
        finally:
            fleet.close()
        counts = [json.loads(p) for p in collector_raw(collector, f"edge/{DEVICE}/objects/yard/counts")]
        assert any(sum(c.values()) > 0 for c in counts)
        wait_for(lambda: sum(runtime.objects.counts().get("yard", {}).values()) == 0, what="counts back to zero")
        # every entity's templates render against what the agent really publishes, and its commands validate
        counts_topic = f"edge/{DEVICE}/objects/yard/counts"
        busiest = max(collector.telemetry,  # a reading while the clip played (it has finished by now)
                      key=lambda t: (t["telemetry"]["cameras"].get("yard") or {}).get("fps") or 0)
        states = {f"edge/{DEVICE}/telemetry": busiest,
                  counts_topic: json.loads(collector_raw(collector, counts_topic)[-1])}
        rendered = check_templates(json.loads(ha.on(discovery)[-1])["cmps"], states)
        assert rendered["yard_enabled"] == "ON" and float(rendered["yard_fps"]) > 0
        assert float(rendered["yard_inference_ms"]) > 0 and rendered["quality_level"] in ("auto", "high")
        assert rendered["yard_circle_count"] == "0" and rendered["yard_circle_occupancy"] == "OFF"
        # Home Assistant restarting asks for discovery again
        before = len(ha.on(discovery))
        ha.client.publish("homeassistant/status", "online", qos=1)
        wait_for(lambda: len(ha.on(discovery)) > before, what="discovery sent again on HA's birth")
        # turning discovery off clears the retained config
        runtime.apply_config(validate_config({**config.model_dump(mode="json"), "homeassistant": {"enabled": False}}))
        wait_for(lambda: ha.on(discovery)[-1] == b"", what="retained discovery cleared")
    finally:
        runtime.stop()
        collector.close()
        ha.close()
        broker.stop()


def check_templates(cmps: dict, states: dict[str, dict]) -> dict[str, str]:
    """Render each entity's value_template on its state topic's message, and its command_template for every
    value it can send, as Home Assistant would (Jinja2, `now()`); commands must pass the agent's own checks."""
    import datetime

    import jinja2

    from agent.control.commands import CameraArgs, Envelope, QualityArgs

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.globals["now"] = datetime.datetime.now
    out = {}
    for object_id, cmp in cmps.items():
        out[object_id] = env.from_string(cmp["value_template"]).render(value_json=states[cmp["state_topic"]]).strip()
        if "command_template" in cmp:
            values = cmp.get("options") or [cmp["payload_on"], cmp["payload_off"]]
            for value in values:
                command = json.loads(env.from_string(cmp["command_template"]).render(value=value))
                envelope = Envelope.model_validate(command)
                args_model = CameraArgs if cmp["command_topic"].endswith("/cmd/camera") else QualityArgs
                args_model.model_validate(envelope.args)
    return out


def collector_raw(collector: Collector, topic: str) -> list[bytes]:
    return [json.dumps(b).encode() for t, b in collector.other if t == topic]


HA_PLATFORM_KEYS = {  # from Home Assistant's MQTT integration docs (abbreviations not used)
    "sensor": {"state_topic", "value_template", "unit_of_measurement", "state_class", "device_class",
               "entity_category", "icon", "suggested_display_precision"},
    "binary_sensor": {"state_topic", "value_template", "device_class", "entity_category"},
    "switch": {"command_topic", "command_template", "payload_on", "payload_off", "state_topic", "value_template",
               "entity_category"},
    "select": {"command_topic", "command_template", "options", "state_topic", "value_template", "entity_category"},
}
COMMON_KEYS = {"p", "name", "unique_id", "default_entity_id"}


def test_discovery_payload_keys_are_home_assistants_documented_ones() -> None:
    config = validate_config({"cameras": [{"name": "yard", "source": "demo:1"}]})
    cmps = components(config, "dev-1", "edge/dev-1", ["person", "car"], ["high", "low"])
    assert {c["p"] for c in cmps.values()} == set(HA_PLATFORM_KEYS)
    for object_id, cmp in cmps.items():
        assert set(cmp) <= COMMON_KEYS | HA_PLATFORM_KEYS[cmp["p"]], object_id
        assert cmp["default_entity_id"].startswith(cmp["p"] + ".") and "object_id" not in cmp
        assert cmp["unique_id"].startswith("dev-1_")
    assert len({c["unique_id"] for c in cmps.values()}) == len(cmps)
    block = device_block("dev-1", "edge/dev-1")
    assert set(block) == {"dev", "o", "avty", "qos"} and block["o"]["name"]
    assert "via_device" not in block["dev"] and block["avty"][0]["topic"] == "edge/dev-1/status"
    switch = cmps["yard_enabled"]["command_template"]
    assert '"action": "enable"' in switch and "now()" in switch  # a fresh command id every press


def test_component_discovery_then_the_clear_command_leaves_nothing_retained(tmp_path: Path, short_clip: Path) -> None:
    import yaml

    from agent.cli.main import main

    broker = Mosquitto(tmp_path / "broker").start()
    settings = {
        "device": {"id": DEVICE},
        "cameras": [{"name": "yard", "source": str(short_clip), "fps": 10}],
        "storage": {"path": str(tmp_path / "data")}, "web": {"listen": None},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "homeassistant": {"enabled": True, "discovery": "component", "labels": ["circle", "star"]},
    }
    runtime = Runtime(validate_config(settings))
    watcher = _Retained(broker.port, "homeassistant/#")
    runtime.start()
    try:
        expected = set(runtime.homeassistant.payloads())
        wait_for(lambda: {t for t, p in watcher.messages if p} >= expected, what="every entity's config")
    finally:
        runtime.stop()
        watcher.close()
    assert len(expected) == 2 * 2 + 3 + 1 and all(t.startswith("homeassistant/") and t.endswith("/config")
                                                   for t in expected)  # 2 labels × 2, fps, latency, switch; select
    config = json.loads(next(p for t, p in watcher.messages if t == f"homeassistant/sensor/{DEVICE}/yard_fps/config"))
    assert "p" not in config and config["device"]["ids"] and config["availability"][0]["topic"].endswith("/status")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    assert main(["homeassistant", "clear", "--config", str(path)]) == 0
    after = _Retained(broker.port, "homeassistant/#")
    try:
        after.client.publish("homeassistant/probe", "x", qos=1)  # retained ones arrive before anything published later
        wait_for(lambda: after.on("homeassistant/probe"), what="the probe")
        assert [t for t, p in after.messages if p and t != "homeassistant/probe"] == []
    finally:
        after.close()
        broker.stop()


def test_snapshots_are_bounded_and_go_before_the_events_they_belong_to(tmp_path: Path) -> None:
    from agent.pipeline.object_event import ObjectEvent
    from agent.store.object_events import save_events, trim_events
    from agent.store.store import open_database, trim_by_size

    db = open_database(tmp_path / DB_NAME, "normal")
    blob = bytes(200_000)
    events = [ObjectEvent("end", f"{k:08x}-0000-7000-8000-000000000000", "yard", "car", k, 1000 * k, 1000 * k + 500,
                          0.9, 0.9, (0, 0, 10, 10), False, None, None, 2, snapshot=blob, snapshot_score=0.9)
              for k in range(120)]  # 24 MB of snapshots
    with db.conn:
        save_events(db, events, outbox=False)
    trim_events(db, max_events=1000, max_snapshot_bytes=10 * 1024 * 1024, max_age_hours=None, now_ms=200_000)
    kept = db.execute("SELECT count(*), sum(snapshot_bytes) FROM object_events WHERE snapshot IS NOT NULL").fetchone()
    assert kept[1] <= 10 * 1024 * 1024 and kept[0] == 52  # the newest 52 (10 MiB / 200 kB)
    assert db.execute("SELECT count(*) FROM object_events").fetchone()[0] == 120  # events stay
    oldest_kept = db.execute("SELECT min(start_ms) FROM object_events WHERE snapshot IS NOT NULL").fetchone()[0]
    assert oldest_kept == 1000 * (120 - 52)
    with db.conn:
        save_events(db, [ObjectEvent("end", e.event_id, "yard", "car", e.track_id, e.start_ms, e.last_ms, 0.9,
                                     0.9, (0, 0, 10, 10), False, None, None, 3, snapshot=blob, snapshot_score=0.95)
                         for e in events[:90]], outbox=False)  # 18 MB again: over a 16 MB size limit with no detections
    trim_by_size(db, 16)
    assert db.execute("SELECT coalesce(sum(snapshot_bytes), 0) FROM object_events").fetchone()[0] < 16 * 1024 * 1024
    counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    assert counters["event_snapshots_trimmed"] >= 68
    trim_events(db, max_events=100, max_snapshot_bytes=1 << 40, max_age_hours=None, now_ms=200_000)
    assert db.execute("SELECT count(*), min(start_ms) FROM object_events").fetchone() == (100, 20_000)
    db.conn.close()
