"""Bounded measurements: latency percentiles over a window, and event rates.

Shared by every wing that measures (capture's decode time, the pipeline's stages, sync's
capture→PUBACK latency); each holds a fixed number of samples however long the agent runs.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

WINDOW = 512  # samples kept per latency series
# Histogram bucket bounds in milliseconds (Prometheus exports them in seconds).
BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)


class Histogram:
    """Cumulative counts of one latency for the life of the process (Prometheus histograms)."""

    def __init__(self) -> None:
        self._counts = np.zeros(len(BUCKETS_MS) + 1, np.int64)  # the last bucket: above every bound
        self._sum_ms = 0.0
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray) -> None:
        slots = np.searchsorted(BUCKETS_MS, values, side="left")
        with self._lock:
            np.add.at(self._counts, slots, 1)
            self._sum_ms += float(values.sum())

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative counts per bound (the last is +Inf, the total) and the sum in milliseconds."""
        with self._lock:
            return np.cumsum(self._counts).tolist(), self._sum_ms


# One histogram per stage name for the life of the process: cameras and engines come and go with
# config changes, the histograms (and the counters on /metrics) must not start again from zero.
_histograms: dict[str, Histogram] = {}
_histograms_lock = threading.Lock()


def stage_histogram(stage: str) -> Histogram:
    with _histograms_lock:
        return _histograms.setdefault(stage, Histogram())


def stage_histograms() -> dict[str, Histogram]:
    with _histograms_lock:
        return dict(_histograms)


class LatencyWindow:
    """The last WINDOW samples of one latency, in milliseconds; with a `stage`, every sample also goes
    into that stage's process-wide histogram."""

    def __init__(self, size: int = WINDOW, stage: str | None = None) -> None:
        self._values = np.zeros(size, np.float64)
        self._times = np.zeros(size, np.float64)  # time.monotonic() of each sample, for `since`
        self._count = 0
        self._lock = threading.Lock()
        self._histogram = stage_histogram(stage) if stage else None

    def add(self, ms: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._values[self._count % len(self._values)] = ms
            self._times[self._count % len(self._values)] = now
            self._count += 1
        if self._histogram is not None:
            self._histogram.observe(np.array([ms]))

    def extend(self, values: list[float]) -> None:
        """Add many samples under one lock (a hot path adds hundreds per call)."""
        if self._histogram is not None and values:
            self._histogram.observe(np.asarray(values, np.float64))
        tail = np.asarray(values[-len(self._values):], np.float64)
        now = time.monotonic()
        with self._lock:
            idx = (self._count + np.arange(len(tail))) % len(self._values)
            self._values[idx] = tail
            self._times[idx] = now
            self._count += len(tail)

    def since(self, t0: float) -> np.ndarray:
        """The samples kept that were added at or after monotonic time `t0` (a copy)."""
        with self._lock:
            n = min(self._count, len(self._values))
            recent = self._times[:n] >= t0
            return self._values[:n][recent]

    def percentiles(self, *qs: float) -> list[float | None]:
        with self._lock:
            n = min(self._count, len(self._values))
            if n == 0:
                return [None for _ in qs]
            data = self._values[:n].copy()
        return [float(v) for v in np.percentile(data, qs)]

    def summary(self) -> dict[str, float | None]:
        p50, p95 = self.percentiles(50, 95)
        return {"p50_ms": None if p50 is None else round(p50, 2), "p95_ms": None if p95 is None else round(p95, 2)}


class RateMeter:
    """Events per second over the last few seconds."""

    def __init__(self, horizon_s: float = 5.0, max_events: int = 4096) -> None:
        self._times: deque[float] = deque(maxlen=max_events)
        self._horizon = horizon_s
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] > self._horizon:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return (len(self._times) - 1) / span if span > 0 else 0.0
