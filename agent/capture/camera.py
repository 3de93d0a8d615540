"""One capture thread per camera over OpenCV VideoCapture.

A camera that fails to open, stops delivering, or errors is reopened with
exponential backoff and jitter; it never affects other cameras. While it waits,
a cheap probe (TCP connect, device node, file) looks every PROBE_S whether the
source is there: one that was seen gone and is back is opened at once, so a
camera returning after a long outage is not left dark for the grown backoff;
one that is there but will not stream is probed once per wait, not every
PROBE_S, and opened no more often than the backoff says. A
source that can never open here (e.g. a GStreamer pipeline without GStreamer)
is `failed`. The time each camera spent not running is counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np

from agent.backoff import Backoff
from agent.capture import pyav_reader
from agent.capture.frames import Frame, FrameSlot
from agent.capture.pyav_reader import PyAvReader, SizeFor, working_size
from agent.capture.sources import (
    Source,
    SourceError,
    SourceKind,
    SourceUnsupported,
    describe,
    jetson_csi_pipeline,
    jetson_rtsp_pipeline,
    require_gstreamer,
    source_present,
)
from agent.config import CameraConfig
from agent.demo.clips import ensure_demo_clip
from agent.measure import LatencyWindow

log = logging.getLogger(__name__)

PROBE_S = 0.5  # how often a camera that is away is looked for while its reconnect waits
PROBE_TIMEOUT_S = 0.5


class _End(Enum):
    FILE_END = "file_end"
    ERROR = "error"
    UNSUPPORTED = "unsupported"
    STOPPED = "stopped"


class CameraState(str, Enum):
    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    STALLED = "stalled"  # running, but no frame within no_frame_timeout_s (a read is blocked)
    FAILED = "failed"  # can never open here; not retried
    FINISHED = "finished"  # a file without loop reached its end
    STOPPED = "stopped"


@dataclass
class CameraStats:
    state: CameraState
    frames_captured: int
    frames_dropped: int  # overwritten in the slot before inference took them
    frames_skipped: int  # read but above the target fps
    frames_invalid: int  # frames of a shape we cannot use (not 1, 3 or 4 channels)
    reconnects: int
    last_error: str | None
    last_frame_age_s: float | None
    source: str
    outage_s: float  # time not running since start (connecting, reconnecting, stalled), in seconds


Opener = Callable[[Source, CameraConfig], "cv2.VideoCapture | PyAvReader"]


def _uses_pyav(source: Source, cam: CameraConfig) -> bool:
    if source.kind not in (SourceKind.FILE, SourceKind.DEMO, SourceKind.NETWORK) or cam.hw_decode != "none":
        return False
    if cam.decoder == "pyav" and not pyav_reader.available():
        raise SourceUnsupported("decoder: pyav needs PyAV (pip install av)")
    return cam.decoder == "pyav" or (cam.decoder == "auto" and pyav_reader.available())


def open_capture(source: Source, cam: CameraConfig, data_dir: Path,
                 size_for: SizeFor | None = None) -> cv2.VideoCapture | PyAvReader:
    """Open a source with the right reader; raises SourceError. `size_for` (PyAV only) gives the size
    to decode each frame to, from the stream's."""
    timeout_ms = int(cam.no_frame_timeout_s * 1000)
    pyav = _uses_pyav(source, cam)
    size_for = size_for or (lambda w, h: (w, h))
    if source.kind in (SourceKind.FILE, SourceKind.DEMO):
        path = ensure_demo_clip(data_dir, int(source.value)) if source.kind is SourceKind.DEMO \
            else Path(str(source.value)).expanduser()
        if not path.is_file():
            raise SourceError(f"file not found: {path}")
        if pyav:
            return PyAvReader(str(path), describe(source), size_for, cam.decode_threads, cam.no_frame_timeout_s)
        cap = cv2.VideoCapture(str(path))
    elif source.kind is SourceKind.V4L2:
        cap = cv2.VideoCapture(source.value, cv2.CAP_V4L2)
        if cam.width and cam.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cam.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cam.height)
        cap.set(cv2.CAP_PROP_FPS, cam.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    elif source.kind is SourceKind.NETWORK and cam.hw_decode == "jetson":
        require_gstreamer("hardware-decoded RTSP (hw_decode: jetson)")
        pipeline = jetson_rtsp_pipeline(str(source.value), cam.codec, timeout_s=cam.no_frame_timeout_s)
        cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    elif source.kind is SourceKind.NETWORK and pyav:
        url = str(source.value)
        options = {"rtsp_transport": "tcp"} if url.lower().startswith(("rtsp://", "rtsps://")) else {}
        return PyAvReader(url, describe(source), size_for, cam.decode_threads, cam.no_frame_timeout_s, options)
    elif source.kind is SourceKind.NETWORK:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        cap = cv2.VideoCapture(str(source.value), cv2.CAP_FFMPEG, params)
    elif source.kind is SourceKind.CSI:
        require_gstreamer("a CSI camera (csi:N)")
        pipeline = jetson_csi_pipeline(int(source.value), cam.width or 1920, cam.height or 1080, cam.fps)
        cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    else:
        require_gstreamer("a GStreamer pipeline (gst:...)")
        cap = cv2.VideoCapture(str(source.value), cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open {describe(source)}")
    return cap


def as_bgr(image: np.ndarray) -> np.ndarray | None:
    """3-channel BGR from grey or BGRA frames (some pipelines deliver those); None if unusable."""
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return None


class Camera:
    """Captures one source into its FrameSlot until stopped."""

    def __init__(self, config: CameraConfig, slot: FrameSlot, data_dir: Path,
                 opener: Opener | None = None,
                 model_input: Callable[[], tuple[int, int] | None] = lambda: None) -> None:
        self.config = config
        self.name = config.name
        self.slot = slot
        self._source = config.parsed_source
        self._open: Opener = opener or (lambda s, c: open_capture(s, c, data_dir, self._decode_size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._backoff = Backoff(config.reconnect.initial_s, config.reconnect.max_s)
        self.state = CameraState.CONNECTING
        self.frames_captured = 0
        self.frames_skipped = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._next_number = 0
        self.read_ms = LatencyWindow(stage="decode")  # time in cap.read(): demux + decode
        self.frames_invalid = 0
        self._last_frame: float | None = None
        self.latest: Frame | None = None  # newest frame handed to inference, for snapshots
        self.rate_cap: float | None = None  # fps the quality level allows (agent.pipeline.quality_loop)
        self._model_input = model_input  # (width, height) of the running engine's input, None: no engine
        self.source_gone = False  # a probe found the source absent during the current wait
        self._outage_total = 0.0
        self._down_since: float | None = time.monotonic()  # not running yet: counts as an outage

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.slot.close()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> CameraStats:
        age = None if self._last_frame is None else round(time.monotonic() - self._last_frame, 2)
        state = self.state
        if state is CameraState.RUNNING and age is not None and age > self.config.no_frame_timeout_s:
            state = CameraState.STALLED
        now = time.monotonic()
        outage = self._outage_total
        down = self._down_since
        if down is not None:
            outage += now - down
        elif state is CameraState.STALLED and self._last_frame is not None:
            outage += now - self._last_frame
        return CameraStats(state, self.frames_captured, self.slot.dropped, self.frames_skipped,
                           self.frames_invalid, self.reconnects, self.last_error, age, describe(self._source),
                           round(outage, 1))

    # -- capture loop -------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                ended = self._session()
                if self._stop.is_set():
                    break
                if ended is _End.FILE_END:
                    if self.config.loop:
                        continue  # loop: reopen at once, not a failure
                    self.state = CameraState.FINISHED
                    self._came_up()  # finished is not an outage
                    return
                if ended is _End.UNSUPPORTED:
                    self.state = CameraState.FAILED
                    return
                self._went_down()
                self.state = CameraState.RECONNECTING
                self.reconnects += 1
                delay = self._backoff.next_delay()
                log.info("camera %s: reconnecting in %.1fs (%s)", self.name, delay, self.last_error)
                self._wait_or_notice_return(delay)
        except Exception as exc:  # a bug must not go unnoticed, nor take the agent down
            log.exception("camera %s: capture thread crashed", self.name)
            self.last_error = f"internal error: {exc}"
            self.state = CameraState.FAILED
            return
        self.state = CameraState.STOPPED

    def _went_down(self) -> None:
        if self._down_since is None:
            # a stall counts from the last frame, not from when the read timed out
            self._down_since = self._last_frame if self._last_frame is not None else time.monotonic()

    def _came_up(self) -> None:
        if self._down_since is not None:
            self._outage_total += time.monotonic() - self._down_since
            self._down_since = None

    def _wait_or_notice_return(self, delay: float) -> None:
        """Wait `delay` s, or less if a probe sees the source come back after having seen it gone."""
        deadline = time.monotonic() + delay
        self.source_gone = False
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(PROBE_S, left)):
                return
            present = source_present(self._source, PROBE_TIMEOUT_S)
            if present is None or (present and not self.source_gone):
                # nothing cheap to look at, or the source is there but would not stream: the backoff decides,
                # and a camera with few session slots is not knocked on every PROBE_S meanwhile
                self._stop.wait(max(0.0, deadline - time.monotonic()))
                return
            if not present:
                self.source_gone = True
            else:
                log.info("camera %s: source is back; opening it now", self.name)
                return

    def _session(self) -> _End:
        """Open the source and read until it ends or fails."""
        try:
            cap = self._open(self._source, self.config)
        except SourceUnsupported as exc:
            self.last_error = str(exc)
            log.error("camera %s: %s", self.name, exc)
            return _End.UNSUPPORTED
        except SourceError as exc:
            self.last_error = str(exc)
            return _End.ERROR
        except Exception as exc:  # e.g. cv2.error, or no space to write the demo clip: retry later
            log.exception("camera %s: opening failed", self.name)
            self.last_error = f"open failed: {exc}"
            return _End.ERROR
        try:
            return self._read_loop(cap)
        finally:
            cap.release()

    def _decode_size(self, width: int, height: int) -> tuple[int, int]:
        """What PyAV decodes a width×height frame to: just what the model input needs (decode_size: model)."""
        model_input = self._model_input()
        if self.config.decode_size == "full" or model_input is None:
            return width, height
        return working_size(width, height, *model_input)

    @property
    def detect_fps(self) -> float:
        """Frames per second handed to inference: the camera's fps, or less under the quality level's cap."""
        cap = self.rate_cap
        return self.config.fps if cap is None else min(self.config.fps, cap)

    def _read_loop(self, cap: cv2.VideoCapture) -> _End:
        read_period = 1.0 / self.config.fps  # a paced file is read at its fps, like a live camera streams
        is_file = self._source.is_file
        paced = not is_file or self.config.realtime
        next_read = next_due = time.monotonic()
        delivered = 0
        while not self._stop.is_set():
            started = time.monotonic()
            ok, image = cap.read()
            now = time.monotonic()
            if not ok or image is None:
                if is_file and delivered:
                    return _End.FILE_END
                self.last_error = "file delivered no frames" if is_file else "source stopped delivering frames"
                if reason := getattr(cap, "error", None):
                    self.last_error += f" ({reason})"
                return _End.ERROR
            delivered += 1
            self._last_frame = now
            self.read_ms.add((now - started) * 1000)
            if paced and is_file:
                next_read = max(next_read + read_period, now)
            image = as_bgr(image)
            if image is None:
                self.frames_invalid += 1
                self.last_error = "source delivers frames of an unusable shape"
                continue
            if self.state is not CameraState.RUNNING:
                self.state = CameraState.RUNNING
                self.last_error = None
                self._backoff.reset()
                self._came_up()
                log.info("camera %s: running (%s)", self.name, describe(self._source))
            period = 1.0 / self.detect_fps
            if paced and now < next_due - period * 0.1:
                self.frames_skipped += 1  # faster than the target (or the quality level's) fps
            else:
                source_size = getattr(cap, "source_size", None)  # PyAV: the stream's size, the image smaller
                if source_size == (image.shape[1], image.shape[0]):
                    source_size = None
                frame = Frame(self.name, self._next_number, image, int(time.time() * 1000), now, source_size)
                self._next_number += 1
                self.latest = frame  # a reference, no copy: every read allocates a new image
                if not self.slot.put(frame):
                    return _End.STOPPED
                self.frames_captured += 1
                if paced:
                    next_due = max(next_due + period, now)
            if paced and is_file:
                self._stop.wait(max(0.0, next_read - time.monotonic()))
        return _End.STOPPED
