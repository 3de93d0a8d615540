"""`edge-agent models ...` and `selftest`: model tools run on the device."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engines.optimize.accuracy_gate import DEFAULT_MAX_DROP_POINTS, DEFAULT_MIN_AGREEMENT
from engines.optimize.quantize import METHODS, MIN_CALIBRATION_FRAMES, TARGETS


def cmd_models_quantize(args: argparse.Namespace) -> int:
    from agent.cli.calibration import CalibrationSourceError, sample_frames
    from agent.cli.main import _config_or_exit
    from agent.cli.model_quantize import quantize_with_gate
    from engines import ModelError
    from engines.optimize.quantize import QuantizationError

    config = _config_or_exit(args.config)
    model = config.model.model_copy(update={"path": args.model})
    out = Path(args.out).expanduser()
    try:
        frames = sample_frames(args.calib, args.frames, args.holdout, config, args.interval)
        print(f"calibration: {frames.description}: {len(frames.calibration)} to calibrate, "
              f"{len(frames.holdout)} held out", file=sys.stderr)
        result = quantize_with_gate(model, frames, out, args.target, args.method, args.max_drop,
                                    args.min_agreement)
    except (CalibrationSourceError, QuantizationError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    q, gate = result.model, result.gate
    report = {
        "model": args.model, "out": str(result.written) if result.written else None, "target": q.target,
        "method": q.method, "calibration_frames": q.calibration_frames, "float_head_nodes": q.float_nodes,
        "float_output_convs": list(q.output_convs), "float_stem_convs": list(q.stem_convs),
        "quantized_convs": q.quantized_convs,
        "total_convs": q.total_convs, "fp32_bytes": result.fp32_bytes, "int8_bytes": result.int8_bytes,
        "gate": {k: v for k, v in vars(gate).items() if v is not None}, "accepted": gate.passed,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"quantized {q.quantized_convs} of {q.total_convs} convolutions for {q.target} ({q.method}); "
              f"{len(q.output_convs)} output convolution(s) and the decode ({q.float_nodes} nodes), "
              f"{len(q.stem_convs)} stem convolution(s) kept float")
        print(f"size {result.fp32_bytes / 1e6:.2f} MB → {result.int8_bytes / 1e6:.2f} MB")
        print(gate.summary())
        print(f"wrote {result.written}" if result.written else f"nothing written to {out}")
    return 0 if gate.passed else 1


def cmd_selftest(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from agent.cli.main import _config_or_exit
    from agent.cli.selftest import format_results, run_selftest
    from engines import GpuResources

    config = _config_or_exit(args.config)
    gpu = GpuResources(config.gpu.memory_budget_mb, config.gpu.device_id)
    cache = config.model.engine.cache_dir if config.model.engine.type == "tensorrt" else \
        config.storage.path / "engines"
    results = run_selftest(gpu, Path(cache).expanduser())
    if args.json:
        print(json.dumps({"engines": [asdict(r) for r in results], "gpu_memory": gpu.report()}))
    else:
        print(format_results(results, gpu))
    return 1 if any(r.status == "FAIL" for r in results) else 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("models", help="model tools: INT8 quantization with an accuracy check")
    models = s.add_subparsers(dest="models_command", required=True)
    t = models.add_parser("quantize", help="INT8 from frames of this device's scene, accepted only if accurate")
    t.add_argument("--model", required=True, help="FP32 ONNX file, or 'demo'")
    t.add_argument("--calib", required=True, metavar="SOURCE",
                   help="a folder of images, a video file, or a configured camera's name")
    t.add_argument("--out", required=True, help="where the INT8 model goes (only if accepted)")
    t.add_argument("--target", choices=TARGETS, default="cpu",
                   help="cpu: U8 activations for ONNX Runtime on CPU; tensorrt: symmetric S8 for TensorRT")
    t.add_argument("--method", choices=METHODS, default="entropy", help="calibration method")
    t.add_argument("--frames", type=int, default=64, help=f"calibration frames (at least {MIN_CALIBRATION_FRAMES})")
    t.add_argument("--holdout", type=int, default=32, help="held-out frames for the accuracy check")
    t.add_argument("--interval", type=float, default=0.5, help="seconds between frames from a live camera")
    t.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP_POINTS,
                   help="refuse if mAP@0.5 drops more than this many points (sources with ground truth)")
    t.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                   help="refuse if agreement mAP@0.5 with FP32 is below this (sources without ground truth)")
    t.add_argument("--config", type=Path, help="agent config: cameras, model labels/input size")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_models_quantize)

    s = sub.add_parser("selftest", help="run the demo model through every engine here and compare with CPU FP32")
    s.add_argument("--config", type=Path, help="agent config (gpu budget, engine cache)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_selftest)
