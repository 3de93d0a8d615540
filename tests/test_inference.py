"""The inference worker: fair round-robin across cameras, batching, stage timings."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.capture.frames import Frame, FrameSlot
from agent.pipeline.inference import InferenceWorker
from agent.pipeline.metrics import PipelineMetrics
from engines import Detection, DetectorConfig, load_detector
from tests.helpers import wait_for
from tests.onnx_models import make_constant_model, yolov8_output


def worker_for(tmp_path: Path, cameras: int, max_batch: int, dynamic: bool = True):
    out = yolov8_output([(0, 0.9, (10, 10, 50, 50))], 2)
    model = make_constant_model(tmp_path / "m.onnx", out, dynamic_batch=dynamic)
    detector = load_detector(DetectorConfig(path=str(model), max_batch=max_batch))
    wake = threading.Event()
    slots = [FrameSlot(blocking=False, wake=wake) for _ in range(cameras)]
    sunk: list[tuple[Frame, list[Detection]]] = []
    metrics = PipelineMetrics()
    worker = InferenceWorker(detector, lambda: slots, lambda f, d: sunk.append((f, d)), metrics, wake)
    return worker, slots, sunk, metrics


def fill(slots: list[FrameSlot], number: int) -> None:
    for i, slot in enumerate(slots):
        slot.put(Frame(f"cam{i}", number, np.zeros((64, 64, 3), np.uint8), 0, 0.0))


def test_round_robin_never_starves_a_camera(tmp_path: Path) -> None:
    worker, slots, _, _ = worker_for(tmp_path, cameras=3, max_batch=2)
    served = []
    for n in range(6):
        fill(slots, n)  # every camera always has a fresh frame
        served.append([f.camera for f in worker.collect()])
    assert served[:3] == [["cam0", "cam1"], ["cam2", "cam0"], ["cam1", "cam2"]]
    counts = {c: sum(batch.count(c) for batch in served) for c in ("cam0", "cam1", "cam2")}
    assert counts == {"cam0": 4, "cam1": 4, "cam2": 4}


def test_fixed_batch_one_model_serves_cameras_in_turn(tmp_path: Path) -> None:
    worker, slots, _, _ = worker_for(tmp_path, cameras=3, max_batch=8, dynamic=False)
    assert worker.detector.max_batch == 1
    fill(slots, 0)
    assert [worker.collect()[0].camera for _ in range(3)] == ["cam0", "cam1", "cam2"]


def test_batch_across_cameras_is_processed_and_timed_per_camera(tmp_path: Path) -> None:
    worker, slots, sunk, metrics = worker_for(tmp_path, cameras=3, max_batch=4)
    fill(slots, 7)
    batch = worker.collect()
    assert len(batch) == 3
    worker.process(batch)
    assert worker.batches == 1
    assert sorted(f.camera for f, _ in sunk) == ["cam0", "cam1", "cam2"]
    assert all(len(d) == 1 and d[0].box == pytest.approx((2, 2, 10, 10)) for _, d in sunk)  # 64 px → 320 input: ×5
    for cam in ("cam0", "cam1", "cam2"):
        summary = metrics.camera_summary(cam)
        assert summary["frames"] == 1 and summary["detections"] == 1
        assert all(summary["stages"][s]["p50_ms"] is not None for s in ("pre", "infer", "post", "capture_age"))


class FailingInfer:
    """Fault injection around a real detector: its inference raises, as a GPU context gone bad does."""

    def __init__(self, real) -> None:
        self._real = real
        self.calls: list[float] = []  # monotonic time of each attempt
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self._real.close()

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def infer(self, prepared):
        self.calls.append(time.monotonic())
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_inference_that_keeps_failing_backs_off_reloads_the_engine_and_says_so(
        tmp_path: Path, short_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import runtime as runtime_mod
    from agent.config import validate_config
    from agent.pipeline import inference as inference_mod
    from engines import ModelError

    monkeypatch.setattr(inference_mod, "RELOAD_AFTER", 4)
    real_load = runtime_mod.Runtime._load_model
    loads: list[dict] = []
    broken: list[FailingInfer] = []

    def load(self, model_config):
        loads.append(self.status() if loads else {})  # what the device said just before each reload
        if len(loads) == 1:
            broken.append(FailingInfer(real_load(self, model_config)))
            return broken[0]
        if len(loads) == 2:
            raise ModelError("the GPU is still busy")  # the first reload fails: tried again later
        return real_load(self, model_config)

    monkeypatch.setattr(runtime_mod.Runtime, "_load_model", load)
    runtime = runtime_mod.Runtime(validate_config({
        # unpaced: a frame is always waiting, so the gaps between attempts are the worker's own waits
        "cameras": [{"name": "front", "source": str(short_clip), "loop": True, "realtime": False}],
        "storage": {"path": str(tmp_path / "data")},
    }))
    runtime.start()
    try:
        wait_for(lambda: runtime.worker.reloads == 1, what="the engine reloaded")
        wait_for(lambda: runtime.latest_detections.get("front") is not None, what="frames through the new engine")
        wait_for(lambda: runtime.status()["cameras"]["front"]["degraded"] is None, what="the camera well again")
        assert len(loads) == 3 and runtime.detector is not broken[0]
        failed_reload, retried = loads[1], loads[2]  # what the device said before each reload
        assert any("inference failing (4 in a row" in p for p in failed_reload["problems"])
        assert "reloading the engine" in failed_reload["cameras"]["front"]["degraded"]
        assert failed_reload["cameras"]["front"]["state"] == "running"  # capture was fine: degraded says why
        assert retried["engine"] is None  # no engine between the tries
        assert any("the last reload failed: ModelError: the GPU is still busy" in p for p in retried["problems"])
        assert broken[0].closed  # closed before the reload: its GPU memory was needed
        gaps = [b - a for a, b in zip(broken[0].calls, broken[0].calls[1:])]
        assert len(broken[0].calls) == 4 and gaps[-1] > 2 * gaps[0]  # waits grew: no 50 ms loop
        status = runtime.status()
        assert status["inference_errors"] == 4 and status["frames_failed"] >= 4 and status["engine_reloads"] == 1
        assert runtime.problems() == []
        assert runtime.telemetry.read()["inference"] == {"inference_errors": 4, "frames_failed":
                                                         status["frames_failed"], "engine_reloads": 1}
    finally:
        runtime.stop()


class FailsForSmallFrames:
    """Fault injection around a real detector: frames of one camera (320 px wide) break preprocessing."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def preprocess(self, images, buffer=0, source_sizes=None):
        if any(image.shape[1] == 320 for image in images):
            raise ValueError("cannot letterbox this frame")
        return self._real.preprocess(images, buffer, source_sizes)


def test_a_camera_whose_frames_break_inference_is_kept_apart_and_the_others_go_on(
        tmp_path: Path, short_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import runtime as runtime_mod
    from agent.config import validate_config
    from agent.demo.clips import write_clip

    small = write_clip(tmp_path / "small.mp4", seconds=1.0, seed=5, width=320, height=240)
    real_load = runtime_mod.Runtime._load_model
    monkeypatch.setattr(runtime_mod.Runtime, "_load_model", lambda self, c: FailsForSmallFrames(real_load(self, c)))
    runtime = runtime_mod.Runtime(validate_config({
        "cameras": [{"name": "good", "source": str(short_clip), "loop": True, "realtime": False},
                    {"name": "bad", "source": str(small), "loop": True, "realtime": False}],
        "storage": {"path": str(tmp_path / "data")},
    }))
    runtime.start()
    try:
        wait_for(lambda: runtime.status()["cameras"]["bad"]["degraded"] is not None, what="the bad camera found")
        counted = runtime.metrics.frames.get("good", 0)
        wait_for(lambda: runtime.metrics.frames.get("good", 0) > counted + 20, what="the good camera going on")
        status = runtime.status()
        assert "its frames fail inference" in status["cameras"]["bad"]["degraded"]
        assert status["cameras"]["good"]["degraded"] is None and status["engine_reloads"] == 0
        assert runtime.worker.consecutive_errors == 0 and runtime.metrics.frames.get("bad", 0) == 0
        assert status["inference_errors"] < 20  # tried alone, less and less often: not once per batch
    finally:
        runtime.stop()


class OverlapProbe:
    """A real detector whose first run cannot finish before the second one has: shows runs overlap."""

    def __init__(self, real) -> None:
        self._real = real
        self.second_done = threading.Event()
        self.overlapped: bool | None = None
        self._calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def infer(self, prepared):
        with self._lock:
            self._calls += 1
            call = self._calls
        outputs = self._real.infer(prepared)
        if call == 1:
            self.overlapped = self.second_done.wait(timeout=10)  # a worker that runs one at a time never gets here
        elif call == 2:
            self.second_done.set()
        return outputs


def test_two_runs_in_flight_overlap_and_still_reach_the_store_in_frame_order(tmp_path: Path) -> None:
    model = make_constant_model(tmp_path / "m.onnx", yolov8_output([(0, 0.9, (10, 10, 50, 50))], 2))
    real = load_detector(DetectorConfig(path=str(model),
                                        engine={"type": "onnxruntime", "concurrent_runs": 2, "intra_op_threads": 1}))
    assert real.concurrent_runs == 2
    probe = OverlapProbe(real)
    wake = threading.Event()
    slot = FrameSlot(blocking=True, wake=wake)  # an unpaced file: every frame, none dropped
    sunk: list[int] = []
    worker = InferenceWorker(probe, lambda: [slot], lambda f, d: sunk.append(f.number), PipelineMetrics(), wake)
    worker.start()
    try:
        for n in range(6):
            assert slot.put(Frame("cam0", n, np.full((64, 64, 3), n, np.uint8), 0, time.monotonic()))
        wait_for(lambda: len(sunk) == 6, what="every frame through")
    finally:
        worker.stop()
        worker.join(5)
    assert probe.overlapped is True  # frame 1 was inferred while frame 0 still was
    assert sunk == [0, 1, 2, 3, 4, 5]  # frame 0 finished last of the two, yet was stored first
    assert worker.errors == 0


def test_stopping_the_worker_stores_what_is_in_flight(tmp_path: Path) -> None:
    worker, slots, sunk, _ = worker_for(tmp_path, cameras=2, max_batch=1, dynamic=False)
    fill(slots, 3)
    worker.start()
    wait_for(lambda: len(sunk) == 2, what="both frames through")
    worker.stop()
    assert worker.join(5)
    assert sorted(f.camera for f, _ in sunk) == ["cam0", "cam1"]
