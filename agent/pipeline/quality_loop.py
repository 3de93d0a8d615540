"""The quality loop: about once a second, read the signals, let the controller decide, turn the knobs.

Signals come from what the agent measures anyway (the pipeline's stage windows, the frame slots'
drop counts, the GPU budget's figures, telemetry's GPU temperature) and from cheap sysfs reads
(thermal zones, throttle counters). Knobs: each camera's detection fps cap and gate (motion on
or off, its sensitivity, shedding); shared by all, from the highest-priority cameras' level: the
batch cap and the model variant, which the runtime swaps the way a config change does (the new
engine loads before the old one stops; frames wait in their slots meanwhile).
The loop also feeds the SLA monitor and publishes transitions and alerts as events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.capture.camera import Camera
from agent.config import AgentConfig
from agent.device.cpu import CpuBusy
from agent.device.platform import board_model, nvidia_gpu_present
from agent.device.thermal import read_zones, throttle_count
from agent.measure import LatencyWindow
from agent.pipeline.metrics import PipelineMetrics
from agent.pipeline.motion import MotionGate
from agent.pipeline.quality import QualityController, Reading, Transition
from agent.pipeline.sla import SlaMonitor
from agent.profiles import AUTO, BASE_MODEL, Level, Profile, auto_preset, load_profile
from engines import DetectorConfig
from engines.config import resolve_model_path

log = logging.getLogger(__name__)

STRIDE = 32  # a dynamic-size model's input is scaled to a multiple of this


def resolve_profile(config: AgentConfig) -> tuple[Profile, str]:
    """The profile `quality.profile` names, and why this one (auto says what it saw)."""
    name = config.quality.profile
    if name != AUTO:
        return load_profile(name), "configured"
    preset, why = auto_preset(board_model(), nvidia_gpu_present())
    return load_profile(preset), f"auto: {why}"


def model_for(level: Level, config: AgentConfig,
              dynamic_size: tuple[int, int] | None) -> tuple[str, DetectorConfig] | None:
    """The first of the level's model variants that is configured and present, with its config."""
    for name in level.model:
        if name == BASE_MODEL:
            model = config.model
            if dynamic_size is not None and level.input_scale < 1:
                h, w = (max(STRIDE, round(side * level.input_scale / STRIDE) * STRIDE) for side in dynamic_size)
                model = model.model_copy(update={"input_size": (h, w)})
            return name, model
        path = config.quality.models.get(name)
        if path is not None and resolve_model_path(path).is_file():
            return name, config.model.model_copy(update={"path": path})
    return None


class QualityHost(Protocol):
    """What the loop needs of the runtime."""

    metrics: PipelineMetrics

    def running_cameras(self) -> list[tuple[Camera, MotionGate | None]]: ...

    def gpu_report(self) -> dict: ...

    def gpu_temperature_c(self) -> float | None: ...

    def puback_window(self) -> LatencyWindow | None: ...

    def set_batch_cap(self, cap: int | None) -> None: ...

    def run_model(self, model: DetectorConfig) -> bool:
        """Swap the running engine for `model`; False: not now (tried again next tick), raises if it fails."""

    def publish_event(self, kind: str, event: dict) -> None: ...


@dataclass
class _Counts:
    dropped: int
    captured: int


class QualityLoop:
    def __init__(self, config: AgentConfig, host: QualityHost, dynamic_size: Callable[[], tuple[int, int] | None]):
        self.host = host
        self._dynamic_size = dynamic_size  # the base model's input size when it is dynamic, else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # configure (a config change) against the tick
        self._cpu = CpuBusy()
        self._cpu_samples: deque[float] = deque(maxlen=64)
        self._counts: dict[int, _Counts] = {}  # id(camera) → its counts at the last tick
        self._drops: deque[tuple[float, int, int]] = deque(maxlen=600)  # (mono, dropped, captured) per tick
        self._throttle: int | None = None
        self._refusals = 0
        self.last_reading: Reading | None = None
        self.model_variant: str | None = None
        self.model_error: str | None = None
        self.ticks = 0
        self._configure(config, first=True)

    # -- config -------------------------------------------------------------------------
    def _configure(self, config: AgentConfig, first: bool = False) -> None:
        profile, why = resolve_profile(config)
        q = config.quality
        levels, skipped = [], {}
        for level in profile.levels:
            if model_for(level, config, None) is None:
                skipped[level.name] = f"none of its models ({', '.join(level.model)}) is in quality.models"
                log.warning("quality level %s skipped: %s", level.name, skipped[level.name])
            else:
                levels.append(level)
        sla = q.sla_ms or profile.sla_ms
        now = time.monotonic()
        if first or profile != self.profile or levels != self.controller.levels:
            self.controller = QualityController(profile, levels, sla, q.mode, q.level, now)
            self.sla = SlaMonitor(profile.budgets)
        else:
            self._sync_cameras()
            change = self.controller.configure(q.mode, q.level, sla, now)
            if change is not None:
                self._announce(change)
        self.config, self.profile, self.profile_reason, self.skipped = config, profile, why, skipped

    def configure(self, config: AgentConfig) -> None:
        """A config change (the `quality` command, desired config, a new model or cameras)."""
        with self._lock:
            self._configure(config)
            wanted = self._apply(self._sync_cameras())
        self._run_model(wanted)

    def wanted_model(self) -> DetectorConfig | None:
        """The model the start level runs (so the engine is not loaded twice at start)."""
        chosen = model_for(self.controller.device_level, self.config, None)
        return None if chosen is None else chosen[1]

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            wanted = self._apply(self._sync_cameras())
        self._run_model(wanted)
        self._thread = threading.Thread(target=self._run, name="quality", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.profile.control.interval_s):
            try:
                self.tick()
            except Exception:  # the loop must outlive any one bad reading
                log.exception("quality tick failed")

    def tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            cameras = self._sync_cameras()
            reading = self.last_reading = self._read(cameras, now)
            change = self.controller.update(reading, now)
            if change is not None:
                self._announce(change)
            wanted = self._apply(cameras)
            for event in self.sla.update(self._stage_samples(cameras, now), now):
                log.warning("%s %s", "SLA alert" if event["type"] == "raised" else "SLA alert cleared",
                            event["reason"])
                self.host.publish_event("alert", event)
            self.ticks += 1
        self._run_model(wanted)

    # -- signals ------------------------------------------------------------------------
    def _read(self, cameras: list[tuple[Camera, MotionGate | None]], now: float) -> Reading:
        c = self.profile.control
        result = self.host.metrics.recent("result", c.window_s)
        queue = self.host.metrics.recent("capture_age", c.window_s)
        self._cpu_samples.append(self._cpu.percent())
        cpu_n = max(1, round(c.window_s / c.interval_s))
        cpu = list(self._cpu_samples)[-cpu_n:]
        gpu = self.host.gpu_report()
        used, budget = gpu.get("used_mb"), gpu.get("budget_mb")
        refusals = int(gpu.get("refusals") or 0)
        new_refusals, self._refusals = max(0, refusals - self._refusals), refusals
        root = Path(self.config.quality.sysfs_root)
        zones = {z: t for z, t in read_zones(root).items() if self.profile.thermal.watches(z)}
        throttles = throttle_count(root)
        new_throttles = 0 if throttles is None or self._throttle is None else max(0, throttles - self._throttle)
        self._throttle = throttles
        return Reading(
            result_p95_ms=_p95(result), queue_p95_ms=_p95(queue), drop_fraction=self._drop_fraction(cameras, now),
            gpu_memory_fraction=used / budget if used and budget else None, gpu_refusals=new_refusals,
            cpu_percent=sum(cpu) / len(cpu), temperatures_c=zones,
            gpu_temperature_c=self.host.gpu_temperature_c(), throttle_events=new_throttles,
        )

    def _drop_fraction(self, cameras: list[tuple[Camera, MotionGate | None]], now: float) -> float | None:
        """Frames overwritten in their slot before inference took them, of those handed over, over the window."""
        dropped = captured = 0
        seen: dict[int, _Counts] = {}
        for cam, _ in cameras:
            if cam.slot.blocking:
                continue  # an unpaced file waits instead of dropping
            counts = _Counts(cam.slot.dropped, cam.frames_captured)
            before = self._counts.get(id(cam), _Counts(0, 0))
            dropped += max(0, counts.dropped - before.dropped)
            captured += max(0, counts.captured - before.captured)
            seen[id(cam)] = counts
        self._counts = seen
        self._drops.append((now, dropped, captured))
        window = [(d, c) for t, d, c in self._drops if now - t <= self.profile.control.window_s]
        total = sum(c for _, c in window)
        return sum(d for d, _ in window) / total if total >= 10 else None

    def _stage_samples(self, cameras: list[tuple[Camera, MotionGate | None]], now: float) -> dict[str, np.ndarray]:
        window = self.profile.budgets.window_s
        t0 = now - window
        samples = {s: self.host.metrics.recent(s, window) for s in ("pre", "infer", "post", "store")}
        decode = [cam.read_ms.since(t0) for cam, _ in cameras]
        samples["decode"] = np.concatenate(decode) if decode else np.zeros(0)
        puback = self.host.puback_window()
        if puback is not None:
            samples["capture_to_puback"] = puback.since(t0)
        return samples

    # -- knobs --------------------------------------------------------------------------
    def _sync_cameras(self) -> list[tuple[Camera, MotionGate | None]]:
        """The running cameras, asked once per tick; the controller's priority tiers follow them."""
        cameras = self.host.running_cameras()
        self.controller.set_cameras({cam.name: cam.config.priority for cam, _ in cameras})
        return cameras

    def _apply(self, cameras: list[tuple[Camera, MotionGate | None]]) -> tuple[str, str, DetectorConfig] | None:
        """Turn the knobs; the model the levels want (level, variant, config), to run outside the lock."""
        ctl = self.controller
        for cam, gate in cameras:
            level = ctl.camera_level(cam.name)
            fps = level.detect_fps(cam.config.fps)
            cam.rate_cap = None if fps >= cam.config.fps else fps
            if gate is not None:
                gate.active_by_level = level.motion
                gate.sensitivity = level.motion_sensitivity
                gate.shed = ctl.shed(cam.name)
        device = ctl.device_level
        self.host.set_batch_cap(device.batch)
        chosen = model_for(device, self.config, self._dynamic_size())
        return None if chosen is None else (device.name, *chosen)

    def _run_model(self, wanted: tuple[str, str, DetectorConfig] | None) -> None:
        """Swap to the wanted variant, without holding the loop's lock: a load can take minutes (a TensorRT
        build) and status must answer meanwhile."""
        if wanted is None:
            return
        level, name, model = wanted
        try:
            if self.host.run_model(model):
                if name != self.model_variant and self.model_variant is not None:
                    log.info("quality level %s: model %s (%s)", level, name, model.path)
                self.model_variant, self.model_error = name, None
        except Exception as exc:  # the variant does not load: keep what runs, say so
            if self.model_error is None:
                log.error("quality level %s: model %s does not load, keeping the running one: %s", level, name, exc)
            self.model_error = f"model variant {name}: {exc}"

    def _announce(self, change: Transition) -> None:
        log.warning("quality %s → %s (%s): %s", change.from_level, change.to_level,
                    ", ".join(change.cameras), change.reason)
        self.host.publish_event("quality", {**change.to_dict(), "mode": self.controller.mode,
                                            "profile": self.profile.name, "level": self.controller.level.name})

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            out = self.controller.status()
            out.update({
                "profile_reason": self.profile_reason, "skipped_levels": self.skipped,
                "model_variant": self.model_variant, "model_error": self.model_error,
                "signals": None if self.last_reading is None else _rounded(asdict(self.last_reading)),
            })
            return out

    def sla_status(self) -> dict:
        with self._lock:
            return self.sla.status()

    def alerts(self) -> list[str]:
        with self._lock:
            return self.sla.active()


def _p95(values: np.ndarray) -> float | None:
    return float(np.percentile(values, 95)) if len(values) >= 5 else None


def _rounded(d: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}
