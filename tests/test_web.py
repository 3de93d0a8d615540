"""The health page, API, frames, streams and metrics, against a real running agent on a free port."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import validate_config
from agent.runtime import Runtime
from agent.store import store as store_mod
from tests.broker import free_port
from tests.helpers import wait_for

TOKEN = "s3cret-token-for-tests"


@dataclass
class Agent:
    runtime: Runtime
    base: str

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()


def start_agent(tmp_path: Path, clip: Path, token: bool = False, **extra: object) -> Agent:
    port = free_port()
    web: dict[str, object] = {"listen": f"127.0.0.1:{port}"}
    if token:
        (tmp_path / "token").write_text(TOKEN + "\n")
        web["token_file"] = str(tmp_path / "token")
    runtime = Runtime(validate_config({
        "cameras": [{"name": "front", "source": str(clip), "fps": 10, "loop": True},
                    {"name": "gone", "source": str(tmp_path / "missing.mp4"), "reconnect": {"initial_s": 1}}],
        "storage": {"path": str(tmp_path / "data")}, "web": web, **extra,
    }))
    runtime.start()
    return Agent(runtime, f"http://127.0.0.1:{port}")


@pytest.fixture
def agent(tmp_path: Path, short_clip: Path) -> Iterator[Agent]:
    agent = start_agent(tmp_path, short_clip)
    wait_for(lambda: agent.runtime.latest_detections.get("front") is not None, what="a frame through inference")
    yield agent
    agent.runtime.stop()


def metrics(agent: Agent) -> dict[str, dict[tuple, float]]:
    status, headers, body = agent.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_health_status_and_read_only(agent: Agent) -> None:
    status, _, body = agent.get("/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    status, _, body = agent.get("/readyz")  # one camera never delivers: not ready, and it says why
    assert status == 503 and any("camera gone" in r for r in json.loads(body)["reasons"])
    status, headers, body = agent.get("/api/status")
    stats = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert set(stats) == set(agent.runtime.status())  # the same document as the get_stats command
    assert stats["cameras"]["front"]["state"] == "running" and stats["health"]["ok"]
    request = urllib.request.Request(agent.base + "/api/status", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 405  # nothing changes the device over HTTP
    assert agent.get("/nope")[0] == 404
    status, _, body = agent.get("/")
    assert status == 200 and b"<title>edge-agent</title>" in body
    for asset in ("/", "/app.js", "/style.css"):  # nothing from the internet: the device may have none
        text = agent.get(asset)[2].decode()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, asset


def test_frames_latest_placeholder_and_unknown(agent: Agent) -> None:
    status, headers, body = agent.get("/api/cameras/front/latest.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and headers["Cache-Control"] == "no-store"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    frame = agent.runtime.cameras["front"].latest.image
    assert image is not None and image.shape == frame.shape  # the camera's own frame size
    status, headers, body = agent.get("/api/cameras/gone/latest.jpg")
    assert status == 503 and cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None
    assert agent.get("/api/cameras/nobody/latest.jpg")[0] == 404


def read_part(response: HTTPResponse) -> bytes:
    """One JPEG part of a multipart/x-mixed-replace stream; b"" once the stream has ended."""
    while not (line := response.readline()).startswith(b"--"):
        if not line:
            return b""
    length = 0
    while (line := response.readline().strip()):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return response.read(length)


def test_mjpeg_stream_is_paced_and_limited_to_two_clients_per_camera(agent: Agent) -> None:
    streams = [urllib.request.urlopen(agent.base + "/api/cameras/front/stream.mjpeg", timeout=10) for _ in range(2)]
    try:
        assert streams[0].headers["Content-Type"].startswith("multipart/x-mixed-replace")
        started = time.monotonic()
        parts = [read_part(streams[0]) for _ in range(3)]
        assert time.monotonic() - started >= 0.9  # 3 parts at ≤ 2 fps take at least 2 intervals
        assert all(cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) is not None for p in parts)
        assert agent.get("/api/cameras/front/stream.mjpeg")[0] == 429
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: agent.runtime.web._streams == {}, what="the streams to end")  # slots free again


def test_metrics_parse_rise_and_stay_monotonic_across_a_pipeline_restart(agent: Agent) -> None:
    first = metrics(agent)
    front = (("camera", "front"),)
    assert first["edge_agent_build_info"][(("device", agent.runtime.device_id), ("version", "0.1.0"))] == 1
    assert first["edge_agent_camera_up"][front] == 1 and first["edge_agent_camera_up"][(("camera", "gone"),)] == 0
    for name in ("edge_agent_outbox_pending", "edge_agent_mqtt_connected", "edge_agent_disk_free_bytes"):
        assert name in first, name
    infer = (("le", "+Inf"), ("stage", "infer"))
    assert first["edge_agent_stage_seconds_bucket"][infer] > 0
    captured = "edge_agent_frames_captured_total"
    wait_for(lambda: metrics(agent)[captured][front] > first[captured][front], what="frames rising between scrapes")
    inferred = (("camera", "front"), ("outcome", "inferred"))
    assert first["edge_agent_frames_total"][inferred] > 0
    new = (("camera", "front"), ("type", "new"))
    wait_for(lambda: metrics(agent).get("edge_agent_object_events_total", {}).get(new, 0) > 0,
             what="object events counted")
    before = metrics(agent)
    agent.runtime.restart_pipeline()  # new camera objects, whose own counts start again from zero
    after = metrics(agent)
    for name in (captured, "edge_agent_detections_total"):
        assert after[name][front] >= before[name][front], name
    assert after["edge_agent_object_events_total"][new] >= before["edge_agent_object_events_total"][new]
    for outcome in ("inferred", "gated", "dropped", "shed"):
        key = (("camera", "front"), ("outcome", outcome))
        assert after["edge_agent_frames_total"][key] >= before["edge_agent_frames_total"][key], outcome
    assert after["edge_agent_stage_seconds_count"][(("stage", "decode"),)] >= \
        before["edge_agent_stage_seconds_count"][(("stage", "decode"),)]


def test_token_guards_everything_but_healthz(tmp_path: Path, short_clip: Path) -> None:
    agent = start_agent(tmp_path, short_clip, token=True)
    try:
        assert agent.get("/healthz")[0] == 200
        for path in ("/", "/api/status", "/metrics", "/api/cameras/front/latest.jpg", "/readyz"):
            assert agent.get(path)[0] == 401, path
        assert agent.get("/api/status", {"Authorization": "Bearer wrong"})[0] == 401
        assert agent.get("/api/status", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(agent.base + f"/?token={TOKEN}", timeout=10) as response:  # sets the cookie, redirects
            assert response.status == 200 and b"edge-agent" in response.read()
        with opener.open(agent.base + "/api/status", timeout=10) as response:
            assert response.status == 200
        assert TOKEN not in json.dumps(agent.runtime.status())
        assert agent.get("/api/status", {"Authorization": "Bearer \u00e9t\u00e9"})[0] == 401  # not a 500
        assert agent.get("/?token=%C3%A9t%C3%A9")[0] == 401
    finally:
        agent.runtime.stop()


def test_without_a_token_on_loopback_only_the_loopback_name_is_answered(agent: Agent) -> None:
    """A web page elsewhere cannot read frames by pointing its own name at 127.0.0.1 (DNS rebinding)."""
    assert agent.get("/api/status", {"Host": "evil.example:8080"})[0] == 403
    assert agent.get("/api/status", {"Host": "localhost:8080"})[0] == 200


def test_stop_ends_open_streams_and_the_server_promptly(tmp_path: Path, short_clip: Path) -> None:
    agent = start_agent(tmp_path, short_clip)
    wait_for(lambda: agent.runtime.latest_detections.get("front") is not None, what="a frame through inference")
    stream = urllib.request.urlopen(agent.base + "/api/cameras/front/stream.mjpeg", timeout=10)
    read_part(stream)
    started = time.monotonic()
    agent.runtime.stop()
    assert time.monotonic() - started < 5.0
    parts = 0
    with contextlib.suppress(OSError, ValueError):  # the stream is ended, not left to its client
        while read_part(stream) and parts < 100:
            parts += 1
    assert parts < 100
    stream.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(agent.base + "/healthz", timeout=2)


def test_a_port_in_use_is_a_clear_message_and_the_agent_runs_on(tmp_path: Path, short_clip: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    runtime = Runtime(validate_config({
        "cameras": [{"name": "front", "source": str(short_clip), "fps": 10, "loop": True}],
        "storage": {"path": str(tmp_path / "data")}, "web": {"listen": f"127.0.0.1:{port}"},
    }))
    runtime.start()
    try:
        assert "in use" in runtime.web.error
        wait_for(lambda: runtime.store.committed_rows > 0, what="the agent running on without the page")
        assert runtime.status()["web"]["error"] == runtime.web.error
    finally:
        runtime.stop()
        holder.close()


def test_healthz_is_503_with_the_reason_when_the_store_cannot_write(tmp_path: Path, short_clip: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / store_mod.DB_NAME).mkdir()  # the database cannot be opened
    agent = start_agent(tmp_path, short_clip)
    try:
        status, _, body = agent.get("/healthz")
        health = json.loads(body)
        assert status == 503 and not health["ok"]
        assert any(r.startswith("store not running") for r in health["reasons"])
    finally:
        agent.runtime.stop()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_a_real_browser_shows_cameras_changing_fps_and_frames(agent: Agent, tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")

    def dom() -> str:
        done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                               "--dump-dom", agent.base + "/"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    first = dom()
    for name in ("front", "gone"):
        assert f'data-name="{name}"' in first, first[:2000]
    assert 'data-frame-width="640"' in first  # the frame image loaded, at the camera's size
    fps_first = first.split('data-name="front"')[1].split('data-fps="')[1].split('"')[0]
    second = dom()
    fps_second = second.split('data-name="front"')[1].split('data-fps="')[1].split('"')[0]
    assert fps_first != fps_second or float(fps_second) > 0  # a live figure, polled
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,900", "--virtual-time-budget=5000", f"--screenshot={shot}",
                    agent.base + "/"], capture_output=True, timeout=60, check=True)
    assert shot.stat().st_size > 10_000


def test_boxes_in_stream_pixels_are_drawn_where_they_are_on_a_frame_decoded_smaller() -> None:
    from agent.capture.frames import Frame
    from agent.control.device_api import CameraView
    from agent.web.frames import COLOURS, annotate
    from engines import Detection

    small = np.zeros((360, 640, 3), np.uint8)  # a 1280×720 stream decoded at half size (decode_size: model)
    frame = Frame("cam", 1, small, 0, 0.0, source_size=(1280, 720))
    drawn = annotate(CameraView(frame, 1, [Detection(0, "person", 0.9, (400.0, 400.0, 800.0, 600.0))]))
    assert drawn.shape == small.shape
    assert tuple(int(c) for c in drawn[250, 200]) == COLOURS[0]  # the left edge at x = 400 / 2, halfway down
    assert not drawn[250, 300].any() and not drawn[350, 500].any()  # inside the box, and outside it: untouched


def test_a_snapshot_of_a_frame_decoded_smaller_gives_stream_size_and_the_scale_to_its_jpeg() -> None:
    import base64

    from agent.capture.frames import Frame
    from agent.control.commands import Commands, SnapshotArgs
    from agent.control.device_api import CameraView
    from engines import Detection

    view = CameraView(Frame("cam", 4, np.full((360, 640, 3), 90, np.uint8), 0, 0.0, source_size=(1280, 720)), 4,
                      [Detection(0, "person", 0.9, (400.0, 400.0, 800.0, 600.0))])

    class OneCamera:  # the one DeviceControl call snapshot makes
        def camera_view(self, camera: str) -> CameraView | None:
            return view if camera == "cam" else None

    shot = Commands(OneCamera(), None, lambda: None, "boot").snapshot(SnapshotArgs(camera="cam"))
    jpeg = cv2.imdecode(np.frombuffer(base64.b64decode(shot["jpeg_base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert (shot["width"], shot["height"]) == (1280, 720)  # what the detection boxes are measured in
    assert jpeg.shape[1] == round(shot["width"] * shot["scale"]) == 640  # box × scale lands on the JPEG
    assert shot["detections"][0]["box"] == [400.0, 400.0, 800.0, 600.0]
