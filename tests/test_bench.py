"""`edge-agent bench` on realistic streams: generated H.264 clips (PyAV's libx264) and a user's own file."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import pytest

from agent.cli.main import main
from agent.demo.clips import read_ground_truth, write_clip


def test_h264_clips_are_what_a_camera_sends_and_opencv_decodes_them(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "cam.mp4", seconds=1.0, seed=4, width=1280, height=720, codec="h264")
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.profile) == ("h264", "Main")
        assert (stream.width, stream.height) == (1280, 720)
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1].shape)
    cap.release()
    truth = read_ground_truth(clip)
    # every frame back, the encoder's delayed ones included
    assert frames == [(720, 1280, 3)] * len(truth["frames"]) == [(720, 1280, 3)] * 15
    assert truth["codec"] == "h264"


def test_bench_on_a_users_clip_reports_engine_pipeline_stages_and_latency(
        short_clip: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--clip", str(short_clip), "--seconds", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clip"] == str(short_clip) and report["frame_size"] == [640, 360]
    assert report["engine_fps"] > 0 and report["pipeline_fps"] > 0
    assert report["ratio"] == pytest.approx(report["pipeline_fps"] / report["engine_fps"], abs=0.01)
    assert report["stages"]["result"]["p50_ms"] is not None and report["stages"]["decode"]["p95_ms"] is not None
    assert report["cpu_cores_busy"] > 0 and 0 < report["pipeline_rss_mb"] <= report["peak_rss_mb"]
    with pytest.raises(FileNotFoundError):
        main(["bench", "--clip", str(short_clip.with_name("absent.mp4")), "--seconds", "1"])
