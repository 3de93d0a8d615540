"""Overload: more cameras than the device can serve, with the quality controller on and off (dev only).

Four demo-like 720p cameras (generated clips of moving shapes, paced at 15 fps like live cameras),
one model (e.g. the YOLOv8n-sized one from benchmarks/make_yolov8n_like.py) on this machine's CPU.
`off` holds the default level (`quality.mode: fixed`), `auto` lets the controller work from the
same start. Every second the script samples the controller's own reading; at the end it reports
p95 capture→result over the last `--steady` seconds of each run (every frame's latency, from the
pipeline's windows), processed fps, frames dropped before inference, the transitions and when the
last one happened (the settling time).

    python benchmarks/quality_overload.py --model /tmp/yolov8n_like.onnx [--seconds 150] [--steady 60] \
        [--variant small=/tmp/yolov8n_like_320.onnx] [--out benchmarks/results/quality_overload.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.config import validate_config
from agent.demo.clips import write_clip
from agent.runtime import Runtime

CAMERAS = 4
FPS = 15.0


def run(clips: list[Path], model: str, mode: str, seconds: float, steady: float, work: Path,
        sla_ms: float | None, variants: dict[str, str]) -> dict:
    quality: dict = {"mode": mode, "level": "high"} if mode == "fixed" else {"mode": "auto"}
    quality["models"] = variants
    if sla_ms is not None:
        quality["sla_ms"] = sla_ms
    runtime = Runtime(validate_config({
        "cameras": [{"name": f"cam{i}", "source": str(c), "fps": FPS, "loop": True} for i, c in enumerate(clips)],
        "model": {"path": model}, "quality": quality,
        "storage": {"path": str(work / f"data-{mode}")}, "web": {"listen": None},
    }))
    start = time.monotonic()
    runtime.start()
    samples = []
    steady_from: dict[str, tuple[int, int]] | None = None
    frames_from: dict[str, int] = {}
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            time.sleep(1.0)
            q = runtime.status()["quality"]
            signals = q.get("signals") or {}
            samples.append({"t_s": round(elapsed, 1), "level": q["level"], "cameras": q["cameras"],
                            "result_p95_ms": signals.get("result_p95_ms"), "drops": signals.get("drop_fraction")})
            if steady_from is None and elapsed >= seconds - steady:
                steady_from = {n: (c.frames_captured, c.slot.dropped) for n, c in runtime.cameras.items()}
                frames_from = dict(runtime.metrics.frames)
        assert steady_from is not None, "--steady must be shorter than --seconds"
        latencies = runtime.metrics.recent("result", steady)
        status = runtime.status()
        captured = sum(c.frames_captured - steady_from[n][0] for n, c in runtime.cameras.items())
        dropped = sum(c.slot.dropped - steady_from[n][1] for n, c in runtime.cameras.items())
        processed = sum(runtime.metrics.frames[n] - frames_from.get(n, 0) for n in runtime.cameras)
    finally:
        runtime.stop()
    transitions = status["quality"]["transitions"]
    return {
        "mode": mode, "sla_ms": status["quality"]["sla_ms"], "seconds": seconds, "steady_s": steady,
        "steady_result_p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
        "steady_result_p95_ms": round(float(np.percentile(latencies, 95)), 1) if len(latencies) else None,
        "steady_processed_fps": round(processed / steady, 2),
        "steady_dropped_fraction": round(dropped / captured, 3) if captured else None,
        "final_levels": status["quality"]["cameras"],
        "transitions": [{k: t[k] for k in ("from", "to", "cameras", "signal", "reason")} for t in transitions],
        "settled_after_s": _settled(samples),
        "engine": status["engine"] and {k: status["engine"][k] for k in ("model_path", "input_height", "input_width")},
        "samples": samples,
    }


def _settled(samples: list[dict]) -> float | None:
    """The time of the last change of any camera's level (None: never changed)."""
    last, prev = None, None
    for s in samples:
        if prev is not None and s["cameras"] != prev:
            last = s["t_s"]
        prev = s["cameras"]
    return last


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--steady", type=float, default=60.0)
    parser.add_argument("--sla-ms", type=float)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                        help="a model variant the levels may use (quality.models), e.g. small=/tmp/v8n_320.onnx")
    parser.add_argument("--modes", default="fixed,auto", help="which runs, in order: fixed (controller off), auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = [write_clip(work / f"cam{i}.mp4", seconds=20.0, seed=700 + i, width=1280, height=720)
                 for i in range(CAMERAS)]
        variants = dict(v.split("=", 1) for v in args.variant)
        runs = [run(clips, args.model, mode, args.seconds, args.steady, work, args.sla_ms, variants)
                for mode in args.modes.split(",")]
    brief = [{k: v for k, v in r.items() if k != "samples"} for r in runs]
    print(json.dumps(brief, indent=1))
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
