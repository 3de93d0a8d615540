"""The gate in front of inference: a still frame skips it, unless something is there to follow or a check
is due; a camera the quality level sheds skips it altogether.

Motion is looked for on a small grey copy of the frame (MOTION_WIDTH pixels wide, made in about
half a millisecond from 720p; the full frame is never copied): the difference to a running-average
background, thresholded, dilated, and the largest changed region compared with `min_area`. When
most of the frame changes at once (an IR switch, lightning, a camera moved) the background starts
again from this frame instead of seeing motion everywhere for seconds.

A frame without motion is still inferred while objects were detected within `keep_s` (keep following
what is there), and at least every `max_skip_s` (a parked car is re-checked).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from agent.config import MotionConfig

MOTION_WIDTH = 160
LEARN_RATE = 0.05  # share of each frame blended into the background
RECALIBRATE_FRACTION = 0.7  # this much of the frame changing at once is a new scene, not motion
_KERNEL = np.ones((3, 3), np.uint8)


def motion_frame(image: np.ndarray, width: int = MOTION_WIDTH) -> np.ndarray:
    """A small grey copy: linear to 4× the size first (cheap), then area-averaged (noise averages out)."""
    h, w = image.shape[:2]
    height = max(1, round(h * width / w))
    if w > 4 * width:
        image = cv2.resize(image, (4 * width, 4 * height), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small


class MotionGate:
    """Per camera, owned by the inference worker's thread."""

    def __init__(self, config: MotionConfig, enabled: bool) -> None:
        self.config = config
        self.enabled = enabled  # the camera's setting
        self.active_by_level = True  # the quality level may take the gate out (every frame inferred)
        self.sensitivity = 1.0  # the quality level's: > 1 wakes on smaller changes
        self.shed = False  # the quality level sheds this camera: no inference at all
        self.shed_frames = 0
        self.gated = 0
        self.inferred = 0
        self.recalibrations = 0
        self.last_change = 0.0  # share of the frame that changed, last look
        self._background: np.ndarray | None = None
        self._ignore: np.ndarray | None = None  # 0 where the mask polygons are
        self._last_inferred = -math.inf
        self._last_objects = -math.inf

    @property
    def active(self) -> bool:
        return self.enabled and self.active_by_level

    def admit(self, image: np.ndarray, now: float) -> bool:
        """True: infer this frame. Counts either way."""
        if self.shed:
            self.shed_frames += 1
            return False
        if not self.active:
            self._background = None  # stale once the gate comes back: start afresh then
            return self._admitted(now)
        moved = self._moved(motion_frame(image))
        following = now - self._last_objects < self.config.keep_s
        if moved or following or now - self._last_inferred >= self.config.max_skip_s:
            return self._admitted(now)
        self.gated += 1
        return False

    def saw_objects(self, now: float) -> None:
        self._last_objects = now

    def counts(self) -> dict[str, int | float | bool]:
        return {"enabled": self.active, "gated": self.gated, "inferred": self.inferred, "shed": self.shed_frames,
                "recalibrations": self.recalibrations, "last_change": round(self.last_change, 4)}

    def _admitted(self, now: float) -> bool:
        self.inferred += 1
        self._last_inferred = now
        return True

    def _moved(self, grey: np.ndarray) -> bool:
        background = self._background
        if background is None or background.shape != grey.shape:
            self._background = grey.astype(np.float32)
            self._ignore = self._mask(grey.shape)
            return True  # nothing to compare with: look
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(background))
        threshold = max(1.0, self.config.threshold / self.sensitivity)
        _, changed = cv2.threshold(diff, threshold, 255, cv2.THRESH_BINARY)
        if self._ignore is not None:
            changed = cv2.bitwise_and(changed, self._ignore)
        changed = cv2.dilate(changed, _KERNEL, iterations=2)
        area = changed.shape[0] * changed.shape[1]
        self.last_change = cv2.countNonZero(changed) / area
        if self.last_change > RECALIBRATE_FRACTION:
            self._background = grey.astype(np.float32)
            self.recalibrations += 1
            return True  # a new scene: look at it once
        cv2.accumulateWeighted(grey, background, LEARN_RATE)
        if self.last_change == 0.0:
            return False
        contours, _ = cv2.findContours(changed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        largest = max((cv2.contourArea(c) for c in contours), default=0.0)
        return largest >= self.config.min_area * area / self.sensitivity

    def _mask(self, shape: tuple[int, ...]) -> np.ndarray | None:
        if not self.config.mask:
            return None
        h, w = shape[:2]
        keep = np.full((h, w), 255, np.uint8)
        for polygon in self.config.mask:
            points = np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in polygon], np.int32)
            cv2.fillPoly(keep, [points], 0)
        return keep
