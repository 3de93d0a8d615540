"""Store-and-forward: drains the outbox to the broker, deleting rows only on PUBACK.

One sender thread hands paho at most `window` messages at a time. Acks arrive
on paho's network thread and are only queued there (paho holds its own lock
while calling back, so taking ours there could deadlock); this thread matches
them to outbox rows and deletes, buries or releases those rows. Detections are
batched per camera at send time, capped by count, bytes and age.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import dataclass

from agent.backoff import Backoff
from agent.config import MqttConfig
from agent.measure import LatencyWindow
from agent.store.db import connect
from agent.store.object_events import KIND_PREFIX as OBJECT_EVENTS
from agent.store.outbox import DETECTION, TELEMETRY, Outbox, OutboxRow
from agent.sync.mqtt_link import MqttLink, PacketTooLarge

log = logging.getLogger(__name__)

# MQTT v5 reason codes that will not get better by sending again.
PERMANENT_FAILURES = {
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x95: "packet too large",
    0x99: "payload format invalid",
}
TRANSIENT_ATTEMPTS = 10  # refusals that may pass (0x80, 0x83, 0x97 quota exceeded) before a row is buried
# A message is sent again when no PUBACK at all came for this long (nor for 3x the time the measured ack rate
# needs to drain what is in flight): on a slow link that still acknowledges, nothing is resent.
INFLIGHT_TIMEOUT_S = 60.0
DRAIN_TARGET_S = 10.0  # bytes in flight at most: what the measured ack rate drains in this time
MIN_BYTES_IN_FLIGHT = 256 * 1024  # ... but never less than this, so a rate measured when idle cannot choke it
FETCH = 2000  # outbox rows read per pass
OTHERS_IN_FLIGHT = 2  # window slots left to the link's other messages (birth, answers, reports)


@dataclass
class _InFlight:
    seqs: list[int]
    sent_mono: float
    created_ms: list[int]  # capture time of each detection (creation time of other rows)
    size: int  # payload bytes


def body_key(kind: str) -> str:
    """The envelope's key for a reading: `telemetry`, or `event` for every `events/<kind>`."""
    return "event" if kind.startswith("events/") else kind


class Syncer:
    def __init__(self, link: MqttLink, db_path, config: MqttConfig) -> None:
        self.link = link
        self.config = config
        self._db_path = db_path
        self._acks: collections.deque[tuple[int, int]] = collections.deque()  # filled by paho's thread
        self._inflight: dict[int, _InFlight] = {}
        self._busy: set[int] = set()  # seqs in flight
        self._cursor = 0  # highest seq handed to paho; rows given up on reset it
        self._first_seen: dict[int, float] = {}  # head seq of a batch still gathering → monotonic time first seen
        self._refusals = Backoff(0.05, 2.0)  # paho refusing publishes: wait longer each pass, never spin
        self._broker_refusals = Backoff(0.5, 30.0)  # the broker refusing for now: sending pauses, growing
        self._hold_until = 0.0  # monotonic: no sending before this
        self._rescan = threading.Event()  # dead letters were requeued: look again from the oldest row
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sync", daemon=True)
        self.seq = 0  # per boot, in every message with boot_id
        self._seq_lock = threading.Lock()  # readings sent around the outbox take a seq from another thread
        self.direct_published = 0
        self.direct_dropped = 0
        self.messages_acked = 0
        self.rows_acked = 0
        self.dead_letters = 0
        self.retries = 0
        self.last_publish_error: str | None = None
        self.ack_rate: float | None = None  # bytes per second the broker acknowledges (moving average)
        self._last_ack_mono = 0.0
        self._bytes_in_flight = 0
        self.peak_in_flight = 0
        self.puback_latency_ms = LatencyWindow(4096)
        self.capture_to_puback_ms = LatencyWindow(16384, stage="capture_to_puback")
        link.on_publish = self._on_publish
        link.on_connected.append(self._wake.set)

    # -- wiring -------------------------------------------------------------------
    def _on_publish(self, mid: int, reason: int) -> None:
        self._acks.append((mid, reason))
        self._wake.set()

    def notify(self) -> None:
        """New rows were committed."""
        self._wake.set()

    def rescan(self) -> None:
        """Rows behind the cursor became pending again (dead letters requeued)."""
        self._rescan.set()
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    # -- the sender ---------------------------------------------------------------
    def _open_outbox(self) -> bool:
        """Wait for the store's database (it may not open at start: see agent.store.store); False: stopping."""
        while not self._stop.is_set():
            db = None
            try:
                db = connect(self._db_path)
                self.outbox = Outbox(db)
                self.outbox.counts()  # the tables exist: the store made or migrated the file
                return True
            except Exception as exc:
                if db is not None:
                    db.conn.close()
                self.last_publish_error = f"outbox unavailable: {exc}"
                self._acks.clear()  # acks of readings published around the store: nothing to settle
                self._stop.wait(1.0)
        return False

    def _run(self) -> None:
        if not self._open_outbox():
            return
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    self._settle_acks()
                    self._expire()
                    wait = self._send() if self.link.connected.is_set() else 0.5
                except Exception as exc:  # e.g. database busy beyond its timeout: retry shortly
                    self.last_publish_error = f"{type(exc).__name__}: {exc}"
                    log.exception("sync pass failed")
                    wait = 1.0
                self._wake.wait(wait)
            self._settle_acks()
        finally:
            self.outbox.db.conn.close()

    def _settle_acks(self) -> None:
        done: list[int] = []
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        acked_bytes, first_sent = 0, now
        while self._acks:
            mid, reason = self._acks.popleft()
            flight = self._inflight.pop(mid, None)
            if flight is None:
                continue  # an ack for a message we already gave up on: it will be sent again anyway
            self._busy.difference_update(flight.seqs)
            self._bytes_in_flight -= flight.size
            acked_bytes += flight.size
            first_sent = min(first_sent, flight.sent_mono)
            if reason < 0x80:
                self._broker_refusals.reset()
                done.extend(flight.seqs)
                self.messages_acked += 1
                self.puback_latency_ms.add((now - flight.sent_mono) * 1000)
                self.capture_to_puback_ms.extend([now_ms - c for c in flight.created_ms])
            elif reason in PERMANENT_FAILURES:
                self._bury(flight.seqs, PERMANENT_FAILURES[reason])
            else:
                self.retries += 1
                self._cursor = 0  # released: rescan from the oldest row
                self._hold_until = now + self._broker_refusals.next_delay()
                buried = self.outbox.refused(flight.seqs, f"broker kept answering 0x{reason:02x}", TRANSIENT_ATTEMPTS)
                self.dead_letters += buried
                self.last_publish_error = f"broker answered reason code 0x{reason:02x}; will retry" + \
                    (f" ({buried} rows out of attempts kept as dead letters)" if buried else "")
        if acked_bytes:
            self._measure_acks(acked_bytes, first_sent, now)
        if done:
            self.outbox.acknowledge(done)
            self.rows_acked += len(done)

    def _bury(self, seqs: list[int], reason: str) -> None:
        self.last_publish_error = f"broker refused a message: {reason}"
        self.outbox.bury(seqs, reason)
        self.dead_letters += len(seqs)  # counted once stored: never more than the outbox holds
        log.error("sync: %s; %d rows kept as dead letters", self.last_publish_error, len(seqs))

    def _measure_acks(self, acked_bytes: int, first_sent: float, now: float) -> None:
        """The link's drain rate, once per pass: the bytes acknowledged since the previous pass with acks,
        over the time since then (or since the oldest of them was sent, if the link was idle before)."""
        elapsed = max(now - max(self._last_ack_mono, first_sent), 1e-3)
        sample = acked_bytes / elapsed
        self.ack_rate = sample if self.ack_rate is None else 0.8 * self.ack_rate + 0.2 * sample
        self._last_ack_mono = now

    def window(self) -> int:
        """Messages this sender may have in flight: the link's window less a few slots for the birth,
        answers and reports, which paho sends beside it (and all at once after a reconnect)."""
        return max(1, self.link.send_window - OTHERS_IN_FLIGHT)

    def expiry_s(self) -> float:
        """How long without any PUBACK before what is in flight is given up on and sent again."""
        if not self.ack_rate:
            return INFLIGHT_TIMEOUT_S
        return max(INFLIGHT_TIMEOUT_S, 3 * self._bytes_in_flight / self.ack_rate)

    def byte_budget(self) -> float:
        """Payload bytes that may be in flight: about DRAIN_TARGET_S of the measured ack rate."""
        if not self.ack_rate:
            return float("inf")
        return max(MIN_BYTES_IN_FLIGHT, self.ack_rate * DRAIN_TARGET_S)

    def _expire(self) -> None:
        now = time.monotonic()
        if now - self._last_ack_mono <= self.expiry_s():
            return  # acks are flowing: whatever waits is queued behind them, not lost
        cutoff = now - self.expiry_s()
        for mid in [m for m, f in self._inflight.items() if f.sent_mono < cutoff]:
            flight = self._inflight.pop(mid)
            self._busy.difference_update(flight.seqs)
            self._bytes_in_flight -= flight.size
            self.retries += 1
            self._cursor = 0

    def _send(self) -> float:
        """Publish what fits in the window; returns how long to wait before the next pass."""
        if self._rescan.is_set():
            self._rescan.clear()
            self._cursor = 0
        if (held := self._hold_until - time.monotonic()) > 0:
            return held
        room = self.window() - len(self._inflight)
        budget = self.byte_budget()
        if room <= 0 or self._bytes_in_flight >= budget:
            return 0.5
        fetched = self.outbox.pending(self._cursor, FETCH)
        rows = [r for r in fetched if r.seq not in self._busy]
        if not rows:
            if not self._inflight:  # idle: look from the oldest row next time (rows requeued by another process)
                self._cursor = 0
            return 0.5
        more_waiting = len(fetched) >= FETCH
        now_ms, now_mono = int(time.time() * 1000), time.monotonic()
        wait = 0.5
        left_behind: list[int] = []  # seqs not handed over this pass: the cursor must not pass them
        gathering: dict[int, float] = {}
        refused = False
        for topic, group in self._messages(rows):
            age_left = self._batch_age_left(group, now_ms, now_mono)
            ready = group[0].kind != DETECTION or self._is_full(group) or more_waiting or age_left <= 0
            if self._bytes_in_flight >= budget:
                room = 0  # the link drains no faster: more would only wait in paho's queue
            if room <= 0 or not ready or not self._publish(topic, group):
                left_behind.append(group[0].seq)
                if not ready:
                    gathering[group[0].seq] = self._first_seen.get(group[0].seq, now_mono)
                    wait = min(wait, age_left / 1000)  # let it gather companions a little longer
                elif room > 0:
                    refused = True  # paho will not take more now: stop this pass
                    break
                continue
            room -= 1
        self._first_seen = gathering  # only batches still gathering: bounded by the cameras
        if left_behind:
            self._cursor = min(self._cursor, min(left_behind) - 1)
        if refused:
            return self._refusals.next_delay()
        self._refusals.reset()
        return 0.0 if (more_waiting and room > 0) else max(0.0, wait)

    def _batch_age_left(self, group: list[OutboxRow], now_ms: int, now_mono: float) -> float:
        """Milliseconds a detection batch may still wait for companions.

        Capture times are wall clock (data); the wait is also bounded on the monotonic clock from when
        this batch was first seen, so a clock stepped back (NTP on a Jetson without RTC) cannot hold it.
        """
        oldest = min(r.created_ms for r in group)
        by_wall = self.config.batch.max_age_ms - (now_ms - oldest)
        by_mono = self.config.batch.max_age_ms - (now_mono - self._first_seen.get(group[0].seq, now_mono)) * 1000
        return min(by_wall, by_mono)

    def _is_full(self, group: list[OutboxRow]) -> bool:
        return len(group) >= self.config.batch.max_count or \
            sum(r.bytes for r in group) >= self._byte_cap() - 1024

    def _byte_cap(self) -> int:
        cap = self.config.batch.max_bytes
        if self.link.max_packet_size:
            cap = min(cap, self.link.max_packet_size - 512)  # room for topic and headers
        return max(cap, 1024)

    def _messages(self, rows: list[OutboxRow]) -> list[tuple[str, list[OutboxRow]]]:
        """Group rows into messages: detections per camera (capped), anything else alone."""
        out: list[tuple[str, list[OutboxRow]]] = []
        open_groups: dict[str, tuple[list[OutboxRow], list[int]]] = {}  # camera -> (rows, [payload bytes])
        cap = self._byte_cap()
        for row in rows:
            if row.kind != DETECTION:
                out.append((f"{self.link.base}/{row.kind}", [row]))
                continue
            group, size = open_groups.get(row.camera or "", (None, [0]))
            if group is None or len(group) >= self.config.batch.max_count or size[0] + row.bytes > cap:
                group, size = open_groups[row.camera or ""] = ([], [0])
                out.append((f"{self.link.base}/detections/{row.camera}", group))
            group.append(row)
            size[0] += row.bytes + 1  # the comma joining payloads
        return out

    def publish_now(self, kind: str, payload: str) -> bool:
        """A health reading sent around the outbox (the store cannot take it): latest only, not kept.

        Same topic and envelope as through the outbox, with `"direct":true`; False if not connected.
        """
        if not self.link.connected.is_set():
            self.direct_dropped += 1
            return False
        with self._seq_lock:
            self.seq += 1
            seq = self.seq
        payload = self._message(kind, payload, seq, direct=True)
        try:
            mid = self.link.publish(f"{self.link.base}/{kind}", payload, retain=kind == TELEMETRY)
        except PacketTooLarge as exc:
            self.last_publish_error = str(exc)
            mid = None
        if mid is None:
            self.direct_dropped += 1
            return False
        self.direct_published += 1
        return True

    def _envelope(self, seq: int | None) -> str:
        return (f'{{"v":1,"device":{json.dumps(self.link.device_id)},"boot_id":"{self.link.boot_id}",'
                + ("" if seq is None else f'"seq":{seq},'))

    def _message(self, kind: str, payload: str, seq: int, direct: bool = False) -> str:
        """A reading or event in the envelope. Object events are flat: their fields beside the envelope's, and
        their own `seq` (the event's message count) instead of the boot's."""
        flag = '"direct":true,' if direct else ""
        if kind.startswith(OBJECT_EVENTS):
            return self._envelope(None) + flag + payload[1:]
        return self._envelope(seq) + flag + f'"{body_key(kind)}":{payload}}}'

    def _publish(self, topic: str, group: list[OutboxRow]) -> bool:
        with self._seq_lock:
            self.seq += 1
            seq = self.seq
        if group[0].kind == DETECTION:  # the stored payloads are JSON already: join, do not re-encode
            payload = self._envelope(seq) + f'"camera":{json.dumps(group[0].camera)},"detections":[' + \
                ",".join(r.payload for r in group) + "]}"
        else:
            payload = self._message(group[0].kind, group[0].payload, seq)
        try:
            mid = self.link.publish(topic, payload, retain=group[0].kind == TELEMETRY)  # latest reading for `fleet`
        except PacketTooLarge as exc:  # as the broker would answer 0x95, without losing the connection
            self._bury([r.seq for r in group], str(exc))
            return True  # handled: the pass goes on
        if mid is None:
            self.last_publish_error = "paho refused the message (not connected or queue full)"
            return False
        self._inflight[mid] = _InFlight([r.seq for r in group], time.monotonic(), [r.created_ms for r in group],
                                        len(payload))
        self._bytes_in_flight += len(payload)
        self.peak_in_flight = max(self.peak_in_flight, len(self._inflight))
        self._busy.update(r.seq for r in group)
        self._cursor = max(self._cursor, max(r.seq for r in group))
        return True

    def stats(self) -> dict:
        return {
            "connected": self.link.connected.is_set(), "session": self.link.session,
            "in_flight": len(self._inflight), "in_flight_bytes": self._bytes_in_flight,
            "window": self.window(), "peak_in_flight": self.peak_in_flight,
            "ack_rate_kbit_s": None if self.ack_rate is None else round(self.ack_rate * 8 / 1000, 1),
            "resend_after_s": round(self.expiry_s(), 1), "messages_acked": self.messages_acked,
            "rows_acked": self.rows_acked, "dead_letters": self.dead_letters, "retries": self.retries,
            "direct_published": self.direct_published, "direct_dropped": self.direct_dropped,
            "publish_to_puback_ms": _p50_p95(self.puback_latency_ms),
            "capture_to_puback_ms": _p50_p95(self.capture_to_puback_ms),
            "last_error": self.last_publish_error or self.link.last_error,
        }


def _p50_p95(window: LatencyWindow) -> dict[str, float | None]:
    return {q: None if v is None else round(v, 1) for q, v in zip(("p50", "p95"), window.percentiles(50, 95))}
