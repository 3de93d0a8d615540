"""Multi-object tracking per camera: ByteTrack's two-stage association, on real time.

Why our own: `supervision` removed its ByteTrack, `trackers` pulls a non-headless OpenCV,
`norfair` lags on NumPy 2 and `boxmot` is AGPL with torch. This one is NumPy plus `lap`
(the LAPJV solver, 0.1 MB resident; SciPy's would cost ~50 MB).

Each step: tracks predicted to the frame's time (agent.pipeline.kalman); confident detections
matched to every track, then the remaining low-score detections to tracks still seen last step
(an occluded object's weaker boxes keep its id), then what is left to tentative tracks. A pair
is allowed only for the same label, a box of similar size (area ratio within MAX_AREA_RATIO),
and either overlap or a centre within one box size of the prediction: at a low detection rate
a small object may not overlap its last box at all.

A track that stays within `stationary_tolerance` of its size for `stationary_s` is stationary;
its velocity is zeroed and, once missed, it is kept `stationary_keep_s` (not `end_after_s`), so
a parked car detected on and off resumes its id instead of ending and starting again. A frame
the motion gate held back (`hold`) moves the clock on without boxes: nothing moved, so the
objects seen last are still there and nothing ends because of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import lap
import numpy as np

from agent.config import TrackingConfig
from agent.pipeline import kalman
from engines import Detection
from engines.metrics import iou_matrix

MAX_AREA_RATIO = 4.0
HIGH_MATCH_COST = 0.8  # first stage: 1 - IoU at most this (or the centre-distance fallback)
LOW_MATCH_COST = 0.5  # second stage, low-score boxes to tracks seen last step: IoU at least 0.5
TENTATIVE_MATCH_COST = 0.7
TENTATIVE_KEEP_S = 0.5
NO_MATCH = 1e6


@dataclass(eq=False)
class Track:
    track_id: int
    label: str
    class_id: int
    box: tuple[float, float, float, float]  # the last matched detection (stream pixels)
    score: float  # the last matched detection's
    first_mono: float
    last_seen_mono: float
    mean: np.ndarray = field(repr=False)
    cov: np.ndarray = field(repr=False)
    hits: int = 1
    top_score: float = 0.0
    confirmed: bool = False
    seen_last_step: bool = True
    stationary: bool = False
    moved: bool = False  # travelled beyond the stationary tolerance since it appeared
    anchor: tuple[float, float] = (0.0, 0.0)  # centre where it last came to rest
    anchor_mono: float = 0.0
    predicted_mono: float = 0.0  # the time `mean` is for
    predicted_box: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]  # `mean` as corners


@dataclass
class TrackerStep:
    track_ids: list[int | None]  # per detection, in order; None: not tracked (label not followed, or weak)
    ended: list[Track]  # tracks gone for good this step (their events end)


class Tracker:
    """One camera's tracks. Not thread-safe: the inference thread's sink owns it."""

    def __init__(self, config: TrackingConfig, end_after_s: float, first_id: int = 1) -> None:
        self.config = config
        self.end_after_s = end_after_s
        self.tracks: list[Track] = []
        self.next_id = first_id
        self._now = 0.0
        self.refused = 0  # new tracks not started because the camera already had max_tracks

    def follows(self, label: str) -> bool:
        return not self.config.labels or label in self.config.labels

    # -- one frame ------------------------------------------------------------------
    def update(self, detections: Sequence[Detection], now: float) -> TrackerStep:
        """Match one frame's detections (captured at monotonic `now`) to the tracks."""
        now = max(now, self._now)  # frames are completed in order; a clock never runs back
        self._now = now
        self._predict(now)
        ids: list[int | None] = [None] * len(detections)
        boxes = np.array([d.box for d in detections], np.float64).reshape(-1, 4)
        followed = [i for i, d in enumerate(detections) if self.follows(d.label)]
        high = [i for i in followed if detections[i].score >= self.config.high_score]
        low = [i for i in followed if detections[i].score < self.config.high_score]
        confirmed = [t for t in self.tracks if t.confirmed]
        tentative = [t for t in self.tracks if not t.confirmed]
        # the stages pair disjoint tracks, so one Kalman correction after all three is the same as one after each
        pairs, high_left, pool_left = self._associate(confirmed, high, detections, boxes, HIGH_MATCH_COST)
        recent = [t for t in pool_left if t.seen_last_step]
        pairs += self._associate(recent, low, detections, boxes, LOW_MATCH_COST, distance_fallback=False)[0]
        more, high_left, _ = self._associate(tentative, high_left, detections, boxes, TENTATIVE_MATCH_COST)
        pairs += more
        self._apply(pairs, detections, boxes, ids, now)
        matched = {id(t) for t, _ in pairs}

        for track in self.tracks:
            track.seen_last_step = id(track) in matched
        # a tentative track survives a missed frame or two (TENTATIVE_KEEP_S), not more
        self.tracks = [t for t in self.tracks if t.confirmed or now - t.last_seen_mono <= TENTATIVE_KEEP_S]
        for i in high_left:
            if detections[i].score >= self.config.new_track_score:
                ids[i] = self._start(detections[i], boxes[i], now)
        return TrackerStep(ids, self._end_gone(now))

    def hold(self, now: float) -> list[Track]:
        """A frame the motion gate skipped: the clock moves on, the objects seen last stay where they were.
        Returns the tracks that ended (those already missing before, past their time)."""
        now = max(now, self._now)
        self._now = now
        for track in self.tracks:
            if track.seen_last_step:
                track.last_seen_mono = now
                track.mean[kalman.NDIM:] = 0.0
                track.predicted_mono = now
                self._settle(track, now)
        return self._end_gone(now)

    def end_all(self) -> list[Track]:
        """Every track ends (the camera stops)."""
        ended, self.tracks = [t for t in self.tracks if t.confirmed], []
        return ended

    # -- parts ----------------------------------------------------------------------
    def _predict(self, now: float) -> None:
        if not self.tracks:
            return
        means = np.stack([t.mean for t in self.tracks])
        covs = np.stack([t.cov for t in self.tracks])
        dt = np.array([max(0.0, now - t.predicted_mono) for t in self.tracks])
        means, covs = kalman.predict(means, covs, dt)
        for track, mean, cov, box in zip(self.tracks, means, covs, kalman.corners(means)):
            track.mean, track.cov, track.predicted_mono, track.predicted_box = mean, cov, now, box
            if track.stationary:
                track.mean[kalman.NDIM:] = 0.0

    def _associate(self, tracks: list[Track], det_index: list[int], detections: Sequence[Detection],
                   boxes: np.ndarray, max_cost: float, distance_fallback: bool = True
                   ) -> tuple[list[tuple[Track, int]], list[int], list[Track]]:
        """Optimal pairs under `max_cost`; returns (pairs, detections left, tracks left)."""
        if not tracks or not det_index:
            return [], list(det_index), list(tracks)
        cost = match_cost(np.stack([t.predicted_box for t in tracks]), boxes[det_index],
                          [t.label for t in tracks], [detections[i].label for i in det_index], distance_fallback)
        _, rows, _ = lap.lapjv(cost, extend_cost=True, cost_limit=max_cost)
        pairs = [(tracks[r], det_index[c]) for r, c in enumerate(rows) if c >= 0]
        used = {c for c in rows if c >= 0}
        left = [det_index[c] for c in range(len(det_index)) if c not in used]
        return pairs, left, [tracks[r] for r, c in enumerate(rows) if c < 0]

    def _apply(self, pairs: list[tuple[Track, int]], detections: Sequence[Detection], boxes: np.ndarray,
               ids: list[int | None], now: float) -> None:
        if not pairs:
            return
        means, covs = kalman.update(np.stack([t.mean for t, _ in pairs]), np.stack([t.cov for t, _ in pairs]),
                                    kalman.xyah(boxes[[i for _, i in pairs]]))
        for (track, i), mean, cov in zip(pairs, means, covs):
            det = detections[i]
            track.mean, track.cov = mean, cov
            track.box = det.box
            track.score = det.score
            track.top_score = max(track.top_score, det.score)
            track.last_seen_mono = now
            track.hits += 1
            if not track.confirmed and track.hits >= self.config.min_hits:
                track.confirmed = True
            self._settle(track, now)
            ids[i] = track.track_id

    def _settle(self, track: Track, now: float) -> None:
        """Stationary once it stays near where it came to rest for stationary_s; moving again once it leaves."""
        x1, y1, x2, y2 = track.box
        centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        size = max(1.0, ((x2 - x1) * (y2 - y1)) ** 0.5)
        drift = ((centre[0] - track.anchor[0]) ** 2 + (centre[1] - track.anchor[1]) ** 2) ** 0.5
        if drift > self.config.stationary_tolerance * size:
            track.anchor, track.anchor_mono = centre, now
            track.moved = True
            track.stationary = False
        elif now - track.anchor_mono >= self.config.stationary_s:
            track.stationary = True

    def _start(self, det: Detection, box: np.ndarray, now: float) -> int | None:
        if len(self.tracks) >= self.config.max_tracks:
            self.refused += 1
            return None
        mean, cov = kalman.initiate(kalman.xyah(box)[0])
        x1, y1, x2, y2 = det.box
        track = Track(self.next_id, det.label, det.class_id, det.box, det.score, now, now, mean, cov,
                      confirmed=self.config.min_hits <= 1, anchor=((x1 + x2) / 2, (y1 + y2) / 2),
                      top_score=det.score, anchor_mono=now, predicted_mono=now, predicted_box=box)
        self.next_id += 1
        self.tracks.append(track)
        return track.track_id

    def _end_gone(self, now: float) -> list[Track]:
        ended, kept = [], []
        for track in self.tracks:
            keep_s = self.config.stationary_keep_s if track.stationary else self.end_after_s
            (ended if now - track.last_seen_mono > keep_s else kept).append(track)
        self.tracks = kept
        return ended


def match_cost(predicted: np.ndarray, boxes: np.ndarray, track_labels: list[str], det_labels: list[str],
               distance_fallback: bool = True) -> np.ndarray:
    """1 - IoU; without overlap, 0.5 to 0.8 with the centre distance (allowed up to one box size away, when
    `distance_fallback`); NO_MATCH for other labels or sizes apart by more than MAX_AREA_RATIO."""
    cost = 1.0 - iou_matrix(predicted, boxes)
    area_p = np.maximum((predicted[:, 2] - predicted[:, 0]) * (predicted[:, 3] - predicted[:, 1]), 1e-9)
    area_d = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)
    ratio = area_p[:, None] / area_d[None, :]
    if distance_fallback:
        centre_p = (predicted[:, :2] + predicted[:, 2:]) / 2
        centre_d = (boxes[:, :2] + boxes[:, 2:]) / 2
        distance = np.linalg.norm(centre_p[:, None, :] - centre_d[None, :, :], axis=2)
        size = np.sqrt(np.maximum(area_p[:, None], area_d[None, :]))
        reach = distance / size
        cost = np.where(cost >= 1.0, np.where(reach <= 1.0, 0.5 + 0.3 * reach, NO_MATCH), cost)
    labels_differ = np.array([[tl != dl for dl in det_labels] for tl in track_labels], bool).reshape(cost.shape)
    cost[labels_differ | (ratio > MAX_AREA_RATIO) | (ratio < 1 / MAX_AREA_RATIO)] = NO_MATCH
    return cost
