"""edge-agent against Ultralytics `predict(stream=True)`: same ONNX model, same clip, one run.

Ultralytics is AGPL and pulls torch, so it is never a dependency of this project: it runs in a
venv of its own (benchmarks/peer_venv.sh makes one) and this script calls that venv's python.
No weights can be downloaded here, so the models are Ultralytics' own YOLOv8n exports built from
`yolov8n.yaml` (random weights: the cost of YOLOv8n, not its answers); `--model-640/--model-320`
take any other export, e.g. a trained `yolov8n.onnx`.

Per input size, three kinds of pass, interleaved so that load from elsewhere on a shared host
falls on all of them alike, the median of `--passes` each:

- ultralytics: `YOLO(onnx).predict(clip, stream=True, imgsz=S)`, every frame of the clip; fps over
  the frames after the first (model load and first-run warm-up excluded);
- agent: `edge-agent bench --clip` on the same clip (every frame: an unpaced file is never
  dropped from), which also times the agent's engine alone (`engine_fps`);
- ort_default: a plain `onnxruntime.InferenceSession(onnx)` with default options on one
  letterboxed frame, one run after the other: what a ten-line loop gets from the engine.

    bash benchmarks/peer_venv.sh /tmp/ulenv
    python benchmarks/peer_ultralytics.py --peer-python /tmp/ulenv/bin/python \\
        --resolution 720p --out benchmarks/results/peer_ultralytics_720p.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}


# -- roles that run in a subprocess ------------------------------------------------------------------
def role_export(out: Path, imgsz: int) -> None:
    """Peer venv: export Ultralytics' YOLOv8n (from its yaml; no weights to download) to ONNX."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        exported = YOLO("yolov8n.yaml").export(format="onnx", imgsz=imgsz, simplify=True)
        shutil.move(str(exported), out)


def role_ultralytics(model: Path, clip: Path, imgsz: int) -> dict:
    """Peer venv: Ultralytics' own streaming loop over every frame of the clip."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    frames, first, boxes = 0, None, 0
    for result in yolo.predict(source=str(clip), stream=True, imgsz=imgsz, device="cpu", verbose=False):
        frames += 1
        boxes += len(result.boxes)
        if first is None:
            first = time.perf_counter()
    elapsed = time.perf_counter() - first
    return {"fps": (frames - 1) / elapsed, "frames": frames, "boxes": boxes, "version": ultralytics.__version__}


def role_ort_default(model: Path, seconds: float) -> dict:
    """Project venv: ONNX Runtime with every option at its default, one run after the other."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    tensor = np.random.default_rng(0).random((1, 3, *inp.shape[2:]), dtype=np.float32)
    for _ in range(3):
        session.run(None, {inp.name: tensor})
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 5:
        session.run(None, {inp.name: tensor})
        runs += 1
    return {"fps": runs / elapsed, "version": ort.__version__}


# -- the orchestration -------------------------------------------------------------------------------
def _json_run(cmd: list[str], timeout: float) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _self(python: str, *args: str) -> list[str]:
    return [python, str(Path(__file__).resolve()), *args]


def make_clip(path: Path, resolution: str, seconds: float) -> Path:
    sys.path.insert(0, str(ROOT))
    from agent.demo.clips import write_clip

    width, height = RESOLUTIONS[resolution]
    return write_clip(path, seconds=seconds, seed=16, fps=30.0, width=width, height=height, codec="h264")


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    clip = args.clip or make_clip(workdir / f"peer-{args.resolution}.mp4", args.resolution, args.clip_seconds)
    rows = {}
    for imgsz in args.sizes:
        model = getattr(args, f"model_{imgsz}", None)
        if model is None:
            model = workdir / f"yolov8n_{imgsz}.onnx"
            subprocess.run(_self(args.peer_python, "--role", "export", "--imgsz", str(imgsz), "--model", str(model)),
                           check=True, capture_output=True, cwd=ROOT)
        passes: dict[str, list[dict]] = {"ultralytics": [], "agent": [], "ort_default": []}
        for _ in range(args.passes):
            passes["ultralytics"].append(_json_run(_self(args.peer_python, "--role", "ultralytics", "--model",
                                                         str(model), "--clip", str(clip), "--imgsz", str(imgsz)), 900))
            passes["agent"].append(_json_run([sys.executable, "-m", "agent.cli.main", "bench", "--model", str(model),
                                              "--clip", str(clip), "--seconds", str(args.agent_seconds),
                                              "--json", *args.agent_args], 900))
            passes["ort_default"].append(_json_run(_self(sys.executable, "--role", "ort_default", "--model", str(model),
                                                         "--seconds", str(args.agent_seconds / 2)), 900))
        ultra = statistics.median(p["fps"] for p in passes["ultralytics"])
        agent = statistics.median(p["pipeline_fps"] for p in passes["agent"])
        engine = statistics.median(p["engine_fps"] for p in passes["agent"])
        ort_default = statistics.median(p["fps"] for p in passes["ort_default"])
        rows[str(imgsz)] = {
            "ultralytics_fps": round(ultra, 2), "agent_pipeline_fps": round(agent, 2),
            "agent_engine_fps": round(engine, 2), "ort_default_fps": round(ort_default, 2),
            "agent_vs_ultralytics": round(agent / ultra, 3), "pipeline_vs_agent_engine": round(agent / engine, 3),
            "ultralytics_vs_ort_default": round(ultra / ort_default, 3),
            "passes": passes,
        }
        print(f"{imgsz}: ultralytics {ultra:.1f}  agent {agent:.1f}  agent engine {engine:.1f}  "
              f"ORT defaults {ort_default:.1f}  agent/ultralytics {agent / ultra:.2f}", flush=True)
    return {"clip": str(args.clip) if args.clip else f"generated {args.resolution} h264 (30 fps, "
            f"{args.clip_seconds:g} s, 4 Mb/s, libx264 main)", "resolution": args.resolution,
            "passes": args.passes, "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                                               "python": platform.python_version()},
            "agent_args": args.agent_args, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["export", "ultralytics", "ort_default"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--imgsz", type=int, default=640, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--peer-python", help="python of the venv with ultralytics (benchmarks/peer_venv.sh)")
    parser.add_argument("--resolution", default="720p", choices=list(RESOLUTIONS))
    parser.add_argument("--clip", type=Path, help="a video file of your own instead of the generated clip")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="length of the generated clip (30 fps)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 320], choices=[640, 320])
    parser.add_argument("--model-640", type=Path, help="an Ultralytics ONNX export at 640 (default: export one)")
    parser.add_argument("--model-320", type=Path, help="an Ultralytics ONNX export at 320 (default: export one)")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--agent-seconds", type=float, default=15.0, help="length of each agent pass")
    parser.add_argument("--agent-args", nargs="*", default=[], help="more `edge-agent bench` flags")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.role == "export":
        role_export(args.model, args.imgsz)
        return 0
    if args.role == "ultralytics":
        print(json.dumps(role_ultralytics(args.model, args.clip, args.imgsz)))
        return 0
    if args.role == "ort_default":
        print(json.dumps(role_ort_default(args.model, args.seconds)))
        return 0
    if not args.peer_python:
        parser.error("--peer-python is required (bash benchmarks/peer_venv.sh makes the venv)")
    with tempfile.TemporaryDirectory(prefix="edge-peer-") as tmp:
        report = measure(args, Path(tmp))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
