"""Detection accuracy: mAP@IoU (all-point interpolated AP, as VOC 2010+ and COCO)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Box = Sequence[float]


@dataclass(frozen=True)
class MapResult:
    map: float  # mean over classes that have ground truth
    per_class: dict[int, float]
    truths: int
    predictions: int


def _iou(box: Box, others: np.ndarray) -> np.ndarray:
    if len(others) == 0:
        return np.zeros(0)
    w = (np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])).clip(min=0)
    h = (np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])).clip(min=0)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def _average_precision(tp: np.ndarray, num_truths: int) -> float:
    if num_truths == 0:
        return 0.0
    tp_cum = np.cumsum(tp)
    recall = tp_cum / num_truths
    precision = tp_cum / np.arange(1, len(tp) + 1)
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(
    predictions: Sequence[Sequence[tuple[int, float, Box]]],
    truths: Sequence[Sequence[tuple[int, Box]]],
    iou_threshold: float = 0.5,
) -> MapResult:
    """`predictions[i]`: (class_id, score, box) of image i; `truths[i]`: (class_id, box)."""
    if len(predictions) != len(truths):
        raise ValueError("predictions and truths must cover the same images")
    classes = sorted({c for image in truths for c, _ in image})
    per_class: dict[int, float] = {}
    for cls in classes:
        gt = [np.asarray([b for c, b in image if c == cls], np.float64).reshape(-1, 4) for image in truths]
        used = [np.zeros(len(g), bool) for g in gt]
        preds = sorted(
            ((score, i, box) for i, image in enumerate(predictions) for c, score, box in image if c == cls),
            key=lambda p: -p[0],
        )
        tp = np.zeros(len(preds))
        for k, (_, i, box) in enumerate(preds):
            ious = _iou(box, gt[i])
            if len(ious):
                j = int(ious.argmax())
                if ious[j] >= iou_threshold and not used[i][j]:
                    used[i][j] = True
                    tp[k] = 1
        per_class[cls] = _average_precision(tp, sum(len(g) for g in gt))
    return MapResult(
        map=float(np.mean(list(per_class.values()))) if per_class else 0.0,
        per_class=per_class,
        truths=sum(len(t) for t in truths),
        predictions=sum(len(p) for p in predictions),
    )


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4) with every box in `b` (m, 4)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
