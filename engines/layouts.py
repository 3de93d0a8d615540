"""Output layouts of detection models and their decoding.

- `yolov8`: `[B, 4+nc, N]` — cx, cy, w, h then per-class scores (YOLOv8/YOLO11).
- `yolov5`: `[B, N, 5+nc]` — cx, cy, w, h, objectness then per-class scores.
- `end2end`: `[B, N, 6]` — x1, y1, x2, y2, score, class, NMS already applied
  (YOLOv10/YOLO26 exports, or models exported with NMS included).
Decoders return boxes in model-input pixels; the caller undoes the letterbox.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import numpy as np

from engines.errors import ModelLayoutError

MAX_CANDIDATES = 3000  # boxes passed to NMS per image, highest scores first


class Layout(str, Enum):
    YOLOV8 = "yolov8"
    YOLOV5 = "yolov5"
    END2END = "end2end"


class Candidates(NamedTuple):
    boxes: np.ndarray  # [K, 4] x1, y1, x2, y2 in model-input pixels
    scores: np.ndarray  # [K]
    class_ids: np.ndarray  # [K]
    needs_nms: bool


Dim = int | str | None


def _known(d: Dim) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def detect_layout(path: str, shape: tuple[Dim, ...], num_names: int | None, end2end_flag: bool,
                  override: Layout | None = None) -> tuple[Layout, int | None]:
    """Which layout an output of `shape` is, and its number of classes.

    Uses the shape, the number of class names from metadata (if any) and the
    Ultralytics `end2end` metadata flag. `override` forces a layout where the
    shape is ambiguous (a one-class YOLOv5 model also has 6 columns).
    """
    expected = "[B, 4+classes, anchors] (yolov8), [B, anchors, 5+classes] (yolov5) or [B, N, 6] (end2end)"
    if len(shape) != 3:
        raise ModelLayoutError(f"{path}: output shape {list(shape)} is not a detection layout; expected {expected}")
    a, b = _known(shape[1]), _known(shape[2])
    nc = num_names

    def fail(reason: str) -> ModelLayoutError:
        return ModelLayoutError(f"{path}: output shape {list(shape)} {reason}; expected {expected}")

    if override is not None:
        if override is Layout.YOLOV8 and a is not None and a > 4:
            return override, a - 4
        if override is Layout.YOLOV5 and b is not None and b > 5:
            return override, b - 5
        if override is Layout.END2END and b == 6:
            return override, nc
        raise fail(f"does not fit the configured layout '{override.value}'")
    if b == 6 and (end2end_flag or nc is None or nc != 1):
        return Layout.END2END, nc
    if nc is not None:
        if a == 4 + nc:
            return Layout.YOLOV8, nc
        if b == 5 + nc:
            return Layout.YOLOV5, nc
        raise fail(f"does not match the model's {nc} class names")
    if a is not None and a > 4 and (b is None or a < b):
        return Layout.YOLOV8, a - 4
    if b is not None and b > 5 and (a is None or b < a):
        return Layout.YOLOV5, b - 5
    raise fail("is not a layout we understand")


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(xywh)
    half_w, half_h = xywh[:, 2] / 2, xywh[:, 3] / 2
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


def _top(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, nms: bool) -> Candidates:
    if len(scores) > MAX_CANDIDATES:
        idx = np.argpartition(-scores, MAX_CANDIDATES)[:MAX_CANDIDATES]
        boxes, scores, class_ids = boxes[idx], scores[idx], class_ids[idx]
    return Candidates(boxes.astype(np.float32, copy=False), scores.astype(np.float32, copy=False),
                      class_ids.astype(np.int64, copy=False), nms)


def decode(layout: Layout, output: np.ndarray, score_threshold: float) -> Candidates:
    """Candidates above `score_threshold` from one image's output (batch dim removed)."""
    if layout is Layout.YOLOV8:  # [4+nc, N]
        class_scores = output[4:]
        best = class_scores.max(0)
        keep = np.flatnonzero(best > score_threshold)
        class_ids = class_scores[:, keep].argmax(0)
        return _top(_xywh_to_xyxy(output[:4, keep].T), best[keep], class_ids, True)
    if layout is Layout.YOLOV5:  # [N, 5+nc]
        rows = output[output[:, 4] > score_threshold]
        scores_all = rows[:, 5:] * rows[:, 4:5]
        class_ids = scores_all.argmax(1)
        scores = scores_all[np.arange(len(rows)), class_ids]
        keep = scores > score_threshold
        return _top(_xywh_to_xyxy(rows[keep, :4]), scores[keep], class_ids[keep], True)
    rows = output[output[:, 4] > score_threshold]  # end2end [N, 6]
    return _top(rows[:, :4].copy(), rows[:, 4], rows[:, 5].round(), False)
