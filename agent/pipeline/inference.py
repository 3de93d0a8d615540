"""The inference worker: newest frame of each camera in turn, batched, timed.

Cameras are visited round-robin from a rotating start, so when a batch fills
before every camera was visited the next batch starts where this one stopped:
no camera starves. Frames go through pre → infer → post, and the detections
are handed to the store.

Inference that fails is retried with a growing wait (never a hot loop); after
RELOAD_AFTER failures in a row the engine is reloaded from its config (a GPU
context or session gone bad comes back that way), and each camera whose frames
failed says so (`degraded`) until one of its frames goes through again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.backoff import Backoff
from agent.capture.frames import Frame, FrameSlot
from agent.pipeline.metrics import PipelineMetrics
from engines import Detection, Detector

log = logging.getLogger(__name__)

Sink = Callable[[Frame, list[Detection]], None]
Reload = Callable[[Detector], Detector | None]  # the failing detector → a fresh one (None: could not)
RELOAD_AFTER = 5  # failures in a row before the engine is reloaded


class InferenceWorker:
    """One worker thread per detector."""

    def __init__(self, detector: Detector, slots: Callable[[], list[FrameSlot]], sink: Sink,
                 metrics: PipelineMetrics, wake: threading.Event, reload: Reload | None = None) -> None:
        self.detector = detector
        self._slots = slots
        self._sink = sink
        self._metrics = metrics
        self._wake = wake
        self._reload = reload
        self._backoff = Backoff(0.05, 5.0)
        self.consecutive_errors = 0
        self.reloads = 0
        self.reload_error: str | None = None  # why the last reload failed
        self.degraded: dict[str, str] = {}  # camera → why its frames are failing (bounded by the cameras)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._next = 0
        self.batches = 0
        self.errors = 0
        self.frames_failed = 0  # frames lost to inference errors
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def collect(self) -> list[Frame]:
        """Take up to one frame per camera, at most max_batch, fairly."""
        slots = self._slots()
        n = len(slots)
        batch: list[Frame] = []
        if n == 0:
            return batch
        start = self._next % n
        for k in range(n):
            frame = slots[(start + k) % n].take()
            if frame is not None:
                batch.append(frame)
                if len(batch) == self.detector.max_batch:
                    self._next = start + k + 1
                    return batch
        self._next = start + 1
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            batch = self.collect()
            if not batch:
                self._wake.wait(0.2)
                continue
            try:
                self.process(batch)
            except Exception as exc:  # one bad frame or runtime hiccup must not stop the pipeline
                self._failed(batch, exc)
                continue
            if self.consecutive_errors:
                log.info("inference works again after %d failures", self.consecutive_errors)
            self.consecutive_errors = 0
            self._backoff.reset()
            for frame in batch:
                self.degraded.pop(frame.camera, None)

    def _failed(self, batch: list[Frame], exc: Exception) -> None:
        self.errors += 1
        self.consecutive_errors += 1
        self.frames_failed += len(batch)
        self.last_error = f"{type(exc).__name__}: {exc}"
        for frame in batch:
            self.degraded[frame.camera] = f"inference failing ({self.consecutive_errors} in a row): {self.last_error}"
        if self.errors <= 5 or self.errors % 100 == 0:
            log.exception("inference failed (%d so far, %d in a row)", self.errors, self.consecutive_errors)
        if self._reload is not None and self.consecutive_errors % RELOAD_AFTER == 0:
            self._reload_engine()
        self._stop.wait(self._backoff.next_delay())

    def _reload_engine(self) -> None:
        log.warning("inference failed %d times in a row: reloading the engine", self.consecutive_errors)
        assert self._reload is not None
        try:
            fresh = self._reload(self.detector)
        except Exception as exc:  # the reload is a remedy; its failure is one more thing to report, not a crash
            self.reload_error = f"{type(exc).__name__}: {exc}"
            log.error("engine reload failed: %s", self.reload_error)
            return
        if fresh is not None:
            self.detector = fresh
            self.reloads += 1
            self.reload_error = None

    def process(self, batch: list[Frame]) -> None:
        det = self.detector
        t0 = time.monotonic()
        prepared = det.preprocess([f.image for f in batch])
        t1 = time.monotonic()
        outputs = det.infer(prepared)
        t2 = time.monotonic()
        results = det.postprocess(prepared, outputs)
        t3 = time.monotonic()
        self.batches += 1
        timings = {"pre": (t1 - t0) * 1000, "infer": (t2 - t1) * 1000, "post": (t3 - t2) * 1000}
        for frame, detections in zip(batch, results):
            self._sink(frame, detections)
            self._metrics.record_frame(frame.camera, {**timings, "capture_age": (t0 - frame.mono) * 1000},
                                       len(detections))
