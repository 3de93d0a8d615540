"""Accuracy on a clip with a ground-truth sidecar (mAP@0.5): of a detector run here, or of what an agent stored."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import cv2

from agent.demo.clips import read_ground_truth
from engines import Detector
from engines.metrics import MapResult, mean_average_precision


@dataclass(frozen=True)
class ClipAccuracy:
    clip: str
    frames: int
    map50: MapResult  # all detections above the evaluation threshold
    map50_at_operating: MapResult  # only those above the detector's configured threshold


def evaluate_clip(detector: Detector, clip: Path, eval_threshold: float = 0.05) -> ClipAccuracy:
    """Run every frame of `clip` through `detector` and score it against the sidecar."""
    truth = read_ground_truth(clip)
    frames_truth = {f["index"]: [(o["class_id"], o["box"]) for o in f["objects"]] for f in truth["frames"]}
    operating = detector.score_threshold
    detector.score_threshold = min(eval_threshold, operating)
    cap = cv2.VideoCapture(str(clip))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open clip {clip}")
    predictions, truths, batch = [], [], []
    index = 0
    try:
        while True:
            ok, image = cap.read()
            if ok:
                batch.append(image)
            if batch and (not ok or len(batch) == detector.max_batch):
                for dets in detector.detect(batch):
                    predictions.append([(d.class_id, d.score, d.box) for d in dets])
                batch = []
            if not ok:
                break
            truths.append(frames_truth.get(index, []))
            index += 1
    finally:
        cap.release()
        detector.score_threshold = operating
    at_operating = [[p for p in image if p[1] >= operating] for image in predictions]
    return ClipAccuracy(
        clip=str(clip), frames=len(truths),
        map50=mean_average_precision(predictions, truths, 0.5),
        map50_at_operating=mean_average_precision(at_operating, truths, 0.5),
    )


def stored_accuracy(db: Path, camera: str, clip: Path) -> MapResult:
    """mAP@0.5 of the detections an agent stored for `camera`, which played `clip` once from its start (its
    frame numbers are the clip's frame indexes), against the clip's sidecar; a frame without stored
    detections (gated, dropped) counts as one where nothing was found."""
    truth = read_ground_truth(clip)
    frames = len(truth["frames"])
    truths = [[(o["class_id"], o["box"]) for o in f["objects"]] for f in truth["frames"]]
    predictions: list[list[tuple]] = [[] for _ in range(frames)]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        for frame, class_id, score, *box in conn.execute(
                "SELECT frame, class_id, score, x1, y1, x2, y2 FROM detections WHERE camera = ?", (camera,)):
            if frame < frames:
                predictions[frame].append((class_id, score, tuple(box)))
    return mean_average_precision(predictions, truths, 0.5)
