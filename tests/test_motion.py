"""The motion gate on real frames: a still scene with sensor noise, moving shapes, a whole-frame change."""

from __future__ import annotations

import cv2
import numpy as np

from agent.config import MotionConfig
from agent.demo.scene import SceneGenerator
from agent.pipeline.motion import MotionGate, motion_frame

FPS = 10.0


def still_frames(count: int, seed: int = 3, noise: float = 6.0) -> list[np.ndarray]:
    """One demo background (no objects) at 720p with Gaussian sensor noise that changes every frame (from a
    bank of 7 noise fields, drawing 2.7 M numbers per frame would be most of the test's time)."""
    rng = np.random.default_rng(seed)
    base = SceneGenerator((seed, 0), 1280, 720)._make_background()
    bank = [np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8) for _ in range(7)]
    return [bank[i % 7].copy() for i in range(count)]


def gate(**kw) -> MotionGate:
    return MotionGate(MotionConfig(**kw), enabled=True)


def feed(g: MotionGate, frames: list[np.ndarray], start: float = 0.0) -> list[bool]:
    return [g.admit(f, start + i / FPS) for i, f in enumerate(frames)]


def test_a_still_noisy_scene_is_gated_except_the_periodic_check() -> None:
    g = gate()
    admitted = feed(g, still_frames(200))  # 20 s
    assert sum(admitted) / len(admitted) <= 0.10
    # the first frame (nothing to compare with) and one full inference every max_skip_s (5 s)
    assert [i for i, a in enumerate(admitted) if a] == [0, 50, 100, 150]
    assert g.counts()["gated"] == 196 and g.counts()["inferred"] == 4


def test_moving_objects_are_inferred() -> None:
    g = gate()
    feed(g, still_frames(20))
    gen = SceneGenerator((5, 0), 1280, 720)
    moving = [gen.next_frame()[0] for _ in range(50)]
    admitted = feed(g, moving, start=2.0)
    assert sum(admitted[1:]) >= 0.9 * (len(admitted) - 1)


def test_a_small_object_entering_a_still_scene_wakes_the_gate() -> None:
    g = gate()
    frames = still_frames(40)
    feed(g, frames[:20])
    for i, frame in enumerate(frames[20:]):  # a 60×60 square walking in from the left
        cv2.rectangle(frame, (20 + 15 * i, 300), (80 + 15 * i, 360), (20, 20, 230), -1)
    admitted = feed(g, frames[20:], start=2.0)
    assert all(admitted[1:]), admitted


def test_objects_seen_recently_keep_frames_inferred_without_motion() -> None:
    g = gate(keep_s=3.0)
    frames = still_frames(60)
    feed(g, frames[:10])
    g.saw_objects(1.0)  # a detection on the frame at 1 s
    admitted = feed(g, frames[10:], start=1.0)
    assert all(admitted[:30])  # kept following for 3 s at 10 fps
    assert not any(admitted[31:45])


def test_a_whole_frame_change_recalibrates_instead_of_motion_everywhere() -> None:
    g = gate()
    day = still_frames(30)
    feed(g, day[:10])
    night = [cv2.cvtColor(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) // 3, cv2.COLOR_GRAY2BGR) for f in day[10:]]  # IR switch
    admitted = feed(g, night, start=1.0)
    assert admitted[0] and g.recalibrations == 1  # one look at the new scene
    assert sum(admitted[1:]) == 0  # then still again, not 'motion' until the background catches up


def test_a_mask_hides_motion_in_its_polygon() -> None:
    g = gate(mask=[[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]])  # the left half
    frames = still_frames(30)
    feed(g, frames[:10])
    for i, frame in enumerate(frames[10:]):  # a swaying tree on the left
        cv2.circle(frame, (200 + 20 * (i % 4), 360), 80, (0, 160, 0), -1)
    assert not any(feed(g, frames[10:20], start=1.0))
    right = still_frames(10, seed=3)
    for i, frame in enumerate(right):
        cv2.circle(frame, (900 + 20 * i, 360), 60, (0, 0, 200), -1)
    assert any(feed(g, right, start=2.0))


def test_the_level_can_take_the_gate_out_and_shed_the_camera() -> None:
    g = gate()
    g.active_by_level = False
    assert all(feed(g, still_frames(30)))
    g.active_by_level, g.shed = True, True
    assert not any(feed(g, still_frames(5), start=5.0))
    assert g.counts()["shed"] == 5


def test_the_motion_frame_is_small_and_grey() -> None:
    small = motion_frame(np.zeros((1080, 1920, 3), np.uint8))
    assert small.shape == (90, 160) and small.dtype == np.uint8
