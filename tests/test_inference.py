"""The inference worker: fair round-robin across cameras, batching, stage timings."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from agent.capture.frames import Frame, FrameSlot
from agent.pipeline.inference import InferenceWorker
from agent.pipeline.metrics import PipelineMetrics
from engines import Detection, DetectorConfig, load_detector
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
