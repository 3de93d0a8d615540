"""Demo video clips, written by OpenCV from the scene generator, with ground truth.

Clips are made on first use (nothing is downloaded). Each `clip.mp4` has a
sidecar `clip.mp4.json`: `{"labels": [...], "frames": [{"index", "objects":
[{"label", "class_id", "box"}]}]}` so anyone can measure accuracy on it.
"""

from __future__ import annotations

import json
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from agent.demo.scene import CLASS_NAMES, SceneGenerator

DEMO_CLIP_SECONDS = 60.0
DEMO_CLIP_FPS = 15.0
SCENE_SECONDS = 10.0


H264_BITRATE = 4_000_000  # what a 720p camera stream carries


class ClipWriteError(Exception):
    pass


class _OpenCvWriter:
    """MPEG-4 part 2 (`mp4v`): what pip's OpenCV can encode; cheap to decode."""

    def __init__(self, path: Path, fps: float, width: int, height: int) -> None:
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not self._writer.isOpened():
            raise ClipWriteError(f"OpenCV cannot write video to {path} (mp4v codec)")

    def write(self, image: np.ndarray) -> None:
        self._writer.write(image)

    def close(self) -> None:
        self._writer.release()


class _H264Writer:
    """H.264 main profile through PyAV's bundled libx264, as real cameras send it (pip's OpenCV cannot
    encode H.264)."""

    def __init__(self, path: Path, fps: float, width: int, height: int, bitrate: int) -> None:
        try:
            import av
        except ImportError:
            raise ClipWriteError("H.264 clips need PyAV: pip install av") from None
        self._container = av.open(str(path), "w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.bit_rate = bitrate
        self._stream.options = {"profile": "main", "preset": "veryfast", "g": str(max(1, round(fps * 2)))}
        self._frame_type = av.VideoFrame

    def write(self, image: np.ndarray) -> None:
        for packet in self._stream.encode(self._frame_type.from_ndarray(image, format="bgr24")):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():  # flush the encoder's delayed frames
            self._container.mux(packet)
        self._container.close()


def sidecar_path(clip: Path) -> Path:
    return clip.with_name(clip.name + ".json")


def write_clip(out: Path, seconds: float = 20.0, seed: int = 1, fps: float = DEMO_CLIP_FPS,
               width: int = 640, height: int = 360, scene_seconds: float = SCENE_SECONDS,
               empty_seconds: float = 0.0, codec: Literal["mp4v", "h264"] = "mp4v",
               bitrate: int = H264_BITRATE) -> Path:
    """Write a clip and its ground-truth sidecar atomically (temp files, then rename).

    The clip cuts to a new scene (background, objects, noise) every `scene_seconds`; with
    `empty_seconds`, the last that many seconds of each scene have no objects (a still scene).
    `codec` h264 writes H.264 at `bitrate` (PyAV), as cameras stream; mp4v is cheaper to decode.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix or ".mp4"
    fd, tmp_name = tempfile.mkstemp(prefix=".clip-", suffix=suffix, dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = _H264Writer(tmp, fps, width, height, bitrate) if codec == "h264" else \
            _OpenCvWriter(tmp, fps, width, height)
    except ClipWriteError:
        tmp.unlink(missing_ok=True)
        raise
    per_scene = max(1, round(scene_seconds * fps))
    frames = []
    try:
        for index in range(max(1, round(seconds * fps))):
            if index % per_scene == 0:
                gen = SceneGenerator((seed, index // per_scene), width, height)
            image, truths = gen.next_frame(objects=index % per_scene < per_scene - round(empty_seconds * fps))
            writer.write(image)
            frames.append({"index": index, "objects": [
                {"label": t.label, "class_id": t.class_id, "box": list(t.box)} for t in truths
            ]})
    finally:
        writer.close()
    meta = {"labels": list(CLASS_NAMES), "seed": seed, "scene_seconds": scene_seconds,
            "empty_seconds": empty_seconds, "codec": codec, "fps": fps,
            "width": width, "height": height, "frames": frames}
    side_tmp = tmp.with_name(tmp.name + ".json")
    side_tmp.write_text(json.dumps(meta, separators=(",", ":")), encoding="utf-8")
    os.replace(side_tmp, sidecar_path(out))
    os.replace(tmp, out)
    return out


def write_tracking_clip(out: Path, seconds: float = 20.0, seed: int = 1, fps: float = DEMO_CLIP_FPS,
                        width: int = 640, height: int = 360) -> Path:
    """A clip of one scripted tracking scene (agent.demo.tracking_scene): objects cross, stop, leave and
    enter; the sidecar's objects carry their `object_id`."""
    from agent.demo.tracking_scene import TrackingScene

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix or '.mp4'}")
    writer = _OpenCvWriter(tmp, fps, width, height)
    frames = []
    try:
        for index, (image, truths) in enumerate(TrackingScene(seed, max(1, round(seconds * fps)), width, height)):
            writer.write(image)
            frames.append({"index": index, "objects": [
                {"label": t.label, "class_id": t.class_id, "box": list(t.box), "object_id": t.object_id}
                for t in truths]})
    finally:
        writer.close()
    meta = {"labels": list(CLASS_NAMES), "seed": seed, "scene": "tracking", "fps": fps, "width": width,
            "height": height, "frames": frames}
    side_tmp = tmp.with_name(tmp.name + ".json")
    side_tmp.write_text(json.dumps(meta, separators=(",", ":")), encoding="utf-8")
    os.replace(side_tmp, sidecar_path(out))
    os.replace(tmp, out)
    return out


def demo_clip_path(data_dir: Path, seed: int) -> Path:
    return data_dir / "demo" / f"demo-{seed}.mp4"


def ensure_demo_clip(data_dir: Path, seed: int) -> Path:
    """The demo clip for `seed`, generated on first use."""
    path = demo_clip_path(data_dir, seed)
    if not (path.is_file() and sidecar_path(path).is_file()):
        write_clip(path, DEMO_CLIP_SECONDS, seed)
    return path


def read_ground_truth(clip: Path) -> dict:
    side = sidecar_path(clip)
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{clip}: no ground-truth sidecar {side.name} next to it") from None
