"""The agent's configuration: one YAML file, validated by pydantic (unknown keys are errors).

An empty or absent file gives the demo: two generated cameras and the built-in model.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from agent.capture.sources import Source, parse_source
from agent.keys import TOP_LEVEL, key_path
from agent.profiles import AUTO, PRESETS, VARIANT_NAME, ProfileError, load_profile
from engines.config import DetectorConfig
from engines.gpu import DEFAULT_BUDGET_MB

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # safe in MQTT topics and file names


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "edge-agent"


class _Strict(BaseModel):
    # Unknown keys are errors; so are inf and nan, which pass `gt`/`le` checks in surprising ways.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DeviceConfig(_Strict):
    id: str | None = Field(None, pattern=NAME_PATTERN, description="default: generated once, kept in the data dir")


class ReconnectConfig(_Strict):
    initial_s: float = Field(0.5, gt=0, le=60)
    max_s: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be at least initial_s")
        return self


Point = tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]]


class MotionConfig(_Strict):
    """The motion gate (agent.pipeline.motion): still frames skip inference."""

    enabled: bool | None = Field(None, description="default: on for live sources and paced files, off for "
                                                   "unpaced files (which are there to have every frame seen)")
    threshold: int = Field(25, ge=1, le=255, description="change of a pixel's grey level that counts as motion")
    min_area: float = Field(0.002, ge=0, le=1, description="share of the frame that must change")
    max_skip_s: float = Field(5.0, gt=0, le=3600, description="a full inference at least this often")
    keep_s: float = Field(3.0, ge=0, le=600, description="inferred this long after the last detection")
    mask: list[Annotated[list[Point], Field(min_length=3, max_length=64)]] = Field(
        default_factory=list, max_length=16,
        description="polygons to ignore, corners as [x, y] fractions of the frame (0..1)",
    )


class ZoneConfig(_Strict):
    """A named area of a camera's view; an object is in it while the bottom centre of its box is."""

    name: str = Field(pattern=NAME_PATTERN)
    points: list[Point] = Field(min_length=3, max_length=64, description="corners as [x, y] fractions of the frame")


class CameraConfig(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    source: str | Annotated[int, Field(ge=0, le=1023)]  # an int is a V4L2 device index
    fps: float = Field(10.0, gt=0, le=240, description="target frames per second")
    enabled: bool = True
    loop: bool = True  # files: restart at the end
    realtime: bool = True  # files: paced at fps like a live camera; false: every frame, no drops
    width: int | None = Field(None, ge=16, le=8192, description="requested capture width (V4L2, CSI)")
    height: int | None = Field(None, ge=16, le=8192)
    no_frame_timeout_s: float = Field(10.0, gt=0, le=600)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    hw_decode: Literal["none", "jetson"] = "none"  # rtsp:// through nvv4l2decoder
    codec: Literal["h264", "h265"] = "h264"
    # Files and network streams: PyAV decodes straight to the size the model needs (no full-size BGR frame);
    # opencv: OpenCV's FFmpeg reader. auto: PyAV where it is installed.
    decoder: Literal["auto", "pyav", "opencv"] = "auto"
    decode_size: Literal["model", "full"] = Field(
        "model", description="model: frames kept at the size the model input needs, at least 640 px wide "
        "(page, snapshots); full: the stream's own size")
    decode_threads: int = Field(1, ge=0, le=16, description="PyAV decoder threads per camera (0: FFmpeg picks)")
    priority: int = Field(0, ge=-100, le=100, description="higher: degraded last, shed last")
    motion: MotionConfig = Field(default_factory=MotionConfig)
    zones: list[ZoneConfig] = Field(default_factory=list, max_length=16,
                                    description="areas whose enter and leave object events report")

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, zones: list[ZoneConfig]) -> list[ZoneConfig]:
        names = [z.name for z in zones]
        if len(set(names)) != len(names):
            raise ValueError("zone names must be unique per camera")
        return zones

    @field_validator("source")
    @classmethod
    def _valid_source(cls, v: str | int) -> str | int:
        parse_source(v)
        return v

    @model_validator(mode="after")
    def _hw_decode_needs_rtsp(self) -> CameraConfig:
        if self.hw_decode == "jetson" and not str(self.source).lower().startswith(("rtsp://", "rtsps://")):
            raise ValueError("hw_decode: jetson applies to rtsp:// sources only")
        return self

    @property
    def parsed_source(self) -> Source:
        return parse_source(self.source)

    @property
    def motion_gated(self) -> bool:
        if self.motion.enabled is not None:
            return self.motion.enabled
        return not self.parsed_source.is_file or self.realtime


def _demo_cameras() -> list[CameraConfig]:
    return [CameraConfig(name=f"demo-{i}", source=f"demo:{i}", fps=10) for i in (1, 2)]


class StorageConfig(_Strict):
    path: Path = Field(default_factory=default_data_dir)
    # Limits that delete data have floors, so a typo (0.01 for 10) cannot wipe the store.
    max_age_hours: float | None = Field(168.0, ge=1, le=87_600,
                                        description="detections older than this are trimmed (1 h to 10 years)")
    max_size_mb: float | None = Field(1024.0, ge=16, le=1 << 20,
                                      description="database size cap; oldest rows trimmed first")
    min_free_mb: float = Field(
        256.0, ge=0, le=1 << 20,
        description="free space kept on the data dir's filesystem: the oldest history is trimmed first; 0: off",
    )
    synchronous: Literal["full", "normal"] = Field(
        "full", description="full: a committed row survives power loss; normal: faster, may lose the last commits"
    )
    queue_size: int = Field(2048, ge=16, le=1_000_000, description="frames of results waiting for the writer")
    retention_interval_s: float = Field(60.0, gt=0, le=86400)
    outbox_max_rows: int = Field(
        1_000_000, ge=10_000, le=100_000_000,
        description="messages waiting for the broker; beyond it health is trimmed before detections, counted",
    )
    outbox_max_mb: float = Field(512.0, ge=16, le=1 << 20,
                                 description="payload bytes waiting for the broker, same policy")


class TlsConfig(_Strict):
    """TLS 1.2 or newer with certificate and host name checks, always."""

    ca_file: Path | None = Field(None, description="CA bundle; default: the system's")
    cert_file: Path | None = Field(None, description="client certificate, for mutual TLS")
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BatchConfig(_Strict):
    """How detections are grouped into one message per camera."""

    max_count: int = Field(500, ge=1, le=100_000)
    max_bytes: int = Field(65_536, ge=1024, le=16 * 1024 * 1024)
    max_age_ms: int = Field(100, ge=0, le=1000, description="how long a detection may wait for companions")


class MqttConfig(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(None, repr=False)
    password_file: Path | None = None
    tls: TlsConfig | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    topic_prefix: str = Field("edge", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    reconnect: ReconnectConfig = Field(default_factory=lambda: ReconnectConfig(initial_s=1.0, max_s=60.0))
    batch: BatchConfig = Field(default_factory=BatchConfig)
    window: int = Field(64, ge=1, le=1000, description="messages in flight awaiting PUBACK")
    session_expiry_s: int = Field(
        3600, ge=0, le=7 * 86400,
        description="how long the broker keeps commands for this device while it is offline",
    )

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self

    def read_password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return self.password


class ConsoleConfig(_Strict):
    interval_s: float = Field(1.0, gt=0, le=3600, description="status line period")


class WebConfig(_Strict):
    """The local health page, API and metrics (agent.web)."""

    listen: str | None = Field("127.0.0.1:8080", description="host:port; null disables; 0.0.0.0:8080 for the LAN")
    token_file: Path | None = Field(None, description="when set, every path but /healthz needs this token")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080")
        return v

    @property
    def address(self) -> tuple[str, int]:
        assert self.listen is not None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def read_token(self) -> str | None:
        """The token, or None without a token_file; raises OSError or ValueError (an empty file)."""
        if self.token_file is None:
            return None
        token = self.token_file.expanduser().read_text().strip()
        if not re.fullmatch(r"[A-Za-z0-9._~+/=-]{16,256}", token):
            raise ValueError(f"{self.token_file}: the token must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / = -")
        return token


class TelemetryConfig(_Strict):
    interval_s: float = Field(10.0, ge=1, le=3600, description="health reading period")


class GpuConfig(_Strict):
    memory_budget_mb: int = Field(DEFAULT_BUDGET_MB, ge=64, le=1 << 20,
                                  description="GPU memory the engines may use, never exceeded")
    device_id: int = Field(0, ge=0, le=15)


class RemoteConfig(_Strict):
    """The trust boundary of config over MQTT; only the config file sets it."""

    model_dirs: list[Path] = Field(
        default_factory=list, max_length=32,
        description="more directories whose model and label files config over MQTT may name "
                    "(always: the data dir's models/ and the package's own)",
    )
    media_dirs: list[Path] = Field(
        default_factory=list, max_length=32,
        description="more directories whose video files config over MQTT may name as camera sources "
                    "(always: the data dir's media/)",
    )


class QualityConfig(_Strict):
    """Adaptive quality (agent.pipeline.quality): levels and presets from profiles/."""

    mode: Literal["auto", "fixed"] = "auto"
    profile: str = Field(AUTO, min_length=1, max_length=4096,
                         description="a preset (" + ", ".join(PRESETS) + "), auto (from the hardware) or a file")
    level: str | None = Field(None, description="fixed: the level held; auto: the start (default: the preset's)")
    sla_ms: float | None = Field(None, gt=0, le=60_000,
                                 description="capture→result p95 target; default: the preset's (CPU 250, GPU 100)")
    models: dict[Annotated[str, Field(pattern=VARIANT_NAME)], str] = Field(
        default_factory=dict, max_length=16,
        description="model variants the levels may name (int8, small, int8-small, ...) → model files",
    )
    sysfs_root: Path = Field(Path("/sys"), description="where thermal zones and throttle counters are read")

    @field_validator("profile")
    @classmethod
    def _profile_loads(cls, v: str) -> str:
        if v != AUTO:
            try:
                load_profile(v)
            except ProfileError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("level")
    @classmethod
    def _level_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        profile = info.data.get("profile")
        if v is None or profile is None:
            return v
        names = load_profile("cpu" if profile == AUTO else profile).level_names  # the presets share a ladder
        if v not in names:
            raise ValueError(f"'{v}' is not one of the levels: {', '.join(names)}")
        return v

    @model_validator(mode="after")
    def _fixed_has_level(self) -> QualityConfig:
        if self.mode == "fixed" and self.level is None:
            raise ValueError("mode fixed needs a level")
        return self


class TrackingConfig(_Strict):
    """Object tracking per camera (agent.pipeline.tracker): detections become objects with stable ids."""

    enabled: bool = True
    labels: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=256, description="labels to follow; empty: every label")
    high_score: float = Field(0.5, gt=0, lt=1, description="detections at or above: first association stage; "
                                                          "below: second stage (tracks seen last frame only)")
    new_track_score: float = Field(0.6, gt=0, le=1, description="an unmatched detection starts a track from this")
    min_hits: int = Field(2, ge=1, le=100, description="matched frames before a track is confirmed (and its event "
                                                      "may start)")
    stationary_s: float = Field(10.0, gt=0, le=86_400, description="an object still this long is stationary")
    stationary_tolerance: float = Field(0.15, gt=0, le=2, description="still: its centre moves less than this share "
                                                                     "of its size")
    stationary_keep_s: float = Field(60.0, ge=0, le=86_400, description="a missing stationary object ends after "
                                                                       "this (a parked car detected on and off keeps "
                                                                       "its id)")
    max_tracks: int = Field(256, ge=1, le=10_000, description="tracks per camera; new ones beyond are refused "
                                                             "(counted)")

    @model_validator(mode="after")
    def _ordered(self) -> TrackingConfig:
        if self.new_track_score < self.high_score:
            raise ValueError("new_track_score must be at least high_score")
        return self


class EventSnapshotConfig(_Strict):
    """The best view of each object event, kept in the store with the event."""

    enabled: bool = True
    max_width: int = Field(640, ge=32, le=4096, description="the crop around the object is scaled to at most this")
    quality: int = Field(80, ge=10, le=100, description="JPEG quality")
    max_bytes: int = Field(200_000, ge=4096, le=8 * 1024 * 1024, description="one snapshot at most; larger ones are "
                                                                             "encoded again at lower quality")
    max_total_mb: float = Field(256.0, ge=1, le=1 << 20, description="all snapshots together; the oldest go first")


class EventsConfig(_Strict):
    """Object events (new / update / end) on `<prefix>/<id>/events/objects/<camera>`, through the outbox."""

    enabled: bool = True
    end_after_s: float = Field(5.0, gt=0, le=3600, description="an object missing this long has ended")
    min_score: float = Field(0.6, gt=0, le=1, description="an event starts once its object scored this once")
    update_interval_s: float = Field(1.0, ge=0.1, le=3600, description="updates per object at most this often")
    require_motion: bool = Field(False, description="only objects that moved get events (a parked car that "
                                                    "never moved does not)")
    max_events: int = Field(100_000, ge=100, le=10_000_000, description="ended events kept in the store; the "
                                                                       "oldest go first")
    snapshots: EventSnapshotConfig = Field(default_factory=EventSnapshotConfig)


class HomeAssistantConfig(_Strict):
    """MQTT discovery for Home Assistant (agent.sync.homeassistant)."""

    enabled: bool = False
    prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    discovery: Literal["device", "component"] = Field(
        "device", description="device: one payload per device (Home Assistant 2024.11+); component: one per entity")
    labels: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=64, description="labels with count and occupancy entities; default: tracking.labels, or "
                                         "the model's labels (at most 20)")


class AgentConfig(_Strict):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    cameras: list[CameraConfig] = Field(default_factory=_demo_cameras, max_length=64)
    model: DetectorConfig = Field(default_factory=DetectorConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    mqtt: MqttConfig | None = None  # absent: no broker
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    gpu: GpuConfig = Field(default_factory=GpuConfig)
    remote: RemoteConfig = Field(default_factory=RemoteConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)

    @field_validator("cameras")
    @classmethod
    def _unique_names(cls, cams: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for cam in cams:
            if cam.name in seen:
                raise ValueError(f"camera name '{cam.name}' is used twice")
            seen.add(cam.name)
        return cams


class ConfigError(Exception):
    """Every problem with a config, each with its key path."""

    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors  # (key path, message)
        super().__init__(f"{source}: " + "; ".join(self.problems))

    @property
    def problems(self) -> list[str]:
        return [f"{path}: {message}" for path, message in self.errors]


def validate_config(data: object, source: str = "config") -> AgentConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [(TOP_LEVEL, "expected a mapping of settings")])
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            # Drop pydantic's union branch names (e.g. 'str', 'int') from the path.
            loc = tuple(p for p in err["loc"] if p not in ("str", "int", "function-after[_ordered(), ReconnectConfig]"))
            msg = err["msg"].removeprefix("Value error, ")
            errors.append((key_path(loc), msg))
        raise ConfigError(source, errors) from None


def load_config(path: Path | None) -> AgentConfig:
    """Load and validate a YAML config file; None gives the demo defaults."""
    if path is None:
        return AgentConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [(TOP_LEVEL, f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [(TOP_LEVEL, f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})")]) \
            from None
    return validate_config(data, str(path))
