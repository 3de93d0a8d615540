"""The PyAV decode path: frames decoded straight to the model's size detect what OpenCV's full frames do."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.pyav_reader import PyAvReader, working_size
from agent.capture.sources import SourceError
from agent.demo.clips import write_clip
from engines import DetectorConfig, load_detector
from engines.letterbox import fit


@pytest.fixture(scope="module")
def clip_720p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "720p.mp4", seconds=2.0, seed=21, width=1280,
                      height=720, codec="h264")


def test_working_size_is_the_letterbox_size_but_never_below_640_wide_nor_above_the_stream() -> None:
    assert working_size(1280, 720, 640, 640) == fit(1280, 720, 640, 640)[1:] == (640, 360)  # nothing left to resize
    assert working_size(1920, 1080, 320, 320) == (640, 360)  # the page and snapshots keep 640 px
    assert working_size(1280, 960, 416, 416) == (640, 480)
    assert working_size(320, 240, 640, 640) == (320, 240)  # never upscaled
    assert all(side % 2 == 0 for side in working_size(1366, 767, 640, 640))  # I420 halves each side


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_frames_decoded_small_detect_what_opencvs_frames_resized_alike_do(clip_720p: Path) -> None:
    """Same geometry both ways (1280×720 → the working size → the letterbox); the only difference is where
    the colour conversion happens: after resizing the planes (PyAV path), or before (OpenCV, full frame)."""
    detector = load_detector(DetectorConfig(path="demo"))
    model = (detector.input_w, detector.input_h)
    reader = PyAvReader(str(clip_720p), "clip", lambda w, h: working_size(w, h, *model))
    opencv = cv2.VideoCapture(str(clip_720p))
    frames, confident, ious, grey_levels = 0, 0, [], []
    try:
        while True:
            ok, full = opencv.read()
            ok_small, small = reader.read()
            assert ok == ok_small
            if not ok:
                break
            assert reader.source_size == (1280, 720) and small.shape[:2] == (360, 640)
            reference = cv2.resize(full, (640, 360), interpolation=cv2.INTER_LINEAR)
            grey_levels.append(float(np.abs(small.astype(np.int16) - reference).mean()))
            expected, got = (
                [d for d in detector.postprocess(p, detector.infer(p))[0] if d.score >= 0.6]
                for p in (detector.preprocess([reference], 0, [(1280, 720)]),
                          detector.preprocess([small], 0, [reader.source_size])))
            assert len(got) == len(expected), f"frame {frames}: {len(got)} boxes against {len(expected)}"
            for a in expected:
                ious.append(max(_iou(a.box, b.box) for b in got if b.label == a.label))
            frames += 1
            confident += len(expected)
    finally:
        reader.release()
        opencv.release()
    assert frames == 30 and confident > 60  # the clip's objects were found, in stream pixels
    assert max(grey_levels) < 4  # chroma interpolated, not replicated: 1.4 to 2.6 grey levels apart
    assert min(ious) >= 0.95 and float(np.median(ious)) >= 0.99, (min(ious), float(np.median(ious)))


def test_the_agent_stores_as_accurate_detections_from_either_decoder(tmp_path: Path) -> None:
    """End to end: two cameras on one 720p H.264 clip, one decoding with PyAV at the model's size, one with
    OpenCV at full size; their stored detections (in stream pixels) scored against the clip's truth."""
    from agent.config import validate_config
    from agent.demo.evaluate import stored_accuracy
    from agent.runtime import Runtime
    from tests.helpers import wait_for

    clip = write_clip(tmp_path / "720p.mp4", seconds=4.0, seed=22, width=1280, height=720, codec="h264")
    runtime = Runtime(validate_config({
        "cameras": [{"name": name, "source": str(clip), "decoder": name, "loop": False, "realtime": False}
                    for name in ("pyav", "opencv")],
        "quality": {"mode": "fixed", "level": "high"},
        "storage": {"path": str(tmp_path / "data")}, "web": {"listen": None},
    }))
    runtime.start()
    try:
        wait_for(lambda: all(c.state.value == "finished" for c in runtime.cameras.values()), timeout=120,
                 what="both cameras through the clip")
    finally:
        runtime.stop()
    db = tmp_path / "data" / "edge-agent.db"
    scores = {name: stored_accuracy(db, name, clip).map for name in ("pyav", "opencv")}
    assert scores["opencv"] > 0.5, scores
    assert abs(scores["pyav"] - scores["opencv"]) <= 0.02, scores


def test_full_size_frames_are_the_same_pixels_opencv_gives(clip_720p: Path) -> None:
    reader = PyAvReader(str(clip_720p), "clip", lambda w, h: (w, h))
    opencv = cv2.VideoCapture(str(clip_720p))
    try:
        for _ in range(5):
            assert np.array_equal(reader.read()[1], opencv.read()[1])
    finally:
        reader.release()
        opencv.release()


def test_a_file_that_is_not_a_video_and_a_dead_url_fail_without_the_password(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SourceError, match="cannot open clip"):
        PyAvReader(str(junk), "clip", lambda w, h: (w, h))
    with pytest.raises(SourceError) as caught:
        PyAvReader("rtsp://admin:hunter2@127.0.0.1:9/stream", "rtsp://admin:***@127.0.0.1:9/stream",
                   lambda w, h: (w, h), timeout_s=2.0, options={"rtsp_transport": "tcp"})
    assert "hunter2" not in str(caught.value) and "admin:***" in str(caught.value)


def test_a_stream_cut_short_delivers_its_frames_then_ends(clip_720p: Path, tmp_path: Path) -> None:
    import av

    ts = tmp_path / "clip.ts"  # MPEG-TS, as a recorder or a stream dump writes it: readable up to where it stops
    with av.open(str(clip_720p)) as src, av.open(str(ts), "w", format="mpegts") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    data = ts.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) // 2] + b"\x47\x00garbage" * 50)  # half, then a torn packet
    reader = PyAvReader(str(cut), "clip", lambda w, h: (640, 360))
    frames = 0
    while reader.read()[0]:
        frames += 1
    reader.release()
    assert 5 < frames < 30
