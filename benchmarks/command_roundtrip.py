"""Command round trips through a broker: operator publish → agent → answer back, p50/p95.

Runs the demo agent (2 cameras) against the broker at --host/--port and sends
`ping` (answered at once), `set_config` flipping a threshold (validate, apply
live, persist in SQLite, report) and `camera` disable/enable (stop and start
one capture thread) commands through `agent.fleet.fleet.FleetClient`.

    .venv/bin/python benchmarks/command_roundtrip.py --port 1883 --count 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.config import MqttConfig, validate_config
from agent.fleet.fleet import FleetClient
from agent.runtime import Runtime


def timed(fleet: FleetClient, device: str, name: str, args: dict) -> float:
    started = time.perf_counter()
    answer = fleet.command(device, name, args)
    elapsed = (time.perf_counter() - started) * 1000
    if not answer or not answer["ok"]:
        raise SystemExit(f"{name} failed: {answer}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    device = f"bench-{int(time.time())}"
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(validate_config({"device": {"id": device}, "storage": {"path": tmp},
                                           "mqtt": {"host": args.host, "port": args.port}}),
                          Path(tmp))
        runtime.start()
        fleet = FleetClient(MqttConfig(host=args.host, port=args.port))
        try:
            if not runtime.link.connected.wait(10):
                raise SystemExit("agent did not connect")
            results = {}
            for name, make_args in (
                ("ping", lambda i: {}),
                ("set_config", lambda i: {"config": {"model": {"score_threshold": 0.4 + 0.1 * (i % 2)}}}),
                ("camera", lambda i: {"action": "disable" if i % 2 == 0 else "enable", "name": "demo-2"}),
            ):
                samples = [timed(fleet, device, name, make_args(i)) for i in range(args.count)]
                p50, p95 = np.percentile(samples, [50, 95])
                results[name] = {"count": args.count, "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}
        finally:
            fleet.close()
            runtime.stop()
    print(json.dumps({"broker": f"{args.host}:{args.port}", **results}))


if __name__ == "__main__":
    main()
