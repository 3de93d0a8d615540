"""A scripted scene for tracking: objects that cross, stop, leave and enter, with ground-truth ids.

Drawn by the demo's SceneGenerator (same shapes, backgrounds, noise and lighting as the demo
detector was trained on); only the motion is scripted, as paths of waypoints over time:
two squares crossing each other (the one drawn later hides part of the other), a circle that
comes in, stops for a while and leaves, a triangle entering late and crossing the frame, a star
leaving early. Each path is (t, x, y) waypoints in fractions of the scene and the frame;
outside its first and last waypoint an object is not in the scene.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import cv2
import numpy as np

from agent.demo.scene import GroundTruth, SceneGenerator, _MovingShape

# (class id, radius as a share of the height, waypoints (t as a share of the scene, x, y))
PATHS: tuple[tuple[int, float, tuple[tuple[float, float, float], ...]], ...] = (
    (1, 0.085, ((0.00, 0.10, 0.38), (0.70, 0.90, 0.38))),  # square, left to right
    (1, 0.085, ((0.00, 0.90, 0.50), (0.70, 0.10, 0.50))),  # square, right to left: they cross mid-way
    (0, 0.070, ((0.00, -0.08, 0.78), (0.15, 0.45, 0.78), (0.65, 0.45, 0.78), (0.85, 1.10, 0.95))),  # stops
    (2, 0.080, ((0.30, 0.70, -0.10), (0.85, 0.75, 1.12))),  # enters from the top, leaves at the bottom
    (3, 0.075, ((0.00, 0.60, 0.15), (0.35, 1.12, 0.10))),  # leaves early on the right
)


MIN_IN_FRAME = 0.4  # an object mostly outside the frame (entering, leaving) is not ground truth


def _in_frame_share(box: tuple[float, float, float, float], points: np.ndarray) -> float:
    """The share of the object's whole box that lies in the frame."""
    _, _, w, h = cv2.boundingRect(points)
    return (box[2] - box[0]) * (box[3] - box[1]) / max(1, w * h)


def _position(waypoints: tuple[tuple[float, float, float], ...], t: float) -> tuple[float, float] | None:
    if t < waypoints[0][0] or t > waypoints[-1][0]:
        return None
    for (t0, x0, y0), (t1, x1, y1) in itertools.pairwise(waypoints):
        if t0 <= t <= t1:
            k = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return x0 + k * (x1 - x0), y0 + k * (y1 - y0)
    return waypoints[-1][1], waypoints[-1][2]


class TrackingScene:
    """Frames of one scripted scene of `frames` frames, and their ground truth with object ids."""

    def __init__(self, seed: int | tuple[int, ...], frames: int, width: int = 640, height: int = 360) -> None:
        self.frames = frames
        self._gen = SceneGenerator(seed, width, height)
        rng = np.random.default_rng(np.random.SeedSequence([0x7ACC, *np.atleast_1d(seed).tolist()]))
        self._shapes: list[_MovingShape] = []
        for class_id, radius, _ in PATHS:
            color = tuple(int(c) for c in rng.integers(40, 256, 3))
            self._shapes.append(_MovingShape(class_id, 0.0, 0.0, radius * height, 0.0, 0.0,
                                             float(rng.uniform(0, math.pi)), 0.0, color, None))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[GroundTruth]]]:
        gen = self._gen
        for index in range(self.frames):
            t = index / max(1, self.frames - 1)
            present, ids = [], []
            for object_id, (shape, (_, _, waypoints)) in enumerate(zip(self._shapes, PATHS)):
                position = _position(waypoints, t)
                if position is None:
                    continue
                shape.cx, shape.cy = position[0] * gen.width, position[1] * gen.height
                present.append(shape)
                ids.append(object_id)
            gen._shapes = present  # the generator draws and measures visibility; it does not move them (v = 0)
            image, truths = gen.next_frame()
            yield image, [GroundTruth(g.class_id, g.box, ids[g.object_id]) for g in truths
                          if _in_frame_share(g.box, present[g.object_id].points) >= MIN_IN_FRAME]
