"""The command catalogue: each command's arguments (strict pydantic) and what it does.

Commands arrive as `{"id": ..., "args": {...}, "expires_at": ms}` on
`<prefix>/<device>/cmd/<name>`; only the names below exist. Nothing here runs
shell strings; the only paths a command can name are config values, validated
as in the config file. The MQTT side (topics,
answers, redeliveries, expiry) is agent.control.command_channel.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent import __version__
from agent.capture.jpeg import SnapshotTooLarge, encode_capped
from agent.config import NAME_PATTERN
from agent.control.config_diff import ApplyError
from agent.control.config_service import ConfigService, Outcome
from agent.control.device_api import DeviceControl
from agent.control.remote_config import redacted

MAX_SNAPSHOT_DETECTIONS = 200
COMMAND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class CommandError(Exception):
    """An error answer: a stable code for programs, a message for people."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        self.code = code
        self.details = details
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Envelope(_Strict):
    id: str = Field(pattern=COMMAND_ID_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)
    expires_at: int | None = Field(None, ge=0, description="UTC milliseconds; later than this it is not run")


class NoArgs(_Strict):
    pass


class SetConfigArgs(_Strict):
    config: dict[str, Any]


class CameraArgs(_Strict):
    action: Literal["add", "remove", "enable", "disable"]
    name: str = Field(pattern=NAME_PATTERN)
    settings: dict[str, Any] | None = Field(None, description="add: the camera's settings (source, fps, ...)")

    @model_validator(mode="after")
    def _settings_only_for_add(self) -> CameraArgs:
        if (self.action == "add") != (self.settings is not None):
            raise ValueError("settings are required for add and not allowed otherwise")
        return self


class SnapshotArgs(_Strict):
    camera: str = Field(pattern=NAME_PATTERN)
    max_bytes: int = Field(256 * 1024, ge=4096, le=768 * 1024, description="JPEG size cap")
    quality: int = Field(85, ge=20, le=95)


class EventsArgs(_Strict):
    camera: str | None = Field(None, pattern=NAME_PATTERN)
    limit: int = Field(50, ge=1, le=500)


class EventSnapshotArgs(_Strict):
    event_id: str = Field(pattern=r"^[0-9a-f-]{36}$")


class QualityArgs(_Strict):
    mode: Literal["auto", "fixed"]
    level: str | None = Field(None, description="fixed: the level to hold; auto: where to start from")

    @model_validator(mode="after")
    def _fixed_names_a_level(self) -> QualityArgs:
        if self.mode == "fixed" and self.level is None:
            raise ValueError("mode fixed needs a level")
        return self


class Commands:
    """Runs validated commands against the device; raises CommandError for error answers."""

    def __init__(self, device: DeviceControl, config: ConfigService, packet_cap: Callable[[], int | None],
                 boot_id: str) -> None:
        self.device = device
        self.config = config
        self.boot_id = boot_id  # this process's, as in the birth message
        self._packet_cap = packet_cap  # the broker's maximum packet size, when it told us
        self.catalogue: dict[str, tuple[type[_Strict], Callable[[Any], dict[str, Any]]]] = {
            "ping": (NoArgs, self.ping),
            "get_config": (NoArgs, self.get_config),
            "set_config": (SetConfigArgs, self.set_config),
            "camera": (CameraArgs, self.camera),
            "snapshot": (SnapshotArgs, self.snapshot),
            "restart_pipeline": (NoArgs, self.restart_pipeline),
            "get_stats": (NoArgs, self.get_stats),
            "requeue_dead_letters": (NoArgs, self.requeue_dead_letters),
            "quality": (QualityArgs, self.quality),
            "events": (EventsArgs, self.events),
            "event_snapshot": (EventSnapshotArgs, self.event_snapshot),
        }

    # Answers to these are not kept for redeliveries: running them again changes nothing.
    READ_ONLY = frozenset({"ping", "get_config", "get_stats", "snapshot", "events", "event_snapshot"})

    def run(self, name: str, args: BaseModel) -> dict[str, Any]:
        return self.catalogue[name][1](args)

    # -- the commands -----------------------------------------------------------------
    def ping(self, _args: NoArgs) -> dict[str, Any]:
        status = self.device.status()
        return {"pong": int(time.time() * 1000), "version": __version__, "uptime_s": status["uptime_s"],
                "boot_id": self.boot_id}

    def get_config(self, _args: NoArgs) -> dict[str, Any]:
        return {"version": self.config.applied_version, "config": redacted(self.device.config)}

    def set_config(self, args: SetConfigArgs) -> dict[str, Any]:
        return self._outcome(self.config.apply_patch(args.config))

    def camera(self, args: CameraArgs) -> dict[str, Any]:
        cameras = [c.model_dump(mode="json") for c in self.device.config.cameras]
        names = [c["name"] for c in cameras]
        if args.action == "add":
            if args.name in names:
                raise CommandError("conflict", f"camera {args.name} exists already")
            cameras.append({**(args.settings or {}), "name": args.name})
        elif args.name not in names:
            raise CommandError("not_found", f"no camera named {args.name}")
        elif args.action == "remove":
            cameras = [c for c in cameras if c["name"] != args.name]
        else:
            for cam in cameras:
                if cam["name"] == args.name:
                    cam["enabled"] = args.action == "enable"
        return self._outcome(self.config.apply_patch({"cameras": cameras}))

    def snapshot(self, args: SnapshotArgs) -> dict[str, Any]:
        view = self.device.camera_view(args.camera)
        if view is None:
            raise CommandError("not_found", f"no running camera named {args.camera}")
        frame = view.frame
        if frame is None:
            raise CommandError("unavailable", f"camera {args.camera} has not delivered a frame yet")
        number, detections = view.detections_frame, view.detections
        found = [d.to_dict() for d in detections[:MAX_SNAPSHOT_DETECTIONS]]
        cap = args.max_bytes
        if (packet := self._packet_cap()) is not None:  # the answer around the image must fit too
            rest = len(json.dumps(found)) + 4096  # topic, properties, the other fields
            cap = min(cap, (packet - rest) * 3 // 4)  # base64 grows by 4/3
        try:
            jpeg, scale = encode_capped(frame.image, cap, args.quality)
        except SnapshotTooLarge as exc:
            raise CommandError("too_large", str(exc)) from None
        width, height = frame.size  # the stream's: what detection boxes are in (the frame may be smaller)
        scale *= frame.image.shape[1] / width
        return {
            "camera": args.camera, "frame": frame.number, "ts_ms": frame.wall_ms,
            "width": width, "height": height, "scale": round(scale, 4),
            "detections_frame": number, "detections": found, "detections_total": len(detections),
            "jpeg_base64": base64.b64encode(jpeg).decode("ascii"), "jpeg_bytes": len(jpeg),
        }

    def events(self, args: EventsArgs) -> dict[str, Any]:
        """The newest object events from the store, newest first (snapshots by `event_snapshot`)."""
        return {"events": self.device.object_events(args.camera, args.limit)}

    def event_snapshot(self, args: EventSnapshotArgs) -> dict[str, Any]:
        found = self.device.event_snapshot(args.event_id)
        if found is None:
            raise CommandError("not_found", f"no event {args.event_id} in the store")
        jpeg = found["jpeg"]
        if jpeg is None:
            raise CommandError("unavailable", f"event {args.event_id} has no snapshot (off, or trimmed by retention)")
        if (packet := self._packet_cap()) is not None and len(jpeg) * 4 // 3 + 4096 > packet:
            raise CommandError("too_large", f"the snapshot ({len(jpeg)} bytes) does not fit the broker's "
                                            f"{packet}-byte packet limit; lower events.snapshots.max_bytes")
        return {"event_id": args.event_id, "camera": found["camera"], "label": found["label"],
                "ts_ms": found["ts_ms"], "score": found["score"], "jpeg_bytes": len(jpeg),
                "jpeg_base64": base64.b64encode(jpeg).decode("ascii")}

    def restart_pipeline(self, _args: NoArgs) -> dict[str, Any]:
        try:
            cameras = self.device.restart_pipeline()
        except ApplyError as exc:
            raise CommandError("failed", str(exc)) from None
        return {"cameras": cameras, "model_error": self.device.status()["model_error"]}

    def get_stats(self, _args: NoArgs) -> dict[str, Any]:
        return self.device.status()

    def requeue_dead_letters(self, _args: NoArgs) -> dict[str, Any]:
        return {"requeued": self.device.requeue_dead_letters()}

    def quality(self, args: QualityArgs) -> dict[str, Any]:
        """Pin a level or let the controller choose: the same as desired config's `quality` (and kept like it)."""
        answer = self._outcome(self.config.apply_patch({"quality": {"mode": args.mode, "level": args.level}}))
        return {**answer, "quality": self.device.status().get("quality")}

    @staticmethod
    def _outcome(outcome: Outcome) -> dict[str, Any]:
        if not outcome.ok:
            raise CommandError("rejected", "; ".join(f"{p}: {m}" for p, m in outcome.errors),
                               [{"path": p, "message": m} for p, m in outcome.errors])
        return {"changes": outcome.changes}
