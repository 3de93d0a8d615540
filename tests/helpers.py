"""Shared test helpers: waiting on conditions (never fixed sleeps), small configs."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0,
             what: str | Callable[[], str] = "condition") -> None:
    """Poll `predicate` until true; fail with `what` (text, or a function giving it) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(0.02)
