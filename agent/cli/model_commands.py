"""`edge-agent detect`, `eval`, `models quantize` and `selftest`: model tools run on the device."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.cli.common import config_or_exit
from engines.optimize.accuracy_gate import DEFAULT_MAX_DROP_POINTS, DEFAULT_MIN_AGREEMENT
from engines.optimize.quantize import METHODS, MIN_CALIBRATION_FRAMES, TARGETS


def _detector(args: argparse.Namespace):
    from engines import BackendUnavailable, DetectorConfig, ModelError, load_detector

    settings: dict = {"path": args.model}
    if getattr(args, "labels", None):
        settings["labels"] = args.labels
    if getattr(args, "score_threshold", None) is not None:
        settings["score_threshold"] = args.score_threshold
    try:
        return load_detector(DetectorConfig(**settings))
    except (ModelError, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_detect(args: argparse.Namespace) -> int:
    import cv2

    detector = _detector(args)
    status = 0
    for image_path in args.images:
        image = cv2.imread(image_path)
        if image is None:
            print(f"error: cannot read image {image_path}", file=sys.stderr)
            status = 1
            continue
        detections = detector.detect([image])[0]
        if args.json:
            print(json.dumps({"image": image_path, "detections": [d.to_dict() for d in detections]}))
        else:
            print(f"{image_path}: {len(detections)} detection(s)")
            for d in detections:
                print(f"  {d.label:<12} {d.score:.2f}  " + " ".join(f"{v:.0f}" for v in d.box))
    return status


def cmd_eval(args: argparse.Namespace) -> int:
    import tempfile

    from agent.demo.clips import write_clip
    from agent.demo.evaluate import evaluate_clip

    detector = _detector(args)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(args.clip) if args.clip else write_clip(Path(tmp) / "held-out.mp4", args.seconds, args.seed)
        result = evaluate_clip(detector, clip)
    names = detector.labels
    report = {
        "model": detector.info.model_path,
        "clip": args.clip or f"generated (seed {args.seed}, {args.seconds:g}s)",
        "frames": result.frames,
        "truths": result.map50.truths,
        "map50": round(result.map50.map, 4),
        "map50_at_score_threshold": round(result.map50_at_operating.map, 4),
        "score_threshold": detector.score_threshold,
        "per_class_ap50": {names[c] if c < len(names) else str(c): round(ap, 4)
                           for c, ap in result.map50.per_class.items()},
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"mAP@0.5 {report['map50']:.3f} on {report['frames']} frames ({report['truths']} objects); "
              f"{report['map50_at_score_threshold']:.3f} counting only scores ≥ {detector.score_threshold}")
        for name, ap in report["per_class_ap50"].items():
            print(f"  {name:<12} AP50 {ap:.3f}")
    return 0


def cmd_models_quantize(args: argparse.Namespace) -> int:
    from agent.cli.calibration import CalibrationSourceError, sample_frames
    from agent.cli.model_quantize import quantize_with_gate
    from engines import ModelError
    from engines.optimize.quantize import QuantizationError

    config = config_or_exit(args.config)
    model = config.model.model_copy(update={"path": args.model})
    out = Path(args.out).expanduser()
    try:
        frames = sample_frames(args.calib, args.frames, args.holdout, config, args.interval)
        print(f"calibration: {frames.description}: {len(frames.calibration)} to calibrate, "
              f"{len(frames.holdout)} held out", file=sys.stderr)
        result = quantize_with_gate(model, frames, out, args.target, args.method, args.max_drop,
                                    args.min_agreement, gate_required=not args.no_gate)
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
        "verified": gate.passed,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"quantized {q.quantized_convs} of {q.total_convs} convolutions for {q.target} ({q.method}); "
              f"{len(q.output_convs)} output convolution(s) and the decode ({q.float_nodes} nodes), "
              f"{len(q.stem_convs)} stem convolution(s) kept float")
        print(f"size {result.fp32_bytes / 1e6:.2f} MB → {result.int8_bytes / 1e6:.2f} MB")
        print(gate.summary())
        if result.written and not gate.passed:
            print(f"wrote {result.written} anyway (--no-gate), marked UNVERIFIED: status and telemetry say so")
        else:
            print(f"wrote {result.written}" if result.written else f"nothing written to {out}")
    return 0 if result.written else 1


def cmd_selftest(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from agent.cli.selftest import format_results, run_selftest
    from engines import GpuResources

    config = config_or_exit(args.config)
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
    s = sub.add_parser("detect", help="detect objects in images")
    s.add_argument("--model", default="demo", help="ONNX file, or 'demo'")
    s.add_argument("--labels", type=Path)
    s.add_argument("--score-threshold", type=float)
    s.add_argument("--json", action="store_true")
    s.add_argument("images", nargs="+")
    s.set_defaults(func=cmd_detect)

    s = sub.add_parser("eval", help="mAP@0.5 of a model on a clip with ground truth")
    s.add_argument("--model", default="demo")
    s.add_argument("--clip", help="a clip with a FILE.json sidecar (default: a generated held-out clip)")
    s.add_argument("--seed", type=int, default=1000, help="seed of the generated clip")
    s.add_argument("--seconds", type=float, default=60.0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval)

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
    t.add_argument("--no-gate", action="store_true",
                   help="write the model even if the accuracy check refuses it (marked unverified in its metadata)")
    t.add_argument("--config", type=Path, help="agent config: cameras, model labels/input size")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_models_quantize)

    s = sub.add_parser("selftest", help="run the demo model through every engine here and compare with CPU FP32")
    s.add_argument("--config", type=Path, help="agent config (gpu budget, engine cache)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_selftest)
