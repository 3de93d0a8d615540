"""What control may do to the device: the narrow interface the runtime provides.

Commands and the desired config act on the device through this and nothing
else, so control never imports the runtime: data flows broker → control →
runtime, never back, and how the runtime wires its parts stays its own affair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.capture.frames import Frame
from agent.config import AgentConfig
from engines import Detection


@dataclass(frozen=True)
class CameraView:
    """A running camera's newest frame and the newest detections inference made for it."""

    frame: Frame | None  # None: no frame delivered yet
    detections_frame: int | None  # the frame number the detections belong to
    detections: list[Detection] = field(default_factory=list)


class DeviceControl(Protocol):
    @property
    def config(self) -> AgentConfig:
        """The config that runs now (file config with the fleet's overlay on top)."""

    def status(self) -> dict[str, Any]:
        """The `get_stats` snapshot."""

    def apply_config(self, new: AgentConfig) -> list[str]:
        """Run `new`, touching only what changed; the changes made, in words.

        Raises ApplyError (agent.control.config_diff) and leaves the running config as it was.
        """

    def restart_pipeline(self) -> list[str]:
        """Restart cameras and inference; the cameras running afterwards. Raises ApplyError."""

    def camera_view(self, name: str) -> CameraView | None:
        """The newest frame and detections of a running camera; None when no camera of that name runs."""

    def requeue_dead_letters(self) -> int:
        """Make the outbox's dead letters pending again (once an ACL or device id is fixed); how many."""

    def object_events(self, camera: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest object events (without snapshots), newest first."""

    def event_snapshot(self, event_id: str) -> dict[str, Any] | None:
        """An event's best snapshot: camera, label, jpeg (bytes or None), ts_ms, score; None: no such event."""
