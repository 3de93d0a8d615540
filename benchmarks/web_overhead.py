"""What the health page costs the pipeline: fps, CPU and RSS with and without a page open.

Runs the agent on unpaced copies of the demo clips (every frame processed, as fast as the engine
goes), alternating passes without web clients and with a page polling `/api/status` and each
camera's `latest.jpg` every 2 s plus one MJPEG stream client, and prints the fps ratio. Each pass
is its own process, so RSS and CPU are the agent's alone.

    .venv/bin/python benchmarks/web_overhead.py --seconds 20 --passes 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from agent.config import validate_config
from agent.demo.clips import write_clip
from agent.runtime import Runtime


def page_clients(base: str, cameras: list[str], stop: threading.Event) -> list[threading.Thread]:
    def poll() -> None:  # what the page does: status, then each camera's frame, every 2 s
        while not stop.is_set():
            urllib.request.urlopen(base + "/api/status", timeout=10).read()
            for name in cameras:
                urllib.request.urlopen(f"{base}/api/cameras/{name}/latest.jpg", timeout=10).read()
            stop.wait(2.0)

    def stream() -> None:
        with urllib.request.urlopen(f"{base}/api/cameras/{cameras[0]}/stream.mjpeg", timeout=10) as response:
            while not stop.is_set():
                response.read(65536)

    threads = [threading.Thread(target=poll, daemon=True), threading.Thread(target=stream, daemon=True)]
    for thread in threads:
        thread.start()
    return threads


def one_pass(clips: list[Path], seconds: float, with_page: bool, port: int) -> dict:
    data = Path(tempfile.mkdtemp())
    runtime = Runtime(validate_config({
        "cameras": [{"name": f"cam{i}", "source": str(c), "loop": True, "realtime": False}
                    for i, c in enumerate(clips)],
        "storage": {"path": str(data)}, "web": {"listen": f"127.0.0.1:{port}"},
    }))
    runtime.start()
    process = psutil.Process()
    stop = threading.Event()
    try:
        time.sleep(3)  # warm-up: the engine's first runs, the cameras opening
        if with_page:
            page_clients(f"http://127.0.0.1:{port}", [f"cam{i}" for i in range(len(clips))], stop)
        frames0 = sum(runtime.metrics.frames.values())
        cpu0 = process.cpu_times()
        started = time.monotonic()
        time.sleep(seconds)  # the measured window
        elapsed = time.monotonic() - started
        cpu1 = process.cpu_times()
        frames = sum(runtime.metrics.frames.values()) - frames0
        return {"with_page": with_page, "fps": round(frames / elapsed, 2),
                "cpu_cores": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed, 3),
                "rss_mb": round(process.memory_info().rss / 2**20, 1),
                "frame_encodes": runtime.web.frames.encodes if runtime.web else 0}
    finally:
        stop.set()
        runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "web_overhead.json")
    parser.add_argument("--one-pass", choices=["with", "without"], help=argparse.SUPPRESS)
    parser.add_argument("--clips", type=Path, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_pass:  # a child: one pass, its figures on stdout
        print(json.dumps(one_pass(args.clips, args.seconds, args.one_pass == "with", args.port)))
        return
    clip_dir = Path(tempfile.mkdtemp())
    clips = [write_clip(clip_dir / f"c{i}.mp4", seconds=10.0, seed=i + 1) for i in range(args.cameras)]
    rows = []
    for _ in range(args.passes):  # interleaved, so drift in the machine hits both alike
        for mode in ("without", "with"):
            done = subprocess.run([sys.executable, __file__, "--one-pass", mode, "--seconds", str(args.seconds),
                                   "--port", str(args.port), "--clips", *map(str, clips)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    without = statistics.median(r["fps"] for r in rows if not r["with_page"])
    with_ = statistics.median(r["fps"] for r in rows if r["with_page"])
    summary = {
        "fps_without_page": without, "fps_with_page": with_, "ratio": round(with_ / without, 3),
        "extra_cpu_cores": round(statistics.median(r["cpu_cores"] for r in rows if r["with_page"])
                                 - statistics.median(r["cpu_cores"] for r in rows if not r["with_page"]), 3),
        "extra_rss_mb": round(statistics.median(r["rss_mb"] for r in rows if r["with_page"])
                              - statistics.median(r["rss_mb"] for r in rows if not r["with_page"]), 1),
        "passes": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "passes"}))
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
