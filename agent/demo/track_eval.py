"""Tracking accuracy against ground-truth ids: CLEAR-MOT (MOTA, id switches, fragmentations) and IDF1.

Frame by frame, a ground-truth object keeps the track it was matched to while they still overlap
(IoU ≥ the threshold); the rest are matched optimally. An id switch is an object matched to
another track than before; a fragmentation, an object tracked again after a gap. IDF1 matches
whole trajectories once, so every frame an object spends under a wrong id counts against it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import lap
import numpy as np

from engines.metrics import iou_matrix

Box = Sequence[float]
FrameObjects = Sequence[tuple[int, Box]]  # (id, box) per object in one frame


@dataclass(frozen=True)
class TrackingScore:
    frames: int
    objects: int  # ground-truth object-frames
    misses: int
    false_positives: int
    id_switches: int
    fragmentations: int
    mota: float
    idf1: float
    ids_per_object: float  # distinct track ids matched to each ground-truth object, on average

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _assign(cost: np.ndarray, limit: float) -> list[tuple[int, int]]:
    if cost.size == 0:
        return []
    _, rows, _ = lap.lapjv(cost, extend_cost=True, cost_limit=limit)
    return [(r, int(c)) for r, c in enumerate(rows) if c >= 0]


def score_tracks(truth: Sequence[FrameObjects], predicted: Sequence[FrameObjects],
                 iou_threshold: float = 0.5) -> TrackingScore:
    """Score per-frame predictions (track id, box) against per-frame truth (object id, box)."""
    last_match: dict[int, int] = {}  # object → the track it was last matched to
    tracked_before: dict[int, bool] = {}
    fragmentations = misses = false_positives = switches = total = total_pred = 0
    overlaps: dict[tuple[int, int], int] = defaultdict(int)  # (object, track) → frames overlapping
    per_object: dict[int, int] = defaultdict(int)
    per_track: dict[int, int] = defaultdict(int)
    tracks_of: dict[int, set[int]] = defaultdict(set)
    for gt, pred in zip(truth, predicted):
        total += len(gt)
        total_pred += len(pred)
        gt_ids = [g[0] for g in gt]
        pr_ids = [p[0] for p in pred]
        for g in gt_ids:
            per_object[g] += 1
        for p in pr_ids:
            per_track[p] += 1
        iou = iou_matrix(np.array([g[1] for g in gt], float).reshape(-1, 4),
                         np.array([p[1] for p in pred], float).reshape(-1, 4))
        for i, j in zip(*np.nonzero(iou >= iou_threshold)):
            overlaps[(gt_ids[i], pr_ids[j])] += 1
        matches: dict[int, int] = {}  # gt index → pred index
        for i, g in enumerate(gt_ids):  # keep last frame's pairs that still overlap
            if g in last_match and last_match[g] in pr_ids:
                j = pr_ids.index(last_match[g])
                if iou[i, j] >= iou_threshold and j not in matches.values():
                    matches[i] = j
        free_g = [i for i in range(len(gt)) if i not in matches]
        free_p = [j for j in range(len(pred)) if j not in matches.values()]
        cost = 1.0 - iou[np.ix_(free_g, free_p)] if free_g and free_p else np.zeros((0, 0))
        for r, c in _assign(cost, 1.0 - iou_threshold + 1e-9):
            matches[free_g[r]] = free_p[c]
        for i, g in enumerate(gt_ids):
            if i not in matches:
                misses += 1
                if tracked_before.get(g):
                    tracked_before[g] = False
                continue
            track = pr_ids[matches[i]]
            if g in last_match and last_match[g] != track:
                switches += 1
            if tracked_before.get(g) is False:
                fragmentations += 1
            last_match[g] = track
            tracked_before[g] = True
            tracks_of[g].add(track)
        false_positives += len(pred) - len(matches)
    idtp = _id_true_positives(overlaps)
    idf1 = 2 * idtp / max(1, total + total_pred)
    mota = 1.0 - (misses + false_positives + switches) / max(1, total)
    ids_per_object = sum(len(tracks_of[g]) for g in per_object) / max(1, len(per_object))
    return TrackingScore(len(truth), total, misses, false_positives, switches, fragmentations, mota, idf1,
                         ids_per_object)


def _id_true_positives(overlaps: dict[tuple[int, int], int]) -> int:
    """The most object-frames one-to-one trajectory pairs explain (IDF1's IDTP)."""
    if not overlaps:
        return 0
    objects = sorted({g for g, _ in overlaps})
    tracks = sorted({p for _, p in overlaps})
    gain = np.zeros((len(objects), len(tracks)))
    for (g, p), n in overlaps.items():
        gain[objects.index(g), tracks.index(p)] = n
    pairs = _assign(gain.max() - gain, float(gain.max()) + 1.0)
    return int(sum(gain[r, c] for r, c in pairs))
