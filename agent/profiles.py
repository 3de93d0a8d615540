"""Quality profiles: the ladder of quality levels and a device preset's defaults, from `profiles/`.

Data, not code: the YAML files in the top-level `profiles/` folder (shipped in the wheel) are read
and validated here like the config, so a bad file is a clear error with key paths. A preset names
its default, floor and ceiling levels, its latency SLA, thermal trip points and the zones to
watch, and may bring its own ladder; without one it uses `profiles/levels.yaml`. A user's own
profile file has the same shape.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.keys import TOP_LEVEL, key_path

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"  # beside agent/: checkout and wheel alike
PRESETS = ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "x86-gpu", "cpu")
AUTO = "auto"
BASE_MODEL = "base"  # in a level's model list: the configured model itself
LEVEL_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
VARIANT_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class ProfileError(Exception):
    """Every problem with a profile file, each with its key path."""

    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(f"{p}: {m}" for p, m in errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Level(_Strict):
    """One rung of the ladder: the knobs the agent turns at this level (profiles/levels.yaml says each)."""

    name: str = Field(pattern=LEVEL_NAME)
    fps_scale: float = Field(1.0, gt=0, le=1)
    max_fps: float | None = Field(None, gt=0, le=240)
    motion: bool = True
    motion_sensitivity: float = Field(1.0, ge=0.1, le=10)
    model: tuple[str, ...] = Field((BASE_MODEL,), min_length=1, max_length=8)
    input_scale: float = Field(1.0, ge=0.25, le=1)
    batch: int | None = Field(None, ge=1, le=64)
    shed: bool = False

    @model_validator(mode="after")
    def _variant_names(self) -> Level:
        for name in self.model:
            if not re.fullmatch(VARIANT_NAME, name):
                raise ValueError(f"model variant '{name}' must match {VARIANT_NAME}")
        return self

    def detect_fps(self, camera_fps: float) -> float:
        fps = camera_fps * self.fps_scale
        return min(fps, self.max_fps) if self.max_fps is not None else fps


class Thermal(_Strict):
    zones: tuple[str, ...] = Field((), max_length=64,
                                   description="patterns on thermal_zone*/type (case-insensitive); empty: all")
    trip_c: float = Field(90.0, ge=30, le=130, description="a watched zone at or above this is pressure")
    clear_c: float = Field(80.0, ge=20, le=125, description="step up only with every zone below this")
    gpu_trip_c: float | None = Field(None, ge=30, le=130, description="GPU temperature (NVML, jtop)")
    gpu_clear_c: float | None = Field(None, ge=20, le=125)

    @model_validator(mode="after")
    def _clear_below_trip(self) -> Thermal:
        if self.clear_c >= self.trip_c:
            raise ValueError("clear_c must be below trip_c (hysteresis)")
        if self.gpu_trip_c is not None and self.gpu_clear_c is not None and self.gpu_clear_c >= self.gpu_trip_c:
            raise ValueError("gpu_clear_c must be below gpu_trip_c (hysteresis)")
        return self

    def watches(self, zone_type: str) -> bool:
        return not self.zones or any(fnmatch.fnmatch(zone_type.lower(), p.lower()) for p in self.zones)


class Control(_Strict):
    """The control law's timing and thresholds (README "Adaptive quality")."""

    interval_s: float = Field(1.0, ge=0.1, le=60, description="how often signals are read")
    down_after_s: float = Field(3.0, ge=0, le=600, description="a pressure held this long steps down")
    up_after_s: float = Field(30.0, ge=1, le=3600, description="everything clear this long steps up")
    up_after_max_s: float = Field(600.0, ge=1, le=86_400, description="bound of the doubled wait")
    undo_window_s: float = Field(120.0, ge=0, le=86_400,
                                 description="a step up undone within this doubles the next wait")
    cooldown_s: float = Field(5.0, ge=0, le=3600, description="no change this long after any change")
    clear_margin: float = Field(0.7, gt=0, lt=1, description="clear means below this share of a threshold")
    window_s: float = Field(5.0, ge=1, le=300, description="latency percentiles over this many seconds")
    drop_fraction: float = Field(0.3, gt=0, le=1, description="frames overwritten before inference")
    queue_fraction: float = Field(0.5, gt=0, le=10, description="frame wait before inference, share of the SLA")
    gpu_memory_fraction: float = Field(0.95, gt=0, le=1, description="of the GPU memory budget")
    cpu_headroom_percent: float = Field(85.0, gt=0, le=100, description="step up only with CPU busy below")

    @model_validator(mode="after")
    def _bounded_wait(self) -> Control:
        if self.up_after_max_s < self.up_after_s:
            raise ValueError("up_after_max_s must be at least up_after_s")
        return self


class Budgets(_Strict):
    """Per-stage latency budgets of the SLA monitor, milliseconds; an alert is raised when the share of
    samples over budget stays above raise_rate for raise_after_s, cleared below clear_rate for clear_after_s."""

    decode: float = Field(100.0, gt=0, le=60_000)
    pre: float = Field(50.0, gt=0, le=60_000)
    infer: float = Field(200.0, gt=0, le=60_000)
    post: float = Field(50.0, gt=0, le=60_000)
    store: float = Field(500.0, gt=0, le=60_000)
    capture_to_puback: float = Field(10_000.0, gt=0, le=3_600_000)
    window_s: float = Field(30.0, ge=1, le=3600)
    raise_rate: float = Field(0.1, gt=0, le=1)
    raise_after_s: float = Field(10.0, ge=0, le=3600)
    clear_rate: float = Field(0.02, ge=0, lt=1)
    clear_after_s: float = Field(30.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _clear_below_raise(self) -> Budgets:
        if self.clear_rate >= self.raise_rate:
            raise ValueError("clear_rate must be below raise_rate (hysteresis)")
        return self

    def stages(self) -> dict[str, float]:
        return {s: getattr(self, s) for s in ("decode", "pre", "infer", "post", "store", "capture_to_puback")}


class Profile(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    match: tuple[str, ...] = Field((), description="patterns on the board's model string (auto)")
    levels: tuple[Level, ...] = Field(min_length=1, max_length=16)
    default_level: str
    floor_level: str
    ceiling_level: str | None = Field(None, description="auto never goes above it; default: the default level")
    sla_ms: float = Field(250.0, gt=0, le=60_000, description="capture→result p95 target")
    gpu_memory_budget_mb: int | None = Field(None, ge=64, le=1 << 20)
    thermal: Thermal = Field(default_factory=Thermal)
    control: Control = Field(default_factory=Control)
    budgets: Budgets = Field(default_factory=Budgets)

    @model_validator(mode="after")
    def _levels_named(self) -> Profile:
        names = [lv.name for lv in self.levels]
        if len(set(names)) != len(names):
            raise ValueError("level names must be distinct")
        for key in ("default_level", "floor_level", "ceiling_level"):
            value = getattr(self, key)
            if value is not None and value not in names:
                raise ValueError(f"{key} '{value}' is not one of the levels ({', '.join(names)})")
        if not self.index(self.ceiling) <= self.index(self.default_level) <= self.index(self.floor_level):
            raise ValueError("the levels must be ordered: ceiling_level, default_level, floor_level (best first)")
        return self

    @property
    def ceiling(self) -> str:
        return self.ceiling_level or self.default_level

    @property
    def level_names(self) -> list[str]:
        return [lv.name for lv in self.levels]

    def index(self, name: str) -> int:
        return self.level_names.index(name)


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(str(path), [(TOP_LEVEL, f"cannot read the file: {exc.strerror or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ProfileError(str(path), [(TOP_LEVEL, f"not valid YAML: {exc}")]) from None


def _errors(exc: ValidationError, prefix: tuple = ()) -> list[tuple[str, str]]:
    return [(key_path(prefix + tuple(e["loc"])), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]


@functools.lru_cache(maxsize=1)
def shipped_levels() -> tuple[Level, ...]:
    """The ladder in profiles/levels.yaml."""
    path = PROFILES_DIR / "levels.yaml"
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("levels"), list):
        raise ProfileError(str(path), [("levels", "expected a list of levels")])
    levels = []
    for i, item in enumerate(data["levels"]):
        try:
            levels.append(Level.model_validate(item))
        except ValidationError as exc:
            raise ProfileError(str(path), _errors(exc, ("levels", i))) from None
    return tuple(levels)


def parse_profile(data: object, source: str) -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(source, [(TOP_LEVEL, "expected a mapping of settings")])
    if "levels" not in data:
        data = {**data, "levels": [lv.model_dump() for lv in shipped_levels()]}
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(source, _errors(exc)) from None


@functools.lru_cache(maxsize=16)
def _load_file(path: Path, _mtime_ns: int) -> Profile:
    return parse_profile(_read_yaml(path), str(path))


def load_profile(name_or_path: str) -> Profile:
    """A shipped preset by name, or a profile file by path; raises ProfileError."""
    if name_or_path in PRESETS:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ProfileError(name_or_path, [(TOP_LEVEL, "neither a preset (" + ", ".join(PRESETS)
                                               + ") nor a readable profile file")])
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ProfileError(str(path), [(TOP_LEVEL, f"cannot read the file: {exc.strerror or exc}")]) from None
    return _load_file(path, mtime)


def auto_preset(board_model: str | None, nvidia_gpu: bool) -> tuple[str, str]:
    """The preset for this hardware and why: a Jetson's model string, else an NVIDIA GPU, else the CPU."""
    if board_model and "jetson" in board_model.lower():
        for name in PRESETS:
            if any(fnmatch.fnmatch(board_model.lower(), p) for p in load_profile(name).match):
                return name, f"board '{board_model}'"
        return "jetson-orin-nano", f"board '{board_model}' is a Jetson none of the presets names: the smallest"
    if nvidia_gpu:
        return "x86-gpu", "an NVIDIA GPU is present"
    return "cpu", "no NVIDIA GPU found"
