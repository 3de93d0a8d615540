"""The outbox: the only durable queue between the store and the broker.

A row is written in the same transaction as what it carries, and deleted only
after the broker's PUBACK with a success code (DESIGN invariant 3). Rows the
broker refuses for good (not authorised, too large, bad topic or payload) are
kept as dead letters, counted and reported, never silently deleted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from agent.store.db import bump_counter, connect, transaction

log = logging.getLogger(__name__)

DETECTION = "detection"
TELEMETRY = "telemetry"


def detection_payload(row: dict) -> str:
    return json.dumps({
        "id": row["id"], "camera": row["camera"], "ts_ms": row["ts_ms"], "frame": row["frame"],
        "label": row["label"], "class_id": row["class_id"], "score": round(row["score"], 4),
        "box": [round(row[k], 1) for k in ("x1", "y1", "x2", "y2")], "track_id": row.get("track_id"),
    }, separators=(",", ":"))


def enqueue(db: sqlite_utils.Database, messages: Iterable[tuple[str, str | None, str, int]]) -> None:
    """Queue (kind, camera, payload, created_ms) messages; call inside the transaction that stores what
    they carry."""
    db.conn.executemany("INSERT INTO outbox(kind, camera, payload, bytes, created_ms) VALUES (?, ?, ?, ?, ?)",
                        [(kind, camera, p, len(p), created) for kind, camera, p, created in messages])


def enqueue_detections(db: sqlite_utils.Database, rows: Iterable[dict]) -> None:
    """Queue detections for sync; call inside the transaction that stores them.

    `created_ms` is the frame's capture time, so ages and capture→PUBACK latency
    are measured from the camera, not from the commit."""
    enqueue(db, [(DETECTION, r["camera"], detection_payload(r), r["ts_ms"]) for r in rows])


def trim_outbox(db: sqlite_utils.Database, max_rows: int, max_bytes: int | None = None) -> int:
    """Keep at most `max_rows` rows and `max_bytes` of payload: health readings go first, then detections,
    then events (what operators act on), oldest first; what goes is counted (`outbox_trimmed`)."""
    rows, size = db.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM outbox").fetchone()
    excess_rows = max(0, rows - max_rows)
    excess_bytes = max(0, size - max_bytes) if max_bytes is not None else 0
    if not (excess_rows or excess_bytes):
        return 0
    victims: list[int] = []
    freed = 0
    order = db.execute("SELECT seq, bytes FROM outbox ORDER BY CASE WHEN kind = ? THEN 1 "
                       "WHEN kind LIKE 'events/%' THEN 2 ELSE 0 END, seq", (DETECTION,))
    for seq, nbytes in order:
        if len(victims) >= excess_rows and freed >= excess_bytes:
            break
        victims.append(seq)
        freed += nbytes
    with transaction(db):
        db.conn.executemany("DELETE FROM outbox WHERE seq = ?", [(v,) for v in victims])
        bump_counter(db, "outbox_trimmed", len(victims))
    log.warning("outbox over its cap: trimmed %d messages (health readings first, then the oldest detections, "
                "then events)",
                len(victims))
    return len(victims)


def next_session(db_path: Path) -> int:
    """Count one more broker session, durably; called on every connect (own connection)."""
    db = connect(db_path)
    try:
        with transaction(db):
            return bump_counter(db, "mqtt_session")
    finally:
        db.conn.close()


def requeue_dead_letters(db_path: Path) -> int:
    """Dead letters pending again, on a connection of its own (the agent's command, `store requeue`)."""
    db = connect(db_path)
    try:
        return Outbox(db).requeue_dead()
    finally:
        db.conn.close()


def enqueue_readings(db: sqlite_utils.Database, readings: list[tuple[str, str]]) -> None:
    """Queue health readings (kind, JSON payload); call inside a transaction."""
    if readings:
        now = int(time.time() * 1000)
        enqueue(db, [(kind, None, p, now) for kind, p in readings])


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    kind: str
    camera: str | None
    payload: str
    bytes: int
    created_ms: int


class Outbox:
    """The sync side of the outbox, on its own connection (the store's writer has another)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def pending(self, after_seq: int, limit: int) -> list[OutboxRow]:
        """Live rows past `after_seq`, oldest first."""
        cur = self.db.execute(
            "SELECT seq, kind, camera, payload, bytes, created_ms FROM outbox "
            "WHERE dead = 0 AND seq > ? ORDER BY seq LIMIT ?", (after_seq, limit),
        )
        return [OutboxRow(*r) for r in cur.fetchall()]

    def acknowledge(self, seqs: list[int]) -> None:
        """The broker has them: delete (one transaction for all)."""
        with transaction(self.db):
            self.db.conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def bury(self, seqs: list[int], reason: str) -> None:
        """The broker refused them for good: keep them as dead letters."""
        with transaction(self.db):
            self.db.conn.executemany("UPDATE outbox SET dead = 1, error = ? WHERE seq = ?",
                                     [(reason, s) for s in seqs])

    def refused(self, seqs: list[int], reason: str, max_attempts: int) -> int:
        """The broker refused them with a code that may pass: count an attempt; bury those out of attempts.

        Returns how many were buried."""
        with transaction(self.db):
            self.db.conn.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?",
                                     [(s,) for s in seqs])
            marks = ",".join("?" * len(seqs))
            return self.db.execute(
                f"UPDATE outbox SET dead = 1, error = ? WHERE seq IN ({marks}) AND attempts >= ?",
                (f"{reason} ({max_attempts} attempts)", *seqs, max_attempts)).rowcount

    def requeue_dead(self) -> int:
        """Dead letters become pending again (the ACL or device id was fixed); how many."""
        with transaction(self.db):
            return self.db.execute("UPDATE outbox SET dead = 0, error = NULL, attempts = 0 WHERE dead = 1").rowcount

    def counts(self) -> dict:
        pending, dead, oldest = self.db.execute(
            "SELECT sum(dead = 0), sum(dead = 1), min(CASE WHEN dead = 0 THEN created_ms END) FROM outbox"
        ).fetchone()
        last = self.db.execute("SELECT error FROM outbox WHERE dead = 1 ORDER BY seq DESC LIMIT 1").fetchone()
        return {"outbox_pending": pending or 0, "outbox_dead": dead or 0, "outbox_oldest_ms": oldest,
                "outbox_dead_last_error": last[0] if last else None}
