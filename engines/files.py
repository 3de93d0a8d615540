"""Files written so that a crash or power cut leaves the old content or the new, never a torn or empty file.

The data is fsynced under a temporary name in the same directory, renamed over the target, and the
directory is fsynced so the rename itself survives. Used for every file the agent keeps outside
SQLite: the device id, TensorRT plans and timing caches, INT8 models.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(written: Path, target: Path) -> None:
    """Make a finished file `written` the content of `target`, durably (same filesystem)."""
    fd = os.open(written, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(written, target)
    _fsync_dir(target.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path`: all of it or, after a crash at any instant, what was there before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        durable_replace(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
