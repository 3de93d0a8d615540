"""What the motion gate saves on a still scene and costs on a moving one (dev only; figures for the README).

Static: one 720p camera, paced at 15 fps, on a clip of one fixed frame plus Gaussian sensor noise,
gate on and gate off in alternating runs; reported: share of frames skipped, process CPU (cores).
Moving: two cameras on one clip of moving shapes with still, empty stretches (as
tests/test_motion_agent.py), gate on for one and off for the other; reported: mAP@0.5 of the
stored detections against the clip's ground truth, and the share of frames skipped.

    python benchmarks/motion_gate.py [--model demo|PATH] [--seconds 30] [--out benchmarks/results/motion_gate.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from agent.config import validate_config
from agent.demo.clips import read_ground_truth, write_clip
from agent.demo.evaluate import stored_accuracy
from agent.demo.scene import SceneGenerator
from agent.runtime import Runtime

FPS = 15.0


def static_clip(path: Path, seconds: float, noise: float = 6.0) -> Path:
    rng = np.random.default_rng(9)
    base = SceneGenerator((9, 0), 1280, 720)._make_background()
    bank = [np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8) for _ in range(15)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (1280, 720))
    for i in range(round(seconds * FPS)):
        writer.write(bank[i % len(bank)])
    writer.release()
    return path


def run_static(clip: Path, model: str, gate: bool, seconds: float, work: Path) -> dict:
    runtime = Runtime(validate_config({
        "cameras": [{"name": "still", "source": str(clip), "fps": FPS, "loop": True, "motion": {"enabled": gate}}],
        "model": {"path": model}, "quality": {"mode": "fixed", "level": "high"},
        "storage": {"path": str(work / f"data-{gate}")}, "web": {"listen": None},
    }))
    runtime.start()
    proc = psutil.Process()
    try:
        time.sleep(5)  # warm-up: model loaded, camera running
        c0, g0 = runtime.cameras["still"].frames_captured, runtime.gates["still"].gated
        t0, cpu0 = time.monotonic(), sum(proc.cpu_times()[:2])
        time.sleep(seconds)
        wall, cpu = time.monotonic() - t0, sum(proc.cpu_times()[:2]) - cpu0
        captured = runtime.cameras["still"].frames_captured - c0
        gated = runtime.gates["still"].gated - g0
    finally:
        runtime.stop()
    return {"gate": gate, "seconds": round(wall, 1), "frames": captured, "gated": gated,
            "skipped_fraction": round(gated / captured, 4) if captured else None, "cores": round(cpu / wall, 3)}


def run_moving(model: str, work: Path) -> dict:
    clip = write_clip(work / "moving.mp4", seconds=40.0, seed=21, scene_seconds=10.0, empty_seconds=5.0)
    truth = read_ground_truth(clip)
    runtime = Runtime(validate_config({
        "cameras": [{"name": "gated", "source": str(clip), "fps": truth["fps"], "loop": False},
                    {"name": "always", "source": str(clip), "fps": truth["fps"], "loop": False,
                     "motion": {"enabled": False}}],
        "model": {"path": model}, "quality": {"mode": "fixed", "level": "high"},
        "storage": {"path": str(work / "data-moving")}, "web": {"listen": None},
    }))
    runtime.start()
    try:
        while not all(c.state.value == "finished" for c in runtime.cameras.values()):
            time.sleep(0.5)
        status = runtime.status()["cameras"]
    finally:
        runtime.stop()
    frames = len(truth["frames"])
    out = {"frames": frames, "frames_with_objects": sum(1 for f in truth["frames"] if f["objects"])}
    for camera in ("gated", "always"):
        result = stored_accuracy(work / "data-moving" / "edge-agent.db", camera, clip)
        out[camera] = {"map50": round(result.map, 4), "gated": status[camera]["motion"]["gated"],
                       "dropped": status[camera]["frames_dropped"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="demo")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--static-only", action="store_true", help="skip the accuracy run (random-weight models)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = static_clip(work / "still.mp4", 20.0)
        static = [run_static(clip, args.model, gate, args.seconds, work)
                  for _ in range(args.rounds) for gate in (True, False)]
        moving = None if args.static_only else run_moving(args.model, work)
    on = [r for r in static if r["gate"]]
    off = [r for r in static if not r["gate"]]
    summary = {
        "model": args.model,
        "static_skipped_fraction": round(float(np.mean([r["skipped_fraction"] for r in on])), 4),
        "static_cores_gate_on": round(float(np.mean([r["cores"] for r in on])), 3),
        "static_cores_gate_off": round(float(np.mean([r["cores"] for r in off])), 3),
    }
    if moving is not None:
        summary.update(moving_map50_gate_on=moving["gated"]["map50"], moving_map50_gate_off=moving["always"]["map50"],
                       moving_gated_fraction=round(moving["gated"]["gated"] / moving["frames"], 4))
    result = {"summary": summary, "static_runs": static, "moving": moving}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
