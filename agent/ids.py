"""Time-ordered unique ids (UUIDv7, RFC 9562), monotonic within this process.

Sorting ids sorts rows by creation order, which retention and sync rely on. A
time earlier than the last id's is clamped to it (frames from several cameras
arrive slightly out of order), so ids never go backwards.
"""

from __future__ import annotations

import os
import threading
import time
import uuid


class Uuid7Generator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0  # 12-bit sequence within one millisecond (RFC 9562 method 1)

    def __call__(self, unix_ms: int | None = None) -> str:
        ms = int(time.time() * 1000) if unix_ms is None else int(unix_ms)
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                self._counter += 1
                if self._counter > 0xFFF:  # sequence exhausted: borrow the next millisecond
                    ms += 1
                    self._counter = 0
            else:
                self._counter = 0
            self._last_ms = ms
            seq = self._counter
        rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
        return str(uuid.UUID(int=value))


uuid7 = Uuid7Generator()
