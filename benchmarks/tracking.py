"""Tracking: what a tracker step costs, how well it follows, and how much the events shrink the firehose.

1. Cost: one camera's Tracker (and the whole ObjectTracking step: events, zones, snapshots) per frame
   with 1, 10 and 50 objects moving across a 1280x720 frame at 10 fps, median and p95 of 600 frames.
2. Accuracy: the demo detector on scripted tracking scenes (agent.demo.tracking_scene: crossing,
   stopping, leaving, entering objects), MOTA / IDF1 / id switches against the ground-truth ids.
3. Firehose: the built-in demo (two generated cameras at 10 fps) through the whole agent for
   `--seconds`: detections stored per minute against object event messages (new/update/end) per minute.

    python benchmarks/tracking.py --seconds 120 --out benchmarks/results/tracking.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture.frames import Frame
from agent.config import validate_config
from agent.demo.track_eval import score_tracks
from agent.demo.tracking_scene import TrackingScene
from agent.pipeline.objects import ObjectTracking
from agent.pipeline.tracker import Tracker
from agent.runtime import Runtime
from engines import Detection, DetectorConfig, GpuResources, load_detector

FPS = 10.0


def moving_objects(n: int, frames: int, seed: int = 1) -> list[list[Detection]]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(60, [1220, 660], (n, 2))
    vel = rng.uniform(-80, 80, (n, 2))  # pixels per second
    size = rng.uniform(24, 90, n)
    out = []
    for k in range(frames):
        p = pos + vel * k / FPS
        p = np.abs(np.mod(p, [2 * 1280, 2 * 720]) - [1280, 720])  # bounce off the edges
        out.append([Detection(0, "person", 0.9, (float(x - s / 2), float(y - s), float(x + s / 2), float(y + s)))
                    for (x, y), s in zip(p, size)])
    return out


def cost(n: int, frames: int = 600) -> dict:
    dets = moving_objects(n, frames)
    config = validate_config({"cameras": [{"name": "c", "source": "demo:1",
                                           "zones": [{"name": "z", "points": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}]}]})
    tracker = Tracker(config.tracking, config.events.end_after_s)
    tracker_ms = []
    for k, d in enumerate(dets):
        t = time.perf_counter()
        tracker.update(d, k / FPS)
        tracker_ms.append((time.perf_counter() - t) * 1000)
    messages = []
    objects = ObjectTracking(config, messages.extend)
    image = np.zeros((720, 1280, 3), np.uint8)
    step_ms = []
    for k, d in enumerate(dets):
        frame = Frame("c", k, image, 1_700_000_000_000 + round(k * 100), k / FPS)
        t = time.perf_counter()
        objects.observe(frame, d)
        step_ms.append((time.perf_counter() - t) * 1000)
    warm = slice(20, None)  # the first frames start the tracks
    return {"objects": n, "tracker_ms_p50": round(float(np.median(tracker_ms[warm])), 3),
            "tracker_ms_p95": round(float(np.percentile(tracker_ms[warm], 95)), 3),
            "with_events_ms_p50": round(float(np.median(step_ms[warm])), 3),
            "with_events_ms_p95": round(float(np.percentile(step_ms[warm], 95)), 3),
            "tracks": len(tracker.tracks), "ids_issued": tracker.next_id - 1}


def accuracy(seeds: list[int], frames: int = 200) -> list[dict]:
    detector = load_detector(DetectorConfig(), GpuResources(1024, 0))
    config = validate_config({})
    out = []
    try:
        for seed in seeds:
            scene = list(TrackingScene(seed, frames))
            tracker = Tracker(config.tracking, 2.0)
            predicted = []
            for k, (image, _) in enumerate(scene):
                dets = detector.detect([image])[0]
                step = tracker.update(dets, k / FPS)
                predicted.append([(t, d.box) for t, d in zip(step.track_ids, dets) if t is not None])
            truth = [[(g.object_id, g.box) for g in gts] for _, gts in scene]
            out.append({"seed": seed, **score_tracks(truth, predicted).to_dict()})
    finally:
        detector.close()
    return out


def firehose(seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(validate_config({"storage": {"path": tmp}, "web": {"listen": None}}))
        runtime.start()
        try:
            time.sleep(seconds)  # a benchmark's measuring window, not synchronisation
            stats = runtime.objects.stats()
            rows = runtime.store.committed_rows
        finally:
            runtime.stop()
    minutes = seconds / 60
    events = {k: sum(c[k] for c in stats.values()) for k in ("events_started", "updates", "events_ended")}
    messages = sum(events.values())
    return {"seconds": seconds, "cameras": len(stats), "detections": rows, **events,
            "detections_per_min": round(rows / minutes, 1), "event_messages_per_min": round(messages / minutes, 1),
            "reduction": round(rows / max(1, messages), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="firehose run on the demo")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {"cost": [cost(n) for n in (1, 10, 50)], "accuracy": accuracy([7, 8, 9]),
              "firehose": firehose(args.seconds)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
