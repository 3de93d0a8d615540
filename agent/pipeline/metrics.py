"""Per-camera pipeline figures: stage latencies, processed fps, frames and detections.

The one place the pipeline's measurements are recorded; status, telemetry and (later) the
health page and the quality controller all read them from here.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from agent.measure import LatencyWindow, RateMeter

STAGES = ("capture_age", "pre", "infer", "post", "result", "store")  # result: capture → detections
HISTORY_INTERVAL_S = 10.0
HISTORY_POINTS = 90  # 15 minutes of fps and inference latency per camera, for the page's sparklines


class PipelineMetrics:
    """Per-camera stage latencies, processed-frame rate and detection counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, dict[str, LatencyWindow]] = {}
        self._fps: dict[str, RateMeter] = {}
        self.frames: dict[str, int] = {}
        self.detections: dict[str, int] = {}
        self._history: dict[str, deque[tuple[float, float | None]]] = {}  # camera → (fps, infer p50 ms)
        self._history_due: dict[str, float] = {}

    def _camera(self, camera: str) -> dict[str, LatencyWindow]:
        stages = self._stages.get(camera)
        if stages is None:
            with self._lock:
                stages = self._stages.setdefault(camera, {s: LatencyWindow(stage=s) for s in STAGES})
                self._fps.setdefault(camera, RateMeter())
                self.frames.setdefault(camera, 0)
                self.detections.setdefault(camera, 0)
        return stages

    def record_frame(self, camera: str, timings_ms: dict[str, float], detections: int) -> None:
        stages = self._camera(camera)
        for stage, ms in timings_ms.items():
            stages[stage].add(ms)
        self._fps[camera].tick()
        with self._lock:
            self.frames[camera] += 1
            self.detections[camera] += detections
            now = time.monotonic()
            due = self._history_due.get(camera, 0.0) <= now
            if due:
                self._history_due[camera] = now + HISTORY_INTERVAL_S
        if due:  # one point per interval, taken by the frame that finds it due
            point = (round(self._fps[camera].rate(), 2), stages["infer"].percentiles(50)[0])
            with self._lock:
                self._history.setdefault(camera, deque(maxlen=HISTORY_POINTS)).append(point)

    def record_stage(self, camera: str, stage: str, ms: float) -> None:
        self._camera(camera)[stage].add(ms)

    def camera_summary(self, camera: str) -> dict:
        stages = self._camera(camera)
        return {
            "fps": round(self._fps[camera].rate(), 2),
            "frames": self.frames[camera],
            "detections": self.detections[camera],
            "stages": {name: w.summary() for name, w in stages.items()},
            "history": self.history(camera),
        }

    def history(self, camera: str) -> dict:
        """The last 15 minutes, a point every HISTORY_INTERVAL_S, oldest first (for sparklines)."""
        with self._lock:
            points = list(self._history.get(camera, ()))
        return {"interval_s": HISTORY_INTERVAL_S, "fps": [p[0] for p in points],
                "infer_p50_ms": [None if p[1] is None else round(p[1], 2) for p in points]}

    def stage_percentiles(self, stage: str, camera: str) -> list[float | None]:
        return self._camera(camera)[stage].percentiles(50, 95)

    def recent(self, stage: str, seconds: float) -> np.ndarray:
        """Every camera's samples of `stage` from the last `seconds`, pooled (the quality controller's view)."""
        t0 = time.monotonic() - seconds
        with self._lock:
            windows = [stages[stage] for stages in self._stages.values()]
        parts = [w.since(t0) for w in windows]
        return np.concatenate(parts) if parts else np.zeros(0)

    def forget(self, camera: str) -> None:
        with self._lock:
            self._stages.pop(camera, None)
            self._fps.pop(camera, None)
            self._history.pop(camera, None)
            self._history_due.pop(camera, None)
