"""Procedural scenes for the built-in demo: shapes moving over varied backgrounds.

The same generator feeds the demo cameras, the held-out accuracy clips and the
training script, so what the demo detector learned is exactly what it sees.
Everything is driven by one seed: the same seed gives the same frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
MIN_VISIBLE_FRACTION = 0.5  # objects hidden more than this are not ground truth


@dataclass(frozen=True)
class GroundTruth:
    """One visible object in a frame, box in frame pixels (x1, y1, x2, y2)."""

    class_id: int
    box: tuple[float, float, float, float]
    object_id: int = -1  # the same object in every frame of a scene (tracking ground truth)

    @property
    def label(self) -> str:
        return CLASS_NAMES[self.class_id]


@dataclass
class _MovingShape:
    class_id: int
    cx: float
    cy: float
    radius: float
    vx: float
    vy: float
    angle: float
    spin: float
    color: tuple[int, int, int]
    outline: tuple[int, int, int] | None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))


def _shape_points(class_id: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Polygon of a shape (circles are drawn as fine polygons too)."""
    if class_id == 0:  # circle
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif class_id == 1:  # square
        t = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi + angle
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif class_id == 2:  # triangle
        t = np.array([0, 2 / 3, 4 / 3]) * math.pi + angle - math.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif class_id == 3:  # five-pointed star
        t = np.arange(10) * math.pi / 5 + angle - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([np.cos(t) * radii, np.sin(t) * radii], 1)
    else:  # cross (plus sign)
        a, b = r, r * 0.33
        base = np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
             [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
        )
        c, s = math.cos(angle), math.sin(angle)
        pts = base @ np.array([[c, s], [-s, c]])
    return np.round(pts + (cx, cy)).astype(np.int32)


class SceneGenerator:
    """Yields frames of a seeded scene and the ground truth of each frame.

    Training uses integer seeds; clips use (clip seed, scene number) tuples, which
    NumPy maps to different streams, so held-out clips never repeat a training scene.
    """

    def __init__(
        self,
        seed: int | tuple[int, ...],
        width: int = 640,
        height: int = 360,
        max_objects: int = 6,
        min_radius: float = 12.0,
        max_radius: float = 44.0,
    ) -> None:
        self.width, self.height = width, height
        self._rng = np.random.default_rng(seed)
        self._min_r, self._max_r = min_radius, max_radius
        self._background = self._make_background()
        self._noise_sigma = float(self._rng.uniform(0, 9))
        self._noise_bank = [
            self._rng.normal(0, 1, (height, width, 3)).astype(np.float32) for _ in range(4)
        ]
        self._blur = int(self._rng.choice([0, 0, 0, 3, 5]))
        self._light_phase = float(self._rng.uniform(0, 2 * math.pi))
        self._light_period = float(self._rng.uniform(40, 200))
        self._light_depth = float(self._rng.uniform(0.0, 0.35))
        n = int(self._rng.integers(2, max_objects + 1))
        self._shapes = [self._spawn() for _ in range(n)]
        self.frame_index = 0
        self._canvas = np.empty((height, width, 3), np.float32)

    # -- scene set-up -------------------------------------------------------------
    def _random_color(self) -> tuple[int, int, int]:
        return tuple(int(c) for c in self._rng.integers(0, 256, 3))  # type: ignore[return-value]

    def _make_background(self) -> np.ndarray:
        h, w, rng = self.height, self.width, self._rng
        kind = int(rng.integers(0, 4))
        c1 = np.array(self._random_color(), np.float32)
        c2 = np.array(self._random_color(), np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if kind == 0:  # linear gradient
            ang = rng.uniform(0, 2 * math.pi)
            t = (xx * math.cos(ang) + yy * math.sin(ang))
            t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        elif kind == 1:  # stripes
            period = rng.uniform(20, 120)
            ang = rng.uniform(0, math.pi)
            t = 0.5 + 0.5 * np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period)
        elif kind == 2:  # checkerboard
            cell = int(rng.integers(16, 80))
            t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
        else:  # smooth blotches
            small = rng.uniform(0, 1, (max(2, h // 40), max(2, w // 40))).astype(np.float32)
            t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
            t = np.clip(t, 0, 1)
        bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
        texture = cv2.resize(
            rng.normal(0, 1, (h // 4, w // 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR
        )
        bg += texture[..., None] * rng.uniform(0, 18)
        for _ in range(int(rng.integers(0, 10))):  # clutter: lines and arcs that are no class
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            color = tuple(float(c) for c in rng.integers(0, 256, 3))
            if rng.uniform() < 0.5:
                cv2.line(bg, p1, p2, color, int(rng.integers(1, 4)), cv2.LINE_AA)
            else:
                axes = (int(rng.integers(10, 80)), int(rng.integers(10, 80)))
                cv2.ellipse(bg, p1, axes, float(rng.uniform(0, 360)), 0, float(rng.uniform(30, 200)),
                            color, int(rng.integers(1, 3)), cv2.LINE_AA)
        return np.clip(bg, 0, 255).astype(np.float32)

    def _spawn(self) -> _MovingShape:
        rng = self._rng
        r = float(rng.uniform(self._min_r, self._max_r))
        speed = rng.uniform(0.5, 6.0)
        heading = rng.uniform(0, 2 * math.pi)
        cx = float(rng.uniform(r + 2, self.width - r - 2))
        cy = float(rng.uniform(r + 2, self.height - r - 2))
        bg = self._background[int(cy), int(cx)]
        color = self._random_color()
        if np.abs(np.asarray(color, np.float32) - bg).sum() < 120:  # keep it visible
            color = tuple(255 - c for c in color)  # type: ignore[assignment]
        outline = self._random_color() if rng.uniform() < 0.3 else None
        return _MovingShape(
            class_id=int(rng.integers(0, len(CLASS_NAMES))), cx=cx, cy=cy, radius=r,
            vx=speed * math.cos(heading), vy=speed * math.sin(heading),
            angle=float(rng.uniform(0, 2 * math.pi)), spin=float(rng.uniform(-0.08, 0.08)),
            color=color, outline=outline,
        )

    # -- per frame ----------------------------------------------------------------
    def skip(self, frames: int = 1) -> None:
        """Move the scene on without rendering (cheap; for sparse sampling)."""
        for _ in range(frames):
            self._advance()
            self.frame_index += 1

    def _advance(self) -> None:
        for s in self._shapes:
            s.cx += s.vx
            s.cy += s.vy
            s.angle += s.spin
            if not s.radius <= s.cx <= self.width - s.radius:
                s.vx = -s.vx
                s.cx = min(max(s.cx, s.radius), self.width - s.radius)
            if not s.radius <= s.cy <= self.height - s.radius:
                s.vy = -s.vy
                s.cy = min(max(s.cy, s.radius), self.height - s.radius)

    def next_frame(self, objects: bool = True) -> tuple[np.ndarray, list[GroundTruth]]:
        """Render the next frame (BGR uint8) and the objects visible in it; without `objects` the scene is
        empty (its lighting and noise go on), as when everything has left it."""
        canvas = self._canvas
        np.copyto(canvas, self._background)
        coverage = np.full((self.height, self.width), -1, np.int16)
        shapes = self._shapes if objects else []
        for i, s in enumerate(shapes):
            s.points = _shape_points(s.class_id, s.cx, s.cy, s.radius, s.angle)
            cv2.fillPoly(canvas, [s.points], s.color, cv2.LINE_AA)
            if s.outline is not None:
                cv2.polylines(canvas, [s.points], True, s.outline, 2, cv2.LINE_AA)
            cv2.fillPoly(coverage, [s.points], i)
        truths = []
        for i, s in enumerate(shapes):
            mask = np.zeros_like(coverage, np.uint8)
            cv2.fillPoly(mask, [s.points], 1)
            area = int(mask.sum())
            visible = int(np.count_nonzero((coverage == i) & (mask == 1)))
            if area and visible / area >= MIN_VISIBLE_FRACTION:
                x, y, w, h = cv2.boundingRect(s.points)
                box = (max(0.0, x), max(0.0, y), min(float(self.width), x + w), min(float(self.height), y + h))
                truths.append(GroundTruth(s.class_id, tuple(float(v) for v in box), i))  # type: ignore[arg-type]
        light = 1.0 + self._light_depth * math.sin(
            self._light_phase + 2 * math.pi * self.frame_index / self._light_period
        )
        canvas *= light
        if self._noise_sigma > 0:
            canvas += self._noise_bank[self.frame_index % len(self._noise_bank)] * self._noise_sigma
        frame = np.clip(canvas, 0, 255).astype(np.uint8)
        if self._blur:
            frame = cv2.GaussianBlur(frame, (self._blur, self._blur), 0)
        self.frame_index += 1
        self._advance()
        return frame, truths
