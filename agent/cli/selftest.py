"""`edge-agent selftest`: every engine this machine has, checked against ONNX Runtime CPU FP32.

The demo model runs on generated frames through each engine (ORT CPU, CUDA EP,
TensorRT EP, native TensorRT, each in FP32/FP16 and INT8 where it applies).
Each available engine is timed and its detections scored against the CPU FP32
reference (agreement mAP@0.5); engines that are not available say why. This
is how a user proves a Jetson install works.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agent.cli.model_quantize import calibration_tensors, predictions
from agent.demo.scene import SceneGenerator
from engines import BackendUnavailable, DetectorConfig, GpuResources, ModelError, load_detector
from engines.config import ENGINE_PRESETS
from engines.gpu_budget import MIB
from engines.optimize.accuracy_gate import against_fp32
from engines.optimize.quantize import QuantizationError, quantize_model

FRAMES = 12
CALIBRATION_FRAMES = 16
MIN_AGREEMENT = 0.90


@dataclass
class EngineResult:
    name: str
    status: str  # "ok", "FAIL", "unavailable"
    ms_per_frame: float | None = None
    agreement: float | None = None
    gpu_mb: float | None = None  # budget held while loaded
    note: str = ""


def _variants(int8_cpu: Path | None, int8_trt: Path | None) -> list[tuple[str, dict]]:
    """(row name, DetectorConfig settings) for every engine after the CPU FP32 reference."""
    preset = ENGINE_PRESETS
    ort_trt_int8 = {**preset["onnxruntime-tensorrt"], "tensorrt": {"int8": True}}
    return [("onnxruntime-cpu int8", {"path": int8_cpu, "engine": preset["onnxruntime-cpu"]}),
            ("onnxruntime-cuda fp32", {"engine": preset["onnxruntime-cuda"]}),
            ("onnxruntime-tensorrt fp16", {"engine": preset["onnxruntime-tensorrt"]}),
            ("onnxruntime-tensorrt int8", {"path": int8_trt, "engine": ort_trt_int8}),
            ("tensorrt fp16", {"engine": preset["tensorrt"]}),
            ("tensorrt int8", {"path": int8_trt, "engine": preset["tensorrt"]})]


def _time_and_score(config: DetectorConfig, gpu: GpuResources, frames: list, reference: list,
                    operating: float) -> tuple[float, float, int]:
    """Median ms per frame, agreement with the reference, and GPU bytes held while loaded."""
    detector = load_detector(config, gpu)
    held = gpu.budget.snapshot().used_bytes
    try:
        got = predictions(detector, frames)  # also the warm-up
        times = []
        for frame in frames:
            t0 = time.perf_counter()
            detector.detect([frame])
            times.append(time.perf_counter() - t0)
    finally:
        detector.close()
    agreement = against_fp32(reference, got, operating, MIN_AGREEMENT).agreement_map50 or 0.0
    return statistics.median(times) * 1000, agreement, held


def run_selftest(gpu: GpuResources, cache_dir: Path) -> list[EngineResult]:
    frames = [SceneGenerator(seed=(900, i)).next_frame()[0] for i in range(FRAMES)]
    calib = [SceneGenerator(seed=(901, i)).next_frame()[0] for i in range(CALIBRATION_FRAMES)]
    base = DetectorConfig()
    reference_detector = load_detector(base)
    reference = predictions(reference_detector, frames)
    operating = reference_detector.score_threshold
    tensors = calibration_tensors(reference_detector, calib)
    model_path = Path(reference_detector.info.model_path)
    reference_detector.close()
    results = []
    ms, _, _ = _time_and_score(base, gpu, frames, reference, operating)
    results.append(EngineResult("onnxruntime-cpu fp32", "ok", ms, 1.0, note="reference"))
    with tempfile.TemporaryDirectory(prefix="edge-selftest-") as tmp:
        int8 = {}
        for target in ("cpu", "tensorrt"):
            try:
                int8[target] = quantize_model(model_path, Path(tmp) / f"demo.{target}.onnx", "images", tensors,
                                              target, "minmax").path
            except QuantizationError as exc:
                int8[target] = None
                results.append(EngineResult(f"quantize {target}", "FAIL", note=str(exc)))
        for name, settings in _variants(int8["cpu"], int8["tensorrt"]):
            settings = dict(settings)
            if "path" in settings and settings["path"] is None:
                continue
            if settings["engine"].get("type") == "tensorrt":
                settings["engine"] = {**settings["engine"], "cache_dir": str(cache_dir)}
            config = DetectorConfig(**{k: str(v) if k == "path" else v for k, v in settings.items()})
            try:
                ms, agreement, held = _time_and_score(config, gpu, frames, reference, operating)
            except BackendUnavailable as exc:
                results.append(EngineResult(name, "unavailable", note=str(exc)))
                continue
            except (ModelError, RuntimeError) as exc:
                results.append(EngineResult(name, "FAIL", note=str(exc)))
                continue
            status = "ok" if agreement >= MIN_AGREEMENT else "FAIL"
            note = "" if status == "ok" else f"agreement below {MIN_AGREEMENT}"
            on_gpu = not name.startswith("onnxruntime-cpu")
            results.append(EngineResult(name, status, ms, agreement, round(held / MIB, 1) if on_gpu else None, note))
    return results


def format_results(results: list[EngineResult], gpu: GpuResources) -> str:
    lines = [f"{'engine':<27} {'status':<11} {'ms/frame':>8} {'agree':>6} {'GPU MiB':>8}  note"]
    for r in results:
        ms = f"{r.ms_per_frame:.2f}" if r.ms_per_frame is not None else "-"
        agree = f"{r.agreement:.3f}" if r.agreement is not None else "-"
        mem = f"{r.gpu_mb:g}" if r.gpu_mb is not None else "-"
        lines.append(f"{r.name:<27} {r.status:<11} {ms:>8} {agree:>6} {mem:>8}  {r.note[:110]}")
    snap = gpu.budget.snapshot()
    lines.append(f"GPU budget {snap.limit_bytes / MIB:.0f} MiB: peak {snap.peak_bytes / MIB:.1f} MiB, "
                 f"{snap.refusals} refusal(s); agreement = mAP@0.5 against ONNX Runtime CPU FP32 "
                 f"on {FRAMES} generated frames (pass ≥ {MIN_AGREEMENT})")
    return "\n".join(lines)
