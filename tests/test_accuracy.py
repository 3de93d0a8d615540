"""The demo detector on a held-out generated clip (seeds never used in training)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_detector_reaches_map50_of_090_on_a_held_out_clip() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "eval", "--model", "demo", "--seed", "1000", "--seconds", "60", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"] == 900 and report["truths"] > 2000
    assert report["map50"] >= 0.90, report
