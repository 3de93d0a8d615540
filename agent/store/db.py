"""SQLite connections and transactions, the one way every part opens and writes the file."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils


def connect(path: Path, synchronous: str = "full") -> sqlite_utils.Database:
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    try:
        # Only takes on a new, empty file (before WAL mode is set): freed pages can go back to the filesystem.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")  # the WAL shrinks back after checkpoints
    except BaseException:  # e.g. not a database: no handle left open on a file about to be moved aside
        conn.close()
        raise
    return sqlite_utils.Database(conn)


@contextlib.contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """BEGIN IMMEDIATE … COMMIT: takes the write lock up front, so a busy database
    is waited for (busy_timeout) instead of failing midway through the transaction.
    sqlite-utils calls inside it join this transaction (as savepoints)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def bump_counter(db: sqlite_utils.Database, name: str, by: int = 1) -> int:
    """Add `by` to a named counter in the `counters` table; returns its new value."""
    db.execute(
        "INSERT INTO counters(name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by),
    )
    return int(db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])
