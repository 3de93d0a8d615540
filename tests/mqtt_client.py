"""A subscriber with a persistent session, as a fleet backend would run one."""

from __future__ import annotations

import json
import threading
from collections import Counter

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class Collector:
    """Counts detection ids (unique and duplicates) and keeps status messages."""

    def __init__(self, port: int, topic: str, client_id: str = "test-collector") -> None:
        self.ids: Counter[str] = Counter()
        self.status: list[dict] = []
        self.telemetry: list[dict] = []
        self.events: list[tuple[str, dict]] = []  # (topic, message) of events/<kind>
        self.other: list[tuple[str, dict]] = []  # (topic, message) of anything else (e.g. object counts)
        self.messages = 0
        self.seqs: set[int] = set()
        self.largest = 0  # bytes of the largest payload received
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # the broker keeps our queue while we or it are away
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.connect_async("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("collector could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a retained message cleared
            return
        body = json.loads(msg.payload)
        with self._lock:
            self.messages += 1
            self.largest = max(self.largest, len(msg.payload))
            if msg.topic.endswith("/status"):
                self.status.append(body)
            if msg.topic.endswith("/telemetry"):
                self.telemetry.append(body)
            if "/events/" in msg.topic:
                self.events.append((msg.topic, body))
            elif not msg.topic.endswith(("/status", "/telemetry")) and "/detections/" not in msg.topic:
                self.other.append((msg.topic, body))
            if "seq" in body and "/events/objects/" not in msg.topic:  # object events count their own seq
                self.seqs.add(body["seq"])
            for det in body.get("detections", []):
                self.ids[det["id"]] += 1

    def unique(self) -> set[str]:
        with self._lock:
            return set(self.ids)

    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self.ids.values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
