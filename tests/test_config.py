"""Config validation: defaults run the demo, every error has its key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.capture.sources import SourceKind, parse_source, redact_url
from agent.config import AgentConfig, ConfigError, load_config

BAD_CONFIG = """
device:
  id: "bad/id"
cameras:
  - name: front
    source: rtsp://user:secret@10.0.0.5/stream
    fps: 0
  - name: front
    source: ftp://example/x
    colour: red
model:
  score_threshold: 1.5
storage:
  synchronous: sometimes
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60)


def test_defaults_run_the_demo() -> None:
    config = AgentConfig()
    assert [c.source for c in config.cameras] == ["demo:1", "demo:2"]
    assert config.model.path == "demo" and config.mqtt is None
    assert load_config(None) == config


def test_every_error_is_reported_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CONFIG)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = "\n".join(err.value.problems)
    for key in ("device.id", "cameras[0].fps", "cameras[1].source", "cameras[1].colour",
                "model.score_threshold", "storage.synchronous"):
        assert key in problems, key
    assert "unsupported URL scheme 'ftp'" in problems
    assert "secret" not in problems


def test_duplicate_camera_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="camera name 'a' is used twice"):
        from agent.config import validate_config

        validate_config({"cameras": [{"name": "a", "source": "x.mp4"}, {"name": "a", "source": "y.mp4"}]})


def test_check_command_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_CONFIG)
    result = run_cli("check", "--config", str(bad))
    assert result.returncode != 0
    assert "cameras[0].fps" in result.stderr and "model.score_threshold" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("cameras:\n  - name: door\n    source: /dev/video0\n    fps: 5\nmqtt:\n  host: localhost\n")
    result = run_cli("check", "--config", str(good))
    assert result.returncode == 0, result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("cameras: [\n")
    result = run_cli("check", "--config", str(broken))
    assert result.returncode != 0 and "not valid YAML" in result.stderr


@pytest.mark.parametrize(("raw", "kind"), [
    (0, SourceKind.V4L2), ("2", SourceKind.V4L2), ("/dev/video1", SourceKind.V4L2),
    ("rtsp://cam/stream", SourceKind.NETWORK), ("https://cam/mjpeg", SourceKind.NETWORK),
    ("gst:videotestsrc ! videoconvert ! appsink", SourceKind.GSTREAMER), ("csi:0", SourceKind.CSI),
    ("demo:3", SourceKind.DEMO), ("/videos/a.mp4", SourceKind.FILE),
])
def test_source_forms(raw: str | int, kind: SourceKind) -> None:
    assert parse_source(raw).kind is kind


@pytest.mark.parametrize("raw", ["", "gst:videotestsrc ! fakesink", "demo:x", "ftp://host/file", -1])
def test_bad_sources(raw: str | int) -> None:
    with pytest.raises(ValueError):
        parse_source(raw)


def test_urls_are_logged_without_passwords() -> None:
    assert redact_url("rtsp://admin:hunter2@cam.local:554/live") == "rtsp://admin:***@cam.local:554/live"
    assert redact_url("http://cam/cgi?user=admin&pwd=hunter2&ch=1") == "http://cam/cgi?user=admin&pwd=***&ch=1"


def test_jetson_hardware_decoding_is_for_rtsp_only() -> None:
    from agent.config import validate_config

    with pytest.raises(ConfigError, match=r"cameras\[0\]: .*rtsp:// sources only"):
        validate_config({"cameras": [{"name": "a", "source": "http://cam/x.mjpg", "hw_decode": "jetson"}]})
    validate_config({"cameras": [{"name": "a", "source": "rtsp://cam/x", "hw_decode": "jetson"}]})


def test_jetson_pipelines_follow_nvidias_documented_forms() -> None:
    from agent.capture.sources import jetson_csi_pipeline, jetson_rtsp_pipeline

    csi = jetson_csi_pipeline(1, 1280, 720, 0.2)
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720")
    assert "framerate=1/1" in csi and csi.endswith("appsink drop=true max-buffers=1 sync=false")
    rtsp = jetson_rtsp_pipeline("rtsp://cam/live", "h265", timeout_s=5)
    assert 'location="rtsp://cam/live"' in rtsp and "tcp-timeout=5000000" in rtsp
    assert "rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv" in rtsp


def test_redacted_sources_hide_every_kind_of_secret_and_never_fail() -> None:
    from agent.capture.sources import redact_source

    assert redact_source("rtsp://u:pw@cam:554/x?access_token=abc&apikey=1&ch=2") == \
        "rtsp://u:***@cam:554/x?access_token=***&apikey=***&ch=2"
    assert redact_source("gst:rtspsrc location=rtsp://cam/x user-id=admin user-pw=hunter2 ! appsink") == \
        "gst:rtspsrc location=rtsp://cam/x user-id=admin user-pw=*** ! appsink"
    assert redact_source("rtsp://u:pw@[::1]:554/x") == "rtsp://u:***@[::1]:554/x"
    assert redact_source(0) == 0 and redact_source("demo:3") == "demo:3"
    with pytest.raises(ValueError, match="port must be a number"):
        parse_source("rtsp://u:pw@cam:99999/x")  # would make redaction raise later; refused up front


def test_remote_overlay_merges_restores_defaults_and_refuses_local_only_sections() -> None:
    from agent.control.remote_config import apply_overlay, combine, effective_config, redacted

    base = AgentConfig(mqtt={"host": "b", "password": "hunter2"})
    overlay = combine({"model": {"score_threshold": 0.6, "iou_threshold": 0.3}}, {"model": {"iou_threshold": None}})
    assert overlay == {"model": {"score_threshold": 0.6, "iou_threshold": None}}
    config = effective_config(base, overlay)
    assert config.model.score_threshold == 0.6 and config.model.iou_threshold == 0.5  # null: the default
    assert apply_overlay({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}  # lists replace
    with pytest.raises(ConfigError) as err:
        effective_config(base, {"mqtt": {"host": "x"}, "storage": {"path": "/x", "max_size_mb": 5}, "device": {}})
    assert {path for path, _ in err.value.errors} == {"mqtt", "storage.path", "device"}
    assert redacted(base)["mqtt"]["password"] == "<redacted>"
    assert "hunter2" not in str(redacted(base))


def test_remote_overlay_can_switch_the_engine_type_and_cannot_reset_storage_wholesale() -> None:
    from agent.control.remote_config import effective_config

    base = AgentConfig(model={"engine": {"type": "onnxruntime", "intra_op_threads": 2}})
    switched = effective_config(base, {"model": {"engine": {"type": "tensorrt", "precision": "fp16"}}})
    assert switched.model.engine.type == "tensorrt" and switched.model.engine.precision == "fp16"
    same_type = effective_config(base, {"model": {"engine": {"allow_spinning": True}}})
    assert same_type.model.engine.intra_op_threads == 2 and same_type.model.engine.allow_spinning  # merged
    with pytest.raises(ConfigError) as err:  # null would reset storage.path and the other local-only keys
        effective_config(base, {"storage": None})
    assert [path for path, _ in err.value.errors] == ["storage"]


def test_remote_config_cannot_reach_outside_the_agents_own_files(tmp_path: Path) -> None:
    """The trust boundary: the config file may name anything; MQTT may not add pipelines, name files
    outside the model dirs, or move caches."""
    from agent.control.remote_config import effective_config, trusted_dirs

    local_pipeline = "gst:videotestsrc ! videoconvert ! appsink"
    base = AgentConfig(cameras=[{"name": "lab", "source": local_pipeline}],
                       model={"path": str(tmp_path / "local.onnx"), "labels": "/etc/hostname"},
                       remote={"model_dirs": [str(tmp_path / "extra")]})
    dirs = trusted_dirs(tmp_path / "data", base)
    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    (tmp_path / "extra").mkdir()
    (models / "sneaky").symlink_to("/etc")  # a link out of the model dir counts where it points

    def errors(overlay: dict) -> set[str]:
        try:
            effective_config(base, overlay, dirs=dirs)
        except ConfigError as err:
            return {path for path, _ in err.errors}
        return set()

    lab = {"name": "lab", "source": local_pipeline}
    assert errors({"cameras": [{**lab, "fps": 5}]}) == set()  # the file's own pipeline may stay (camera command)
    assert errors({"cameras": [lab, {"name": "x", "source": "gst:videotestsrc ! filesink location=/etc/x ! "
                                                             "appsink"}]}) == {"cameras[1].source"}
    assert errors({"cameras": [{**lab, "source": "gst:fakesrc ! appsink"}]}) == {"cameras[0].source"}
    assert errors({"model": {"score_threshold": 0.6}}) == set()  # the file's paths are trusted as they are
    assert errors({"model": {"path": str(models / "new.onnx"), "labels": str(models / "new.txt")}}) == set()
    assert errors({"model": {"path": str(tmp_path / "extra" / "m.onnx")}}) == set()
    assert errors({"model": {"path": "demo", "labels": None}}) == set()  # the package's own model
    assert errors({"model": {"labels": "/etc/passwd"}}) == {"model.labels"}
    assert errors({"model": {"path": str(models / ".." / ".." / "m.onnx")}}) == {"model.path"}
    assert errors({"model": {"labels": str(models / "sneaky" / "passwd")}}) == {"model.labels"}
    assert errors({"model": {"engine": {"tensorrt": {"cache_dir": "/tmp/x"}}}}) == \
        {"model.engine.tensorrt.cache_dir"}
    assert errors({"model": {"engine": {"type": "tensorrt", "cache_dir": "/etc"}}}) == {"model.engine.cache_dir"}
    assert errors({"remote": {"model_dirs": ["/"]}}) == {"remote"}  # the boundary itself is local only
    media = tmp_path / "data" / "media"
    assert errors({"cameras": [lab, {"name": "f", "source": str(media / "clip.mp4")}]}) == set()
    assert errors({"cameras": [lab, {"name": "d", "source": "demo:2"}, {"name": "r", "source": "rtsp://cam/x"},
                               {"name": "v", "source": 0}]}) == set()
    assert errors({"cameras": [lab, {"name": "f", "source": "/home/someone/private.jpg"}]}) == {"cameras[1].source"}
    assert errors({"cameras": [lab, {"name": "f", "source": str(media / ".." / "x.mp4")}]}) == {"cameras[1].source"}


def test_snapshot_encoding_respects_the_cap_by_quality_then_size() -> None:
    from agent.capture.jpeg import SnapshotTooLarge, encode_capped

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)  # noise: the hardest image to compress
    jpeg, scale = encode_capped(image, 20_000)
    assert len(jpeg) <= 20_000 and scale < 1.0
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[1] == round(1280 * scale)
    flat = np.full((720, 1280, 3), 128, np.uint8)
    assert encode_capped(flat, 20_000)[1] == 1.0  # fits at full size
    with pytest.raises(SnapshotTooLarge):
        encode_capped(image, 500)


# -- numbers: finite ranges everywhere, floors for what deletes data --------------------------------
def _numeric_settings(node: dict, defs: dict, path: str = "") -> list[tuple[str, dict]]:
    """Every number or integer in the JSON schema, with its key path."""
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    found = []
    for variant in node.get("anyOf") or node.get("oneOf") or [node]:
        while "$ref" in variant:
            variant = defs[variant["$ref"].rsplit("/", 1)[1]]
        if variant.get("type") in ("number", "integer"):
            found.append((path, variant))
        for key, sub in variant.get("properties", {}).items():
            found += _numeric_settings(sub, defs, f"{path}.{key}" if path else key)
        if "items" in variant:
            found += _numeric_settings(variant["items"], defs, f"{path}[]")
        for i, sub in enumerate(variant.get("prefixItems", [])):
            found += _numeric_settings(sub, defs, f"{path}[{i}]")
    return found


def test_every_numeric_setting_has_a_finite_range() -> None:
    schema = AgentConfig.model_json_schema()
    settings = _numeric_settings(schema, schema.get("$defs", {}))
    assert len(settings) > 30  # the walk reaches every section, engines' included
    unbounded = [path for path, s in settings
                 if not ({"minimum", "exclusiveMinimum"} & set(s) and {"maximum", "exclusiveMaximum"} & set(s))]
    assert not unbounded


@pytest.mark.parametrize(("key", "value"), [
    ("storage.max_age_hours", 1e999), ("storage.max_age_hours", float("nan")), ("storage.max_age_hours", 1e13),
    ("storage.max_size_mb", -1e999), ("storage.outbox_max_rows", 10**30), ("storage.outbox_max_mb", 1e999),
    ("storage.retention_interval_s", float("nan")), ("telemetry.interval_s", 1e999),
    ("model.engine.cuda.mem_limit_mb", 10**30), ("model.score_threshold", float("nan")),
    ("cameras[0].source", 10**30), ("cameras[0].fps", float("inf")),
])
def test_infinite_nan_and_huge_numbers_are_rejected_with_their_key_path(key: str, value: float) -> None:
    from agent.config import validate_config

    camera = {"name": "a", "source": "demo:1"}
    settings: dict = {"cameras": [camera], "storage": {}, "telemetry": {}, "model": {"engine": {"cuda": {}}}}
    *parents, leaf = key.replace("cameras[0]", "cameras").split(".")
    node = settings
    for part in parents:
        node = node[part][0] if part == "cameras" else node[part]
    node[leaf] = value
    with pytest.raises(ConfigError) as err:
        validate_config(settings)
    reported = key.replace("model.engine.", "model.engine.onnxruntime.")  # the engine union names its type
    assert any(path.startswith(reported) for path, _ in err.value.errors), err.value.errors


@pytest.mark.parametrize(("key", "value"), [
    ("max_age_hours", 0.01), ("max_size_mb", 2), ("outbox_max_rows", 100), ("outbox_max_mb", 1),
])
def test_limits_that_delete_data_have_floors_against_typos(key: str, value: float) -> None:
    from agent.config import StorageConfig

    with pytest.raises(ValueError, match=key):
        StorageConfig(**{key: value})
