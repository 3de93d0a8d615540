"""What the web wing reads from the agent: the narrow interface the runtime provides.

The page and the API only read; nothing here changes the device (no state changes through GET).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.control.device_api import CameraView


@dataclass(frozen=True)
class Health:
    ok: bool  # the pipeline's heartbeat is fresh and the store accepts writes
    ready: bool  # the engine is loaded and every enabled camera has delivered frames
    reasons: list[str] = field(default_factory=list)  # why not ok (or not ready), in words


class AgentView(Protocol):
    def status(self) -> dict[str, Any]:
        """The `get_stats` snapshot."""

    def health(self) -> Health:
        """Liveness and readiness, with the reasons."""

    def camera_view(self, name: str) -> CameraView | None:
        """The newest frame and detections of a running camera; None when no camera of that name runs."""

    def camera_names(self) -> list[str]:
        """The cameras the config has (running or not)."""
