"""ONNX Runtime CPU: FP32 against INT8 (`--target cpu`), speed, accuracy and size, in one run.

Models: the built-in demo detector (192×320), and an Ultralytics-style
YOLOv8n-sized model (benchmarks/make_yolov8n_like.py, random weights) at 640
and 320. Each is quantized by the same code as `edge-agent models quantize`
on frames of a generated clip, and the INT8 accuracy is measured on held-out
frames of that clip (mAP@0.5 drop against its ground truth). The YOLOv8n-sized
model has random weights, so it detects nothing and its accuracy figure means
nothing: only its speed and size are reported.

Speed is the bare engine (`Detector.infer`), batch 1, at 1 and 2 intra-op
threads: the median of rounds of 10 inferences, the variants of one model
timed in alternating rounds so that load from elsewhere on a shared host falls
on all of them alike. FP32 and INT8 both run as the agent runs them, with the
DFL rewrite (`engines/optimize/dfl_rewrite.py`); for models that have a DFL, FP32 as
exported (`fast_dfl: false`) is timed too, so the rewrite's own share shows.

    pip install torch==2.13.0   # only to build the YOLOv8n-sized model
    python benchmarks/int8_cpu.py --out benchmarks/results/int8_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.cli.calibration import sample_frames
from agent.cli.model_quantize import quantize_with_gate
from agent.config import validate_config
from agent.demo.clips import write_clip
from agent.demo.scene import SceneGenerator
from engines import DetectorConfig, load_detector, resolve_model_path
from engines.optimize.dfl_rewrite import rewrite_dfl


def _interleaved_ms(configs: dict[str, DetectorConfig], seconds: float) -> dict[str, float]:
    """Median ms per inference of each detector, timed in alternating rounds of 10 for `seconds` each."""
    detectors = {name: load_detector(config) for name, config in configs.items()}
    frame = SceneGenerator(seed=1).next_frame()[0]
    prepared = {name: d.preprocess([frame]) for name, d in detectors.items()}
    for name, detector in detectors.items():
        for _ in range(3):  # warm-up: first runs allocate and pick kernels
            detector.infer(prepared[name])
    rounds: dict[str, list[float]] = {name: [] for name in detectors}
    deadline = time.monotonic() + seconds * len(detectors)
    while time.monotonic() < deadline or min(map(len, rounds.values())) < 5:
        for name, detector in detectors.items():
            start = time.perf_counter()
            for _ in range(10):
                detector.infer(prepared[name])
            rounds[name].append((time.perf_counter() - start) / 10)
    for detector in detectors.values():
        detector.close()
    return {name: round(1000 * statistics.median(times), 2) for name, times in rounds.items()}


def _has_dfl(path: Path) -> bool:
    return rewrite_dfl(onnx.load(str(path))) > 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seconds", type=float, default=8.0, help="timing per variant, model and thread count")
    ap.add_argument("--method", default="entropy")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
        work = Path(tmp)
        clip = write_clip(work / "calib.mp4", seconds=40.0, seed=31337)  # 4 scenes, with ground truth
        frames = sample_frames(str(clip), 64, 64, validate_config({}))
        models = [("demo", "demo", True)]
        for size in (640, 320):
            path = work / f"yolov8n_like_{size}.onnx"
            subprocess.run([sys.executable, str(Path(__file__).with_name("make_yolov8n_like.py")),
                            "--out", str(path), "--imgsz", str(size)], check=True, capture_output=True)
            models.append((f"yolov8n-like {size}", str(path), False))
        for name, path, meaningful in models:
            out = work / f"{Path(path).stem}.int8.onnx"
            limits = (1.0, 0.9) if meaningful else (1e9, 0.0)  # random weights: no accuracy to guard
            result = quantize_with_gate(DetectorConfig(path=path), frames, out, "cpu", args.method, *limits)
            row = {"model": name, "fp32_mb": round(result.fp32_bytes / 1e6, 2),
                   "int8_mb": round(result.int8_bytes / 1e6, 2),
                   "quantized_convs": f"{result.model.quantized_convs}/{result.model.total_convs}"}
            if meaningful:
                gate = result.gate
                row.update(map50_fp32=round(gate.fp32_map50, 4), map50_int8=round(gate.int8_map50, 4),
                           drop_points=round(gate.drop_points, 2), accepted=gate.passed)
            fp32_path = resolve_model_path(path)
            has_dfl = _has_dfl(fp32_path)
            for threads in (1, 2):
                engine = {"intra_op_threads": threads}
                variants = {"fp32_ms": DetectorConfig(path=str(fp32_path), engine=engine),
                            "int8_ms": DetectorConfig(path=str(out), engine=engine)}
                if has_dfl:
                    variants["fp32_as_exported_ms"] = DetectorConfig(path=str(fp32_path),
                                                                     engine={**engine, "fast_dfl": False})
                times = _interleaved_ms(variants, args.seconds)
                row[f"threads{threads}"] = {**times, "speedup": round(times["fp32_ms"] / times["int8_ms"], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {"onnxruntime": onnxruntime.__version__, "cpu": platform.processor() or platform.machine(),
              "calibration": "64 frames of a generated 40 s clip, 64 held out", "method": args.method,
              "models": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
