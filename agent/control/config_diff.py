"""What a config change touches, so applying it restarts only what must restart.

Cameras are matched by name: one that was added, removed, enabled, disabled or
changed in any setting is the only one started or stopped. Score and IoU
thresholds change live on the running detector; any other model setting needs
a new engine. Telemetry, storage retention and quality settings change live.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config import AgentConfig, CameraConfig

LIVE_MODEL_KEYS = ("score_threshold", "iou_threshold")


class ApplyError(Exception):
    """A valid config that cannot be applied here (e.g. the model does not load); nothing was changed."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


@dataclass
class ConfigDiff:
    cameras_to_stop: list[str] = field(default_factory=list)  # removed, disabled or changed
    cameras_to_start: list[CameraConfig] = field(default_factory=list)  # added, enabled or changed
    model_reload: bool = False
    thresholds: bool = False
    telemetry_interval: bool = False
    storage: bool = False
    quality: bool = False
    objects: bool = False  # tracking or events: cameras' trackers start afresh (their open events end)
    homeassistant: bool = False

    def summary(self) -> list[str]:
        """Short phrases for the answer and the log."""
        started = {c.name for c in self.cameras_to_start}
        stopped = set(self.cameras_to_stop)
        out = [f"camera {n} restarted" for n in sorted(started & stopped)]
        out += [f"camera {n} started" for n in sorted(started - stopped)]
        out += [f"camera {n} stopped" for n in sorted(stopped - started)]
        if self.model_reload:
            out.append("model reloaded")
        elif self.thresholds:
            out.append("thresholds updated")
        if self.telemetry_interval:
            out.append("telemetry interval updated")
        if self.storage:
            out.append("storage limits updated")
        if self.quality:
            out.append("quality settings updated")
        if self.objects:
            out.append("tracking and events updated")
        if self.homeassistant:
            out.append("home assistant discovery updated")
        return out


def diff_configs(old: AgentConfig, new: AgentConfig) -> ConfigDiff:
    diff = ConfigDiff()
    old_cams = {c.name: c for c in old.cameras if c.enabled}
    new_cams = {c.name: c for c in new.cameras if c.enabled}
    for name, cam in old_cams.items():
        if name not in new_cams or new_cams[name] != cam:
            diff.cameras_to_stop.append(name)
    for name, cam in new_cams.items():
        if name not in old_cams or old_cams[name] != cam:
            diff.cameras_to_start.append(cam)
    old_model = old.model.model_dump(exclude=set(LIVE_MODEL_KEYS))
    diff.model_reload = old_model != new.model.model_dump(exclude=set(LIVE_MODEL_KEYS))
    diff.thresholds = any(getattr(old.model, k) != getattr(new.model, k) for k in LIVE_MODEL_KEYS)
    diff.telemetry_interval = old.telemetry.interval_s != new.telemetry.interval_s
    diff.storage = old.storage != new.storage
    diff.quality = old.quality != new.quality
    old_zones = {c.name: c.zones for c in old.cameras}
    diff.objects = old.tracking != new.tracking or old.events != new.events or \
        any(old_zones.get(c.name, c.zones) != c.zones for c in new.cameras)  # zones of a camera kept
    diff.homeassistant = old.homeassistant != new.homeassistant
    return diff
