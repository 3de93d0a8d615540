"""The example fleet broker (provisioning/mosquitto) as shipped: mutual TLS, identities, per-device ACL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig, TlsConfig, validate_config
from agent.fleet.fleet import FleetClient
from agent.runtime import Runtime
from agent.sync.mqtt_link import build_tls_context
from tests.broker import Mosquitto
from tests.certs import make_pki
from tests.helpers import wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "provisioning" / "mosquitto"


@dataclass
class Fleet:
    broker: Mosquitto
    pki: dict[str, Path]

    def tls(self, name: str) -> TlsConfig:
        return TlsConfig(ca_file=self.pki["ca.pem"], cert_file=self.pki[f"{name}.pem"],
                         key_file=self.pki[f"{name}.key"])

    def mqtt(self, name: str) -> MqttConfig:
        return MqttConfig(host="127.0.0.1", port=self.broker.port, tls=self.tls(name),
                          reconnect={"initial_s": 0.05, "max_s": 0.3})


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    pki = make_pki(tmp_path / "pki", clients=("dev-a", "dev-b", "operator"))
    conf = (EXAMPLE / "edge-fleet.conf").read_text()
    broker = Mosquitto(tmp_path / "broker", plain_listener=False)
    conf = conf.replace("/etc/mosquitto/certs/", f"{tmp_path / 'pki'}/") \
        .replace("/etc/mosquitto/edge-fleet.acl", str(EXAMPLE / "edge-fleet.acl")) \
        .replace("listener 8883", f"listener {broker.port} 127.0.0.1")
    broker.conf.write_text(broker.conf.read_text() + conf)
    broker.start()
    yield Fleet(broker, pki)
    broker.stop()


class RawClient:
    """A plain MQTT v5 client with a certificate, recording PUBACK/SUBACK reason codes and messages."""

    def __init__(self, fleet: Fleet, name: str, client_id: str | None = None, tls: TlsConfig | None = None) -> None:
        self.acks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects: list[int] = []  # reason codes of disconnects by the broker
        self._event = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"raw-{name}",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set_context(build_tls_context(
            MqttConfig(host="127.0.0.1", port=fleet.broker.port, tls=tls) if tls else fleet.mqtt(name)))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.append(rc.value)
        self.client.on_publish = lambda c, u, mid, rc, p: self._note(mid, rc.value)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._note(mid, rcs[0].value)
        self.client.on_message = lambda c, u, m: self._got(m.topic, m.payload)
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: connected.set()
        self.client.connect("127.0.0.1", fleet.broker.port)
        self.client.loop_start()
        assert connected.wait(10)

    def _note(self, mid: int, code: int) -> None:
        with self._event:
            self.acks[mid] = code
            self._event.notify_all()

    def _got(self, topic: str, payload: bytes) -> None:
        with self._event:
            self.messages.append((topic, payload))
            self._event.notify_all()

    def _reason(self, mid: int) -> int:
        with self._event:
            assert self._event.wait_for(lambda: mid in self.acks, 10), "no acknowledgement"
            return self.acks[mid]

    def publish(self, topic: str) -> int:
        return self._reason(self.client.publish(topic, b"{}", qos=1).mid)

    def subscribe(self, topic: str) -> int:
        return self._reason(self.client.subscribe(topic, qos=1)[1])

    def wait_message(self, topic: str) -> None:
        with self._event:
            assert self._event.wait_for(lambda: any(t == topic for t, _ in self.messages), 10), topic

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


NOT_AUTHORIZED = 0x87


def test_the_example_acl_confines_each_device_to_its_own_subtree(fleet: Fleet) -> None:
    dev_a, operator = RawClient(fleet, "dev-a"), RawClient(fleet, "operator")
    try:
        for topic in ("edge/dev-b/detections/cam", "edge/dev-b/status", "edge/dev-b/config/reported",
                      "edge/dev-b/response/x", "edge/dev-a/cmd/ping", "edge/dev-a/config/desired", "other/topic"):
            assert dev_a.publish(topic) == NOT_AUTHORIZED, topic
        for topic in ("edge/dev-a/detections/cam", "edge/dev-a/status", "edge/dev-a/telemetry",
                      "edge/dev-a/config/reported", "edge/dev-a/response/tok"):
            assert dev_a.publish(topic) < 0x80, topic  # 0 or 0x10 "no matching subscribers"
        # Mosquitto grants wildcard subscriptions and checks read access per message delivered.
        for topic in ("edge/dev-b/#", "edge/#", "edge/dev-a/cmd/+"):
            assert dev_a.subscribe(topic) < 0x80
        # The operator commands dev-b, then dev-a: by the time dev-a's arrives, dev-b's would have too.
        operator.publish("edge/dev-b/cmd/ping")
        operator.publish("edge/dev-b/config/desired")
        operator.publish("edge/dev-a/cmd/ping")
        dev_a.wait_message("edge/dev-a/cmd/ping")
        assert {t for t, _ in dev_a.messages} == {"edge/dev-a/cmd/ping"}
    finally:
        dev_a.close()
        operator.close()


def test_agent_and_operator_work_through_the_example_broker(fleet: Fleet, tmp_path: Path, short_clip: Path) -> None:
    runtime = Runtime(validate_config({
        "device": {"id": "dev-a"}, "cameras": [{"name": "cam", "source": str(short_clip), "fps": 10}],
        "storage": {"path": str(tmp_path / "data")}, "telemetry": {"interval_s": 1},
        "mqtt": fleet.mqtt("dev-a").model_dump(mode="json"),
    }))
    runtime.start()
    operator = FleetClient(fleet.mqtt("operator"))
    try:
        wait_for(runtime.link.connected.is_set, what="device connected over mutual TLS")
        assert operator.command("dev-a", "ping")["ok"]
        version, report = operator.publish_desired("dev-a", {"model": {"score_threshold": 0.5}})
        assert report is not None and report["status"] == "applied" and report["version"] == version
        wait_for(lambda: runtime.syncer.rows_acked > 20 and runtime.telemetry.readings > 0
                 and runtime.syncer.stats()["in_flight"] == 0, what="detections and telemetry accepted")
        assert runtime.syncer.dead_letters == 0  # everything the agent publishes is allowed
        wait_for(lambda: operator.telemetry("dev-a", timeout=2.0) is not None, what="retained telemetry")
        assert json.dumps(operator.devices()).count('"online": true') == 1
        assert operator.command("dev-b", "ping", timeout=0.5) is None  # nobody answers for dev-b
    finally:
        operator.close()
        runtime.stop()


def test_a_certificate_cannot_connect_under_another_devices_client_id(fleet: Fleet) -> None:
    """use_username_as_clientid: dev-a asking for dev-b's client id gets its own, so dev-b is not kicked
    off (which would also fire dev-b's Last Will)."""
    dev_b = RawClient(fleet, "dev-b", client_id="dev-b")
    impostor = RawClient(fleet, "dev-a", client_id="dev-b")
    try:
        assert dev_b.publish("edge/dev-b/status") < 0x80  # still connected, after the impostor's CONNACK
        assert impostor.publish("edge/dev-a/status") < 0x80 and impostor.publish("edge/dev-b/status") == 0x87
        assert dev_b.disconnects == []
    finally:
        impostor.close()
        dev_b.close()


def test_a_revoked_device_certificate_is_refused_and_the_others_still_connect(fleet: Fleet, tmp_path: Path) -> None:
    from agent.sync.mqtt_link import check_connection
    from tests.certs import pki

    assert check_connection(fleet.mqtt("dev-b"), "dev-b", timeout=5)[0]
    pki(tmp_path / "pki", "revoke", "dev-b")
    fleet.broker.stop()
    fleet.broker.start()  # the broker reads the CRL at start
    ok, message = check_connection(fleet.mqtt("dev-b"), "dev-b", timeout=5)
    assert not ok, message
    assert check_connection(fleet.mqtt("dev-a"), "dev-a", timeout=5)[0]


def test_fleet_pki_never_replaces_a_key_and_signs_requests_made_on_the_device(fleet: Fleet, tmp_path: Path) -> None:
    import subprocess

    from tests.certs import PKI_TOOL, pki

    ca_dir, device_dir = tmp_path / "pki", tmp_path / "device"
    key = (ca_dir / "dev-a.key").read_bytes()
    again = subprocess.run(["bash", str(PKI_TOOL), "client", str(ca_dir), "dev-a"], capture_output=True, text=True)
    assert again.returncode != 0 and "refusing to replace" in again.stderr
    assert (ca_dir / "dev-a.key").read_bytes() == key
    again = subprocess.run(["bash", str(PKI_TOOL), "ca", str(ca_dir)], capture_output=True, text=True)
    assert again.returncode != 0 and (ca_dir / "ca.pem").exists()

    no_ca = subprocess.run(["bash", str(PKI_TOOL), "client", str(tmp_path / "empty"), "dev-e"],
                           capture_output=True, text=True)
    assert no_ca.returncode != 0 and "no CA" in no_ca.stderr and not (tmp_path / "empty" / "dev-e.key").exists()

    pki(device_dir, "csr", "dev-c")  # on the device: the key stays there, only the request travels
    pki(ca_dir, "sign", "dev-c", str(device_dir / "dev-c.csr"))
    assert not (ca_dir / "dev-c.key").exists() and (ca_dir / "dev-c.pem").exists()
    wrong = subprocess.run(["bash", str(PKI_TOOL), "sign", str(ca_dir), "dev-d", str(device_dir / "dev-c.csr")],
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and "CN is 'dev-c'" in wrong.stderr  # a request signs only as its own name
    device = RawClient(fleet, "dev-c", tls=TlsConfig(ca_file=fleet.pki["ca.pem"], cert_file=ca_dir / "dev-c.pem",
                                                     key_file=device_dir / "dev-c.key"))
    try:
        assert device.publish("edge/dev-c/status") < 0x80 and device.publish("edge/dev-a/status") == 0x87
    finally:
        device.close()


def test_the_pki_tool_is_shellcheck_clean() -> None:
    import shutil
    import subprocess

    from tests.certs import PKI_TOOL

    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it)")
    done = subprocess.run(["shellcheck", str(PKI_TOOL)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
