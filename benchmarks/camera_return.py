"""How soon a network camera that comes back is running again, whatever the outage length.

A real MJPEG-over-HTTP camera on loopback (tests/mjpeg_server.py) is unplugged for each
outage length, then plugged in again; the camera's reconnect backoff is 20-30 s, so only the
reachability probe (agent.capture.camera) can make the return quick. Prints and stores, per
outage: seconds from the return to `running`, and the outage the camera counted.

    .venv/bin/python benchmarks/camera_return.py --outages 1 3 8 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture.camera import CameraState
from agent.config import validate_config
from agent.runtime import Runtime
from tests.helpers import wait_for
from tests.mjpeg_server import MjpegCamera


def one(outage_s: float) -> dict:
    server = MjpegCamera().start()
    runtime = Runtime(validate_config({
        "cameras": [{"name": "ip", "source": server.url, "fps": 15, "no_frame_timeout_s": 1.0,
                     "reconnect": {"initial_s": 20, "max_s": 30}}],
        "storage": {"path": tempfile.mkdtemp()},
    }))
    runtime.start()
    try:
        cam = runtime.cameras["ip"]
        wait_for(lambda: cam.state is CameraState.RUNNING)
        server.go_away()
        time.sleep(outage_s)  # the outage being measured
        server.come_back()
        back = time.monotonic()
        wait_for(lambda: cam.state is CameraState.RUNNING, timeout=120)
        return {"outage_s": outage_s, "running_again_after_s": round(time.monotonic() - back, 2),
                "outage_counted_s": cam.stats().outage_s, "opens": server.connections}
    finally:
        runtime.stop()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", type=float, nargs="+", default=[1, 3, 8, 30])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "camera_return.json")
    args = parser.parse_args()
    rows = [one(s) for s in args.outages]
    for row in rows:
        print(json.dumps(row))
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
