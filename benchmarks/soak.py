"""Soak: N cameras through the whole agent for a long run; does anything grow that should not?

One in-process agent: N unpaced, looping 720p H.264 clips (every frame inferred, as fast as the
device goes), detections stored in SQLite and synced to an MQTT broker, the web page served.
Every `--every` seconds it records RSS, threads, open files, the SQLite WAL's size and the frames
through. After `--warmup` seconds, growth is measured from the first sample after warm-up to the
end (and the max along the way): RSS should settle, threads and files stay flat, and the WAL stay
within its checkpoint bound (journal_size_limit, 64 MiB).

    python benchmarks/soak.py --minutes 30 --cameras 4 --out benchmarks/results/soak_4cam.json
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import validate_config
from agent.demo.clips import write_clip
from agent.runtime import Runtime

WAL_BOUND_MB = 64.0  # agent/store/db.py: journal_size_limit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--model", default="demo", help="ONNX file or demo (demo: detections to store and sync)")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=300.0, help="seconds before growth is counted")
    parser.add_argument("--mqtt", default="127.0.0.1:1883", help="broker host:port; 'none' to run without")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp:
        work = Path(tmp)
        clips = [write_clip(work / f"cam{i}.mp4", seconds=20.0, seed=700 + i, width=1280, height=720,
                            codec="h264") for i in range(args.cameras)]
        config = {
            "cameras": [{"name": f"cam{i}", "source": str(c), "loop": True, "realtime": False}
                        for i, c in enumerate(clips)],
            "model": {"path": args.model}, "storage": {"path": str(work / "data")},
            "quality": {"mode": "fixed", "level": "high"}, "web": {"listen": f"127.0.0.1:{free_port()}"},
        }
        if args.mqtt != "none":
            host, port = args.mqtt.rsplit(":", 1)
            config["mqtt"] = {"host": host, "port": int(port)}
        runtime = Runtime(validate_config(config))
        proc = psutil.Process()
        wal = work / "data" / "edge-agent.db-wal"
        samples = []
        start = time.monotonic()
        runtime.start()
        try:
            while (elapsed := time.monotonic() - start) <= args.minutes * 60:
                status = runtime.status()
                samples.append({
                    "t_s": round(elapsed, 1), "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                    "threads": proc.num_threads(), "open_files": proc.num_fds(),
                    "wal_mb": round(wal.stat().st_size / 2**20, 2) if wal.exists() else 0.0,
                    "frames": sum(runtime.metrics.frames.values()),
                    "committed_rows": status["store"]["committed_rows"],
                    "outbox_pending": status["store"].get("outbox_pending"),
                })
                print(json.dumps(samples[-1]), flush=True)
                time.sleep(args.every)  # the sampling period: this loop only observes
        finally:
            runtime.stop()
    settled = [s for s in samples if s["t_s"] >= args.warmup] or samples[-1:]
    first, last = settled[0], settled[-1]
    seconds = last["t_s"] - samples[0]["t_s"]
    report = {
        "cameras": args.cameras, "minutes": args.minutes, "model": args.model, "warmup_s": args.warmup,
        "fps": round((last["frames"] - samples[0]["frames"]) / seconds, 2) if seconds else None,
        "rss_growth_after_warmup_mb": round(last["rss_mb"] - first["rss_mb"], 1),
        "rss_max_after_warmup_mb": max(s["rss_mb"] for s in settled),
        "threads": [min(s["threads"] for s in settled), max(s["threads"] for s in settled)],
        "open_files": [min(s["open_files"] for s in settled), max(s["open_files"] for s in settled)],
        "wal_max_mb": max(s["wal_mb"] for s in samples), "wal_bound_mb": WAL_BOUND_MB,
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
