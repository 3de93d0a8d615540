"""Per-camera pipeline figures: stage latencies, processed fps, frames and detections.

The one place the pipeline's measurements are recorded; status, telemetry and (later) the
health page and the quality controller all read them from here.
"""

from __future__ import annotations

import threading

from agent.measure import LatencyWindow, RateMeter

STAGES = ("capture_age", "pre", "infer", "post", "store")


class PipelineMetrics:
    """Per-camera stage latencies, processed-frame rate and detection counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages: dict[str, dict[str, LatencyWindow]] = {}
        self._fps: dict[str, RateMeter] = {}
        self.frames: dict[str, int] = {}
        self.detections: dict[str, int] = {}

    def _camera(self, camera: str) -> dict[str, LatencyWindow]:
        stages = self._stages.get(camera)
        if stages is None:
            with self._lock:
                stages = self._stages.setdefault(camera, {s: LatencyWindow() for s in STAGES})
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

    def record_stage(self, camera: str, stage: str, ms: float) -> None:
        self._camera(camera)[stage].add(ms)

    def camera_summary(self, camera: str) -> dict:
        stages = self._camera(camera)
        return {
            "fps": round(self._fps[camera].rate(), 2),
            "frames": self.frames[camera],
            "detections": self.detections[camera],
            "stages": {name: w.summary() for name, w in stages.items()},
        }

    def stage_percentiles(self, stage: str, camera: str) -> list[float | None]:
        return self._camera(camera)[stage].percentiles(50, 95)

    def forget(self, camera: str) -> None:
        with self._lock:
            self._stages.pop(camera, None)
            self._fps.pop(camera, None)
