"""Applies config changes from the fleet: validate, apply live, persist, report.

Two ways in, one path: a versioned desired config (retained on
`config/desired`: the fleet's whole overlay, replacing the previous one) and
the `set_config` / `camera` commands (one-off changes merged onto the overlay,
keeping the applied version). A rejected version is remembered, persisted, and
not tried again on reconnects or restarts until a newer one comes. A change
that does not validate, or that the device cannot apply (a model that does not
load), is rejected with key-path errors and the running config stays as it was
(DESIGN invariant 4). An applied change is persisted (overlay and version in
one row) before it is reported.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigError
from agent.control.config_diff import ApplyError
from agent.control.device_api import DeviceControl
from agent.control.remote_config import (
    AppliedState,
    combine,
    effective_config,
    load_state,
    redacted,
    save_state,
    trusted_dirs,
)
from agent.store.db import connect

log = logging.getLogger(__name__)

# Refusals that say nothing about the version itself (the agent was stopping, the database failed):
# such a version is tried again when it is delivered again.
TRANSIENT = frozenset({"(agent)", "(storage)"})


@dataclass
class Outcome:
    """The answer to one change; becomes the retained `config/reported` document."""

    status: str  # applied | rejected
    version: int | None  # the version asked for (None: a command)
    errors: list[tuple[str, str]] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


class ConfigService:
    """Owns the fleet's overlay and its version; the device runs what it is given."""

    def __init__(self, device: DeviceControl, file_config: AgentConfig, db_path: Path) -> None:
        self.device = device
        self.file_config = file_config  # what the config file says; the overlay goes on top
        self._db_path = db_path
        # Where remote config may name files (agent.control.remote_config's trust boundary).
        self.dirs = trusted_dirs(db_path.parent, file_config)
        self.state = AppliedState()
        self.error: str | None = None  # the stored overlay could not be read or no longer validates
        self.last_outcome: Outcome | None = None
        self._deferred: tuple[int, dict[str, Any]] | None = None  # a desired version refused for want of storage

    @property
    def applied_version(self) -> int:
        return self.state.version

    def restore(self) -> AgentConfig:
        """The config to start with: the file's, with the fleet's last applied overlay on top."""
        try:
            db = connect(self._db_path)
            try:
                self.state = load_state(db)
            finally:
                db.conn.close()
            if self.state.rejected_version > self.state.version:  # still what the fleet should see
                self.last_outcome = Outcome("rejected", self.state.rejected_version, self.state.rejected_errors)
            if self.state.version:
                config = effective_config(self.file_config, self.state.overlay, dirs=self.dirs)
                log.info("config version %d from the fleet applied on top of the config file", self.state.version)
                return config
        except ConfigError as exc:  # e.g. the file changed under it; run the file's config and say so
            self.error = f"stored fleet config v{self.state.version} no longer valid: {exc}"
            self.state.overlay = {}  # later changes start from the file's config, which is what runs
            log.error("%s", self.error)
        except sqlite3.Error as exc:
            self.error = f"cannot read the stored fleet config: {exc}"
            log.error("%s", self.error)
        return self.file_config

    def restore_running(self) -> Outcome | None:
        """The store opened after start (agent.store.store retries): put the stored overlay on, as a start
        would have, so that the next change builds on it instead of replacing it; then apply the desired
        version that was refused meanwhile for want of storage (its message was acknowledged: it does
        not come again before the next reconnect). Returns that version's outcome, if there was one."""
        self.last_outcome, self.error = None, None  # refusals for want of storage are moot now
        config = self.restore()
        if self.state.version or self.state.overlay:
            try:
                changes = self.device.apply_config(config)
                log.info("stored fleet config v%d applied: %s", self.state.version, ", ".join(changes) or "no change")
            except ApplyError as exc:
                self.error = f"stored fleet config v{self.state.version} cannot be applied: {exc}"
                log.error("%s", self.error)
        deferred, self._deferred = self._deferred, None
        return None if deferred is None else self.apply_desired(*deferred)

    def apply_desired(self, version: int, overlay: dict[str, Any]) -> Outcome | None:
        """A desired version: the fleet's whole overlay. None when not newer than the applied or the
        last rejected version (ignored)."""
        if version <= max(self.applied_version, self.state.rejected_version):
            return None
        outcome = self._apply(overlay, version)
        if not outcome.ok:
            if any(path == "(storage)" for path, _ in outcome.errors):
                self._deferred = (version, overlay)  # tried again when the store opens (restore_running)
            elif not any(path in TRANSIENT for path, _ in outcome.errors):
                self._remember_rejection(outcome)
        return outcome

    def apply_patch(self, patch: dict[str, Any]) -> Outcome:
        """A one-off change from a command, merged onto the overlay; the applied version stays."""
        return self._apply(combine(self.state.overlay, patch), None)

    def _apply(self, overlay: dict[str, Any], version: int | None) -> Outcome:
        state = self.state
        try:
            new = effective_config(self.file_config, overlay, dirs=self.dirs)
        except ConfigError as exc:
            return self._done(Outcome("rejected", version, exc.errors))
        old = self.device.config
        try:
            changes = self.device.apply_config(new)
        except ApplyError as exc:
            return self._done(Outcome("rejected", version, [(exc.path, str(exc))]))
        new_state = replace(state, version=version if version is not None else state.version, overlay=overlay,
                            applied_ms=int(time.time() * 1000))
        try:
            self._persist(new_state)
        except Exception as exc:  # keep running and persisted in step: go back to what was saved
            self.device.apply_config(old)
            return self._done(Outcome("rejected", version, [("(storage)", f"cannot persist the config: {exc}")]))
        self.state = new_state
        return self._done(Outcome("applied", version, changes=changes))

    def _remember_rejection(self, outcome: Outcome) -> None:
        assert outcome.version is not None
        self.state = replace(self.state, rejected_version=outcome.version, rejected_errors=list(outcome.errors))
        try:
            self._persist(self.state)
        except Exception as exc:  # then it is remembered until the agent restarts
            log.error("cannot persist that config version %d was rejected: %s", outcome.version, exc)

    def _persist(self, state: AppliedState) -> None:
        db = connect(self._db_path)
        try:
            save_state(db, state)
        finally:
            db.conn.close()

    def _done(self, outcome: Outcome) -> Outcome:
        self.last_outcome = outcome
        if outcome.ok:
            log.info("config %s: %s", _name(outcome.version), ", ".join(outcome.changes) or "nothing to change")
        else:
            log.warning("config %s rejected: %s", _name(outcome.version),
                        "; ".join(f"{p}: {m}" for p, m in outcome.errors))
        return outcome

    def reported(self, outcome: Outcome | None = None) -> dict[str, Any]:
        """The `config/reported` document for an outcome (default: the last one, or the applied state)."""
        outcome = outcome or self.last_outcome
        state = self.state
        doc: dict[str, Any] = {
            "v": 1,
            "version": state.version if outcome is None or outcome.version is None else outcome.version,
            "status": "applied" if outcome is None else outcome.status,
            "applied_version": state.version,
            "errors": [] if outcome is None else [{"path": p, "message": m} for p, m in outcome.errors],
            "config": redacted(self.device.config),
            "ts_ms": int(time.time() * 1000),
        }
        if outcome is not None and outcome.changes:
            doc["changes"] = outcome.changes
        if self.error:
            doc["warning"] = self.error
        return doc


def _name(version: int | None) -> str:
    return "change by command" if version is None else f"version {version}"
