"""Config from the fleet: partial configs merged onto the running one, checked, redacted, persisted.

A desired config is a partial AgentConfig. Patches accumulate into an overlay
(a null means "back to the default") kept in SQLite in one row together with
the version it brought the device to, so the pair is written atomically. The
effective config is always the file's config with the overlay on top: a
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
    """What the fleet has changed on this device, and the version that brought it here."""

    version: int = 0
    overlay: dict[str, Any] = field(default_factory=dict)
    applied_ms: int = 0


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
    """`base` with the overlay applied; a null removes the key, so its default applies."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
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
    row = db.execute("SELECT version, overlay, applied_ms FROM remote_config WHERE id = 1").fetchone()
    if row is None:
        return AppliedState()
    return AppliedState(int(row[0]), json.loads(row[1]), int(row[2]))


def save_state(db: sqlite_utils.Database, state: AppliedState) -> None:
    """Version and overlay in one row, one transaction: never one without the other."""
    with transaction(db):
        db.execute(
            "INSERT INTO remote_config(id, version, overlay, applied_ms) VALUES (1, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET version = excluded.version, overlay = excluded.overlay, "
            "applied_ms = excluded.applied_ms",
            (state.version, json.dumps(state.overlay), state.applied_ms),
        )
