"""Time-ordered unique ids (UUIDv7, RFC 9562), monotonic within this process.

Sorting ids sorts rows by creation time, which retention and sync rely on.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0  # 12-bit sequence within one millisecond (rand_a field, method 1)


def uuid7(unix_ms: int | None = None) -> str:
    """A UUIDv7 string; later calls never sort before earlier ones."""
    global _last_ms, _counter
    ms = int(time.time() * 1000) if unix_ms is None else int(unix_ms)
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # sequence exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        seq = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))
