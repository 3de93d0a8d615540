"""SQLite store: one writer thread, group commits, WAL, versioned schema, retention.

A detection exists once its transaction commits (DESIGN invariant 3). The
writer takes whatever results are queued and commits them in one transaction,
so under load many frames share one fsync and at low load nothing waits.
The hand-off queue is bounded; what cannot be queued is dropped and counted.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from agent.config import EventsConfig, StorageConfig
from agent.ids import uuid7
from agent.pipeline.object_event import ObjectEvent
from agent.store.db import bump_counter, connect, transaction
from agent.store.object_events import drop_oldest_snapshots, end_open_events, save_events, trim_events
from agent.store.outbox import Outbox, enqueue_detections, enqueue_readings, trim_outbox
from engines import Detection

log = logging.getLogger(__name__)

DB_NAME = "edge-agent.db"
# A writer batch carries at most this many rows; more waiting in the queue go in the next commit.
MAX_ROWS_PER_COMMIT = 5000
REOPEN_S = 30.0  # a database that cannot be opened is tried again this often
SPACE_CHECK_S = 1.0  # free space on the data dir's filesystem is looked at after each commit, and this often
TRIM_EVERY_S = 0.2  # while free space stays under the reserve, trimming acts at most this often
PROBE_S = 5.0  # after a failed commit, a small write tests the database this often while nothing comes
MB = 1024 * 1024
CORRUPT_CODES = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})


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


def _migrate_v6(db: sqlite_utils.Database) -> None:
    """Object tracking: each detection's track, and object events with their best snapshot
    (agent.store.object_events)."""
    db.execute("ALTER TABLE detections ADD COLUMN track_id INTEGER")
    db.execute(
        "CREATE TABLE object_events (event_id TEXT PRIMARY KEY, camera TEXT NOT NULL, label TEXT NOT NULL, "
        "track_id INTEGER NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER, last_ms INTEGER NOT NULL, "
        "top_score REAL NOT NULL, score REAL NOT NULL, box TEXT NOT NULL, stationary INTEGER NOT NULL, "
        "zones TEXT NOT NULL, entered_zones TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, "
        "snapshot BLOB, snapshot_ms INTEGER, snapshot_score REAL, snapshot_bytes INTEGER NOT NULL DEFAULT 0)")
    db.execute("CREATE INDEX object_events_start ON object_events(start_ms)")
    db.execute("CREATE INDEX object_events_open ON object_events(end_ms)")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migrate_v1, _migrate_v2, _migrate_v3, _migrate_v4, _migrate_v5, _migrate_v6,
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
    track_ids: Sequence[int | None] | None = None


@dataclass(slots=True)
class _Events:
    """Object event messages: their state rows, and outbox rows when a broker is configured."""

    events: list[ObjectEvent]

    detections = ()


@dataclass(slots=True)
class _Reading:
    """A health reading for the outbox (only queued when a broker is configured)."""

    kind: str
    payload: str

    detections = ()  # counts as no detection rows in a batch


class StoreError(Exception):
    """The database cannot be opened or migrated (no space, no permission, a newer schema)."""


def is_corrupt(exc: BaseException) -> bool:
    """SQLite says the file is not a database, or a damaged one (not: busy, full, no permission)."""
    return getattr(exc, "sqlite_errorname", None) in CORRUPT_CODES


def check_readable(path: Path) -> None:
    """Read the schema through a read-only connection; raises sqlite3.DatabaseError for a damaged file.

    Read-only, because closing a writable connection to a damaged file lets SQLite delete a `-wal` it
    cannot use, and that WAL is part of what is kept aside for recovery.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return  # nothing yet: a new database
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()


def open_database(path: Path, synchronous: str) -> sqlite_utils.Database:
    """Connect, read the schema (a damaged file fails here, not at the first commit) and migrate."""
    db = connect(path, synchronous)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        migrate(db)
        return db
    except BaseException:
        db.conn.close()
        raise


def move_aside(path: Path) -> Path:
    """Rename a damaged database and its WAL and shared-memory files, never delete them.

    The WAL goes first: a WAL left next to a fresh database of the same name would be applied to it.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("-wal", "-shm", ""):
        part = path.with_name(path.name + suffix)
        if part.exists():
            os.replace(part, aside.with_name(aside.name + suffix))
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames survive a power cut
    finally:
        os.close(fd)
    return aside


class Store:
    """Owns the database file; `submit` is safe from any thread."""

    def __init__(self, data_dir: Path, config: StorageConfig,
                 on_commit: Callable[[str, float], None] | None = None, outbox: bool = False,
                 on_open: Callable[[], None] | None = None,
                 on_unstored: Callable[[str, str], None] | None = None, reopen_s: float | None = None) -> None:
        self.path = data_dir / DB_NAME
        self.config = config
        self.outbox = outbox  # also queue each detection for the broker, in the same transaction
        self._on_commit = on_commit
        self._on_open = on_open  # the database opened after start() had given up on it
        self._on_unstored = on_unstored  # (kind, payload) of a health reading whose commit failed
        self._reopen_s = REOPEN_S if reopen_s is None else reopen_s
        self._queue: queue.Queue[_Pending | _Reading | _Events] = queue.Queue(maxsize=config.queue_size)
        self.events_config = EventsConfig()  # retention of object events (the runtime sets the config's)
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._accepting = False
        self._lock = threading.Lock()
        self.dropped = 0  # frames of results lost: queue full, store not running, or a failed write
        self.events_dropped = 0  # object event messages lost the same ways
        self.committed_rows = 0
        self.commits = 0
        self.write_errors = 0
        self.retention_errors = 0  # failed retention passes; each is tried again at the next interval
        self.last_error: str | None = None
        self.open_error: str | None = None  # why the database is not open (it is tried again every reopen_s)
        self.recovered_from: Path | None = None  # a damaged database moved aside at open
        self.corrupt_error: str | None = None  # a commit found the open database damaged
        self.write_failing = False  # the last commit failed: health readings go around the store
        self.disk_free_bytes: int | None = None
        self.low_disk = False  # free space under storage.min_free_mb: history is being trimmed
        self.trimmed_for_space = 0
        self._low_disk_logged = -1e9
        self._trimmed_mono = -1e9

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Open (and migrate) the database in the writer thread; raises StoreError if it cannot.

        A damaged file is moved aside and a fresh database started (`recovered_from`). Any other failure
        (no space, no permission, a newer schema) leaves the file alone: the writer tries again every
        `reopen_s` seconds and calls `on_open` once it succeeds.
        """
        self._thread.start()
        self._ready.wait()
        if not self._accepting:
            raise StoreError(self.open_error or "the store did not open")

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

    def submit(self, camera: str, frame: int, wall_ms: int, detections: Sequence[Detection],
               track_ids: Sequence[int | None] | None = None) -> bool:
        """Queue one frame's detections (and their tracks); False (and counted) if they cannot be stored."""
        if not detections:
            return True
        if not self._accepting:
            self._count_dropped(1)
            return False
        try:
            self._queue.put_nowait(_Pending(camera, frame, wall_ms, time.monotonic(), detections, track_ids))
            return True
        except queue.Full:
            self._count_dropped(1)
            return False

    def submit_events(self, events: list[ObjectEvent]) -> bool:
        """Queue object event messages; False (and counted as events_dropped) if they cannot be stored."""
        if not events:
            return True
        if not self._accepting:
            self._count_events_dropped(len(events))
            return False
        try:
            self._queue.put_nowait(_Events(events))
            return True
        except queue.Full:
            self._count_events_dropped(len(events))
            return False

    def _count_events_dropped(self, n: int) -> None:
        with self._lock:
            self.events_dropped += n

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
    def writable(self) -> bool:
        """Running, and the last commit went through."""
        return self._accepting and not self.write_failing

    def problems(self) -> list[str]:
        """What an operator must know about the store, in words (birth message, telemetry, health)."""
        out = []
        if self.open_error and not self._accepting:
            out.append(f"store not running: {self.open_error}")
        if self.recovered_from is not None:
            out.append(f"store: a damaged database was moved aside to {self.recovered_from}; running on a fresh one")
        if self.corrupt_error:
            out.append(f"store: {self.corrupt_error}; restart the agent to move it aside")
        elif self.write_failing:
            out.append(f"store: writes failing: {self.last_error}")
        if self.low_disk:
            out.append(f"store: free space {_mb(self.disk_free_bytes)} MB under the {self.config.min_free_mb:g} MB "
                       "reserve; oldest history trimmed")
        return out

    def status(self) -> dict:
        return {
            "running": self.running, "writable": self.writable, "open_error": self.open_error,
            "recovered_from": None if self.recovered_from is None else str(self.recovered_from),
            "committed_rows": self.committed_rows, "commits": self.commits, "queue_depth": self.queue_depth,
            "dropped": self.dropped, "events_dropped": self.events_dropped, "write_errors": self.write_errors,
            "retention_errors": self.retention_errors,
            "last_error": self.last_error, "disk_free_mb": _mb(self.disk_free_bytes),
            "min_free_mb": self.config.min_free_mb, "low_disk": self.low_disk,
            "trimmed_for_space": self.trimmed_for_space,
        }

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- writer -------------------------------------------------------------------
    def _open(self) -> sqlite_utils.Database | None:
        """The database, or None (reason in open_error). A damaged file is moved aside, then a fresh one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                check_readable(self.path)
                db = open_database(self.path, self.config.synchronous)
            except sqlite3.DatabaseError as exc:
                if not is_corrupt(exc):
                    raise
                self.recovered_from = move_aside(self.path)
                log.error("store: %s is damaged (%s); moved aside to %s, starting a fresh database",
                          self.path, exc, self.recovered_from)
                db = open_database(self.path, self.config.synchronous)
        except Exception as exc:  # no space, no permission, a newer schema: reported, tried again
            error = f"cannot open {self.path}: {getattr(exc, 'strerror', None) or exc}"
            if error != self.open_error:
                log.error("store: %s (trying again every %gs)", error, self._reopen_s)
            self.open_error = self.last_error = error
            return None
        self.open_error = None
        try:
            end_open_events(db, self.outbox)  # what a crash left open gets its end
        except Exception as exc:  # never keeps the store from running
            log.error("store: could not end the object events left open: %s", exc)
        self._accepting = not self._stopping.is_set()
        return db

    def _run(self) -> None:
        try:
            db = self._open()
            if db is not None:
                self._keep_free_space(db)  # free space is known (status, metrics) by the time start() returns
        finally:
            self._ready.set()  # start() never waits for ever, whatever happened
        while db is None:
            if self._stopping.wait(self._reopen_s):
                return
            db = self._open()
            if db is not None:
                log.info("store: %s opened", self.path)
                if self._on_open is not None:
                    try:
                        self._on_open()
                    except Exception:  # the store runs either way
                        log.exception("store: on_open hook failed")
        next_retention = time.monotonic() + min(5.0, self.config.retention_interval_s)
        next_space_check = 0.0
        last_attempt = time.monotonic()
        try:
            while True:
                batch = self._take_batch()
                now = time.monotonic()
                if batch:
                    self._commit(db, batch)
                    last_attempt = now
                elif self._stopping.is_set():
                    break  # stopping and nothing left: everything queued is committed
                elif self.write_failing and now - last_attempt >= PROBE_S:
                    self._probe(db)
                    last_attempt = now
                if self._stopping.is_set():
                    continue
                if batch or now >= next_space_check:  # after every commit: a WAL grows fast on a small disk
                    self._keep_free_space(db)
                    next_space_check = now + SPACE_CHECK_S
                if now >= next_retention:
                    self._retain(db)
                    next_retention = time.monotonic() + self.config.retention_interval_s
        except Exception as exc:  # a bug: record it loudly, never leave stop() believing all is flushed
            self.last_error = f"writer crashed: {exc}"
            log.exception("store writer crashed")
            self._accepting = False
        finally:
            db.conn.close()

    def _take_batch(self) -> list[_Pending | _Reading | _Events]:
        """Whatever is queued now, up to MAX_ROWS_PER_COMMIT rows; waits briefly if empty."""
        batch: list[_Pending | _Reading | _Events] = []
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

    def _commit(self, db: sqlite_utils.Database, items: list[_Pending | _Reading | _Events]) -> None:
        batch = [p for p in items if isinstance(p, _Pending)]
        readings = [(r.kind, r.payload) for r in items if isinstance(r, _Reading)]
        events = [e for item in items if isinstance(item, _Events) for e in item.events]
        rows = [
            {"id": uuid7(p.wall_ms), "camera": p.camera, "ts_ms": p.wall_ms, "frame": p.frame,
             "label": d.label, "class_id": d.class_id, "score": d.score,
             "x1": d.box[0], "y1": d.box[1], "x2": d.box[2], "y2": d.box[3],
             "track_id": p.track_ids[k] if p.track_ids is not None else None}
            for p in batch for k, d in enumerate(p.detections)
        ]
        try:
            with transaction(db):  # one transaction, one fsync, for the whole group
                if rows:
                    db["detections"].insert_all(rows, batch_size=MAX_ROWS_PER_COMMIT)
                if events:
                    save_events(db, events, self.outbox)
                if self.outbox:
                    enqueue_detections(db, rows)
                    enqueue_readings(db, readings)
        except Exception as exc:  # disk full, I/O error, a value SQLite cannot bind: count, keep running
            self._write_failed(exc)
            self._count_dropped(len(items) - sum(isinstance(i, _Events) for i in items))
            self._count_events_dropped(len(events))
            log.error("store: %s (%d frames of results lost)", self.last_error, len(items))
            if readings and self._on_unstored is not None:
                self._on_unstored(*readings[-1])  # the latest health reading goes around the store
            return
        self._write_ok()
        self.commits += 1
        self.committed_rows += len(rows)
        if self._on_commit is not None:
            now = time.monotonic()
            for p in batch:
                self._on_commit(p.camera, (now - p.queued_mono) * 1000)

    def _write_failed(self, exc: Exception) -> None:
        if not self.write_failing:
            log.error("store: writes failing: %s", exc)
        self.write_errors += 1
        self.write_failing = True
        self.last_error = f"write failed: {exc}"
        if is_corrupt(exc):
            self.corrupt_error = f"the database is damaged ({exc})"

    def _write_ok(self) -> None:
        if self.write_failing:
            log.info("store: writes go through again")
        self.write_failing = False
        self.last_error = None

    def _probe(self, db: sqlite_utils.Database) -> None:
        """A small real write: commits resume (and health goes through the store again) once it passes."""
        try:
            with transaction(db):
                bump_counter(db, "write_probes")
        except Exception as exc:
            self._write_failed(exc)
            return
        self._write_ok()

    def _keep_free_space(self, db: sqlite_utils.Database) -> None:
        """Trim the oldest history before the filesystem is full (storage.min_free_mb); unsent rows stay."""
        try:
            usage = shutil.disk_usage(self.path.parent)
        except OSError:
            return
        self.disk_free_bytes = usage.free
        reserve = min(int(self.config.min_free_mb * MB), usage.total // 4)  # a typo cannot wipe the history
        target = reserve + reserve // 5  # trim with a margin: one trim per stretch, not one per commit
        was_low = self.low_disk
        self.low_disk = usage.free < (target if was_low else reserve)
        if not self.low_disk:
            if was_low:
                log.info("store: free space back above the %g MB reserve", self.config.min_free_mb)
            return
        now = time.monotonic()
        if not was_low and now - self._low_disk_logged > 60:
            self._low_disk_logged = now
            log.warning("store: %s MB free on %s, under the %g MB reserve: trimming the oldest history",
                        _mb(usage.free), self.path.parent, self.config.min_free_mb)
        if was_low and now - self._trimmed_mono < TRIM_EVERY_S:
            return  # still low: act again soon, not after every commit
        self._trimmed_mono = now
        try:
            self.trimmed_for_space += trim_for_space(db, self.path.parent, target, stop=self._stopping)
        except Exception as exc:  # on a full disk even a delete can fail: tried again at the next check
            self.retention_errors += 1
            self.last_error = f"trimming for space failed: {type(exc).__name__}: {exc}"

    def _retain(self, db: sqlite_utils.Database) -> None:
        try:
            trim_by_age(db, self.config.max_age_hours, stop=self._stopping)
            trim_by_size(db, self.config.max_size_mb, stop=self._stopping)
            trim_outbox(db, self.config.outbox_max_rows, int(self.config.outbox_max_mb * 1024 * 1024))
            events = self.events_config
            trim_events(db, events.max_events, int(events.snapshots.max_total_mb * MB), self.config.max_age_hours)
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
        checkpoint(db)
        log.info("store: trimmed %d detections older than %.1f h", total, max_age_hours)
    return total


HEADROOM_BYTES = 256 * 1024  # a database that cannot shrink keeps this much room inside it for the next commits


def checkpoint(db: sqlite_utils.Database) -> None:
    """Copy the WAL into the database and truncate it, without waiting on readers (a reader's open
    snapshot would otherwise hold the writer for the whole busy timeout)."""
    db.execute("PRAGMA busy_timeout=100")
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        db.execute("PRAGMA busy_timeout=30000")


def trim_for_space(db: sqlite_utils.Database, data_dir: Path, target_bytes: int, chunk: int = 200,
                   stop: threading.Event | None = None) -> int:
    """Delete the oldest detections until the filesystem has `target_bytes` free.

    A database made by this agent gives freed pages back to the filesystem (incremental vacuum). An
    older one (auto_vacuum off) cannot shrink without a VACUUM that needs twice the space: there
    deleting frees nothing on the disk, so trimming only keeps a little room inside the file
    (HEADROOM_BYTES) for the next commits: the file stops growing, and the history is not wiped for
    space it could never give back.
    """
    checkpoint(db)  # the WAL's space first
    shrinks = db.execute("PRAGMA auto_vacuum").fetchone()[0] != 0
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    def enough() -> bool:
        if shrinks:
            return shutil.disk_usage(data_dir).free >= target_bytes
        return db.execute("PRAGMA freelist_count").fetchone()[0] * page_size >= HEADROOM_BYTES

    total = 0
    while not enough() and not (stop and stop.is_set()):
        n = _delete_oldest(db, "", (), "trimmed_for_space", chunk)
        # no detection left: the oldest event snapshots go next (counted as event_snapshots_trimmed)
        if n == 0 and drop_oldest_snapshots(db, chunk) == 0:
            break
        total += n
        if shrinks:
            db.conn.executescript("PRAGMA incremental_vacuum;")  # executescript steps it to the end
        checkpoint(db)  # small deletes, each out of the WAL at once: on a nearly full disk the WAL is the limit
    if total:
        log.info("store: trimmed %d oldest detections to keep %.1f MB free", total, target_bytes / MB)
    return total


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / MB, 1)


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
        # no detection left: the oldest event snapshots go next (counted as event_snapshots_trimmed)
        if n == 0 and drop_oldest_snapshots(db, chunk) == 0:
            break
        total += n
    if total:
        checkpoint(db)
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
        "trimmed_for_space": counters.get("trimmed_for_space", 0),
        "events_trimmed": counters.get("events_trimmed", 0),
        "event_snapshots_trimmed": counters.get("event_snapshots_trimmed", 0),
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
                "box": [row["x1"], row["y1"], row["x2"], row["y2"]], "track_id": row["track_id"],
            }
    finally:
        db.conn.close()
