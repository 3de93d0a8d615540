"""One message of an object event: what tracking hands the store (agent.store.object_events writes it)."""

from __future__ import annotations

from dataclasses import dataclass

KIND_PREFIX = "events/objects/"  # the outbox kind, and the topic under <prefix>/<id>/: events/objects/<camera>


@dataclass(slots=True)
class ObjectEvent:
    """One message of an object event, as the tracker side made it."""

    type: str  # new | update | end; seen: the stored state only (no message), so a crash's end is recent
    event_id: str
    camera: str
    label: str
    track_id: int
    start_ms: int
    last_ms: int  # when the object was last seen
    top_score: float
    score: float
    box: tuple[float, float, float, float]
    stationary: bool
    zones: list[str] | None  # None: the camera has no zones
    entered_zones: list[str] | None
    seq: int
    snapshot: bytes | None = None  # a better snapshot than the stored one (None: unchanged)
    snapshot_score: float | None = None
    reason: str | None = None  # end: why (gone, camera stopped, restart)

    @property
    def kind(self) -> str:
        return KIND_PREFIX + self.camera
