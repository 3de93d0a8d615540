"""`pip install .` must carry the demo: the model is package data, the clip code a package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from agent.profiles import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_demo_model_and_the_console_script(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("edge_agent-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "engines/models/demo.onnx" in names
    assert {f"profiles/{name}.yaml" for name in (*PRESETS, "levels")} <= names  # profiles ship as data
    assert "agent/web/static/app.js" in names
    assert {"agent/demo/scene.py", "agent/demo/clips.py", "agent/cli/main.py"} <= names
    assert not any(n.startswith(("tests/", "training/", "benchmarks/")) for n in names)
    assert "edge-agent = agent.cli.main:main" in entry_points
