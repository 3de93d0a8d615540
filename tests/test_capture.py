"""Capture: sources that vanish and return, unpaced files, slots, unsupported sources."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.capture.camera import CameraState
from agent.capture.frames import Frame, FrameSlot
from agent.capture.sources import gstreamer_available
from agent.config import validate_config
from agent.runtime import Runtime
from tests.helpers import wait_for

FAST_RECONNECT = {"initial_s": 0.05, "max_s": 0.2}


def camera(name: str, source: str, **extra: object) -> dict:
    return {"name": name, "source": source, "reconnect": FAST_RECONNECT, **extra}


def make_runtime(tmp_path: Path, cameras: list[dict]) -> Runtime:
    config = validate_config({"cameras": cameras, "storage": {"path": str(tmp_path / "data")}})
    return Runtime(config)


def test_source_that_disappears_and_returns_recovers_without_touching_others(
    tmp_path: Path, short_clip: Path, other_clip: Path
) -> None:
    flaky = tmp_path / "flaky.mp4"
    shutil.copy(short_clip, flaky)
    runtime = make_runtime(tmp_path, [camera("flaky", str(flaky), fps=30), camera("steady", str(other_clip), fps=30)])
    runtime.start()
    try:
        flaky_cam, steady = runtime.cameras["flaky"], runtime.cameras["steady"]
        wait_for(lambda: flaky_cam.state is CameraState.RUNNING and flaky_cam.frames_captured > 20, what="running")
        flaky.unlink()  # gone: the next loop's reopen fails
        wait_for(lambda: flaky_cam.state is CameraState.RECONNECTING, what="flaky reconnecting")
        frozen_at = flaky_cam.frames_captured
        steady_before = steady.frames_captured
        wait_for(lambda: flaky_cam.reconnects >= 2, what="several retries")
        assert flaky_cam.frames_captured == frozen_at
        assert "file not found" in (flaky_cam.last_error or "")
        shutil.copy(short_clip, flaky)  # back
        wait_for(lambda: flaky_cam.state is CameraState.RUNNING and flaky_cam.frames_captured > frozen_at,
                 what="flaky recovered")
        assert steady.frames_captured > steady_before  # kept running all along
        assert steady.reconnects == 0 and steady.state is CameraState.RUNNING
        wait_for(lambda: runtime.metrics.frames.get("flaky", 0) > 0, what="recovered frames inferred")
    finally:
        runtime.stop()


def test_camera_missing_at_start_does_not_stop_the_others(tmp_path: Path, short_clip: Path) -> None:
    runtime = make_runtime(tmp_path, [camera("absent", str(tmp_path / "nope.mp4")),
                                      camera("present", str(short_clip), fps=30)])
    runtime.start()
    try:
        wait_for(lambda: runtime.metrics.frames.get("present", 0) >= 10, what="present camera processed")
        assert runtime.cameras["absent"].state in (CameraState.CONNECTING, CameraState.RECONNECTING)
        assert runtime.status()["cameras"]["absent"]["last_error"].startswith("file not found")
    finally:
        runtime.stop()


def test_unpaced_file_delivers_every_frame_without_drops(tmp_path: Path, short_clip: Path) -> None:
    runtime = make_runtime(tmp_path, [camera("all", str(short_clip), realtime=False, loop=False)])
    runtime.start()
    try:
        cam = runtime.cameras["all"]
        wait_for(lambda: cam.state is CameraState.FINISHED, what="end of file")
        wait_for(lambda: runtime.metrics.frames.get("all", 0) == 15, what="all 15 frames inferred")
        assert cam.frames_captured == 15 and cam.slot.dropped == 0
    finally:
        runtime.stop()


def test_live_slot_keeps_newest_and_counts_drops() -> None:
    wake = threading.Event()
    slot = FrameSlot(blocking=False, wake=wake)
    image = np.zeros((2, 2, 3), np.uint8)
    for n in range(3):
        slot.put(Frame("c", n, image, 0, 0.0))
    assert wake.is_set()
    assert slot.take().number == 2 and slot.dropped == 2 and slot.take() is None


def test_blocking_slot_waits_for_the_consumer_and_releases_on_close() -> None:
    slot = FrameSlot(blocking=True, wake=threading.Event())
    image = np.zeros((2, 2, 3), np.uint8)
    assert slot.put(Frame("c", 0, image, 0, 0.0))
    results: list[bool] = []
    producer = threading.Thread(target=lambda: results.append(slot.put(Frame("c", 1, image, 0, 0.0))))
    producer.start()
    wait_for(lambda: slot.waiting == 1, what="producer blocked on the full slot")
    assert results == []  # still blocked: frame 0 was not taken
    assert slot.take().number == 0
    producer.join(5)
    assert results == [True] and slot.take().number == 1 and slot.dropped == 0
    assert slot.put(Frame("c", 2, image, 0, 0.0))
    blocked = threading.Thread(target=lambda: results.append(slot.put(Frame("c", 3, image, 0, 0.0))))
    blocked.start()
    wait_for(lambda: slot.waiting == 1, what="second producer blocked")
    slot.close()
    blocked.join(5)
    assert not blocked.is_alive() and results[-1] is False
    assert slot.dropped == 1  # frame 2 was never taken


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
def test_gstreamer_source_without_gstreamer_fails_clearly(tmp_path: Path, short_clip: Path) -> None:
    runtime = make_runtime(tmp_path, [camera("csi", "csi:0"), camera("file", str(short_clip), fps=30)])
    runtime.start()
    try:
        cam = runtime.cameras["csi"]
        wait_for(lambda: cam.state is CameraState.FAILED, what="csi failed")
        assert "needs OpenCV built with GStreamer" in (cam.last_error or "")
        wait_for(lambda: runtime.metrics.frames.get("file", 0) > 0, what="file camera unaffected")
    finally:
        runtime.stop()


def test_dead_network_stream_times_out_and_reconnects(tmp_path: Path, short_clip: Path) -> None:
    from tests.mjpeg_server import MjpegCamera

    server = MjpegCamera().start()
    runtime = make_runtime(tmp_path, [camera("ipcam", server.url, fps=15, no_frame_timeout_s=1.0),
                                      camera("file", str(short_clip), fps=30)])
    runtime.start()
    try:
        cam = runtime.cameras["ipcam"]
        wait_for(lambda: cam.state is CameraState.RUNNING and cam.frames_captured > 5, what="stream running")
        server.stall()  # connection stays open, no more frames: only the read timeout can notice
        wait_for(lambda: cam.state is CameraState.RECONNECTING, timeout=20, what="stall detected")
        before = cam.frames_captured
        server.resume()
        wait_for(lambda: cam.state is CameraState.RUNNING and cam.frames_captured > before, timeout=30,
                 what="stream recovered")
        assert server.connections >= 2 and runtime.cameras["file"].reconnects == 0
    finally:
        runtime.stop()
        server.close()


def test_a_camera_back_after_a_long_outage_is_noticed_at_once_and_its_outage_counted(tmp_path: Path) -> None:
    """The backoff has grown to 20 s (a long outage); a cheap probe notices the return far sooner."""
    from tests.mjpeg_server import MjpegCamera

    server = MjpegCamera().start()
    runtime = make_runtime(tmp_path, [camera("ipcam", server.url, fps=15, no_frame_timeout_s=1.0,
                                             reconnect={"initial_s": 20.0, "max_s": 20.0})])
    runtime.start()
    try:
        cam = runtime.cameras["ipcam"]
        wait_for(lambda: cam.state is CameraState.RUNNING and cam.frames_captured > 5, what="stream running")
        opening = cam.stats().outage_s  # connecting counts as down: FFmpeg probes a few frames of the stream
        assert opening < 1.0
        server.go_away()
        wait_for(lambda: cam.state is CameraState.RECONNECTING, timeout=20, what="the loss noticed")
        wait_for(lambda: cam.source_gone, what="a probe seeing the camera gone")
        connections = server.connections
        server.come_back()
        back = time.monotonic()
        wait_for(lambda: cam.state is CameraState.RUNNING, timeout=10, what="the camera back")
        noticed = time.monotonic() - back
        assert noticed < 5.0, f"{noticed:.1f}s: the 10-20 s backoff was waited out"  # typically well under 2 s
        assert server.connections == connections + 1  # one full open, no hammering
        outage = cam.stats().outage_s - opening
        assert outage >= noticed and outage < 60
    finally:
        runtime.stop()
        server.close()


def test_probes_tell_a_present_source_from_a_gone_one(tmp_path: Path) -> None:
    import socket

    from agent.capture.sources import parse_source, source_present

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert source_present(parse_source(f"rtsp://u:pw@127.0.0.1:{port}/x"), 0.5) is True
    listener.close()
    assert source_present(parse_source(f"rtsp://127.0.0.1:{port}/x"), 0.5) is False
    clip = tmp_path / "a.mp4"
    assert source_present(parse_source(str(clip)), 0.5) is False
    clip.write_bytes(b"x")
    assert source_present(parse_source(str(clip)), 0.5) is True
    assert source_present(parse_source("/dev/video97"), 0.5) is False
    assert source_present(parse_source("gst:videotestsrc ! appsink"), 0.5) is None  # no cheap probe


def test_grey_and_bgra_frames_become_bgr_and_odd_shapes_are_rejected() -> None:
    from agent.capture.camera import as_bgr

    grey = np.full((4, 6), 200, np.uint8)
    assert as_bgr(grey).shape == (4, 6, 3) and as_bgr(grey)[0, 0].tolist() == [200, 200, 200]
    bgra = np.zeros((4, 6, 4), np.uint8)
    bgra[..., 2] = 255
    assert as_bgr(bgra)[0, 0].tolist() == [0, 0, 255]
    assert as_bgr(np.zeros((4, 6, 2), np.uint8)) is None


def test_live_source_faster_than_target_fps_is_decimated(tmp_path: Path) -> None:
    from tests.mjpeg_server import MjpegCamera

    server = MjpegCamera(fps=30).start()
    runtime = make_runtime(tmp_path, [camera("ipcam", server.url, fps=5)])
    runtime.start()
    try:
        cam = runtime.cameras["ipcam"]
        wait_for(lambda: cam.frames_captured >= 10, what="10 frames kept")
        kept, skipped = cam.frames_captured, cam.frames_skipped
        assert skipped >= 2 * kept  # about 5 of every 30 frames are kept
    finally:
        runtime.stop()
        server.close()
