"""The inference worker: newest frame of each camera in turn, batched, timed.

Each frame passes its camera's gate first (agent.pipeline.motion: still frames and shed cameras
skip inference, counted there); the quality level may cap the batch.

Cameras are visited round-robin from a rotating start, so when a batch fills
before every camera was visited the next batch starts where this one stopped:
no camera starves. Frames go through pre → infer → post, and the detections
are handed to the store.

Up to the detector's `concurrent_runs` batches are in flight: this thread
letterboxes a batch into a free input buffer and hands `infer` to a run thread,
then collects the next batch while the first infers. Results are taken in the
order the batches went out, so each camera's detections reach the store in
frame order.

Inference that fails is retried with a growing wait (never a hot loop); after
RELOAD_AFTER failures in a row the engine is reloaded from its config (a GPU
context or session gone bad comes back that way), and each camera whose frames
failed says so (`degraded`) until one of its frames goes through again. When a
batch of several cameras fails, each frame is tried alone: a camera whose frames
alone fail is kept out of batches (tried on its own, less and less often) while
the others go on, and the engine is not blamed for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass

import numpy as np

from agent.backoff import Backoff
from agent.capture.frames import Frame, FrameSlot
from agent.pipeline.metrics import PipelineMetrics
from agent.pipeline.motion import MotionGate
from engines import Detection, Detector
from engines.detector import PreparedBatch

log = logging.getLogger(__name__)

Sink = Callable[[Frame, list[Detection]], None]
# The failing detector (or None) → a fresh one; None: not now. It closes the failing one first; raises if
# the fresh one does not load.
Reload = Callable[[Detector | None], Detector | None]
RELOAD_AFTER = 5  # failures in a row before the engine is reloaded


@dataclass
class _InFlight:
    """A batch whose `infer` runs on a run thread; the future gives (outputs, infer start, infer end)."""

    batch: list[Frame]
    prepared: PreparedBatch
    detector: Detector
    started: float  # monotonic, before pre-processing
    pre_ms: float
    future: Future[tuple[list[np.ndarray], float, float]]


def _timed_infer(detector: Detector, prepared: PreparedBatch) -> tuple[list[np.ndarray], float, float]:
    t1 = time.monotonic()
    outputs = detector.infer(prepared)
    return outputs, t1, time.monotonic()


TICK_S = 0.5


class InferenceWorker:
    """One worker thread per detector, and a run thread per batch it may have in flight."""

    def __init__(self, detector: Detector | None, slots: Callable[[], list[FrameSlot]], sink: Sink,
                 metrics: PipelineMetrics, wake: threading.Event, reload: Reload | None = None,
                 gates: Callable[[str], MotionGate | None] = lambda _camera: None,
                 held: Callable[[Frame], None] = lambda _frame: None,
                 tick: Callable[[float], None] = lambda _now: None) -> None:
        self.detector = detector
        self._slots = slots
        self._gates = gates
        self._held = held  # a frame the motion gate kept from inference (the tracker's clock moves on)
        self._tick = tick  # about twice a second, on this thread: cameras that went silent end their objects
        self._next_tick = 0.0
        self.batch_cap: int | None = None  # the quality level's; None: the engine's own max_batch
        self._sink = sink
        self._metrics = metrics
        self._wake = wake
        self._reload = reload
        self._backoff = Backoff(0.05, 5.0)
        self.consecutive_errors = 0
        self.heartbeat = time.monotonic()  # the loop's last turn: the health page's liveness
        self.reloads = 0
        self.reload_error: str | None = None  # why the last reload failed
        self.reloading = False
        self.degraded: dict[str, str] = {}  # camera → why its frames are failing (bounded by the cameras)
        # camera → (monotonic retry time, backoff): a camera whose frames alone fail, kept out of batches
        self._quarantine: dict[str, tuple[float, Backoff]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._in_flight: deque[_InFlight] = deque()  # bounded by the detector's concurrent_runs
        self._runs: ThreadPoolExecutor | None = None
        self._runs_size = 0
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
        cap = self.detector.max_batch if self.batch_cap is None else min(self.batch_cap, self.detector.max_batch)
        now = time.monotonic()
        for k in range(n):
            frame = slots[(start + k) % n].take()
            if frame is not None and self._admitted(frame, now):
                batch.append(frame)
                if len(batch) == cap:
                    self._next = start + k + 1
                    return batch
        self._next = start + 1
        return batch

    def _admitted(self, frame: Frame, now: float) -> bool:
        gate = self._gates(frame.camera)
        if gate is None or gate.admit(frame.image, now):
            return True
        if not gate.shed:
            self._held(frame)
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.heartbeat = time.monotonic()
                if self.detector is None:  # a reload closed the failing engine and could not load a new one
                    self._stop.wait(self._backoff.next_delay())
                    if not self._stop.is_set():
                        self._reload_engine()
                    continue
                if (now := time.monotonic()) >= self._next_tick:
                    self._next_tick = now + TICK_S
                    self._tick(now)
                self._wake.clear()  # before looking: a frame or a finished run after this wakes the wait
                if self._complete_finished():
                    continue
                if len(self._in_flight) < self._runs_allowed() and (batch := self.collect()):
                    self._dispatch(batch)
                    continue
                self._wake.wait(0.2)
        finally:
            self._drain()  # what is in flight still reaches the store
            if self._runs is not None:
                self._runs.shutdown(wait=True)

    def _runs_allowed(self) -> int:
        """Runs in flight: the detector's, but one at a time while inference is failing (each try waits
        its backoff; a broken engine is not hit twice at once)."""
        return 1 if self.consecutive_errors else self.detector.concurrent_runs

    def _dispatch(self, batch: list[Frame]) -> None:
        """Letterbox the healthy frames into a free buffer and start their run; quarantined ones alone."""
        now = time.monotonic()
        healthy = [f for f in batch if f.camera not in self._quarantine]
        if healthy:
            self._start_run(healthy)
        alone = [f for f in batch if f.camera in self._quarantine]
        if alone:
            self._drain()  # tried synchronously: no run may hold the buffer it uses
            for frame in alone:
                self._retry_alone(frame, now)

    def _start_run(self, batch: list[Frame]) -> None:
        det = self.detector
        runs = det.concurrent_runs
        if self._runs is None or self._runs_size != runs:  # first batch, or a reload changed the engine
            self._drain()
            if self._runs is not None:
                self._runs.shutdown(wait=True)
            self._runs, self._runs_size = ThreadPoolExecutor(runs, thread_name_prefix="inference-run"), runs
        busy = {item.prepared.buffer for item in self._in_flight}
        buffer = next(b for b in range(runs) if b not in busy)
        started = time.monotonic()
        try:
            prepared = det.preprocess([f.image for f in batch], buffer, [f.source_size for f in batch])
        except Exception:  # the synchronous path retries, isolates and reports it
            self._drain()
            self._run_batch(batch)
            return
        pre_ms = (time.monotonic() - started) * 1000
        future = self._runs.submit(_timed_infer, det, prepared)
        future.add_done_callback(lambda _: self._wake.set())
        self._in_flight.append(_InFlight(batch, prepared, det, started, pre_ms, future))

    def _complete_finished(self) -> bool:
        """Finish the oldest runs that are done, in the order they went out; True if any was."""
        finished = False
        while self._in_flight and self._in_flight[0].future.done():
            self._complete(self._in_flight.popleft())
            finished = True
        return finished

    def _drain(self) -> None:
        """Wait for every run in flight and finish them all, in order."""
        wait_futures([item.future for item in self._in_flight])
        while self._in_flight:
            self._complete(self._in_flight.popleft())

    def _complete(self, item: _InFlight) -> None:
        try:
            outputs, t1, t2 = item.future.result()
            post_start = time.monotonic()
            results = item.detector.postprocess(item.prepared, outputs)
        except Exception as exc:
            # the later runs must finish before the synchronous retry reuses their buffers
            wait_futures([later.future for later in self._in_flight])
            if len(item.batch) == 1 or not self._isolate(item.batch):
                self._engine_failed(item.batch, exc)
            return
        self._engine_ok()
        for frame in item.batch:
            self.degraded.pop(frame.camera, None)
        done = time.monotonic()
        self._deliver(item.batch, results, item.started, done, {
            "pre": item.pre_ms, "infer": (t2 - t1) * 1000, "post": (done - post_start) * 1000})

    def _run_batch(self, batch: list[Frame]) -> None:
        try:
            self.process(batch)
        except Exception as exc:  # one bad frame or runtime hiccup must not stop the pipeline
            if len(batch) == 1 or not self._isolate(batch):
                self._engine_failed(batch, exc)
            return
        self._engine_ok()
        for frame in batch:
            self.degraded.pop(frame.camera, None)

    def _isolate(self, batch: list[Frame]) -> bool:
        """A batch failed: each frame alone tells a camera whose frames break inference from a broken
        engine. True if some frames went through (the cameras that failed are quarantined)."""
        failures: list[tuple[Frame, Exception]] = []
        for frame in batch:
            try:
                self.process([frame])
            except Exception as exc:
                failures.append((frame, exc))
        if len(failures) == len(batch):
            return False
        self._engine_ok()
        for frame, exc in failures:
            self._camera_failed(frame, exc)
        return True

    def _retry_alone(self, frame: Frame, now: float) -> None:
        """A quarantined camera's frame: dropped (counted) until its retry time, then tried on its own."""
        retry_at, _ = self._quarantine[frame.camera]
        if now < retry_at:
            self.frames_failed += 1
            return
        try:
            self.process([frame])
        except Exception as exc:
            self._camera_failed(frame, exc)
            return
        del self._quarantine[frame.camera]
        self.degraded.pop(frame.camera, None)
        log.info("camera %s: inference works again for its frames", frame.camera)

    def _camera_failed(self, frame: Frame, exc: Exception) -> None:
        self.errors += 1
        self.frames_failed += 1
        error = f"{type(exc).__name__}: {exc}"
        _, backoff = self._quarantine.get(frame.camera, (0.0, Backoff(0.5, 30.0)))
        self._quarantine[frame.camera] = (time.monotonic() + backoff.next_delay(), backoff)
        self.degraded[frame.camera] = f"its frames fail inference ({backoff.attempts} in a row): {error}"
        if backoff.attempts <= 3:
            log.warning("camera %s: its frames fail inference, the other cameras go on: %s", frame.camera, error)

    def _engine_ok(self) -> None:
        if self.consecutive_errors:
            log.info("inference works again after %d failures", self.consecutive_errors)
        self.consecutive_errors = 0
        self._backoff.reset()

    def _engine_failed(self, batch: list[Frame], exc: Exception) -> None:
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
        """Hand the failing engine to `reload`, which closes it before loading afresh (its GPU memory is
        needed for the new one). If the load fails there is no engine until a later try succeeds."""
        log.warning("inference failed %d times in a row: reloading the engine", self.consecutive_errors)
        assert self._reload is not None
        self.reloading = True  # a load can take long (a TensorRT build): the loop is busy, not stalled
        try:
            fresh = self._reload(self.detector)
        except Exception as exc:  # the reload is a remedy; its failure is one more thing to report, not a crash
            self.reload_error = f"{type(exc).__name__}: {exc}"
            self.detector = None
            log.error("engine reload failed: %s", self.reload_error)
            return
        finally:
            self.reloading = False
        if fresh is not None:
            self.detector = fresh
            self.reloads += 1
            self.reload_error = None

    def process(self, batch: list[Frame]) -> None:
        """All three stages on this thread, in buffer 0: only while no run is in flight."""
        det = self.detector
        t0 = time.monotonic()
        prepared = det.preprocess([f.image for f in batch], 0, [f.source_size for f in batch])
        t1 = time.monotonic()
        outputs = det.infer(prepared)
        t2 = time.monotonic()
        results = det.postprocess(prepared, outputs)
        t3 = time.monotonic()
        self._deliver(batch, results, t0, t3, {"pre": (t1 - t0) * 1000, "infer": (t2 - t1) * 1000,
                                               "post": (t3 - t2) * 1000})

    def _deliver(self, batch: list[Frame], results: list[list[Detection]], t0: float, t3: float,
                 timings: dict[str, float]) -> None:
        """Hand each frame's detections to the sink and record its stage times (t0: before pre, t3: done)."""
        self.batches += 1
        for frame, detections in zip(batch, results):
            self._sink(frame, detections)
            if detections and (gate := self._gates(frame.camera)) is not None:
                gate.saw_objects(t3)
            self._metrics.record_frame(frame.camera, {**timings, "capture_age": (t0 - frame.mono) * 1000,
                                                      "result": (t3 - frame.mono) * 1000}, len(detections))
