"""Store-and-forward over a real Mosquitto: nothing committed is ever lost."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import MqttConfig, validate_config
from agent.demo.clips import write_clip
from agent.runtime import Runtime
from agent.store.db import transaction
from agent.store.outbox import Outbox, enqueue_detections
from agent.store.store import DB_NAME, connect, migrate
from agent.sync.mqtt_link import MqttLink
from agent.sync.sync import FETCH, Syncer
from tests.broker import Mosquitto
from tests.helpers import wait_for
from tests.mqtt_client import Collector


@pytest.fixture(scope="module")
def long_clip(clip_dir: Path) -> Path:
    return write_clip(clip_dir / "long.mp4", seconds=20.0, seed=21)


def agent_config(tmp_path: Path, clip: Path, port: int, device: str) -> dict:
    return {
        "device": {"id": device},
        "cameras": [{"name": "yard", "source": str(clip), "fps": 20, "loop": False}],
        "model": {"score_threshold": 0.3},
        "storage": {"path": str(tmp_path / "data")},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect": {"initial_s": 0.05, "max_s": 0.3}},
    }


def db_rows(data: Path, query: str) -> list[tuple]:
    conn = sqlite3.connect(data / DB_NAME)
    try:
        return conn.execute(query).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


def committed_ids(data: Path) -> set[str]:
    return {r[0] for r in db_rows(data, "SELECT id FROM detections")}


def outbox_pending(data: Path) -> int:
    rows = db_rows(data, "SELECT count(*) FROM outbox WHERE dead = 0")
    return rows[0][0] if rows else -1


def test_broker_down_at_start_and_restarted_loses_nothing(tmp_path: Path, long_clip: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker.port, "edge/dev-a/#")  # its session outlives broker restarts
    broker.stop()  # down before the agent starts
    runtime = Runtime(validate_config(agent_config(tmp_path, long_clip, broker.port, "dev-a")))
    runtime.start()
    data = tmp_path / "data"
    try:
        wait_for(lambda: len(committed_ids(data)) >= 50, what="detections stored while the broker is down")
        assert not runtime.link.connected.is_set()
        assert "connection refused" in (runtime.syncer.stats()["last_error"] or "")
        for _ in range(3):  # up, drain some, down again while detections keep coming
            broker.start()
            acked = runtime.syncer.rows_acked
            wait_for(lambda a=acked: runtime.syncer.rows_acked > a + 20, what="drained after reconnect")
            broker.stop()
            stored = len(committed_ids(data))
            wait_for(lambda s=stored: len(committed_ids(data)) > s + 20, what="stored while down")
        broker.start()
        camera = runtime.cameras["yard"]
        wait_for(lambda: camera.state.value == "finished", timeout=60, what="clip finished")
        wait_for(lambda: outbox_pending(data) == 0, timeout=60,
                 what=lambda: f"outbox drained ({outbox_pending(data)} left; {runtime.syncer.stats()})")
        ids = committed_ids(data)
        wait_for(lambda: collector.unique() >= ids, timeout=30,
                 what=lambda: f"collector to have every id ({len(ids - collector.unique())} missing)")
        assert collector.unique() == ids  # zero lost, nothing unknown
        assert runtime.link.session >= 4  # one more session per connect
    finally:
        runtime.stop()
        collector.close()
        broker.stop()


def test_sigkilled_agent_resends_after_restart_and_the_will_reports_it(tmp_path: Path, long_clip: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker.port, "edge/dev-k/#")
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps(agent_config(tmp_path, long_clip, broker.port, "dev-k")))
    data = tmp_path / "data"
    command = [sys.executable, "-m", "agent", "run", "--config", str(config), "--quiet"]
    try:
        agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: len(collector.unique()) >= 50, what="detections arriving")
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        wait_for(lambda: any(s["online"] is False for s in collector.status), what="Last Will")
        stored_before = committed_ids(data)
        agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: any(s["online"] and s["session"] == 2 for s in collector.status), what="second birth")
        wait_for(lambda: collector.unique() >= stored_before, timeout=60, what="the first run's rows")
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
        assert agent.returncode == 0
    finally:
        if agent.poll() is None:
            agent.kill()
        collector.close()
        broker.stop()
    assert collector.status[-1]["online"] is False  # clean stop says goodbye explicitly


def test_broker_refusing_a_topic_leads_to_dead_letters_not_deletion(tmp_path: Path, long_clip: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite edge/dev-d/status\n")  # detections are not allowed
    broker = Mosquitto(tmp_path / "broker", extra_conf=f"acl_file {acl}\n").start()
    runtime = Runtime(validate_config(agent_config(tmp_path, long_clip, broker.port, "dev-d")))
    runtime.start()
    data = tmp_path / "data"
    try:
        wait_for(lambda: runtime.syncer.dead_letters >= 20, what="dead letters")
        assert "not authorized" in runtime.syncer.stats()["last_error"]
        assert runtime.link.connected.is_set()  # a refused topic does not break the connection
    finally:
        runtime.stop()
        broker.stop()
    # compared once the syncer has stopped: while it runs, another refused batch can land between the two reads
    dead = db_rows(data, "SELECT count(*), min(error) FROM outbox WHERE dead = 1")[0]
    assert dead[0] == runtime.syncer.dead_letters and dead[1] == "not authorized"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_mqtt_check_reports_success_refusal_and_bad_credentials(tmp_path: Path) -> None:
    import shutil

    passwords = tmp_path / "passwd"
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd not installed")
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "device", "right"], check=True)
    passwords.chmod(0o644)
    broker = Mosquitto(tmp_path / "broker",
                       extra_conf=f"allow_anonymous false\npassword_file {passwords}\n").start()
    config = tmp_path / "c.yaml"
    secret = tmp_path / "secret"
    try:
        for password, expect_ok, words in (("right", True, "connected"), ("wrong", False, "refused")):
            secret.write_text(password)
            config.write_text(json.dumps({"storage": {"path": str(tmp_path / "d")}, "mqtt": {
                "host": "127.0.0.1", "port": broker.port, "username": "device", "password_file": str(secret)}}))
            result = run_cli("mqtt-check", "--config", str(config))
            assert (result.returncode == 0) is expect_ok, result
            assert words in (result.stdout + result.stderr)
            assert password not in (result.stdout + result.stderr)
    finally:
        broker.stop()
    result = run_cli("mqtt-check", "--config", str(config))  # broker gone
    assert result.returncode == 1 and "connection refused" in result.stderr


def test_health_readings_taken_offline_arrive_later(tmp_path: Path, long_clip: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker.port, "edge/dev-t/#")
    broker.stop()
    settings = agent_config(tmp_path, long_clip, broker.port, "dev-t")
    settings["telemetry"] = {"interval_s": 1}
    runtime = Runtime(validate_config(settings))
    runtime.start()
    data = tmp_path / "data"
    try:
        wait_for(lambda: len(db_rows(data, "SELECT seq FROM outbox WHERE kind = 'telemetry'")) >= 2,
                 what="two readings stored offline")
        offline_until = runtime.telemetry.last["ts_ms"]
        broker.start()
        wait_for(lambda: any(t["telemetry"]["ts_ms"] <= offline_until for t in collector.telemetry),
                 what="an offline reading delivered")
        reading = collector.telemetry[0]
        assert {"boot_id", "seq", "device"} <= set(reading) and reading["device"] == "dev-t"
        body = reading["telemetry"]
        assert body["cameras"]["yard"]["state"] in ("running", "finished")
        assert {"outbox_pending", "outbox_dead", "outbox_trimmed", "size_bytes"} <= set(body["store"])
        assert body["gpu"]["available"] is False and body["gpu"]["reason"]  # absent, with the reason
    finally:
        runtime.stop()
        collector.close()
        broker.stop()


def test_batches_respect_the_brokers_maximum_packet_size(tmp_path: Path, long_clip: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", extra_conf="max_packet_size 3000\n").start()
    collector = Collector(broker.port, "edge/dev-p/detections/#")
    settings = agent_config(tmp_path, long_clip, broker.port, "dev-p")
    settings["cameras"][0].update(realtime=False)  # a fast backlog: big batches want to form
    runtime = Runtime(validate_config(settings))
    runtime.start()
    data = tmp_path / "data"
    try:
        wait_for(lambda: runtime.cameras["yard"].state.value == "finished", timeout=60, what="clip finished")
        wait_for(lambda: outbox_pending(data) == 0, timeout=60, what="outbox drained")
        ids = committed_ids(data)
        wait_for(lambda: collector.unique() >= ids, what="every id delivered")
        assert runtime.link.max_packet_size == 3000
        assert 1000 < collector.largest <= 3000 - 100  # split to fit, never dropped
        assert runtime.syncer.dead_letters == 0
    finally:
        runtime.stop()
        collector.close()
        broker.stop()


def test_nothing_too_large_for_the_broker_is_sent_so_the_connection_is_never_lost(tmp_path: Path,
                                                                                   short_clip: Path) -> None:
    """A packet over the broker's Maximum Packet Size makes it close the connection, and a resend on
    every reconnect would make that a loop: telemetry, answers and reports are checked first."""
    from agent.fleet.fleet import FleetClient

    broker = Mosquitto(tmp_path / "broker", extra_conf="max_packet_size 1500\n").start()
    fleet = FleetClient(MqttConfig(host="127.0.0.1", port=broker.port))
    runtime = Runtime(validate_config(agent_config(tmp_path, short_clip, broker.port, "dev-t")))
    runtime.start()
    try:
        wait_for(runtime.link.connected.is_set, what="connected")
        assert runtime.link.max_packet_size == 1500
        runtime.telemetry.take_reading()  # a reading is several KB: it cannot go
        wait_for(lambda: runtime.syncer.dead_letters >= 1, what="the reading kept as a dead letter")
        answer = fleet.command("dev-t", "get_stats")
        assert answer["ok"] is False and answer["error"]["code"] == "too_large"
        assert "1500" in answer["error"]["message"]
        assert fleet.command("dev-t", "ping")["ok"]
        reported = fleet.retained("edge/dev-t/config/reported")["edge/dev-t/config/reported"]
        assert "config" not in reported and "too large" in reported["config_omitted"]
        runtime.telemetry.take_reading()
        wait_for(lambda: runtime.syncer.dead_letters >= 2, what="the next reading handled the same way")
        assert runtime.link.connects == 1  # never disconnected by the broker
        wait_for(lambda: "packet too large" in (runtime._store_figures().get("outbox_dead_last_error") or ""),
                 what="the reason in the store's figures (read at most once a second)")
    finally:
        runtime.stop()
        fleet.close()
        broker.stop()


def test_mutual_tls_connects_and_wrong_trust_or_missing_client_cert_fail_clearly(tmp_path: Path) -> None:
    from tests.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    broker = Mosquitto(tmp_path / "broker", extra_conf=(
        f"cafile {pki['ca.pem']}\ncertfile {pki['server.pem']}\nkeyfile {pki['server.key']}\n"
        "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n"
    )).start()
    config = tmp_path / "c.yaml"

    def check(tls: dict) -> subprocess.CompletedProcess[str]:
        config.write_text(json.dumps({"storage": {"path": str(tmp_path / "d")},
                                      "mqtt": {"host": "127.0.0.1", "port": broker.port, "tls": tls}}))
        return run_cli("mqtt-check", "--config", str(config), "--timeout", "5")

    try:
        good = check({"ca_file": str(pki["ca.pem"]), "cert_file": str(pki["device.pem"]),
                      "key_file": str(pki["device.key"])})
        assert good.returncode == 0 and "connected (MQTT v5, TLS)" in good.stdout, good.stderr
        untrusted = check({"ca_file": str(pki["other-ca.pem"]), "cert_file": str(pki["device.pem"]),
                           "key_file": str(pki["device.key"])})
        assert untrusted.returncode == 1 and "TLS certificate not accepted" in untrusted.stderr
        no_client_cert = check({"ca_file": str(pki["ca.pem"])})
        assert no_client_cert.returncode == 1 and "closed the connection" in no_client_cert.stderr
    finally:
        broker.stop()


def test_stop_with_pahos_queue_full_ends_cleanly_and_the_broker_still_says_offline(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    watcher = Collector(broker.port, "edge/dev-q/status", client_id="status-watcher")
    link = MqttLink(MqttConfig(host="127.0.0.1", port=broker.port, window=1), "dev-q", "b00t", lambda: 1)
    link.start()
    try:
        wait_for(link.connected.is_set, what="connected")
        wait_for(lambda: any(s["online"] for s in watcher.status), what="birth seen")
        broker.pause()  # PUBACKs stop: what paho holds stays held
        assert link.publish("edge/dev-q/x", "1") is not None  # in flight
        assert link.publish("edge/dev-q/x", "2") is not None  # queued: paho's queue (2 x window) is now full
        assert link.publish("edge/dev-q/x", "3") is None
        started = time.monotonic()
        link.stop(timeout=1.0)  # the goodbye cannot even be queued: that must not raise
        assert time.monotonic() - started < 2.0
        broker.resume()
        wait_for(lambda: watcher.status and not watcher.status[-1]["online"], what="offline status after stop")
    finally:
        broker.resume()
        watcher.close()
        broker.stop()


def outbox_with_detections(data: Path, count: int, ts_ms: int) -> Path:
    """A real database whose outbox holds `count` detections captured at `ts_ms`."""
    data.mkdir(parents=True, exist_ok=True)
    db = connect(data / DB_NAME)
    migrate(db)
    with transaction(db):
        enqueue_detections(db, [{"id": f"d{i:06d}", "camera": "yard", "ts_ms": ts_ms, "frame": i, "label": "car",
                                 "class_id": 2, "score": 0.9, "x1": 0.0, "y1": 0.0, "x2": 9.0, "y2": 9.0}
                                for i in range(count)])
    db.conn.close()
    return data / DB_NAME


@contextlib.contextmanager
def started_syncer(config: MqttConfig, device: str, db_path: Path) -> Iterator[tuple[MqttLink, Syncer]]:
    """A link and its sender on a real outbox, running; stopped afterwards whatever happened."""
    link = MqttLink(config, device, "b00t", lambda: 1)
    syncer = Syncer(link, db_path, config)
    syncer.start()
    link.start()
    try:
        yield link, syncer
    finally:
        syncer.stop()
        link.stop()


def test_detections_stamped_ahead_by_a_clock_step_are_sent_without_waiting_for_the_clock(tmp_path: Path) -> None:
    # A Jetson without RTC boots with a wrong clock; NTP then steps it back an hour. Rows captured before
    # the step carry wall times an hour "in the future": batching must not hold them for that hour.
    db_path = outbox_with_detections(tmp_path / "data", 5, int(time.time() * 1000) + 3_600_000)
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker.port, "edge/dev-clock/detections/#")
    config = MqttConfig(host="127.0.0.1", port=broker.port)
    try:
        with started_syncer(config, "dev-clock", db_path):
            wait_for(lambda: len(collector.unique()) == 5, timeout=10, what="the 5 detections at the broker")
            wait_for(lambda: outbox_pending(tmp_path / "data") == 0, timeout=10, what="outbox drained")
    finally:
        collector.close()
        broker.stop()


def test_a_refused_publish_backs_off_instead_of_spinning(tmp_path: Path) -> None:
    db_path = outbox_with_detections(tmp_path / "data", FETCH + 500, int(time.time() * 1000))  # "more waiting"
    broker = Mosquitto(tmp_path / "broker").start()
    config = MqttConfig(host="127.0.0.1", port=broker.port, window=2)
    link = MqttLink(config, "dev-spin", "b00t", lambda: 1)
    syncer = Syncer(link, db_path, config)  # not started: its passes are run here, one by one
    syncer.outbox = Outbox(connect(db_path))
    link.start()
    try:
        wait_for(link.connected.is_set, what="connected")
        broker.pause()  # nothing is acknowledged; fill paho's queue (2 x window) from outside the syncer
        while link.publish("edge/dev-spin/other", "x") is not None:
            pass
        waits = [syncer._send() for _ in range(4)]
        assert "refused" in syncer.last_publish_error
        assert all(w > 0 for w in waits), waits  # before: 0 s, a pass after pass on one core
        assert waits[-1] > waits[0]  # and growing while paho keeps refusing
    finally:
        syncer.outbox.db.conn.close()
        broker.resume()
        link.stop()
        broker.stop()


def test_a_session_counter_that_cannot_be_written_still_gives_a_full_connection(tmp_path: Path) -> None:
    from agent.fleet.fleet import FleetClient
    from agent.store.outbox import next_session

    broken = tmp_path / "broken.db"
    broken.write_bytes(b"not a database, as a torn disk leaves it " * 200)
    broker = Mosquitto(tmp_path / "broker").start()
    watcher = Collector(broker.port, "edge/dev-s/status", client_id="status-watcher")
    link = MqttLink(MqttConfig(host="127.0.0.1", port=broker.port), "dev-s", "b00t", lambda: next_session(broken))
    received: list[str] = []
    link.subscriptions.append("edge/dev-s/cmd/+")
    link.on_message = lambda message, connection: (received.append(message.topic), link.ack(message, connection))
    link.start()
    fleet = FleetClient(MqttConfig(host="127.0.0.1", port=broker.port))
    try:
        wait_for(link.connected.is_set, timeout=10, what="connected although the counter failed")
        wait_for(lambda: any(s["online"] for s in watcher.status), what="birth published")
        assert watcher.status[-1]["session"] >= 1
        assert "session counter" in (link.last_error or "")
        fleet.request("dev-s", "ping", b"{}", timeout=0.5)  # no answer expected: only that it arrives
        wait_for(lambda: "edge/dev-s/cmd/ping" in received, what="subscribed: the command arrives")
    finally:
        fleet.close()
        link.stop()
        watcher.close()
        broker.stop()


def test_dead_letters_requeued_once_the_acl_is_fixed_reach_the_broker(tmp_path: Path, long_clip: Path) -> None:
    from agent.fleet.fleet import FleetClient
    from agent.store.store import health_figures

    acl = tmp_path / "acl"
    allowed = "".join(f"topic readwrite edge/dev-q2/{t}\n"
                      for t in ("status", "cmd/#", "response/#", "config/#", "events/#", "objects/#"))
    acl.write_text(allowed)  # a mis-set ACL: detections are not allowed
    broker = Mosquitto(tmp_path / "broker", extra_conf=f"acl_file {acl}\n").start()
    runtime = Runtime(validate_config(agent_config(tmp_path, long_clip, broker.port, "dev-q2")))
    runtime.start()
    fleet = FleetClient(MqttConfig(host="127.0.0.1", port=broker.port))
    try:
        wait_for(lambda: runtime.syncer.dead_letters >= 5, what="dead letters")
        assert health_figures(tmp_path / "data")["outbox_dead_last_error"] == "not authorized"  # in telemetry
        acl.write_text(allowed + "topic readwrite edge/dev-q2/detections/#\n")
        broker.proc.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL
        collector = Collector(broker.port, "edge/dev-q2/detections/#")
        wait_for(lambda: (answer := fleet.command("dev-q2", "requeue_dead_letters")) and answer["ok"]
                 and answer["result"]["requeued"] >= 5, what="dead letters requeued")
        wait_for(lambda: outbox_dead(tmp_path / "data") == 0 and len(collector.unique()) >= 5,
                 what="requeued detections delivered")
        collector.close()
    finally:
        fleet.close()
        runtime.stop()
        broker.stop()


def outbox_dead(data: Path) -> int:
    return db_rows(data, "SELECT count(*) FROM outbox WHERE dead = 1")[0][0]


def test_store_requeue_makes_dead_letters_pending_again(tmp_path: Path) -> None:
    db_path = outbox_with_detections(tmp_path / "data", 3, int(time.time() * 1000))
    outbox = Outbox(connect(db_path))
    outbox.bury([1, 2, 3], "not authorized")
    outbox.db.conn.close()
    result = run_cli("store", "requeue", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0 and "requeued 3 dead letters" in result.stdout, result.stderr
    assert outbox_dead(tmp_path / "data") == 0 and outbox_pending(tmp_path / "data") == 3


def test_transient_refusals_pause_sending_longer_each_time_then_become_dead_letters(tmp_path: Path) -> None:
    from agent.sync.sync import TRANSIENT_ATTEMPTS, _InFlight

    db_path = outbox_with_detections(tmp_path / "data", 1, int(time.time() * 1000))
    config = MqttConfig(host="127.0.0.1", port=1)
    syncer = Syncer(MqttLink(config, "dev-t", "b00t", lambda: 1), db_path, config)  # acks fed in as paho would
    syncer.outbox = Outbox(connect(db_path))
    holds = []
    try:
        for attempt in range(TRANSIENT_ATTEMPTS):
            syncer._inflight[attempt] = _InFlight([1], time.monotonic(), [0], 100)
            syncer._on_publish(attempt, 0x97)  # quota exceeded
            before = time.monotonic()
            syncer._settle_acks()
            holds.append(syncer._hold_until - before)
            assert syncer._send() > 0  # nothing is sent while held
        assert holds[3] > holds[0] and all(h <= 30 for h in holds)
        assert outbox_dead(tmp_path / "data") == 1 and syncer.dead_letters == 1
        error = db_rows(tmp_path / "data", "SELECT error FROM outbox")[0][0]
        assert "0x97" in error and f"{TRANSIENT_ATTEMPTS} attempts" in error
    finally:
        syncer.outbox.db.conn.close()


def test_the_brokers_receive_maximum_bounds_what_is_in_flight(tmp_path: Path) -> None:
    db_path = outbox_with_detections(tmp_path / "data", 3000, int(time.time() * 1000))
    broker = Mosquitto(tmp_path / "broker", extra_conf="max_inflight_messages 4\n").start()  # its Receive Maximum
    collector = Collector(broker.port, "edge/dev-rm/detections/#")
    config = MqttConfig(host="127.0.0.1", port=broker.port, window=64, batch={"max_count": 10})
    try:
        with started_syncer(config, "dev-rm", db_path) as (link, syncer):
            wait_for(lambda: outbox_pending(tmp_path / "data") == 0, timeout=60, what="outbox drained")
            wait_for(lambda: len(collector.unique()) == 3000, what="every detection at the broker")
            assert link.broker_receive_maximum == 4 and link.send_window == 4
            # the window was used, and never past what the broker takes, with room for the birth and answers
            assert syncer.peak_in_flight == syncer.window() == 2
    finally:
        collector.close()
        broker.stop()


def test_a_slow_link_that_still_acknowledges_gets_nothing_resent(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A 50 kB/s uplink: the last of 64 messages in flight waits ~4 s for its PUBACK, longer than the
    in-flight timeout (1 s here, 60 s in the field), while acks keep coming: nothing may be sent twice."""
    from agent.sync import sync as sync_mod
    from tests.slow_link import SlowLink

    monkeypatch.setattr(sync_mod, "INFLIGHT_TIMEOUT_S", 1.0)
    db_path = outbox_with_detections(tmp_path / "data", 2000, int(time.time() * 1000))
    broker = Mosquitto(tmp_path / "broker", extra_conf="max_inflight_messages 100\n").start()  # not its 20
    link_to_broker = SlowLink(broker.port, bytes_per_s=50_000)
    collector = Collector(broker.port, "edge/dev-slow/detections/#")
    config = MqttConfig(host="127.0.0.1", port=link_to_broker.port, window=64,
                        batch={"max_bytes": 4096, "max_age_ms": 0})
    try:
        with started_syncer(config, "dev-slow", db_path) as (_, syncer):
            wait_for(lambda: outbox_pending(tmp_path / "data") == 0, timeout=120, what="outbox drained")
            wait_for(lambda: len(collector.unique()) == 2000, what="every detection at the broker")
            slowest = syncer.puback_latency_ms.percentiles(100)[0]
            assert slowest > 1000, slowest  # acks did take longer than the timeout
            assert syncer.retries == 0 and collector.duplicates() == 0
            rate = syncer.stats()["ack_rate_kbit_s"]
            assert 100 < rate < 1000, rate  # ~400 kbit/s measured from the acks
    finally:
        link_to_broker.close()
        collector.close()
        broker.stop()
