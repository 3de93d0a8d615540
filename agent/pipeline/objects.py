"""Tracked objects and their events: what operators act on instead of the per-frame firehose.

The inference worker's sink hands each frame's detections here (frames of a camera arrive in
order); the camera's Tracker gives each detection its track id, and each confirmed track that
scored `events.min_score` (and moved, with `require_motion`) becomes an event: `new` once,
`update` only when something that matters changed (stationary state, zones, a better
snapshot) and at most every `update_interval_s`, `end` once the tracker gives the object up.
Messages go to the store in one hand-off per frame; the store writes each event's state and
its outbox message together (agent.store.object_events).

Snapshots: the best-scoring view of the object, a crop around its box with the box drawn,
copied when it improves (small: at most `max_width` wide) and encoded to JPEG only when a
message carries it, so per-frame work stays a copy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from agent.capture.frames import Frame
from agent.capture.jpeg import SnapshotTooLarge, encode_capped
from agent.config import AgentConfig, CameraConfig, EventsConfig, TrackingConfig
from agent.ids import uuid7
from agent.pipeline.object_event import ObjectEvent
from agent.pipeline.tracker import Track, Tracker
from engines import Detection

log = logging.getLogger(__name__)

TOTALS = ("events_started", "updates", "events_ended", "tracks_refused")
BETTER_SNAPSHOT = 0.02  # a view this much more confident replaces the snapshot
CROP_MARGIN = 0.4  # of the box's size, on each side


@dataclass
class _Open:
    """An event under way (one per confirmed, eligible track)."""

    event_id: str
    start_ms: int
    last_ms: int
    seq: int = 1
    stationary: bool = False
    zones: list[str] = field(default_factory=list)
    entered: list[str] = field(default_factory=list)
    last_sent: float = 0.0  # monotonic
    last_saved: float = 0.0  # monotonic: the stored row's last_ms is this fresh (what a crash's end says)
    changed: bool = False  # something that matters changed since the last message
    crop: np.ndarray | None = None  # the best view so far, not yet sent
    crop_score: float = 0.0


class CameraObjects:
    """One camera's tracker and its open events. Called from the inference thread only."""

    def __init__(self, camera: CameraConfig, tracking: TrackingConfig, events: EventsConfig,
                 first_id: int = 1) -> None:
        self.camera = camera.name
        self.events = events
        self.tracker = Tracker(tracking, events.end_after_s, first_id)
        self._zones = [(z.name, np.array(z.points, np.float32).reshape(-1, 1, 2)) for z in camera.zones]
        self.zone_configs = list(camera.zones)  # to tell a changed camera config
        self.open: dict[int, _Open] = {}  # track id → its event
        self.started = self.updates = self.ended = 0
        self.last_frame = 0.0  # monotonic time of the last frame seen (inferred or held)

    # -- per frame ----------------------------------------------------------------------
    def observe(self, frame: Frame, detections: Sequence[Detection]) -> tuple[list[int | None], list[ObjectEvent]]:
        self.last_frame = max(self.last_frame, frame.mono)
        step = self.tracker.update(detections, frame.mono)
        out: list[ObjectEvent] = []
        for track in self.tracker.tracks:
            if track.confirmed and track.seen_last_step:
                self._seen(track, frame, out)
        self._end(step.ended, frame, "gone", out)
        return step.track_ids, out

    def hold(self, frame: Frame) -> list[ObjectEvent]:
        """A frame the motion gate skipped: nothing moved; the clock goes on (stationary states, ends)."""
        self.last_frame = max(self.last_frame, frame.mono)
        ended = self.tracker.hold(frame.mono)
        out: list[ObjectEvent] = []
        for track in self.tracker.tracks:
            event = self.open.get(track.track_id)
            if event is not None and track.seen_last_step:
                event.last_ms = frame.wall_ms
                self._maybe_update(track, event, frame, out)
        self._end(ended, frame, "gone", out)
        return out

    def close(self, reason: str) -> list[ObjectEvent]:
        """Every open event ends (the camera stopped, or tracking was reconfigured)."""
        out: list[ObjectEvent] = []
        tracks = {t.track_id: t for t in self.tracker.end_all()}
        for track_id, event in list(self.open.items()):
            track = tracks.get(track_id)
            if track is not None:
                out.append(self._message("end", track, event, reason=reason))
        self.ended += len(out)
        self.open.clear()
        return out

    def totals(self) -> dict[str, int]:
        return {"events_started": self.started, "updates": self.updates, "events_ended": self.ended,
                "tracks_refused": self.tracker.refused}

    def counts(self) -> dict[str, int]:
        """Objects with an open event, per label: what Home Assistant's sensors show."""
        out: dict[str, int] = {}
        for track in self.tracker.tracks:
            if track.track_id in self.open:
                out[track.label] = out.get(track.label, 0) + 1
        return out

    # -- parts --------------------------------------------------------------------------
    def _seen(self, track: Track, frame: Frame, out: list[ObjectEvent]) -> None:
        event = self.open.get(track.track_id)
        if event is None:
            if track.top_score < self.events.min_score or (self.events.require_motion and not track.moved):
                return
            start_ms = frame.wall_ms - round((frame.mono - track.first_mono) * 1000)
            event = _Open(uuid7(start_ms), start_ms, frame.wall_ms, stationary=track.stationary,
                          zones=self._zones_of(track, frame))
            event.entered = list(event.zones)
            self.open[track.track_id] = event
            self._take_view(track, frame, event)
            event.last_sent = event.last_saved = frame.mono
            out.append(self._message("new", track, event))
            self.started += 1
            return
        event.last_ms = frame.wall_ms
        if track.score >= event.crop_score + BETTER_SNAPSHOT:
            self._take_view(track, frame, event)
            event.changed = True
        zones = self._zones_of(track, frame)
        if zones != event.zones:
            event.zones = zones
            event.entered += [z for z in zones if z not in event.entered]
            event.changed = True
        self._maybe_update(track, event, frame, out)

    def _maybe_update(self, track: Track, event: _Open, frame: Frame, out: list[ObjectEvent]) -> None:
        if track.stationary != event.stationary:
            event.stationary = track.stationary
            event.changed = True
        if event.changed and frame.mono - event.last_sent >= self.events.update_interval_s:
            event.last_sent = event.last_saved = frame.mono
            out.append(self._message("update", track, event))
            self.updates += 1
        elif frame.mono - event.last_saved >= self.events.update_interval_s:
            event.last_saved = frame.mono  # the row only (no message): a crash's end is at most this old
            out.append(self._message("seen", track, event))

    def _end(self, tracks: list[Track], frame: Frame, reason: str, out: list[ObjectEvent]) -> None:
        for track in tracks:
            event = self.open.pop(track.track_id, None)
            if event is not None:
                out.append(self._message("end", track, event, reason=reason))
                self.ended += 1

    def _message(self, kind: str, track: Track, event: _Open, reason: str | None = None) -> ObjectEvent:
        snapshot = self._encode(event, kind)
        message = ObjectEvent(
            kind, event.event_id, self.camera, track.label, track.track_id, event.start_ms, event.last_ms,
            track.top_score, track.score, track.box, event.stationary,
            list(event.zones) if self._zones else None, list(event.entered) if self._zones else None,
            event.seq, snapshot, event.crop_score if snapshot is not None else None, reason)
        if kind != "seen":
            event.seq += 1
            event.changed = False
        return message

    def _take_view(self, track: Track, frame: Frame, event: _Open) -> None:
        if self.events.snapshots.enabled:
            event.crop = crop_view(frame, track.box, self.events.snapshots.max_width)
        event.crop_score = track.score

    def _encode(self, event: _Open, kind: str) -> bytes | None:
        if kind == "seen":
            return None  # a better view waits for a message
        crop, event.crop = event.crop, None
        if crop is None:
            return None
        settings = self.events.snapshots
        try:
            return encode_capped(crop, settings.max_bytes, settings.quality)[0]
        except SnapshotTooLarge:
            return None

    def _zones_of(self, track: Track, frame: Frame) -> list[str]:
        if not self._zones:
            return []
        x1, _, x2, y2 = track.box
        width, height = frame.size
        point = ((x1 + x2) / 2 / width, y2 / height)  # where the object stands
        return [name for name, polygon in self._zones if cv2.pointPolygonTest(polygon, point, False) >= 0]


def crop_view(frame: Frame, box: tuple[float, float, float, float], max_width: int) -> np.ndarray:
    """A copy of the frame around `box` (stream pixels) with the box drawn, at most `max_width` wide."""
    image = frame.image
    width, height = frame.size
    sx, sy = image.shape[1] / width, image.shape[0] / height
    x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    mx, my = CROP_MARGIN * max(x2 - x1, 16), CROP_MARGIN * max(y2 - y1, 16)
    cx1, cy1 = max(0, int(x1 - mx)), max(0, int(y1 - my))
    cx2, cy2 = min(image.shape[1], int(x2 + mx) + 1), min(image.shape[0], int(y2 + my) + 1)
    crop = np.ascontiguousarray(image[cy1:cy2, cx1:cx2])
    if crop.size == 0:
        crop = image.copy()
        cx1 = cy1 = 0
    else:
        crop = crop.copy()
    cv2.rectangle(crop, (int(x1) - cx1, int(y1) - cy1), (int(x2) - cx1, int(y2) - cy1), (0, 200, 255), 2)
    if crop.shape[1] > max_width:
        scale = max_width / crop.shape[1]
        crop = cv2.resize(crop, (max_width, max(1, round(crop.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    return crop


class ObjectTracking:
    """Every camera's objects; the runtime's sink and motion gate feed it, the store gets its messages."""

    def __init__(self, config: AgentConfig, emit: Callable[[list[ObjectEvent]], object],
                 on_counts: Callable[[str, dict[str, int]], None] | None = None) -> None:
        self._emit = emit
        self._on_counts = on_counts
        self._lock = threading.Lock()  # cameras come and go on the config thread; frames on the inference thread
        self._cameras: dict[str, CameraObjects] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._next_ids: dict[str, int] = {}  # a camera started again goes on counting: ids unique per run
        self._retired: dict[str, dict[str, int]] = {}  # what closed cameras counted: totals never go back
        self.configure(config)

    def configure(self, config: AgentConfig) -> None:
        """Settings from `config`; cameras whose settings changed start afresh (their events end)."""
        with self._lock:
            self.tracking, self.events = config.tracking, config.events
            self._camera_configs = {c.name: c for c in config.cameras}
            stale = [name for name, cam in self._cameras.items()
                     if cam.tracker.config != config.tracking or cam.events != config.events
                     or self._camera_configs.get(name) is None
                     or self._camera_configs[name].zones != cam.zone_configs]
        for name in stale:
            self.close_camera(name, "reconfigured")

    def observe(self, frame: Frame, detections: Sequence[Detection]) -> list[int | None] | None:
        """Track ids of `detections` (None: tracking off), and the frame's event messages out."""
        if not self.tracking.enabled:
            return None
        with self._lock:
            camera = self._camera(frame.camera)
            if camera is None:
                return None
            ids, messages = camera.observe(frame, detections)
            counts = camera.counts() if self._on_counts else None
        self._out(frame.camera, messages, counts)
        return ids

    def hold(self, frame: Frame) -> None:
        if not self.tracking.enabled:
            return
        with self._lock:
            camera = self._cameras.get(frame.camera)
            if camera is None:
                return
            messages = camera.hold(frame)
            counts = camera.counts() if self._on_counts else None
        self._out(frame.camera, messages, counts)

    def tick(self, now: float) -> None:
        """A camera without frames for `end_after_s` (a finished file, a dead stream) ends its objects: nothing
        is known of them any more."""
        with self._lock:
            silent = [name for name, c in self._cameras.items()
                      if c.open and now - c.last_frame > self.events.end_after_s]
        for name in silent:
            self.close_camera(name, "no_frames")

    def close_camera(self, name: str, reason: str = "camera_stopped") -> None:
        with self._lock:
            camera = self._cameras.pop(name, None)
            messages = camera.close(reason) if camera is not None else []
            if camera is not None:
                self._next_ids[name] = camera.tracker.next_id
                retired = self._retired.setdefault(name, dict.fromkeys(TOTALS, 0))
                for key, value in camera.totals().items():
                    retired[key] += value
        self._out(name, messages, {} if camera is not None and self._on_counts else None)

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: dict(c) for name, c in self._counts.items()}

    def stats(self) -> dict:
        """Per camera: tracks and open events now, and totals since start (kept across camera restarts)."""
        with self._lock:
            out = {name: {"tracks": 0, "open_events": 0, **totals} for name, totals in self._retired.items()}
            for name, c in self._cameras.items():
                entry = out.setdefault(name, {"tracks": 0, "open_events": 0, **dict.fromkeys(TOTALS, 0)})
                entry["tracks"], entry["open_events"] = len(c.tracker.tracks), len(c.open)
                for key, value in c.totals().items():
                    entry[key] += value
            return out

    def _camera(self, name: str) -> CameraObjects | None:
        camera = self._cameras.get(name)
        if camera is None:
            config = self._camera_configs.get(name)
            if config is None:
                return None
            camera = self._cameras[name] = CameraObjects(config, self.tracking, self.events,
                                                         self._next_ids.get(name, 1))
        return camera

    def _out(self, camera: str, messages: list[ObjectEvent], counts: dict[str, int] | None) -> None:
        if messages and self.events.enabled:
            self._emit(messages)
        if counts is not None and counts != self._counts.get(camera):
            self._counts[camera] = counts
            self._on_counts(camera, counts)  # type: ignore[misc]
