"""What the motion gate costs in accuracy, on the agent's own stored detections against ground truth.

One real agent, two cameras on the same clip (moving shapes, then a still, empty stretch in each
scene), paced like live cameras: one gated, one with the gate off. Their stored detections are
scored against the clip's sidecar.
"""

from __future__ import annotations

from pathlib import Path

from agent.config import validate_config
from agent.demo.clips import read_ground_truth, write_clip
from agent.demo.evaluate import stored_accuracy
from agent.runtime import Runtime
from tests.helpers import wait_for


def test_gating_on_keeps_map_within_a_point_of_gating_off(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "still-stretches.mp4", seconds=20.0, seed=21, scene_seconds=10.0, empty_seconds=5.0)
    truth = read_ground_truth(clip)
    runtime = Runtime(validate_config({
        "cameras": [{"name": "gated", "source": str(clip), "fps": truth["fps"], "loop": False},
                    {"name": "always", "source": str(clip), "fps": truth["fps"], "loop": False,
                     "motion": {"enabled": False}}],
        "quality": {"mode": "fixed", "level": "high"},  # the gate's own effect, no level changes
        "storage": {"path": str(tmp_path / "data")}, "web": {"listen": None},
    }))
    runtime.start()
    try:
        wait_for(lambda: all(c.state.value == "finished" for c in runtime.cameras.values()), timeout=90,
                 what="both cameras through the clip")
        status = runtime.status()["cameras"]
    finally:
        runtime.stop()
    assert status["gated"]["motion"]["gated"] > 0 and status["always"]["motion"]["gated"] == 0
    frames = len(truth["frames"])
    db = tmp_path / "data" / "edge-agent.db"
    scores = {}
    for camera in ("gated", "always"):
        assert status[camera]["frames_skipped"] == 0  # frame numbers are the clip's frame indexes
        assert status[camera]["frames_dropped"] <= frames * 0.02, status[camera]
        scores[camera] = stored_accuracy(db, camera, clip).map
    print(f"mAP@0.5 gated {scores['gated']:.4f}, always {scores['always']:.4f}; "
          f"gated {status['gated']['motion']['gated']} of {frames} frames")
    assert abs(scores["gated"] - scores["always"]) <= 0.01, scores
