"""The MQTT connection: paho-mqtt 2.x, MQTT v5, QoS 1, birth message and Last Will.

One thread owns the paho network loop and reconnects with exponential backoff
and full jitter. paho's session lives in memory only; durability is the
outbox's job (agent.sync.sync). The broker keeps the device's session (its command
subscriptions and commands sent while it was away) for `session_expiry_s`.
Incoming messages are acknowledged by their handler once handled (manual
acks), so a command the agent did not finish is delivered again.
Callbacks never raise into paho's thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import __version__
from agent.backoff import Backoff
from agent.config import MqttConfig

log = logging.getLogger(__name__)

MAX_INCOMING_PACKET = 1024 * 1024  # the broker drops anything larger meant for us


def build_tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """TLS ≥ 1.2 with verification; never an insecure mode."""
    if config.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(config.tls.ca_file) if config.tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls.cert_file and config.tls.key_file:
        ctx.load_cert_chain(str(config.tls.cert_file), str(config.tls.key_file))
    return ctx


class PacketTooLarge(Exception):
    """A message over the broker's Maximum Packet Size: sent, it would make the broker close the connection."""

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(f"packet too large for the broker ({size} bytes, its maximum is {limit})")


def packet_size(topic: str, payload: str | bytes, properties: Properties | None = None) -> int:
    """Bytes of a QoS 1 PUBLISH on the wire (MQTT v5: header, topic, packet id, properties, payload)."""
    props = len(properties.pack()) if properties is not None else 1
    body = 2 + len(topic.encode()) + 2 + props + len(payload.encode() if isinstance(payload, str) else payload)
    length_bytes = 1 if body < 128 else 2 if body < 16_384 else 3 if body < 2_097_152 else 4
    return 1 + length_bytes + body


class ClientSetupError(Exception):
    """The client cannot be set up: unreadable password file, CA, certificate or key."""


def new_client(config: MqttConfig, client_id: str) -> mqtt.Client:
    """A paho v2 / MQTT v5 client with the configured credentials and TLS."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if config.username is not None:
        try:
            client.username_pw_set(config.username, config.read_password())
        except OSError as exc:
            raise ClientSetupError(f"cannot read password_file: {exc.strerror or exc}") from exc
    try:
        tls = build_tls_context(config)
    except (OSError, ssl.SSLError) as exc:
        raise ClientSetupError(f"TLS set-up failed (CA, certificate or key file): {exc}") from exc
    if tls is not None:
        client.tls_set_context(tls)
    return client


class MqttLink:
    """Connects, announces itself (birth), and reports acks to whoever sends."""

    def __init__(self, config: MqttConfig, device_id: str, boot_id: str,
                 next_session: Callable[[], int]) -> None:
        self.config = config
        self.device_id = device_id
        self.boot_id = boot_id
        self.base = f"{config.topic_prefix}/{device_id}"
        self.status_topic = f"{self.base}/status"
        self._next_session = next_session
        self.session = 0
        self.connected = threading.Event()
        self.down_since: float | None = time.monotonic()  # monotonic: not connected since (None: connected)
        self.max_packet_size: int | None = None  # from the broker's CONNACK
        self.broker_receive_maximum: int | None = None  # from the broker's CONNACK
        self.send_window = config.window  # messages in flight at most: mqtt.window, or less if the broker says
        self.last_error: str | None = None
        self.connects = 0
        self.on_publish: Callable[[int, int], None] = lambda mid, rc: None
        self.on_connected: list[Callable[[], None]] = []  # quick hooks, run in the network thread
        self.on_message: Callable[[mqtt.MQTTMessage, int], None] | None = None  # (message, connection)
        self.subscriptions: list[str] = []  # QoS 1, renewed on every connect
        self.routes: dict[str, Callable[[mqtt.MQTTMessage], None]] = {}  # exact topics with a quick handler
        self.receive_maximum: int | None = None  # unacknowledged messages the broker may send us at once
        self.problems: Callable[[], list[str]] = lambda: []  # what is wrong, in words, for the birth message
        self._stop = threading.Event()
        self._closing = threading.Event()  # clean stop under way: do not reconnect
        self._backoff = Backoff(config.reconnect.initial_s, config.reconnect.max_s, full_jitter=True)
        self._retry_at = 0.0  # monotonic: no reconnect before this (a connect that failed half-way)
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self.client = self._make_client()

    # -- set-up -------------------------------------------------------------------
    def _status(self, online: bool) -> str:
        doc = {"v": 1, "online": online, "session": self.session, "boot_id": self.boot_id,
               "version": __version__, "device": self.device_id, "ts_ms": int(time.time() * 1000)}
        if online:
            try:
                doc["problems"] = self.problems()
            except Exception as exc:  # the birth goes out whatever the device's state
                doc["problems"] = [f"cannot list problems: {exc}"]
        return json.dumps(doc)

    def _make_client(self) -> mqtt.Client:
        client = new_client(self.config, self.device_id)
        client.suppress_exceptions = True  # our callbacks also catch everything; belt and braces
        client.max_queued_messages_set(self.config.window * 2)
        client.max_inflight_messages_set(self.config.window)
        client.will_set(self.status_topic, self._status(False), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.manual_ack_set(True)
        # Only the network thread writes to the socket: publishes and acks from other threads are queued
        # and wake its select() (paho writes from the caller's thread otherwise, without a lock).
        client.on_socket_register_write = lambda _client, _userdata, _sock: None
        return client

    # -- paho callbacks (network thread) -------------------------------------------
    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any,
                    properties: Properties | None) -> None:
        try:
            if reason.is_failure:
                self.last_error = f"broker refused the connection: {reason}"
                log.error("mqtt: %s", self.last_error)
                return
            no_delay(client)
            session_error = self._count_session()
            self.max_packet_size = getattr(properties, "MaximumPacketSize", None) if properties else None
            # The broker's Receive Maximum (HiveMQ 10, EMQX 32, Mosquitto max_inflight_messages): paho does
            # not apply it, and more unacknowledged messages than that is a protocol error.
            self.broker_receive_maximum = getattr(properties, "ReceiveMaximum", None) if properties else None
            self.send_window = min(self.config.window, self.broker_receive_maximum or self.config.window)
            # paho's setter refuses while connected (a doubt about 0 <-> n changes; this is always n > 0),
            # and its limit must cover answers and reports too, not only the syncer's window.
            client._max_inflight_messages = self.send_window
            client.publish(self.status_topic, self._status(True), qos=1, retain=True)  # birth before any data
            if self.subscriptions:  # retain as published: a handler can tell (and refuse) retained commands
                options = SubscribeOptions(qos=1, retainAsPublished=True)
                client.subscribe([(topic, options) for topic in self.subscriptions])
            self.connects += 1
            self.last_error = session_error
            self._backoff.reset()
            self.connected.set()
            self.down_since = None
            log.info("mqtt: connected to %s:%d (session %d)", self.config.host, self.config.port, self.session)
            for hook in self.on_connected:
                hook()
        except Exception:  # never stay half-connected (nothing subscribed, nothing sent): start over
            log.exception("mqtt: on_connect failed; reconnecting")
            self.connected.clear()
            self._retry_at = time.monotonic() + self._backoff.next_delay()
            client.disconnect()

    def _count_session(self) -> str | None:
        """One more session, from the database; if it cannot be written, go on counting in memory."""
        try:
            self.session = self._next_session()
            return None
        except Exception as exc:  # a broken store must not keep the fleet from seeing the device
            self.session += 1
            log.error("mqtt: session counter not stored (%s); session %d counted in memory", exc, self.session)
            return f"session counter not stored: {exc}"

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any,
                       _properties: Properties | None) -> None:
        self.connected.clear()
        if self.down_since is None:
            self.down_since = time.monotonic()
        if not self._closing.is_set():
            self.last_error = f"disconnected: {reason}"
            log.warning("mqtt: %s", self.last_error)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any,
                    _properties: Properties | None) -> None:
        try:
            self.on_publish(mid, int(getattr(reason, "value", reason)))
        except Exception:
            log.exception("mqtt: on_publish handler failed")

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            route = self.routes.get(message.topic)
            if route is not None:  # e.g. Home Assistant's status: handled at once, acknowledged
                client.ack(message.mid, message.qos)
                route(message)
            elif self.on_message is None:
                client.ack(message.mid, message.qos)
            else:
                self.on_message(message, self.connects)
        except Exception:
            log.exception("mqtt: message handler failed")

    def ack(self, message: mqtt.MQTTMessage, connection: int) -> None:
        """Acknowledge a handled message, if it came on the connection that is still open.

        After a reconnect the broker sends unacknowledged messages again, under new ids.
        """
        if message.qos > 0 and connection == self.connects and self.connected.is_set():
            self.client.ack(message.mid, message.qos)

    # -- connection loop ----------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._socket_open():
                if self._closing.is_set():
                    return
                if (pause := self._retry_at - time.monotonic()) > 0:
                    self._stop.wait(pause)
                    continue
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.config.session_expiry_s
                props.MaximumPacketSize = MAX_INCOMING_PACKET
                if self.receive_maximum:
                    props.ReceiveMaximum = self.receive_maximum
                try:
                    self.client.connect(self.config.host, self.config.port, self.config.keepalive,
                                        clean_start=False, properties=props)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self.last_error = describe_connect_error(exc)
                    delay = self._backoff.next_delay()
                    log.info("mqtt: %s; retrying in %.1fs", self.last_error, delay)
                    self._stop.wait(delay)
                    continue
            rc = self.client.loop(timeout=0.05)
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                self.connected.clear()
                self._stop.wait(self._backoff.next_delay())

    def _socket_open(self) -> bool:
        return self.client.socket() is not None

    def publish(self, topic: str, payload: str | bytes, retain: bool = False,
                properties: Properties | None = None) -> int | None:
        """Hand a QoS 1 message to paho; its mid, or None if paho refused it now.

        Raises PacketTooLarge for a message the broker said it does not take (CONNACK).
        """
        limit = self.max_packet_size
        if limit is not None and (size := packet_size(topic, payload, properties)) > limit:
            raise PacketTooLarge(size, limit)
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        return info.mid if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def stop(self, timeout: float = 1.0) -> None:
        """Say goodbye (retained offline status), disconnect, end the loop; never raises.

        When the goodbye cannot be delivered in time (paho's queue is full, the link stalls or just
        dropped), the DISCONNECT asks the broker to publish the Last Will, which says the same.
        """
        deadline = time.monotonic() + timeout
        self._closing.set()
        if self.connected.is_set():
            info = self.client.publish(self.status_topic, self._status(False), qos=1, retain=True)
            said_goodbye = False
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:  # else is_published() raises: nothing to wait for
                while not (said_goodbye := info.is_published()) and time.monotonic() < deadline \
                        and self._thread.is_alive():
                    time.sleep(0.01)  # the network thread delivers it; nothing to wait on but its flag
            will = None if said_goodbye else ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
            self.client.disconnect(reasoncode=will)  # queued; the loop below still runs to send it
            while self._socket_open() and time.monotonic() < deadline and self._thread.is_alive():
                time.sleep(0.01)
        self._stop.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))


def no_delay(client: mqtt.Client) -> None:
    """Small messages (commands, answers, acks) leave at once instead of waiting on Nagle's algorithm."""
    sock = client.socket()
    if sock is not None and hasattr(sock, "setsockopt"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def describe_connect_error(exc: BaseException) -> str:
    """The exact reason a connection failed: DNS, refused, TLS, timeout."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the broker's host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on that port?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "connection timed out"
    return f"cannot connect: {exc}"


def random_boot_id() -> str:
    return f"{random.getrandbits(64):016x}"




def check_connection(config: MqttConfig, client_id: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Connect once and say exactly what happened (for `edge-agent mqtt-check`)."""
    try:
        client = new_client(config, f"{client_id}-check")
    except ClientSetupError as exc:
        return False, str(exc)
    tls = config.tls is not None
    answer: list[str] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.append(str(reason))
    target = f"{config.host}:{config.port}"
    # A broker that makes the certificate's CN the client id (provisioning/mosquitto) gives this check
    # the running agent's session: resume it and keep its expiry, never start it clean (that would drop
    # the commands waiting in it).
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = config.session_expiry_s
    try:
        client.connect(config.host, config.port, config.keepalive, clean_start=False, properties=props)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return False, f"{target}: {describe_connect_error(exc)}"
    deadline = time.monotonic() + timeout
    closed = False
    while not answer and time.monotonic() < deadline:
        if client.loop(timeout=0.1) not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            closed = True
            break
    client.disconnect()
    if not answer and closed:
        return False, (f"{target}: the broker closed the connection before answering "
                       "(does it require a client certificate, TLS, or other credentials?)")
    if not answer:
        return False, f"{target}: no answer to CONNECT within {timeout:g}s (not an MQTT broker, or TLS expected?)"
    if answer[0] != "Success":
        return False, f"{target}: broker refused the connection: {answer[0]}"
    return True, f"{target}: connected (MQTT v5{', TLS' if tls else ''})"
