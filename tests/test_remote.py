"""Config and commands over a real Mosquitto: desired/reported config, every command, redeliveries."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config import MqttConfig, validate_config
from agent.fleet.fleet import FleetClient
from agent.runtime import Runtime
from tests.broker import Mosquitto
from tests.helpers import wait_for

DEVICE = "dev-r"


def device_settings(tmp_path: Path, clip: Path, port: int, **extra: object) -> dict:
    camera = {"source": str(clip), "fps": 10, "loop": True}
    return {
        "device": {"id": DEVICE},
        "cameras": [{"name": "front", **camera}, {"name": "back", **camera}],
        "storage": {"path": str(tmp_path / "data")},
        "mqtt": {"host": "127.0.0.1", "port": port, "password": "hunter2",
                 "reconnect": {"initial_s": 0.05, "max_s": 0.3}},
        **extra,
    }


@dataclass
class Setup:
    tmp_path: Path
    clip: Path
    broker: Mosquitto
    fleet: FleetClient

    def start_device(self, **extra: object) -> Runtime:
        runtime = Runtime(validate_config(device_settings(self.tmp_path, self.clip, self.broker.port, **extra)))
        runtime.start()
        wait_for(runtime.link.connected.is_set, what="device connected")
        return runtime

    def reported(self) -> dict | None:
        topic = f"edge/{DEVICE}/config/reported"
        return self.fleet.retained(topic).get(topic)


@pytest.fixture
def setup(tmp_path: Path, short_clip: Path) -> Iterator[Setup]:
    broker = Mosquitto(tmp_path / "broker").start()
    setup = Setup(tmp_path, short_clip, broker, FleetClient(MqttConfig(host="127.0.0.1", port=broker.port)))
    yield setup
    setup.fleet.close()  # the one in use: a test may have replaced it
    broker.stop()


def in_media(setup: Setup, clip: Path) -> Path:
    """A copy of `clip` in the data dir's media/, where config over MQTT may name video files."""
    media = setup.tmp_path / "data" / "media"
    media.mkdir(parents=True, exist_ok=True)
    copy = media / clip.name
    copy.write_bytes(clip.read_bytes())
    return copy


def frames(runtime: Runtime, camera: str) -> int:
    return runtime.cameras[camera].frames_captured


# -- desired / reported config ---------------------------------------------------------
def test_desired_config_sent_while_offline_is_applied_on_connect_and_survives_a_restart(setup: Setup) -> None:
    version, report = setup.fleet.publish_desired(
        DEVICE, {"model": {"score_threshold": 0.55}, "telemetry": {"interval_s": 7}}, timeout=0.2)
    assert version == 1 and report is None  # nobody there to answer yet
    runtime = setup.start_device()
    try:
        wait_for(lambda: (setup.reported() or {}).get("version") == 1, what="reported v1")
        report = setup.reported()
        assert report["status"] == "applied" and report["applied_version"] == 1 and report["errors"] == []
        assert report["config"]["model"]["score_threshold"] == 0.55
        assert report["config"]["mqtt"]["password"] == "<redacted>"
        assert "hunter2" not in json.dumps(report)
        assert runtime.detector.score_threshold == 0.55 and runtime.telemetry.interval_s == 7
        assert runtime.channel.counts["desired_applied"] == 1
    finally:
        runtime.stop()
    runtime = setup.start_device()  # same data dir: the applied config comes back from SQLite
    try:
        assert runtime.status()["config"]["version"] == 1 and runtime.config.model.score_threshold == 0.55
        assert runtime.detector.score_threshold == 0.55
        wait_for(lambda: runtime.channel.counts["desired_ignored"] == 1, what="retained v1 seen again, ignored")
        assert runtime.channel.counts["desired_applied"] == 0
    finally:
        runtime.stop()


def test_stored_fleet_config_that_the_edited_file_no_longer_admits_runs_the_file_config_and_says_so(
        setup: Setup) -> None:
    setup.fleet.publish_desired(DEVICE, {"model": {"engine": {"intra_op_threads": 1}}}, timeout=0.2)
    runtime = setup.start_device()
    try:
        wait_for(lambda: (setup.reported() or {}).get("status") == "applied", what="reported v1 applied")
    finally:
        runtime.stop()
    # The operator switches the file to TensorRT, whose engine has no intra_op_threads.
    runtime = setup.start_device(model={"engine": {"type": "tensorrt"}})
    try:
        error = runtime.status()["config"]["error"]
        assert error is not None and "no longer valid" in error and "intra_op_threads" in error
        assert runtime.config.model.engine.type == "tensorrt"  # the file's config runs
        wait_for(lambda: (setup.reported() or {}).get("warning") == error, what="the warning reported")
        assert setup.reported()["applied_version"] == 1
    finally:
        runtime.stop()


def test_desired_config_is_the_fleets_whole_overlay_so_histories_do_not_matter(setup: Setup) -> None:
    runtime = setup.start_device()
    try:
        _, report = setup.fleet.publish_desired(DEVICE, {"model": {"score_threshold": 0.55}})
        assert report["status"] == "applied" and runtime.config.model.score_threshold == 0.55
        _, report = setup.fleet.publish_desired(DEVICE, {"telemetry": {"interval_s": 7}})
        assert report["status"] == "applied" and report["version"] == 2
        seen_both = redacted_without_identity(runtime.config)
        assert runtime.config.model.score_threshold == 0.4  # v2 replaced v1: back to the file's value
    finally:
        runtime.stop()
    # A device that was away for v1 sees only the retained v2, and ends in the same place.
    newcomer = Runtime(validate_config(device_settings(setup.tmp_path / "newcomer", setup.clip, setup.broker.port,
                                                       device={"id": "dev-new"})))
    setup.fleet.publish_desired("dev-new", {"telemetry": {"interval_s": 7}}, timeout=0.2)
    newcomer.start()
    try:
        wait_for(lambda: newcomer.config_service.applied_version == 1, what="newcomer applied the desired config")
        assert redacted_without_identity(newcomer.config) == seen_both
    finally:
        newcomer.stop()


def redacted_without_identity(config) -> dict:
    data = config.model_dump(mode="json")
    data.pop("device")
    data["storage"].pop("path")
    return data


def test_a_rejected_version_is_not_retried_on_reconnect_or_restart(setup: Setup) -> None:
    runtime = setup.start_device()
    try:
        _, report = setup.fleet.publish_desired(DEVICE, {"model": {"path": "/nonexistent.onnx"}})
        assert report["status"] == "rejected" and report["version"] == 1
        connects = runtime.link.connects
        setup.broker.stop()
        setup.broker.start()  # the retained v1 is delivered again on the new connection
        setup.fleet.close()  # the operator's client does not reconnect by itself
        setup.fleet = FleetClient(MqttConfig(host="127.0.0.1", port=setup.broker.port))
        wait_for(lambda: runtime.link.connects > connects, what="reconnected")
        # Seen again as retained, and maybe also redelivered (the broker stopped before our ack reached it).
        wait_for(lambda: runtime.channel.counts["desired_ignored"] >= 1, what="retained v1 seen again, ignored")
        assert runtime.channel.counts["desired_rejected"] == 1  # not tried a second time
    finally:
        runtime.stop()
    runtime = setup.start_device()
    try:
        wait_for(lambda: runtime.channel.counts["desired_ignored"] >= 1, what="v1 ignored after a restart too")
        assert runtime.channel.counts["desired_rejected"] == 0
        wait_for(lambda: (setup.reported() or {}).get("ts_ms", 0) > report["ts_ms"], what="reported again")
        again = setup.reported()
        assert again["status"] == "rejected" and again["version"] == 1 and again["errors"] == report["errors"]
    finally:
        runtime.stop()


def test_invalid_desired_config_is_rejected_with_key_paths_and_the_old_config_keeps_running(setup: Setup) -> None:
    runtime = setup.start_device()
    try:
        before = runtime.config
        cameras = dict(runtime.cameras)
        version, report = setup.fleet.publish_desired(DEVICE, {
            "cameras": [{"name": "front", "source": str(setup.clip), "fps": -1, "colour": "red"}],
            "mqtt": {"host": "elsewhere"}, "storage": {"path": "/tmp/x"},
        })
        assert report is not None and report["status"] == "rejected" and report["applied_version"] == 0
        paths = {e["path"] for e in report["errors"]}
        assert paths == {"mqtt", "storage.path"}  # refused sections are reported before anything else
        version, report = setup.fleet.publish_desired(DEVICE, {
            "cameras": [{"name": "front", "source": str(setup.clip), "fps": -1, "colour": "red"}]})
        paths = {e["path"] for e in report["errors"]}
        assert report["status"] == "rejected" and {"cameras[0].fps", "cameras[0].colour"} <= paths
        assert runtime.config is before and runtime.cameras == cameras  # untouched, same camera objects
        counted = {name: frames(runtime, name) for name in cameras}
        wait_for(lambda: all(frames(runtime, n) > c for n, c in counted.items()), what="cameras still running")
        missing = setup.tmp_path / "data" / "models" / "nonexistent.onnx"  # where remote config may look
        version, report = setup.fleet.publish_desired(DEVICE, {"model": {"path": str(missing)}})
        assert report["status"] == "rejected" and report["errors"][0]["path"] == "model"
        assert runtime.detector is not None and runtime.config is before
        version, report = setup.fleet.publish_desired(DEVICE, {"model": {"iou_threshold": 0.6}})
        assert report["status"] == "applied" and report["applied_version"] == version == 4
        assert runtime.detector.iou_threshold == 0.6 and runtime.cameras == cameras
    finally:
        runtime.stop()


def test_model_change_swaps_the_engine_and_keeps_stored_data(setup: Setup, tmp_path: Path) -> None:
    from engines.config import DEMO_MODEL_PATH

    copy = tmp_path / "data" / "models" / "copy.onnx"  # the data dir's models/: remote config may name it
    copy.parent.mkdir(parents=True)
    copy.write_bytes(DEMO_MODEL_PATH.read_bytes())
    runtime = setup.start_device()
    try:
        wait_for(lambda: runtime.store.committed_rows > 10, what="detections stored")
        stored, old = runtime.store.committed_rows, runtime.detector
        _, report = setup.fleet.publish_desired(DEVICE, {"model": {"path": str(copy)}})
        assert report["status"] == "applied" and "model reloaded" in report["changes"]
        assert runtime.detector is not old and runtime.detector.info.model_path == str(copy)
        wait_for(lambda: runtime.store.committed_rows > stored + 10, what="detections from the new engine")
    finally:
        runtime.stop()


# -- commands ------------------------------------------------------------------------
def test_camera_added_over_mqtt_starts_while_the_others_keep_counting(setup: Setup, other_clip: Path) -> None:
    runtime = setup.start_device()
    fleet = setup.fleet
    try:
        front, back = runtime.cameras["front"], runtime.cameras["back"]
        wait_for(lambda: front.frames_captured > 3 and back.frames_captured > 3, what="cameras running")
        counted = (front.frames_captured, back.frames_captured)
        answer = fleet.command(DEVICE, "camera", {"action": "add", "name": "side",
                                                  "settings": {"source": str(in_media(setup, other_clip)),
                                                               "fps": 10}})
        assert answer["ok"], answer
        assert answer["result"]["changes"] == ["camera side started"]
        wait_for(lambda: frames(runtime, "side") > 3, what="new camera capturing")
        assert runtime.cameras["front"] is front and runtime.cameras["back"] is back  # not restarted
        assert front.frames_captured > counted[0] and back.frames_captured > counted[1]  # counters kept running
        assert [c.name for c in runtime.config.cameras] == ["front", "back", "side"]

        assert fleet.command(DEVICE, "camera", {"action": "disable", "name": "back"})["ok"]
        assert "back" not in runtime.cameras and runtime.cameras["front"] is front
        assert fleet.command(DEVICE, "camera", {"action": "enable", "name": "back"})["ok"]
        wait_for(lambda: frames(runtime, "back") > 0, what="re-enabled camera capturing")
        assert fleet.command(DEVICE, "camera", {"action": "remove", "name": "side"})["ok"]
        assert "side" not in runtime.cameras

        for args, code in (({"action": "remove", "name": "nope"}, "not_found"),
                           ({"action": "add", "name": "front", "settings": {"source": "demo:1"}}, "conflict"),
                           ({"action": "add", "name": "x", "settings": {"source": "ftp://a/b"}}, "rejected"),
                           ({"action": "add", "name": "x"}, "bad_request"),
                           ({"action": "explode", "name": "front"}, "bad_request")):
            answer = fleet.command(DEVICE, "camera", args)
            assert answer["ok"] is False and answer["error"]["code"] == code, (args, answer)
        rejected = fleet.command(DEVICE, "camera", {"action": "add", "name": "x", "settings": {"source": "ftp://a"}})
        assert rejected["error"]["details"][0]["path"] == "cameras[2].source"
        reported = setup.reported()
        assert reported["applied_version"] == 0 and [c["name"] for c in reported["config"]["cameras"]] == \
            ["front", "back"]
    finally:
        runtime.stop()


def test_each_command_answers_and_refuses_bad_arguments(setup: Setup) -> None:
    runtime = setup.start_device()
    fleet = setup.fleet
    try:
        wait_for(lambda: runtime.latest_detections.get("front") is not None, what="a frame through inference")
        ping = fleet.command(DEVICE, "ping")
        assert ping["ok"] and ping["result"]["boot_id"] == runtime.link.boot_id

        config = fleet.command(DEVICE, "get_config")["result"]
        assert config["version"] == 0 and config["config"]["mqtt"]["password"] == "<redacted>"

        answer = fleet.command(DEVICE, "set_config", {"config": {"model": {"score_threshold": 0.7}}})
        assert answer["ok"] and answer["result"]["changes"] == ["thresholds updated"]
        assert runtime.detector.score_threshold == 0.7
        answer = fleet.command(DEVICE, "set_config", {"config": {"model": {"score_threshold": 7}}})
        assert answer["error"]["code"] == "rejected"
        assert answer["error"]["details"][0]["path"] == "model.score_threshold"
        assert runtime.detector.score_threshold == 0.7
        for change, path in (({"model": {"labels": "/etc/passwd"}}, "model.labels"),
                             ({"cameras": [{"name": "x", "source": "gst:videotestsrc ! filesink location=/tmp/x "
                                                                   "! appsink"}]}, "cameras[0].source"),
                             ({"model": {"engine": {"tensorrt": {"cache_dir": "/tmp"}}}},
                              "model.engine.tensorrt.cache_dir")):  # the trust boundary, over MQTT
            answer = fleet.command(DEVICE, "set_config", {"config": change})
            assert answer["error"]["code"] == "rejected" and answer["error"]["details"][0]["path"] == path
        assert "root:" not in json.dumps(fleet.command(DEVICE, "get_stats")["result"])

        shot = fleet.command(DEVICE, "snapshot", {"camera": "front", "max_bytes": 8192})["result"]
        jpeg = base64.b64decode(shot["jpeg_base64"])
        assert len(jpeg) == shot["jpeg_bytes"] <= 8192
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[1] == round(shot["width"] * shot["scale"])
        assert isinstance(shot["detections"], list) and shot["camera"] == "front"

        stats = fleet.command(DEVICE, "get_stats")["result"]
        assert set(stats["cameras"]) == {"front", "back"} and stats["commands"]["executed"] >= 4

        old = dict(runtime.cameras)
        answer = fleet.command(DEVICE, "restart_pipeline")
        assert answer["ok"] and answer["result"]["cameras"] == ["back", "front"]
        assert all(runtime.cameras[n] is not old[n] for n in old)
        wait_for(lambda: frames(runtime, "front") > 0, what="capturing after the restart")

        for name, args, code in (("ping", {"x": 1}, "bad_request"), ("get_config", {"all": True}, "bad_request"),
                                 ("snapshot", {"camera": "nope"}, "not_found"),
                                 ("snapshot", {"camera": "front", "max_bytes": 10}, "bad_request"),
                                 ("restart_pipeline", {"now": 1}, "bad_request"),
                                 ("get_stats", {"verbose": "yes"}, "bad_request"),
                                 ("reboot", {}, "unknown_command"), ("set_config", {}, "bad_request")):
            answer = fleet.command(DEVICE, name, args)
            assert answer["ok"] is False and answer["error"]["code"] == code, (name, answer)
        assert fleet.request(DEVICE, "ping", b"\xff not json")["error"]["code"] == "bad_request"
        assert fleet.request(DEVICE, "ping", b"{" * 70_000)["error"]["code"] == "too_large"
    finally:
        runtime.stop()


def test_redelivered_command_id_is_answered_from_the_kept_answer_not_run_again(setup: Setup,
                                                                             other_clip: Path) -> None:
    runtime = setup.start_device()
    fleet = setup.fleet
    add = {"action": "add", "name": "side", "settings": {"source": str(in_media(setup, other_clip))}}
    try:
        first = fleet.command(DEVICE, "camera", add, cmd_id="cmd-42")
        assert first["ok"] and first["id"] == "cmd-42"
        again = fleet.command(DEVICE, "camera", add, cmd_id="cmd-42")  # run again, it would be a conflict
        assert again == first and runtime.channel.counts["duplicates"] == 1
        assert fleet.command(DEVICE, "camera", add)["error"]["code"] == "conflict"  # a new id does run
    finally:
        runtime.stop()
    runtime = setup.start_device()  # kept across a restart
    try:
        assert fleet.command(DEVICE, "camera", add, cmd_id="cmd-42") == first
    finally:
        runtime.stop()


def test_expired_and_misdirected_commands_are_not_run(setup: Setup) -> None:
    runtime = setup.start_device()
    fleet = setup.fleet
    try:
        body = {"id": "late", "args": {"action": "remove", "name": "front"}, "expires_at": int(time.time() * 1000) - 1}
        answer = fleet.request(DEVICE, "camera", json.dumps(body))
        assert answer["error"]["code"] == "expired" and "front" in runtime.cameras
        # An answer may only go under the device's response/ subtree: elsewhere, nothing is published or run.
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "edge/other-device/cmd/camera"
        body = {"id": "evil", "args": {"action": "remove", "name": "front"}}
        fleet.client.publish(f"edge/{DEVICE}/cmd/camera", json.dumps(body), qos=1, properties=props)
        wait_for(lambda: runtime.channel.counts["refused"] == 1, what="refused response topic")
        assert "front" in runtime.cameras
        retained = fleet.request(DEVICE, "get_stats", json.dumps({"id": "r1"}), retain=True)
        assert retained["error"]["code"] == "bad_request" and "retained" in retained["error"]["message"]
    finally:
        runtime.stop()


def test_command_unacknowledged_when_the_link_drops_is_redelivered_and_not_run_twice(setup: Setup,
                                                                                   other_clip: Path) -> None:
    runtime = setup.start_device()
    try:
        handled: list[int] = []
        runtime.link.ack = lambda message, connection: handled.append(message.mid)  # the ack never leaves
        answer = setup.fleet.command(DEVICE, "camera", {"action": "add", "name": "side",
                                                        "settings": {"source": str(in_media(setup, other_clip))}},
                                     cmd_id="once")
        assert answer["ok"]
        # the answer is published before the command message is acked, so the ack may still be on its way
        wait_for(lambda: handled, what="the command message acked (and the ack dropped)")
        connects = runtime.link.connects
        setup.broker.stop()  # the link drops before the broker got the ack; it keeps the device's session
        setup.broker.start()
        wait_for(lambda: runtime.channel.counts["duplicates"] == 1, what="the command delivered again")
        assert runtime.link.connects > connects
        assert [c.name for c in runtime.config.cameras] == ["front", "back", "side"]  # ran once
        assert runtime.channel.counts["executed"] == 1
    finally:
        runtime.stop()


def test_fleet_cli_lists_reads_status_sends_commands_and_configures(setup: Setup, capsys: pytest.CaptureFixture,
                                                                    tmp_path: Path) -> None:
    from agent.cli.main import main

    port = str(setup.broker.port)
    runtime = setup.start_device(telemetry={"interval_s": 1})

    def fleet(*args: str) -> tuple[int, str]:
        code = main(["fleet", *args[:1], "--port", port, *args[1:]])
        out, err = capsys.readouterr()
        return code, out + err

    try:
        wait_for(lambda: runtime.syncer.stats()["messages_acked"] > 0 and runtime.telemetry.readings > 0,
                 what="a telemetry reading delivered")
        wait_for(lambda: fleet("status", DEVICE, "--json")[0] == 0, what="retained telemetry")
        code, out = fleet("list", "--json")
        rows = json.loads(out)
        assert code == 0 and rows[0]["device"] == DEVICE and rows[0]["online"] and rows[0]["session"] == 1
        code, out = fleet("status", DEVICE, "--json")
        assert set(json.loads(out)["cameras"]) == {"front", "back"}
        text = fleet("status", DEVICE)[1]
        assert text.count("camera ") == 2 and "None" not in text  # every figure the line names is there
        cpu = float(text.split("cpu ")[1].split("%")[0])
        assert 0 < cpu <= 100  # two cameras decoding and inferring: never the meaningless first 0.0

        code, out = fleet("cmd", DEVICE, "ping")
        assert code == 0 and json.loads(out)["ok"] is True
        code, out = fleet("cmd", DEVICE, "camera", "--arg", "action=remove", "--arg", "name=nope")
        assert code == 1 and json.loads(out)["error"]["code"] == "not_found"
        jpeg = tmp_path / "shot.jpg"
        code, out = fleet("cmd", DEVICE, "snapshot", "--arg", "camera=front", "--save-jpeg", str(jpeg))
        assert code == 0 and cv2.imread(str(jpeg)) is not None and "jpeg_base64" not in out
        code, out = fleet("cmd", "ghost", "ping", "--timeout", "0.5")
        assert code == 3 and "no answer" in out

        change = tmp_path / "change.yaml"
        change.write_text("model:\n  score_threshold: 0.45\n")
        code, out = fleet("config", DEVICE, str(change))
        assert code == 0 and "version 1 applied" in out and runtime.detector.score_threshold == 0.45
        change.write_text("cameras:\n  - name: front\n    source: demo:1\n    fps: 0\n")
        code, out = fleet("config", "--all", str(change))
        assert code == 1 and "version 2 rejected; still running version 1" in out and "cameras[0].fps" in out
    finally:
        runtime.stop()
    code, out = fleet("list")
    assert code == 0 and f"{DEVICE}" in out and "offline" in out


def flood_while_blocked(runtime: Runtime, fleet: FleetClient, count: int) -> None:
    """Block the command worker (as a slow model load does) and send `count` commands nobody waits for."""
    fleet.request(DEVICE, "set_config", json.dumps({"id": "slow", "args": {"config": {}}}), timeout=0.1)
    for n in range(count):
        fleet.client.publish(f"edge/{DEVICE}/cmd/ping", json.dumps({"id": f"p{n}"}), qos=1)


def test_a_flood_of_commands_waits_at_the_broker_and_the_desired_config_behind_it_is_applied(
        tmp_path: Path, short_clip: Path) -> None:
    # A broker that would send up to 100 unacknowledged messages (EMQX, HiveMQ allow many). The device's
    # Receive Maximum holds the flood at the broker while the worker is stuck; once it moves on, Mosquitto
    # 2.0 still sends past it, so some pings are answered busy, but the desired config is never dropped.
    broker = Mosquitto(tmp_path / "broker", extra_conf="max_inflight_messages 100\n").start()
    setup = Setup(tmp_path, short_clip, broker, FleetClient(MqttConfig(host="127.0.0.1", port=broker.port)))
    runtime = setup.start_device()
    try:
        with runtime._parts:
            flood_while_blocked(runtime, setup.fleet, 60)
            setup.fleet.client.publish(f"edge/{DEVICE}/config/desired",
                                       json.dumps({"version": 1, "config": {"telemetry": {"interval_s": 7}}}),
                                       qos=1, retain=True)
            wait_for(lambda: runtime.channel.counts["received"] >= 20, what="commands arriving")
            assert runtime.channel.counts["received"] <= 33, "the Receive Maximum holds the rest at the broker"
        wait_for(lambda: runtime.config_service.applied_version == 1, what="the desired config applied")
        assert runtime.telemetry.interval_s == 7
        wait_for(lambda: runtime.channel.counts["received"] >= 62, what="every command delivered in the end")
    finally:
        runtime.stop()
        setup.fleet.close()
        broker.stop()


def test_a_desired_config_that_finds_the_queue_full_waits_in_its_own_slot(setup: Setup) -> None:
    import paho.mqtt.client as mqtt

    from agent.control.command_channel import QUEUE_SIZE

    runtime = Runtime(validate_config(device_settings(setup.tmp_path, setup.clip, setup.broker.port)))
    channel = runtime.channel  # not started yet: nothing drains its queue, as when its worker is stuck

    def message(topic: str, body: dict) -> mqtt.MQTTMessage:
        msg = mqtt.MQTTMessage(topic=topic.encode())
        msg.payload, msg.qos = json.dumps(body).encode(), 1
        return msg

    for n in range(QUEUE_SIZE * 3):  # e.g. redeliveries after a reconnect on top of what was queued
        channel._on_message(message(f"edge/{DEVICE}/cmd/ping", {"id": f"p{n}"}), 0)
    assert channel.counts["busy"] > 0
    for version in (1, 2):  # the newer supersedes the older while both wait
        channel._on_message(message(f"edge/{DEVICE}/config/desired",
                                    {"version": version, "config": {"telemetry": {"interval_s": 5 + version}}}), 0)
    runtime.start()
    try:
        wait_for(lambda: runtime.config_service.applied_version == 2, what="the waiting desired config applied")
        assert runtime.telemetry.interval_s == 7 and channel.counts["desired_superseded"] == 1
    finally:
        runtime.stop()


def test_forgetting_a_device_clears_what_it_left_retained(setup: Setup) -> None:
    """bench-sync's throw-away devices must not stay in `fleet list` for ever."""
    for leaf in ("status", "telemetry"):
        setup.fleet.client.publish(f"edge/bench-x/{leaf}", json.dumps({"online": True}), qos=1,
                                   retain=True).wait_for_publish(10)
    assert [d["device"] for d in setup.fleet.devices()] == ["bench-x"]
    setup.fleet.forget("bench-x")
    assert setup.fleet.devices() == [] and setup.fleet.telemetry("bench-x") is None
