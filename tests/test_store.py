"""The SQLite store: commits, ids, bounded queue, retention, and surviving SIGKILL/SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agent.config import StorageConfig
from agent.ids import Uuid7Generator, uuid7
from agent.store import store as store_mod
from agent.store.store import Store, connect, migrate, trim_by_age, trim_by_size, used_bytes
from engines import Detection
from tests.helpers import wait_for

DET = Detection(1, "square", 0.9, (1.0, 2.0, 30.0, 40.0))


def make_store(tmp_path: Path, **settings: object) -> Store:
    return Store(tmp_path, StorageConfig(path=tmp_path, **settings))


def rows(path: Path, query: str = "SELECT * FROM detections ORDER BY id") -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def test_uuid7_is_time_ordered_and_well_formed() -> None:
    make = Uuid7Generator()
    ids = [make(1_700_000_000_000) for _ in range(5000)] + [make(1_700_000_000_001), make()]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert int(parsed.hex[:12], 16) == 1_700_000_000_000
    assert make(1_600_000_000_000) > ids[-1]  # an earlier clock never makes an earlier id


def test_submitted_detections_are_committed_with_all_fields(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.start()
    now_ms = int(time.time() * 1000)  # older rows would be trimmed by the default retention
    for frame in range(50):
        assert store.submit("cam", frame, now_ms + frame, [DET, DET])
    assert store.submit("cam", 99, 0, [])  # a frame without detections writes nothing
    assert store.stop()
    stored = rows(store.path, "SELECT id, camera, ts_ms, frame, label, class_id, score, x1, y1, x2, y2 "
                              "FROM detections ORDER BY id")
    assert len(stored) == 100 and len({r[0] for r in stored}) == 100
    assert stored[0][1:] == ("cam", now_ms, 0, "square", 1, 0.9, 1.0, 2.0, 30.0, 40.0)
    assert [r[3] for r in stored] == sorted(r[3] for r in stored)  # id order is time order
    assert store.commits < 100  # grouped: frames shared transactions
    info = store_mod.stats(tmp_path)
    assert info["detections"] == 100 and info["schema_version"] == store_mod.SCHEMA_VERSION


def test_a_group_of_frames_is_one_transaction(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    db = connect(tmp_path / "traced.db")
    migrate(db)
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    now_ms = int(time.time() * 1000)
    batch = [store_mod._Pending("cam", i, now_ms, time.monotonic(), [DET] * 3) for i in range(400)]
    store._commit(db, batch)
    assert sum(1 for s in statements if s.strip().upper().startswith("COMMIT")) == 1
    assert db.execute("SELECT count(*) FROM detections").fetchone()[0] == 1200


def test_results_after_stop_or_without_a_store_are_counted_as_dropped(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert not store.submit("cam", 0, 0, [DET])  # never started
    store.start()
    assert store.submit("cam", 1, int(time.time() * 1000), [DET])
    assert store.stop()
    assert not store.submit("cam", 2, 0, [DET])
    assert store.dropped == 2 and store.committed_rows == 1


def test_a_failing_retention_is_counted_retried_and_the_writer_keeps_committing(tmp_path: Path) -> None:
    # A value validation refuses (here put in behind its back): int(inf) raises OverflowError in retention.
    config = StorageConfig(path=tmp_path).model_copy(update={"max_age_hours": float("inf"),
                                                             "retention_interval_s": 0.05})
    store = Store(tmp_path, config)
    store.start()
    try:
        wait_for(lambda: store.retention_errors >= 2, what="retention failed, and was tried again")
        assert store.running and "retention failed" in (store.last_error or "")
        assert store.submit("cam", 0, int(time.time() * 1000), [DET])
        wait_for(lambda: store.committed_rows == 1, what="a commit after the failures")
    finally:
        assert store.stop()
    assert len(rows(store.path)) == 1


def test_a_damaged_database_is_moved_aside_with_its_wal_and_a_fresh_one_started(tmp_path: Path) -> None:
    garbage = os.urandom(64 * 1024)
    (tmp_path / store_mod.DB_NAME).write_bytes(garbage)
    (tmp_path / f"{store_mod.DB_NAME}-wal").write_bytes(b"old wal" * 100)
    store = make_store(tmp_path)
    store.start()
    try:
        aside = store.recovered_from
        assert aside is not None and aside.parent == tmp_path and aside.name.startswith(f"{store_mod.DB_NAME}.corrupt-")
        assert aside.read_bytes() == garbage  # kept, byte for byte
        assert aside.with_name(aside.name + "-wal").read_bytes() == b"old wal" * 100  # its WAL went with it
        assert store.running and "moved aside" in " ".join(store.problems())
        assert store.submit("cam", 0, int(time.time() * 1000), [DET])
    finally:
        assert store.stop()
    assert len(rows(store.path)) == 1 and aside.read_bytes() == garbage


def test_a_database_that_cannot_be_opened_is_left_alone_and_opened_once_it_can(tmp_path: Path) -> None:
    blocker = tmp_path / store_mod.DB_NAME
    blocker.mkdir()  # in the way: not a damaged database, so nothing may be moved or deleted
    (blocker / "keep").write_text("operator's file")
    opened = []
    store = Store(tmp_path, StorageConfig(path=tmp_path), on_open=lambda: opened.append(True), reopen_s=0.05)
    with pytest.raises(store_mod.StoreError, match="cannot open"):
        store.start()
    try:
        assert not store.running and not store.submit("cam", 0, int(time.time() * 1000), [DET])
        assert "store not running: cannot open" in store.problems()[0] and store.recovered_from is None
        assert (blocker / "keep").read_text() == "operator's file"
        (blocker / "keep").unlink()
        blocker.rmdir()  # the operator fixed it: the store opens by itself
        wait_for(lambda: store.running and opened == [True], what="the store to open")
        assert store.problems() == [] and store.submit("cam", 1, int(time.time() * 1000), [DET])
    finally:
        assert store.stop()
    assert len(rows(store.path)) == 1 and store.dropped == 1


def test_full_queue_drops_and_counts_while_the_writer_is_stalled(tmp_path: Path) -> None:
    store = make_store(tmp_path, queue_size=16)
    store.start()
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: our commit waits
    try:
        now_ms = int(time.time() * 1000)
        assert store.submit("cam", 0, now_ms, [DET])
        wait_for(lambda: store.queue_depth == 0, what="writer took the first frame and blocked")
        accepted = [store.submit("cam", i, now_ms, [DET]) for i in range(1, 21)]
        assert accepted.count(True) == 16 and accepted.count(False) == 4 and store.dropped == 4
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.stop()
    assert store.committed_rows == 17 and len(rows(store.path)) == 17


def test_migration_is_idempotent_and_refuses_newer_schemas(tmp_path: Path) -> None:
    db = connect(tmp_path / "x.db")
    assert migrate(db) == migrate(db) == store_mod.SCHEMA_VERSION
    db.execute("PRAGMA user_version=99")
    with pytest.raises(RuntimeError, match="newer than this agent"):
        migrate(db)


def _fill(db, count: int, start_ms: int) -> None:
    """Rows with a wide camera name, so a few thousand take megabytes."""
    with store_mod.transaction(db):
        db["detections"].insert_all(
            {"id": uuid7(start_ms + i), "camera": "c" * 200, "ts_ms": start_ms + i, "frame": i, "label": "x",
             "class_id": 0, "score": 0.5, "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0}
            for i in range(count)
        )


def test_retention_by_age_counts_what_it_trimmed(tmp_path: Path) -> None:
    db = connect(tmp_path / store_mod.DB_NAME)
    migrate(db)
    now = 1_800_000_000_000
    _fill(db, 30, now - 3 * 3_600_000)  # three hours old
    _fill(db, 20, now - 60_000)  # a minute old
    assert trim_by_age(db, max_age_hours=2, now_ms=now) == 30
    assert db.execute("SELECT count(*) FROM detections").fetchone()[0] == 20
    assert store_mod.stats(tmp_path)["trimmed_by_age"] == 30


def test_retention_by_size_removes_oldest_first(tmp_path: Path) -> None:
    db = connect(tmp_path / store_mod.DB_NAME)
    migrate(db)
    _fill(db, 20_000, 1_700_000_000_000)
    assert used_bytes(db) > 3 * 1024 * 1024
    trimmed = trim_by_size(db, max_size_mb=2, chunk=1000)
    assert trimmed > 0 and used_bytes(db) <= 2 * 1024 * 1024
    oldest_left = db.execute("SELECT min(frame) FROM detections").fetchone()[0]
    assert oldest_left == trimmed  # exactly the oldest rows went
    assert store_mod.stats(tmp_path)["trimmed_by_size"] == trimmed


def _agent(tmp_path: Path, clip: Path) -> subprocess.Popen:
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({
        "cameras": [{"name": "fast", "source": str(clip), "realtime": False, "loop": True}],
        "model": {"score_threshold": 0.25},
        "storage": {"path": str(tmp_path / "data")},
    }))
    return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _committed(db_path: Path) -> list[tuple]:
    if not db_path.exists():
        return []
    try:
        return rows(db_path)
    except sqlite3.OperationalError:  # schema not created yet
        return []


def test_sigkill_mid_run_loses_no_committed_detection(tmp_path: Path, short_clip: Path) -> None:
    proc = _agent(tmp_path, short_clip)
    db_path = tmp_path / "data" / store_mod.DB_NAME
    try:
        wait_for(lambda: len(_committed(db_path)) >= 200, timeout=90, what="200 committed detections")
        seen = _committed(db_path)  # what a reader saw as committed while the agent ran
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        after = {r[0]: r for r in conn.execute("SELECT * FROM detections")}
    finally:
        conn.close()
    assert all(after.get(r[0]) == r for r in seen)
    assert len(after) >= len(seen)


def test_sigterm_stops_within_five_seconds_with_the_store_flushed(tmp_path: Path, short_clip: Path) -> None:
    proc = _agent(tmp_path, short_clip)
    db_path = tmp_path / "data" / store_mod.DB_NAME
    try:
        wait_for(lambda: len(_committed(db_path)) >= 50, timeout=90, what="committed detections")
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert took < 5.0, f"stopping took {took:.1f}s"
    summary = stderr.rsplit("stopped; ", 1)[1].split()
    produced, committed, dropped = int(summary[0]), int(summary[3]), int(summary[5])
    assert produced > 0 and produced == committed and dropped == 0  # everything inference produced was written
    assert len(_committed(db_path)) == committed


def test_outbox_cap_trims_health_before_detections_and_counts(tmp_path: Path) -> None:
    from agent.store.outbox import TELEMETRY, enqueue_detections, trim_outbox

    db = connect(tmp_path / store_mod.DB_NAME)
    migrate(db)
    det = {"id": "x", "camera": "c", "ts_ms": 1, "frame": 1, "label": "l", "class_id": 0, "score": 0.5,
           "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0}
    with store_mod.transaction(db):
        enqueue_detections(db, [det] * 5)
        db.conn.executemany("INSERT INTO outbox(kind, payload, bytes, created_ms) VALUES (?, '{}', 2, 0)",
                            [(TELEMETRY,)] * 4)
        enqueue_detections(db, [det] * 3)
    assert trim_outbox(db, 6) == 6
    kinds = [r[0] for r in db.execute("SELECT kind FROM outbox ORDER BY seq").fetchall()]
    assert kinds == ["detection"] * 6  # all 4 health readings went, then the 2 oldest detections
    assert db.execute("SELECT min(seq) FROM outbox").fetchone()[0] == 3
    assert store_mod.stats(tmp_path)["outbox_trimmed"] == 6
    size = db.execute("SELECT sum(bytes) FROM outbox").fetchone()[0]
    assert trim_outbox(db, 100, max_bytes=size - 1) == 1  # bytes cap: one more (the oldest) goes
    assert db.execute("SELECT min(seq) FROM outbox").fetchone()[0] == 4


def fill(disk: Path) -> Path:
    """A ballast file taking every free byte of `disk`."""
    ballast = disk / "ballast"
    with ballast.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return ballast


def test_a_filling_disk_trims_the_oldest_history_before_it_is_full(small_disk: Path) -> None:
    # The size cap (16 MB) is far above what the 4 MB disk holds: only the free-space reserve can act.
    store = Store(small_disk, StorageConfig(path=small_disk, min_free_mb=1, max_size_mb=16))
    store.start()
    try:
        now_ms = int(time.time() * 1000)
        frame = 0
        deadline = time.monotonic() + 60
        while store.trimmed_for_space < 2000 and time.monotonic() < deadline:  # several trims' worth
            commits = store.commits
            assert store.submit("cam", frame, now_ms + frame, [DET] * 50)
            wait_for(lambda c=commits: store.commits > c or store.write_errors, what="a commit")
            frame += 1
        assert store.trimmed_for_space >= 2000, f"nothing trimmed; {store.status()}"
        assert store.write_errors == 0 and store.dropped == 0  # trimmed in time: no commit ever failed
        assert shutil.disk_usage(small_disk).free > 512 * 1024
        left = rows(store.path, "SELECT min(frame), max(frame) FROM detections")[0]
        assert left[0] > 0 and left[1] == frame - 1  # the oldest went, the newest are all there
    finally:
        assert store.stop()
    assert store_mod.stats(small_disk)["trimmed_for_space"] == store.trimmed_for_space


def test_commits_that_fail_on_a_full_disk_resume_by_themselves_when_space_returns(small_disk: Path) -> None:
    unstored: list[tuple[str, str]] = []
    store = Store(small_disk, StorageConfig(path=small_disk, min_free_mb=0), outbox=True,
                  on_unstored=lambda kind, payload: unstored.append((kind, payload)))
    store.start()
    try:
        now_ms = int(time.time() * 1000)
        assert store.submit("cam", 0, now_ms, [DET])
        wait_for(lambda: store.committed_rows == 1, what="a first commit")
        ballast = fill(small_disk)
        frame = 1
        while not store.write_failing:  # the WAL may still hold room for a few commits
            store.submit("cam", frame, now_ms + frame, [DET] * 200)
            assert store.submit_reading("telemetry", f'{{"n":{frame}}}')
            wait_for(lambda: store.write_failing or store.queue_depth == 0, what="a commit or a failure")
            frame += 1
        assert store.running and not store.writable and store.write_errors >= 1
        assert any("writes failing" in p for p in store.problems())
        assert store.submit_reading("telemetry", '{"n":"latest"}')
        wait_for(lambda: unstored and unstored[-1] == ("telemetry", '{"n":"latest"}'),
                 what="the reading that could not be stored handed back")
        ballast.unlink()
        wait_for(lambda: store.writable, what="writes to go through again, with nothing submitted")
        committed = store.committed_rows
        assert store.submit("cam", frame, now_ms + frame, [DET])
        wait_for(lambda: store.committed_rows == committed + 1, what="a commit after the disk had room again")
        assert store.problems() == []
    finally:
        assert store.stop()


def test_a_database_that_cannot_shrink_is_not_wiped_for_space_it_could_never_give_back(small_disk: Path) -> None:
    # A database made before auto_vacuum (as by older agents): deleting rows frees nothing on the disk.
    conn = sqlite3.connect(small_disk / store_mod.DB_NAME)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    db = connect(small_disk / store_mod.DB_NAME)
    migrate(db)
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    now_ms = int(time.time() * 1000)
    history = [{"id": uuid7(now_ms), "camera": "cam", "ts_ms": now_ms, "frame": i, "label": "square",
                "class_id": 1, "score": 0.9, "x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0} for i in range(8000)]
    with store_mod.transaction(db):
        db["detections"].insert_all(history)
    db.conn.close()
    ballast = fill(small_disk)  # someone else filled the disk: far more missing than the file holds
    ballast_size = ballast.stat().st_size
    ballast.write_bytes(b"\0" * (ballast_size - 700 * 1024))  # leaves ~700 KB: under the 1 MB reserve
    store = Store(small_disk, StorageConfig(path=small_disk, min_free_mb=1))
    store.start()
    try:
        for frame in range(20):
            commits = store.commits
            assert store.submit("cam", 10_000 + frame, now_ms, [DET] * 10)
            wait_for(lambda c=commits: store.commits > c or store.write_errors, what="a commit")
        assert store.low_disk and store.write_errors == 0
        kept = rows(store.path, "SELECT count(*) FROM detections WHERE frame < 10000")[0][0]
        assert 0 < store.trimmed_for_space < 4000 and kept == 8000 - store.trimmed_for_space  # most kept
    finally:
        assert store.stop()
