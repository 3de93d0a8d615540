"""The operator's side: list devices, read telemetry, send commands, publish desired configs.

Everything goes through the broker, never to a device directly. Answers come
back on `<prefix>/<device>/response/<token>` (the token is this client's);
retained messages (status, telemetry, desired, reported) are read up to a
barrier: a message this client sends itself after subscribing, which the
broker delivers only after the retained ones before it.
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttConfig
from agent.sync.mqtt_link import describe_connect_error, new_client, no_delay

INBOX_SIZE = 100_000  # retained status/telemetry of a large fleet fit; beyond it messages are dropped, counted


class FleetError(Exception):
    pass


class FleetClient:
    def __init__(self, config: MqttConfig, prefix: str | None = None, timeout: float = 10.0) -> None:
        self.prefix = prefix or config.topic_prefix
        self.token = secrets.token_hex(8)
        self._answers: dict[bytes, queue.Queue[dict]] = {}
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=INBOX_SIZE)
        self.dropped = 0  # messages beyond INBOX_SIZE not yet read
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.client = new_client(config, f"fleet-{self.token}")
        self.client.on_connect = lambda c, u, f, rc, p: (not rc.is_failure) and self._connected.set()
        self.client.on_message = self._on_message
        try:
            self.client.connect(config.host, config.port, config.keepalive)
        except (OSError, ValueError) as exc:
            raise FleetError(f"{config.host}:{config.port}: {describe_connect_error(exc)}") from None
        no_delay(self.client)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise FleetError(f"{config.host}:{config.port}: no successful CONNACK within {timeout:g}s")
        self._subscribe(f"{self.prefix}/+/response/{self.token}", timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def forget(self, device: str, timeout: float = 10.0) -> None:
        """Clear what a device left retained at the broker (status, telemetry, config documents): a
        device that is gone for good (or a benchmark's throw-away one) no longer shows in `devices()`."""
        infos = [self.client.publish(f"{self.prefix}/{device}/{leaf}", b"", qos=1, retain=True)
                 for leaf in ("status", "telemetry", "config/reported", "config/desired")]
        for info in infos:
            info.wait_for_publish(timeout)

    # -- plumbing -------------------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        if "/response/" in msg.topic and correlation is not None:
            with self._lock:
                box = self._answers.get(bytes(correlation))
            if box is not None:
                try:
                    answer = json.loads(msg.payload)
                except (ValueError, RecursionError):
                    answer = {"ok": False, "error": {"code": "bad_answer", "message": "answer is not JSON"}}
                with contextlib.suppress(queue.Full):  # a second answer to one request is ignored
                    box.put_nowait(answer)
            return
        try:
            self._inbox.put_nowait((msg.topic, msg.payload))
        except queue.Full:
            self.dropped += 1

    def _subscribe(self, topic: str, timeout: float) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: done.set()
        self.client.subscribe(topic, qos=1)
        if not done.wait(timeout):
            raise FleetError(f"no SUBACK for {topic} within {timeout:g}s")

    def _drain_until(self, done, timeout: float) -> list[tuple[str, bytes]]:
        """Messages received until `done(topic, payload)`; FleetError after `timeout`."""
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                topic, payload = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise FleetError(f"the broker did not answer within {timeout:g}s") from None
            if done(topic, payload):
                return seen
            seen.append((topic, payload))

    def retained(self, topic_filter: str, timeout: float = 10.0, keep: bool = False) -> dict[str, Any]:
        """The retained messages under a filter, decoded (undecodable ones as None).

        keep: stay subscribed, so later messages on the filter can be waited for.
        """
        barrier = f"{self.prefix}/fleet/{self.token}/barrier"
        self._subscribe(topic_filter, timeout)
        self._subscribe(barrier, timeout)
        marker = secrets.token_hex(8).encode()
        self.client.publish(barrier, marker, qos=1)
        seen = self._drain_until(lambda t, p: t == barrier and p == marker, timeout)
        self.client.unsubscribe(barrier)
        if not keep:
            self.client.unsubscribe(topic_filter)
        out: dict[str, Any] = {}
        for topic, payload in seen:
            if mqtt.topic_matches_sub(topic_filter, topic):
                try:
                    out[topic] = json.loads(payload) if payload else None
                except ValueError:
                    out[topic] = None
        return out

    # -- commands -------------------------------------------------------------------
    def request(self, device: str, name: str, payload: bytes | str, timeout: float = 10.0,
                retain: bool = False) -> dict | None:
        """Publish to a device's command topic with a response topic; the answer, or None on timeout."""
        correlation = secrets.token_bytes(16)
        box: queue.Queue[dict] = queue.Queue(maxsize=4)
        with self._lock:
            self._answers[correlation] = box
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{self.prefix}/{device}/response/{self.token}"
        props.CorrelationData = correlation
        props.MessageExpiryInterval = max(1, int(timeout))
        try:
            self.client.publish(f"{self.prefix}/{device}/cmd/{name}", payload, qos=1, retain=retain,
                                properties=props)
            try:
                return box.get(timeout=timeout)
            except queue.Empty:
                return None
        finally:
            with self._lock:
                self._answers.pop(correlation, None)

    def command(self, device: str, name: str, args: dict[str, Any] | None = None, timeout: float = 10.0,
                cmd_id: str | None = None) -> dict | None:
        body = {"id": cmd_id or uuid.uuid4().hex, "args": args or {},
                "expires_at": int((time.time() + timeout) * 1000)}
        return self.request(device, name, json.dumps(body), timeout)

    # -- devices and config ---------------------------------------------------------
    def devices(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """One row per device that has a retained status: online, session, version, last seen."""
        status = self.retained(f"{self.prefix}/+/status", timeout)
        telemetry = self.retained(f"{self.prefix}/+/telemetry", timeout)
        rows = []
        for topic, body in sorted(status.items()):
            if not isinstance(body, dict):
                continue
            device = topic.split("/")[-2]
            reading = telemetry.get(f"{self.prefix}/{device}/telemetry") or {}
            seen = max(body.get("ts_ms") or 0, (reading.get("telemetry") or {}).get("ts_ms") or 0)
            rows.append({"device": device, "online": bool(body.get("online")), "session": body.get("session"),
                         "version": body.get("version"), "last_seen_ms": seen or None})
        return rows

    def telemetry(self, device: str, timeout: float = 10.0) -> dict[str, Any] | None:
        body = self.retained(f"{self.prefix}/{device}/telemetry", timeout).get(f"{self.prefix}/{device}/telemetry")
        return body.get("telemetry") if isinstance(body, dict) else None

    def publish_desired(self, device: str, config: dict[str, Any], timeout: float = 30.0) \
            -> tuple[int, dict[str, Any] | None]:
        """Publish the next desired version (retained); the version and the device's report (None: none yet)."""
        base = f"{self.prefix}/{device}/config"
        known = self.retained(f"{base}/+", timeout, keep=True)
        desired, reported = known.get(f"{base}/desired") or {}, known.get(f"{base}/reported") or {}
        version = 1 + max(_int(desired.get("version")), _int(reported.get("version")),
                          _int(reported.get("applied_version")))
        self.client.publish(f"{base}/desired", json.dumps({"version": version, "config": config}), qos=1,
                            retain=True)

        found: list[dict[str, Any]] = []

        def is_report(topic: str, payload: bytes) -> bool:
            if topic == f"{base}/reported":
                try:
                    doc = json.loads(payload)
                except ValueError:
                    return False
                if isinstance(doc, dict) and doc.get("version") == version:
                    found.append(doc)
            return bool(found)

        try:
            self._drain_until(is_report, timeout)
        except FleetError:
            return version, None
        finally:
            self.client.unsubscribe(f"{base}/+")
        return version, found[0]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
