"""Config from the fleet: an overlay on the file's config, checked, redacted, persisted.

The overlay is a partial AgentConfig (a null means "back to the default"). A
desired version carries the fleet's whole overlay and replaces the previous
one, so devices that saw different histories end alike; a command's change is
merged onto the overlay in place. The overlay is kept in SQLite in one row
with the version it brought the device to, so the pair is written atomically.
The effective config is always the file's config with the overlay on top: a
restart rebuilds exactly what ran. Sections that need a restart, or that could
cut the device off its broker (`mqtt`, `device`, `storage.path`), are refused
with their key path: those stay in the device's own config file.

The trust boundary: the config file is the operator's and fully trusted. Over
MQTT a config may not add a GStreamer pipeline (an element such as `filesink`
writes any file the agent can), may name model and label files only under the
model dirs (a label file's lines come back in `get_stats`) and video files only
under the media dirs (a snapshot shows their frames), and may not move engine
caches.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.capture.sources import SourceKind, parse_source, redact_source
from agent.config import AgentConfig, ConfigError, validate_config
from agent.profiles import AUTO, PRESETS
from agent.store.db import transaction
from engines.config import DEMO_MODEL_NAME, DEMO_MODEL_PATH, resolve_model_path

REMOTE_SECTIONS = ("cameras", "model", "telemetry", "storage", "quality")
LOCAL_ONLY_STORAGE = ("path", "synchronous", "queue_size")  # read once at start
REDACTED = "<redacted>"


@dataclass
class AppliedState:
    """What the fleet has changed on this device, the version that brought it here, and the last refusal."""

    version: int = 0
    overlay: dict[str, Any] = field(default_factory=dict)
    applied_ms: int = 0
    rejected_version: int = 0  # a desired version not newer than this is not tried again
    rejected_errors: list[tuple[str, str]] = field(default_factory=list)


def combine(overlay: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The overlay with `patch` on top: mappings merge, anything else (lists too) replaces; nulls kept."""
    out = copy.deepcopy(overlay)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = combine(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overlay(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with the overlay applied; a null removes the key, so its default applies.

    A mapping that names another `type` than the base's (`model.engine`: onnxruntime → tensorrt) is a
    different kind of thing: it replaces the base's mapping instead of merging onto its fields.
    """
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) \
                and value.get("type", out[key].get("type")) == out[key].get("type"):
            out[key] = apply_overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def remote_key_errors(patch: dict[str, Any]) -> list[tuple[str, str]]:
    """Key paths in a patch that cannot be changed over MQTT."""
    errors = []
    for key in patch:
        if key not in REMOTE_SECTIONS:
            errors.append((str(key), "cannot be changed over MQTT (set it in the device's config file)"))
    storage = patch.get("storage")
    if "storage" in patch and storage is None:  # a null would reset the local-only keys too
        errors.append(("storage", "cannot be reset as a whole over MQTT (reset its settings one by one)"))
    if isinstance(storage, dict):
        for key in LOCAL_ONLY_STORAGE:
            if key in storage:
                errors.append((f"storage.{key}", "cannot be changed over MQTT (needs a restart; config file)"))
    return errors


@dataclass(frozen=True)
class TrustedDirs:
    """Where config over MQTT may name files (the config file may name any)."""

    models: list[Path]  # model and label files
    media: list[Path]  # video files as camera sources


def trusted_dirs(data_dir: Path, config: AgentConfig) -> TrustedDirs:
    """The data dir's models/ and the package's models, the data dir's media/, and `remote`'s extras."""
    data_dir = data_dir.expanduser()
    return TrustedDirs(
        models=[data_dir / "models", DEMO_MODEL_PATH.parent, *(d.expanduser() for d in config.remote.model_dirs)],
        media=[data_dir / "media", *(d.expanduser() for d in config.remote.media_dirs)],
    )


def _outside(path: Path, dirs: list[Path]) -> bool:
    where = path.expanduser().resolve()  # symlinks and `..` count where they lead
    return not any(where.is_relative_to(d.resolve()) for d in dirs)


def _keys_named(data: Any, name: str, prefix: str = "") -> list[str]:
    """Key paths of every `name` key in nested mappings."""
    if not isinstance(data, dict):
        return []
    found = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        found += [path] if key == name else _keys_named(value, name, path)
    return found


def trust_errors(file_config: AgentConfig, new: AgentConfig, overlay: dict[str, Any],
                 dirs: TrustedDirs) -> list[tuple[str, str]]:
    """What the overlay would make the agent open, write or run outside its own files."""
    errors = []
    local_sources = {cam.source for cam in file_config.cameras}
    for i, cam in enumerate(new.cameras):
        if cam.source in local_sources:
            continue  # the config file's own sources stay trusted (the camera command sends the list back)
        kind = parse_source(cam.source).kind
        if kind is SourceKind.GSTREAMER:
            errors.append((f"cameras[{i}].source",
                           "GStreamer pipelines (gst:) can only be set in the device's config file"))
        elif kind is SourceKind.FILE and _outside(Path(str(cam.source)), dirs.media):
            errors.append((f"cameras[{i}].source", "over MQTT only video files under "
                           + ", ".join(str(d) for d in dirs.media) + " (the config file may name any)"))
    errors += [(path, "engine caches cannot be moved over MQTT (config file)")
               for path in _keys_named(overlay, "cache_dir")]
    errors += _quality_trust_errors(file_config, new, dirs)
    for key in ("path", "labels"):
        value = getattr(new.model, key)
        if value is None or value == getattr(file_config.model, key) or value == DEMO_MODEL_NAME:
            continue
        if _outside(resolve_model_path(value), dirs.models):
            errors.append((f"model.{key}", "over MQTT only files under "
                           + ", ".join(str(d) for d in dirs.models) + " (the config file may name any)"))
    return errors


def _quality_trust_errors(file_config: AgentConfig, new: AgentConfig, dirs: TrustedDirs) -> list[tuple[str, str]]:
    q, local = new.quality, file_config.quality
    errors = []
    if q.profile != local.profile and q.profile != AUTO and q.profile not in PRESETS:
        errors.append(("quality.profile", "over MQTT only a preset (" + ", ".join(PRESETS)
                       + ") or auto; a profile file is named in the config file"))
    if q.sysfs_root != local.sysfs_root:
        errors.append(("quality.sysfs_root", "cannot be changed over MQTT (config file)"))
    for name, path in q.models.items():
        if local.models.get(name) != path and _outside(resolve_model_path(path), dirs.models):
            errors.append((f"quality.models.{name}", "over MQTT only files under "
                           + ", ".join(str(d) for d in dirs.models) + " (the config file may name any)"))
    return errors


def effective_config(file_config: AgentConfig, overlay: dict[str, Any], source: str = "desired config",
                     dirs: TrustedDirs | None = None) -> AgentConfig:
    """Validate the file's config with the overlay on top; raises ConfigError with key paths."""
    if not isinstance(overlay, dict):
        raise ConfigError(source, [("config", "expected a mapping of settings")])
    errors = remote_key_errors(overlay)
    if errors:
        raise ConfigError(source, errors)
    new = validate_config(apply_overlay(file_config.model_dump(mode="json"), overlay), source)
    errors = trust_errors(file_config, new, overlay, dirs or trusted_dirs(file_config.storage.path, file_config))
    if errors:
        raise ConfigError(source, errors)
    return new


def redacted(config: AgentConfig) -> dict[str, Any]:
    """The config as JSON-ready data without secrets (passwords, credentials in camera URLs)."""
    data = config.model_dump(mode="json")
    mqtt = data.get("mqtt")
    if mqtt and mqtt.get("password") is not None:
        mqtt["password"] = REDACTED
    for cam in data.get("cameras", []):
        cam["source"] = redact_source(cam["source"])
    return data


# -- persistence (the remote_config table, schema v3) ----------------------------------
def load_state(db: sqlite_utils.Database) -> AppliedState:
    row = db.execute("SELECT version, overlay, applied_ms, rejected_version, rejected_errors "
                     "FROM remote_config WHERE id = 1").fetchone()
    if row is None:
        return AppliedState()
    return AppliedState(int(row[0]), json.loads(row[1]), int(row[2]), int(row[3]),
                        [(str(p), str(m)) for p, m in json.loads(row[4])])


def save_state(db: sqlite_utils.Database, state: AppliedState) -> None:
    """Version and overlay in one row, one transaction: never one without the other."""
    with transaction(db):
        db.execute(
            "INSERT INTO remote_config(id, version, overlay, applied_ms, rejected_version, rejected_errors) "
            "VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET version = excluded.version, "
            "overlay = excluded.overlay, applied_ms = excluded.applied_ms, "
            "rejected_version = excluded.rejected_version, rejected_errors = excluded.rejected_errors",
            (state.version, json.dumps(state.overlay), state.applied_ms, state.rejected_version,
             json.dumps(state.rejected_errors)),
        )
