"""`edge-agent bench` and `bench-sync`: throughput and latency, measured on this device."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engines.config import ENGINE_PRESETS
from engines.gpu import DEFAULT_BUDGET_MB


def cmd_bench(args: argparse.Namespace) -> int:
    from agent.cli.bench import run_bench
    from engines import GpuResources

    report = run_bench(args.model, args.cameras, args.seconds, args.threads, args.engine,
                       GpuResources(args.gpu_budget_mb), args.resolution, args.codec, args.clip, args.runs,
                       args.decoder)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


def cmd_bench_sync(args: argparse.Namespace) -> int:
    from agent.cli.bench_sync import run_sync_bench

    report = run_sync_bench(args.host, args.port, args.detections, args.seconds)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("bench", help="bare engine vs full pipeline throughput")
    s.add_argument("--model", default="demo", help="ONNX file (FP32 or INT8), or 'demo'")
    s.add_argument("--engine", default="onnxruntime-cpu", choices=list(ENGINE_PRESETS))
    s.add_argument("--gpu-budget-mb", type=int, default=DEFAULT_BUDGET_MB, help="GPU memory budget for GPU engines")
    s.add_argument("--cameras", type=int, default=1)
    s.add_argument("--seconds", type=float, default=20.0)
    s.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads per run (0: auto)")
    s.add_argument("--runs", type=int, default=0, help="ONNX Runtime runs in flight at once (0: auto)")
    s.add_argument("--decoder", default="auto", choices=["auto", "pyav", "opencv"], help="cameras[].decoder")
    s.add_argument("--resolution", default="720p", choices=["360p", "720p", "1080p"],
                   help="size of the generated clips (moving scenes)")
    s.add_argument("--codec", default="h264", choices=["h264", "mp4v"],
                   help="h264 as cameras send it; mp4v is cheaper to decode")
    s.add_argument("--clip", type=Path, help="a video file of your own instead, for every camera")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("bench-sync", help="outbox drain rate and capture→PUBACK latency against a broker")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=1883)
    s.add_argument("--detections", type=int, default=100_000)
    s.add_argument("--seconds", type=float, default=30.0, help="length of the live demo run")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench_sync)
