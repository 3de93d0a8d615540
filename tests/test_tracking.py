"""Tracking on scripted scenes with ground-truth ids: ids stay with their objects through crossings, stops and
gaps; stationary objects and motion-gated frames keep theirs."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import TrackingConfig
from agent.demo.track_eval import score_tracks
from agent.demo.tracking_scene import TrackingScene
from agent.pipeline.tracker import Tracker
from engines import DEMO_MODEL_PATH, Detection, DetectorConfig, GpuResources, load_detector

FPS = 10.0


def _run(tracker: Tracker, frames: list[list[Detection]]) -> list[list[tuple[int, tuple]]]:
    out = []
    for k, dets in enumerate(frames):
        step = tracker.update(dets, k / FPS)
        out.append([(tid, d.box) for tid, d in zip(step.track_ids, dets) if tid is not None])
    return out


@pytest.fixture(scope="module")
def scene() -> list:
    return list(TrackingScene(7, 200))


def test_ground_truth_with_jitter_and_misses_keeps_every_id(scene: list) -> None:
    rng = np.random.default_rng(3)
    frames, truth = [], []
    for _, gts in scene:
        truth.append([(g.object_id, g.box) for g in gts])
        dets = []
        for g in gts:
            if rng.uniform() < 0.15:  # the detector misses one frame in seven
                continue
            jitter = rng.normal(0, 1.5, 4)
            dets.append(Detection(g.class_id, g.label, float(rng.uniform(0.55, 0.95)),
                                  tuple(float(v) for v in np.asarray(g.box) + jitter)))
        frames.append(dets)
    score = score_tracks(truth, _run(Tracker(TrackingConfig(), end_after_s=2.0), frames))
    assert score.id_switches <= 1, score
    assert score.ids_per_object <= 1.2, score
    assert score.idf1 >= 0.9 and score.mota >= 0.8, score


def test_demo_detector_on_crossing_stopping_leaving_objects(scene: list) -> None:
    detector = load_detector(DetectorConfig(path=str(DEMO_MODEL_PATH)), GpuResources(1024, 0))
    try:
        frames = [detector.detect([image])[0] for image, _ in scene]
    finally:
        detector.close()
    truth = [[(g.object_id, g.box) for g in gts] for _, gts in scene]
    tracker = Tracker(TrackingConfig(stationary_s=3.0), end_after_s=2.0)
    predicted = []
    stationary_seen = set()
    for k, dets in enumerate(frames):
        step = tracker.update(dets, k / FPS)
        predicted.append([(tid, d.box) for tid, d in zip(step.track_ids, dets) if tid is not None])
        stationary_seen |= {t.label for t in tracker.tracks if t.stationary}
    score = score_tracks(truth, predicted)
    assert score.idf1 >= 0.9, score
    assert score.mota >= 0.85, score
    assert score.id_switches <= 5, score
    assert stationary_seen == {"circle"}  # the one that stops, and only it


def _box(x: float, y: float = 100.0, size: float = 40.0) -> tuple[float, float, float, float]:
    return (x, y, x + size, y + size)


def test_a_stationary_object_missing_for_a_while_resumes_its_id_a_moving_one_ends() -> None:
    tracker = Tracker(TrackingConfig(stationary_s=2.0, stationary_keep_s=30.0), end_after_s=1.0)
    parked = Detection(0, "car", 0.9, _box(100))
    walker = [Detection(1, "person", 0.9, _box(300 + 10 * k, 300)) for k in range(60)]
    ids = set()
    for k in range(40):  # 4 s: the car comes to rest
        step = tracker.update([parked, walker[k]], k / FPS)
        ids.add(step.track_ids[0])
    car = next(t for t in tracker.tracks if t.label == "car")
    assert car.stationary and len(ids) == 1
    ended = []
    for k in range(40, 140):  # 10 s without a box for either
        ended += tracker.update([], k / FPS).ended
    assert [t.label for t in ended] == ["person"]  # the moving one ended after end_after_s; the car is kept
    step = tracker.update([Detection(0, "car", 0.8, _box(102))], 14.0)
    assert step.track_ids == [car.track_id]


def test_motion_gated_frames_advance_the_clock_without_ending_what_is_there() -> None:
    tracker = Tracker(TrackingConfig(stationary_s=3.0), end_after_s=1.0)
    box = Detection(0, "car", 0.9, _box(100))
    for k in range(5):
        first = tracker.update([box], k / FPS).track_ids[0]
    ended = []
    for k in range(5, 100):  # 9.5 s of gated frames: nothing moved
        ended += tracker.hold(k / FPS)
    assert ended == []
    (car,) = tracker.tracks
    assert car.stationary  # the clock went on while gated
    assert tracker.update([box], 10.0).track_ids == [first]


def test_other_labels_and_unfollowed_labels_never_share_a_track() -> None:
    tracker = Tracker(TrackingConfig(labels=["person"]), end_after_s=1.0)
    step = tracker.update([Detection(0, "person", 0.9, _box(100)), Detection(1, "car", 0.9, _box(100))], 0.0)
    assert step.track_ids[0] is not None and step.track_ids[1] is None
    step = tracker.update([Detection(2, "dog", 0.9, _box(100))], 0.1)
    assert step.track_ids == [None]


def test_tracks_per_camera_are_bounded_and_refusals_counted() -> None:
    tracker = Tracker(TrackingConfig(max_tracks=3, min_hits=1), end_after_s=1.0)
    step = tracker.update([Detection(0, "a", 0.9, _box(60 * k)) for k in range(5)], 0.0)
    assert sum(t is not None for t in step.track_ids) == 3 and tracker.refused == 2
