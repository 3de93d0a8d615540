"""Frames and the one-frame slot that hands them from a camera to inference.

A live camera must never queue up stale frames: its slot keeps only the newest
and counts what it overwrote. An unpaced file must not lose any: its slot makes
the reader wait until inference took the previous frame.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Frame:
    camera: str
    number: int  # per camera, counted from agent start
    image: np.ndarray  # BGR uint8, possibly smaller than the stream (decode_size: model)
    wall_ms: int  # capture time, UTC milliseconds
    mono: float  # capture time, time.monotonic()
    source_size: tuple[int, int] | None = None  # the stream's (width, height) when `image` was decoded smaller

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the stream: what detection boxes are measured in."""
        return self.source_size or (self.image.shape[1], self.image.shape[0])


class FrameSlot:
    """Holds at most one frame. Drop-oldest (counted) or blocking, per source."""

    def __init__(self, blocking: bool, wake: threading.Event) -> None:
        self.blocking = blocking
        self.dropped = 0
        self._frame: Frame | None = None
        self._cond = threading.Condition()
        self._wake = wake
        self._closed = False
        self.waiting = 0  # producers blocked in put (blocking slots)

    def put(self, frame: Frame) -> bool:
        """Hand over a frame; False once the slot is closed."""
        with self._cond:
            if self.blocking:
                self.waiting += 1
                while self._frame is not None and not self._closed:
                    self._cond.wait()
                self.waiting -= 1
            if self._closed:
                return False
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
        self._wake.set()
        return True

    def take(self) -> Frame | None:
        with self._cond:
            frame, self._frame = self._frame, None
            self._cond.notify_all()
        return frame

    def close(self) -> None:
        """Release a blocked `put` for good (camera stopping)."""
        with self._cond:
            self._closed = True
            if self._frame is not None:
                self.dropped += 1  # taken by nobody
            self._frame = None
            self._cond.notify_all()
