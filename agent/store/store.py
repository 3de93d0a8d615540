"""SQLite store: one writer thread, group commits, WAL, versioned schema, retention.

A detection exists once its transaction commits (DESIGN invariant 3). The
writer takes whatever results are queued and commits them in one transaction,
so under load many frames share one fsync and at low load nothing waits.
The hand-off queue is bounded; what cannot be queued is dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from agent.config import StorageConfig
from agent.store.db import bump_counter, connect, transaction
from agent.store.ids import uuid7
from agent.store.outbox import Outbox, enqueue_detections, enqueue_readings, trim_outbox
from engines import Detection

log = logging.getLogger(__name__)

DB_NAME = "edge-agent.db"
# A writer batch carries at most this many rows; more waiting in the queue go in the next commit.
MAX_ROWS_PER_COMMIT = 5000


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db["detections"].create(
        {"id": str, "camera": str, "ts_ms": int, "frame": int, "label": str, "class_id": int,
         "score": float, "x1": float, "y1": float, "x2": float, "y2": float},
        pk="id", not_null={"camera", "ts_ms", "frame", "label", "class_id", "score"},
    )
    db["detections"].create_index(["ts_ms"])
    db["counters"].create({"name": str, "value": int}, pk="name", not_null={"value"})


def _migrate_v2(db: sqlite_utils.Database) -> None:
    """The outbox: messages waiting for the broker's PUBACK (see agent.store.outbox)."""
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
        "camera TEXT, payload TEXT NOT NULL, bytes INTEGER NOT NULL, created_ms INTEGER NOT NULL, "
        "dead INTEGER NOT NULL DEFAULT 0, error TEXT)"
    )
    db.execute("CREATE INDEX outbox_pending ON outbox(dead, seq)")


def _migrate_v3(db: sqlite_utils.Database) -> None:
    """Config from the fleet (agent.control.remote_config) and command answers kept for redeliveries
    (agent.control.command_channel)."""
    db.execute("CREATE TABLE remote_config (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, "
               "overlay TEXT NOT NULL, applied_ms INTEGER NOT NULL)")
    db.execute("CREATE TABLE command_answers (id TEXT PRIMARY KEY, name TEXT NOT NULL, answer TEXT NOT NULL, "
               "created_ms INTEGER NOT NULL)")
    db.execute("CREATE INDEX command_answers_age ON command_answers(created_ms)")


def _migrate_v4(db: sqlite_utils.Database) -> None:
    """The last desired version the device rejected, and why: not tried again until a newer one comes."""
    db.execute("ALTER TABLE remote_config ADD COLUMN rejected_version INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE remote_config ADD COLUMN rejected_errors TEXT NOT NULL DEFAULT '[]'")


def _migrate_v5(db: sqlite_utils.Database) -> None:
    """How often the broker refused an outbox row with a code that may pass: bounded before it is buried."""
    db.execute("ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migrate_v1, _migrate_v2, _migrate_v3, _migrate_v4, _migrate_v5,
]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the schema to SCHEMA_VERSION, one transaction per step."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"database schema v{version} is newer than this agent (v{SCHEMA_VERSION})")
    for step in range(version, SCHEMA_VERSION):
        with transaction(db):  # a crash mid-migration leaves the previous version intact
            MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version={step + 1}")
    return SCHEMA_VERSION


@dataclass(slots=True)
class _Pending:
    camera: str
    frame: int
    wall_ms: int
    queued_mono: float
    detections: Sequence[Detection]


@dataclass(slots=True)
class _Reading:
    """A health reading for the outbox (only queued when a broker is configured)."""

    kind: str
    payload: str

    detections = ()  # counts as no detection rows in a batch


class StoreError(Exception):
    """The database cannot be opened or migrated (corrupt file, no space, no permission)."""


class Store:
    """Owns the database file; `submit` is safe from any thread."""

    def __init__(self, data_dir: Path, config: StorageConfig,
                 on_commit: Callable[[str, float], None] | None = None, outbox: bool = False) -> None:
        self.path = data_dir / DB_NAME
        self.config = config
        self.outbox = outbox  # also queue each detection for the broker, in the same transaction
        self._on_commit = on_commit
        self._queue: queue.Queue[_Pending | _Reading] = queue.Queue(maxsize=config.queue_size)
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._accepting = False
        self._lock = threading.Lock()
        self._open_error: BaseException | None = None
        self.dropped = 0  # frames of results lost: queue full, store not running, or a failed write
        self.committed_rows = 0
        self.commits = 0
        self.write_errors = 0
        self.retention_errors = 0  # failed retention passes; each is tried again at the next interval
        self.last_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Open (and migrate) the database in the writer thread; raises StoreError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data dir {self.path.parent}: {exc.strerror or exc}") from exc
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            self.last_error = f"cannot open {self.path}: {self._open_error}"
            raise StoreError(self.last_error) from self._open_error
        self._accepting = True

    def stop(self, timeout: float = 5.0) -> bool:
        """Refuse new results, commit everything queued, close. True if done in time."""
        self._accepting = False
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    # -- producers ----------------------------------------------------------------
    def _count_dropped(self, frames: int) -> None:
        with self._lock:
            self.dropped += frames

    def submit(self, camera: str, frame: int, wall_ms: int, detections: Sequence[Detection]) -> bool:
        """Queue one frame's detections; False (and counted) if they cannot be stored."""
        if not detections:
            return True
        if not self._accepting:
            self._count_dropped(1)
            return False
        try:
            self._queue.put_nowait(_Pending(camera, frame, wall_ms, time.monotonic(), detections))
            return True
        except queue.Full:
            self._count_dropped(1)
            return False

    def submit_reading(self, kind: str, payload: str) -> bool:
        """Queue a health reading for the broker; False (and counted) if it cannot be stored."""
        if not (self._accepting and self.outbox):
            self._count_dropped(1)
            return False
        try:
            self._queue.put_nowait(_Reading(kind, payload))
            return True
        except queue.Full:
            self._count_dropped(1)
            return False

    @property
    def running(self) -> bool:
        return self._accepting

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- writer -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            db = connect(self.path, self.config.synchronous)
            migrate(db)
        except BaseException as exc:  # reported to start()
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        next_retention = time.monotonic() + min(5.0, self.config.retention_interval_s)
        try:
            while True:
                batch = self._take_batch()
                if batch:
                    self._commit(db, batch)
                elif self._stopping.is_set():
                    break  # stopping and nothing left: everything queued is committed
                if not self._stopping.is_set() and time.monotonic() >= next_retention:
                    self._retain(db)
                    next_retention = time.monotonic() + self.config.retention_interval_s
        except Exception as exc:  # a bug: record it loudly, never leave stop() believing all is flushed
            self.last_error = f"writer crashed: {exc}"
            log.exception("store writer crashed")
            self._accepting = False
        finally:
            db.conn.close()

    def _take_batch(self) -> list[_Pending | _Reading]:
        """Whatever is queued now, up to MAX_ROWS_PER_COMMIT rows; waits briefly if empty."""
        batch: list[_Pending | _Reading] = []
        rows = 0
        try:
            item = self._queue.get(timeout=0.1)
            while True:
                batch.append(item)
                rows += len(item.detections)
                if rows >= MAX_ROWS_PER_COMMIT:
                    break
                item = self._queue.get_nowait()
        except queue.Empty:
            pass
        return batch

    def _commit(self, db: sqlite_utils.Database, items: list[_Pending | _Reading]) -> None:
        batch = [p for p in items if isinstance(p, _Pending)]
        readings = [(r.kind, r.payload) for r in items if isinstance(r, _Reading)]
        rows = [
            {"id": uuid7(p.wall_ms), "camera": p.camera, "ts_ms": p.wall_ms, "frame": p.frame,
             "label": d.label, "class_id": d.class_id, "score": d.score,
             "x1": d.box[0], "y1": d.box[1], "x2": d.box[2], "y2": d.box[3]}
            for p in batch for d in p.detections
        ]
        try:
            with transaction(db):  # one transaction, one fsync, for the whole group
                if rows:
                    db["detections"].insert_all(rows, batch_size=MAX_ROWS_PER_COMMIT)
                if self.outbox:
                    enqueue_detections(db, rows)
                    enqueue_readings(db, readings)
        except Exception as exc:  # disk full, I/O error, a value SQLite cannot bind: count, keep running
            self.write_errors += 1
            self._count_dropped(len(items))
            self.last_error = f"write failed: {exc}"
            log.error("store: %s (%d frames of results lost)", self.last_error, len(items))
            return
        self.commits += 1
        self.committed_rows += len(rows)
        self.last_error = None
        if self._on_commit is not None:
            now = time.monotonic()
            for p in batch:
                self._on_commit(p.camera, (now - p.queued_mono) * 1000)

    def _retain(self, db: sqlite_utils.Database) -> None:
        try:
            trim_by_age(db, self.config.max_age_hours, stop=self._stopping)
            trim_by_size(db, self.config.max_size_mb, stop=self._stopping)
            trim_outbox(db, self.config.outbox_max_rows, int(self.config.outbox_max_mb * 1024 * 1024))
        except Exception as exc:  # never the writer's end: detections keep committing, retried next interval
            self.retention_errors += 1
            self.last_error = f"retention failed: {type(exc).__name__}: {exc}"
            log.error("store: %s", self.last_error)


def _delete_oldest(db: sqlite_utils.Database, where: str, params: tuple, counter: str, chunk: int) -> int:
    """Delete up to `chunk` oldest matching rows and count them, in one transaction."""
    with transaction(db):
        n = db.execute(
            f"DELETE FROM detections WHERE id IN (SELECT id FROM detections {where} ORDER BY id LIMIT ?)",
            (*params, chunk),
        ).rowcount
        if n:
            bump_counter(db, counter, n)
    return n


def trim_by_age(db: sqlite_utils.Database, max_age_hours: float | None, now_ms: int | None = None,
                chunk: int = 5000, stop: threading.Event | None = None) -> int:
    """Delete detections older than `max_age_hours`, in chunks so commits are not held up."""
    if max_age_hours is None:
        return 0
    cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(max_age_hours * 3_600_000)
    total = 0
    while not (stop and stop.is_set()):
        n = _delete_oldest(db, "WHERE ts_ms < ?", (cutoff,), "trimmed_by_age", chunk)
        total += n
        if n < chunk:
            break
    if total:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log.info("store: trimmed %d detections older than %.1f h", total, max_age_hours)
    return total


def used_bytes(db: sqlite_utils.Database) -> int:
    """Bytes of pages holding data (free pages are reused, so they do not count)."""
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size


def trim_by_size(db: sqlite_utils.Database, max_size_mb: float | None, chunk: int = 5000,
                 stop: threading.Event | None = None) -> int:
    """Delete the oldest detections until the data fits `max_size_mb`."""
    if max_size_mb is None:
        return 0
    limit = int(max_size_mb * 1024 * 1024)
    total = 0
    while used_bytes(db) > limit and not (stop and stop.is_set()):
        n = _delete_oldest(db, "", (), "trimmed_by_size", chunk)
        if n == 0:
            break
        total += n
    if total:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log.warning("store: trimmed %d oldest detections to stay under %.0f MB", total, max_size_mb)
    return total


# -- readers (CLI, health) -----------------------------------------------------------
def open_readonly(data_dir: Path) -> sqlite_utils.Database:
    path = data_dir / DB_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no store at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    return sqlite_utils.Database(conn)


def _store_figures(db: sqlite_utils.Database, data_dir: Path) -> dict:
    """Size on disk, outbox depth and what retention trimmed: shared by stats and telemetry."""
    counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    path = data_dir / DB_NAME
    return {
        "size_bytes": sum(f.stat().st_size for f in (path, path.with_name(path.name + "-wal")) if f.exists()),
        "trimmed_by_age": counters.get("trimmed_by_age", 0),
        "trimmed_by_size": counters.get("trimmed_by_size", 0),
        **Outbox(db).counts(),
        "outbox_trimmed": counters.get("outbox_trimmed", 0),
        "mqtt_sessions": counters.get("mqtt_session", 0),
    }


def stats(data_dir: Path) -> dict:
    db = open_readonly(data_dir)
    try:
        count, oldest, newest = db.execute("SELECT count(*), min(ts_ms), max(ts_ms) FROM detections").fetchone()
        per_camera = dict(db.execute("SELECT camera, count(*) FROM detections GROUP BY camera").fetchall())
        return {
            "path": str(data_dir / DB_NAME),
            "schema_version": db.execute("PRAGMA user_version").fetchone()[0],
            "detections": count,
            "per_camera": per_camera,
            "oldest_ms": oldest,
            "newest_ms": newest,
            **_store_figures(db, data_dir),
        }
    finally:
        db.conn.close()


def health_figures(data_dir: Path) -> dict:
    """Cheap figures for telemetry (no scan of the detections table)."""
    db = open_readonly(data_dir)
    try:
        figures = _store_figures(db, data_dir)
    finally:
        db.conn.close()
    oldest = figures.pop("outbox_oldest_ms")
    figures["outbox_oldest_age_s"] = None if oldest is None else round(time.time() - oldest / 1000, 1)
    return figures


def export_detections(data_dir: Path) -> Iterator[dict]:
    db = open_readonly(data_dir)
    try:
        for row in db.query("SELECT * FROM detections ORDER BY id"):
            yield {
                "id": row["id"], "camera": row["camera"], "ts_ms": row["ts_ms"], "frame": row["frame"],
                "label": row["label"], "class_id": row["class_id"], "score": row["score"],
                "box": [row["x1"], row["y1"], row["x2"], row["y2"]],
            }
    finally:
        db.conn.close()
