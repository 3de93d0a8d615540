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
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from agent.capture.sources import redact_source
from agent.config import AgentConfig, ConfigError, validate_config
from agent.store.db import transaction

REMOTE_SECTIONS = ("cameras", "model", "telemetry", "storage")
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


def effective_config(file_config: AgentConfig, overlay: dict[str, Any], source: str = "desired config") \
        -> AgentConfig:
    """Validate the file's config with the overlay on top; raises ConfigError with key paths."""
    if not isinstance(overlay, dict):
        raise ConfigError(source, [("config", "expected a mapping of settings")])
    errors = remote_key_errors(overlay)
    if errors:
        raise ConfigError(source, errors)
    return validate_config(apply_overlay(file_config.model_dump(mode="json"), overlay), source)


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
