"""Object events in the store: one row per event (its latest state and best snapshot), and its messages.

An event's row and its outbox message commit in one transaction, so what the broker hears is
what the store holds. `seq` counts an event's messages (new = 1, each update + 1, end last):
with `event_id` it makes every message unique, and a consumer keeps the highest. An event
left open by a crash or power cut is ended when the store opens again (`reason: restart`),
so every `new` gets its `end`.
"""

from __future__ import annotations

import json
import logging
import time

import sqlite_utils

from agent.pipeline.object_event import KIND_PREFIX as KIND_PREFIX  # sync finds the topic here
from agent.pipeline.object_event import ObjectEvent
from agent.store.db import bump_counter, transaction
from agent.store.outbox import enqueue

log = logging.getLogger(__name__)

def event_payload(e: ObjectEvent, has_snapshot: bool) -> str:
    body: dict = {
        "type": e.type, "event_id": e.event_id, "camera": e.camera, "label": e.label, "track_id": e.track_id,
        "start_ms": e.start_ms, "last_ms": e.last_ms, "top_score": round(e.top_score, 4),
        "score": round(e.score, 4), "box": [round(v, 1) for v in e.box], "stationary": e.stationary,
        "has_snapshot": has_snapshot, "seq": e.seq,
    }
    if e.type == "end":
        body["end_ms"] = e.last_ms
        body["reason"] = e.reason or "gone"
    if e.zones is not None:
        body["zones"] = e.zones
        body["entered_zones"] = e.entered_zones or []
    return json.dumps(body, separators=(",", ":"))


def save_events(db: sqlite_utils.Database, events: list[ObjectEvent], outbox: bool) -> None:
    """Write each event's state (and its message, with `outbox`); call inside the store's transaction."""
    for e in events:
        if e.type == "seen":
            db.execute("UPDATE object_events SET last_ms = ?, score = ?, top_score = ?, box = ? WHERE event_id = ?",
                       (e.last_ms, e.score, e.top_score, json.dumps(e.box), e.event_id))
            continue
        if e.snapshot is not None:
            has_snapshot = True
        else:
            row = db.execute("SELECT snapshot IS NOT NULL FROM object_events WHERE event_id = ?",
                             (e.event_id,)).fetchone()
            has_snapshot = bool(row and row[0])
        db.execute(
            "INSERT INTO object_events (event_id, camera, label, track_id, start_ms, end_ms, last_ms, top_score, "
            "score, box, stationary, zones, entered_zones, seq, type, snapshot, snapshot_ms, snapshot_score, "
            "snapshot_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(event_id) DO UPDATE SET end_ms = excluded.end_ms, last_ms = excluded.last_ms, "
            "top_score = excluded.top_score, score = excluded.score, box = excluded.box, "
            "stationary = excluded.stationary, zones = excluded.zones, entered_zones = excluded.entered_zones, "
            "seq = excluded.seq, type = excluded.type, "
            "snapshot = coalesce(excluded.snapshot, snapshot), snapshot_ms = coalesce(excluded.snapshot_ms, "
            "snapshot_ms), snapshot_score = coalesce(excluded.snapshot_score, snapshot_score), "
            "snapshot_bytes = CASE WHEN excluded.snapshot IS NULL THEN snapshot_bytes ELSE excluded.snapshot_bytes END",
            (e.event_id, e.camera, e.label, e.track_id, e.start_ms, e.last_ms if e.type == "end" else None,
             e.last_ms, e.top_score, e.score, json.dumps(e.box), int(e.stationary), json.dumps(e.zones),
             json.dumps(e.entered_zones), e.seq, e.type, e.snapshot,
             e.last_ms if e.snapshot is not None else None, e.snapshot_score,
             len(e.snapshot) if e.snapshot is not None else 0),
        )
        if outbox:
            enqueue(db, [(e.kind, e.camera, event_payload(e, has_snapshot), e.last_ms)])


def end_open_events(db: sqlite_utils.Database, outbox: bool) -> int:
    """End every event a previous run left open (crash, power cut): `end` at the time last seen."""
    rows = db.execute("SELECT event_id, camera, label, track_id, start_ms, last_ms, top_score, score, box, "
                      "stationary, zones, entered_zones, seq FROM object_events WHERE end_ms IS NULL").fetchall()
    if not rows:
        return 0
    events = [ObjectEvent("end", r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], tuple(json.loads(r[8])),
                          bool(r[9]), json.loads(r[10]), json.loads(r[11]), r[12] + 1, reason="restart")
              for r in rows]
    with transaction(db):
        save_events(db, events, outbox)
    log.info("store: ended %d object events left open by the previous run", len(events))
    return len(events)


def trim_events(db: sqlite_utils.Database, max_events: int, max_snapshot_bytes: int,
                max_age_hours: float | None, now_ms: int | None = None) -> int:
    """Retention: ended events beyond `max_events` or older than `max_age_hours` go, oldest first; snapshots
    beyond `max_snapshot_bytes` in all are dropped oldest first (the events stay). Counted."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    removed = 0
    with transaction(db):
        if max_age_hours is not None:
            cutoff = now_ms - int(max_age_hours * 3_600_000)
            removed += db.execute("DELETE FROM object_events WHERE end_ms IS NOT NULL AND end_ms < ?",
                                  (cutoff,)).rowcount
        ended = db.execute("SELECT count(*) FROM object_events WHERE end_ms IS NOT NULL").fetchone()[0]
        if ended > max_events:
            removed += db.execute(
                "DELETE FROM object_events WHERE event_id IN (SELECT event_id FROM object_events "
                "WHERE end_ms IS NOT NULL ORDER BY start_ms LIMIT ?)", (ended - max_events,)).rowcount
        total = db.execute("SELECT coalesce(sum(snapshot_bytes), 0) FROM object_events").fetchone()[0]
        dropped = 0
        if total > max_snapshot_bytes:
            freed = 0
            victims = []
            for event_id, nbytes in db.execute("SELECT event_id, snapshot_bytes FROM object_events "
                                               "WHERE snapshot_bytes > 0 ORDER BY start_ms"):
                if total - freed <= max_snapshot_bytes:
                    break
                victims.append(event_id)
                freed += nbytes
            db.conn.executemany("UPDATE object_events SET snapshot = NULL, snapshot_bytes = 0 WHERE event_id = ?",
                                [(v,) for v in victims])
            dropped = len(victims)
        if removed:
            bump_counter(db, "events_trimmed", removed)
        if dropped:
            bump_counter(db, "event_snapshots_trimmed", dropped)
    return removed


def drop_oldest_snapshots(db: sqlite_utils.Database, chunk: int) -> int:
    """Free space once no detection is left to trim: the oldest snapshots go (their events stay). Counted."""
    with transaction(db):
        n = db.execute("UPDATE object_events SET snapshot = NULL, snapshot_bytes = 0 WHERE event_id IN "
                       "(SELECT event_id FROM object_events WHERE snapshot_bytes > 0 ORDER BY start_ms LIMIT ?)",
                       (chunk,)).rowcount
        if n:
            bump_counter(db, "event_snapshots_trimmed", n)
    return n


def read_snapshot(db: sqlite_utils.Database, event_id: str) -> dict | None:
    row = db.execute("SELECT camera, label, snapshot, snapshot_ms, snapshot_score FROM object_events "
                     "WHERE event_id = ?", (event_id,)).fetchone()
    if row is None:
        return None
    return {"camera": row[0], "label": row[1], "jpeg": row[2], "ts_ms": row[3], "score": row[4]}


def list_events(db: sqlite_utils.Database, camera: str | None = None, limit: int = 100) -> list[dict]:
    """The newest events (CLI, `events` command), without snapshots."""
    where, params = ("WHERE camera = ?", (camera,)) if camera else ("", ())
    cur = db.execute(
        f"SELECT event_id, camera, label, track_id, start_ms, end_ms, last_ms, top_score, stationary, zones, "
        f"entered_zones, seq, snapshot_bytes FROM object_events {where} ORDER BY start_ms DESC LIMIT ?",
        (*params, limit))
    keys = ("event_id", "camera", "label", "track_id", "start_ms", "end_ms", "last_ms", "top_score", "stationary",
            "zones", "entered_zones", "seq", "snapshot_bytes")
    out = []
    for row in cur.fetchall():
        item = dict(zip(keys, row))
        item["stationary"] = bool(item["stationary"])
        item["zones"] = json.loads(item["zones"])
        item["entered_zones"] = json.loads(item["entered_zones"])
        out.append(item)
    return out
