"""Frames for INT8 calibration and its accuracy check, from where the device looks.

SOURCE is a folder of images, a video file, or the name of a configured camera
(frames from the device's own scene). Frames are spread evenly over the source
and split, interleaved, into a calibration set and a held-out set, so both see
every scene. A clip with a ground-truth sidecar (the demo clips) gives truth for
the held-out frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.capture.camera import as_bgr, open_capture
from agent.capture.sources import SourceError, SourceKind
from agent.config import AgentConfig
from agent.demo.clips import ensure_demo_clip, read_ground_truth, sidecar_path
from engines.metrics import Box

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
MAX_VIDEO_FRAMES = 1_000_000  # a sanity bound when a container does not report its length


class CalibrationSourceError(Exception):
    """The source cannot give the frames asked for; the message says why."""


@dataclass
class SampledFrames:
    calibration: list[np.ndarray]
    holdout: list[np.ndarray]
    holdout_truth: list[list[tuple[int, Box]]] | None  # None: no ground truth for this source
    description: str


def holdout_positions(total: int, holdout: int) -> set[int]:
    """`holdout` positions spread evenly over `total`, the rest calibrate."""
    return {min(total - 1, int((i + 0.5) * total / holdout)) for i in range(holdout)}


def _split(frames: list[np.ndarray], holdout: int, truth: list | None, what: str) -> SampledFrames:
    held = holdout_positions(len(frames), holdout)
    return SampledFrames(
        calibration=[f for i, f in enumerate(frames) if i not in held],
        holdout=[f for i, f in enumerate(frames) if i in held],
        holdout_truth=None if truth is None else [t for i, t in enumerate(truth) if i in held],
        description=what,
    )


def _from_folder(folder: Path, total: int, holdout: int) -> SampledFrames:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < total:
        raise CalibrationSourceError(f"{folder}: {len(files)} image(s), {total} needed "
                                     f"(calibration frames plus {holdout} held out)")
    picks = np.linspace(0, len(files) - 1, total).round().astype(int)
    frames = []
    for i in picks:
        image = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if image is None:
            raise CalibrationSourceError(f"cannot decode image {files[i]}")
        frames.append(image)
    return _split(frames, holdout, None, f"{total} images from {folder}")


def _video_truth(clip: Path) -> dict[int, list[tuple[int, Box]]] | None:
    if not sidecar_path(clip).is_file():
        return None
    truth = read_ground_truth(clip)
    return {f["index"]: [(o["class_id"], tuple(o["box"])) for o in f["objects"]] for f in truth["frames"]}


def _from_video(clip: Path, total: int, holdout: int) -> SampledFrames:
    cap = cv2.VideoCapture(str(clip))
    if not cap.isOpened():
        raise CalibrationSourceError(f"OpenCV cannot open video {clip}")
    try:
        length = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if length <= 0:  # some containers do not say; count by grabbing
            length = 0
            while length < MAX_VIDEO_FRAMES and cap.grab():
                length += 1
            cap.release()
            cap = cv2.VideoCapture(str(clip))
        if length < total:
            raise CalibrationSourceError(f"{clip}: {length} frame(s), {total} needed")
        wanted = set(np.linspace(0, length - 1, total).round().astype(int).tolist())
        frames, indices = [], []
        for index in range(max(wanted) + 1):
            if not cap.grab():
                break
            if index in wanted:
                ok, image = cap.retrieve()
                image = as_bgr(image) if ok else None
                if image is not None:
                    frames.append(image)
                    indices.append(index)
    finally:
        cap.release()
    if len(frames) < total:
        raise CalibrationSourceError(f"{clip}: decoded {len(frames)} of the {total} frames asked for")
    truth_by_index = _video_truth(clip)
    truth = None if truth_by_index is None else [truth_by_index.get(i, []) for i in indices]
    return _split(frames, holdout, truth, f"{total} frames of {clip}"
                  + (" (with ground truth)" if truth is not None else ""))


def _from_camera(config: AgentConfig, name: str, total: int, holdout: int, interval_s: float) -> SampledFrames:
    cam = next((c for c in config.cameras if c.name == name), None)
    if cam is None:
        names = ", ".join(c.name for c in config.cameras) or "none"
        raise CalibrationSourceError(f"{name!r} is not a folder, a video file or a configured camera "
                                     f"(cameras: {names})")
    source = cam.parsed_source
    if source.kind is SourceKind.FILE:
        return _from_video(Path(str(source.value)).expanduser(), total, holdout)
    data_dir = config.storage.path.expanduser()
    if source.kind is SourceKind.DEMO:
        return _from_video(ensure_demo_clip(data_dir, int(source.value)), total, holdout)
    try:
        cap = open_capture(source, cam, data_dir)
    except SourceError as exc:
        raise CalibrationSourceError(
            f"camera {name}: {exc} (a V4L2/CSI camera is held by a running agent: stop it, or record a clip "
            "and calibrate on that)") from exc
    frames: list[np.ndarray] = []
    try:
        next_at = time.monotonic()
        deadline = time.monotonic() + total * interval_s + cam.no_frame_timeout_s
        while len(frames) < total:
            ok, image = cap.read()
            image = as_bgr(image) if ok else None
            if image is None:
                raise CalibrationSourceError(f"camera {name} stopped delivering frames after {len(frames)}")
            if time.monotonic() >= next_at:  # spread over time: the scene changes, frames differ
                frames.append(image)
                next_at += interval_s
            if time.monotonic() > deadline:
                raise CalibrationSourceError(f"camera {name}: {len(frames)} of {total} frames before the deadline")
    finally:
        cap.release()
    return _split(frames, holdout, None, f"{total} frames of camera {name}, {interval_s:g} s apart")


def sample_frames(source: str, calibration: int, holdout: int, config: AgentConfig,
                  interval_s: float = 0.5) -> SampledFrames:
    """Frames from a folder, a video file or a configured camera, split into calibration and held-out."""
    if calibration < 1 or holdout < 1:
        raise CalibrationSourceError("both calibration and held-out frames are needed")
    total = calibration + holdout
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_folder(path, total, holdout)
    if path.is_file():
        return _from_video(path, total, holdout)
    return _from_camera(config, source, total, holdout, interval_s)
