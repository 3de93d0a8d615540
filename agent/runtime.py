"""The runtime owns every part and its threads, starts and stops them in order.

Start: store → detector → inference worker → cameras. Stop: cameras →
inference → store (which commits whatever is queued). A model that cannot be
loaded is reported and the agent keeps capturing (DESIGN invariant 8).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from agent import __version__
from agent.camera import Camera
from agent.config import AgentConfig
from agent.frames import Frame, FrameSlot
from agent.identity import resolve_device_id
from agent.inference import InferenceWorker
from agent.metrics import PipelineMetrics
from agent.mqtt_link import MqttLink, random_boot_id
from agent.outbox import TELEMETRY, next_session
from agent.store import Store, StoreError, health_figures
from agent.sync import Syncer
from agent.telemetry import Telemetry
from engines import BackendUnavailable, Detection, Detector, ModelError, load_detector

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: AgentConfig, data_dir: Path | None = None) -> None:
        self.config = config
        self.data_dir = (data_dir or config.storage.path).expanduser()
        self.device_id = resolve_device_id(config.device.id, self.data_dir)
        self.metrics = PipelineMetrics()
        self.store = Store(self.data_dir, config.storage, on_commit=self._on_commit, outbox=config.mqtt is not None)
        self.link: MqttLink | None = None
        self.syncer: Syncer | None = None
        if config.mqtt is not None:
            self.link = MqttLink(config.mqtt, self.device_id, random_boot_id(),
                                 lambda: next_session(self.store.path))
            self.syncer = Syncer(self.link, self.store.path, config.mqtt)
        self.telemetry = Telemetry(
            config.telemetry.interval_s, self.data_dir, self.status, self._store_figures,
            lambda payload: self.store.submit_reading(TELEMETRY, payload) if self.syncer else True,
        )
        self._wake = threading.Event()
        self.cameras: dict[str, Camera] = {}
        self.detector: Detector | None = None
        self.worker: InferenceWorker | None = None
        self.model_error: str | None = None
        self.started_mono: float | None = None

    # -- wiring -------------------------------------------------------------------
    def _store_figures(self) -> dict:
        try:
            return health_figures(self.data_dir)
        except (OSError, sqlite3.Error) as exc:
            return {"error": str(exc)}

    def _on_commit(self, camera: str, ms: float) -> None:
        self.metrics.record_stage(camera, "store", ms)
        if self.syncer is not None:
            self.syncer.notify()

    def _sink(self, frame: Frame, detections: list[Detection]) -> None:
        self.store.submit(frame.camera, frame.number, frame.wall_ms, detections)

    def _slots(self) -> list[FrameSlot]:
        return [cam.slot for cam in list(self.cameras.values())]

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Start every part that can start; problems are reported, not fatal (invariant 8)."""
        try:
            self.store.start()
        except StoreError as exc:
            log.error("store unavailable, detections will be dropped and counted: %s", exc)
        if self.syncer is not None and self.link is not None and self.store.running:
            self.syncer.start()
            self.link.start()
        try:
            self.detector = load_detector(self.config.model)
        except (ModelError, BackendUnavailable, OSError, ValueError) as exc:
            self.model_error = str(exc)
            log.error("model not loaded, capturing without detection: %s", exc)
        if self.detector is not None:
            info = self.detector.info
            log.info("model %s: %s layout, input %dx%d, batch ≤ %d, %d classes, %s",
                     info.model_path, info.layout, info.input_width, info.input_height,
                     info.max_batch, len(info.labels), ",".join(info.providers))
            self.worker = InferenceWorker(self.detector, self._slots, self._sink, self.metrics, self._wake)
            self.worker.start()
        for cam_config in self.config.cameras:
            if not cam_config.enabled:
                continue
            source = cam_config.parsed_source
            slot = FrameSlot(blocking=source.is_file and not cam_config.realtime, wake=self._wake)
            camera = Camera(cam_config, slot, self.data_dir)
            self.cameras[cam_config.name] = camera
            camera.start()
        self.telemetry.start()
        self.started_mono = time.monotonic()
        log.info("device %s: %d camera(s), data in %s", self.device_id, len(self.cameras), self.data_dir)

    def stop(self, timeout: float = 4.0) -> None:
        """Stop everything within `timeout` seconds, committing what inference produced.

        Cameras stop first (a read blocked in a dead stream is left behind: its
        thread is a daemon), then inference, then the store drains its queue.
        """
        deadline = time.monotonic() + timeout
        self.telemetry.stop()
        for camera in self.cameras.values():
            camera.stop()
        if self.worker is not None:
            self.worker.stop()
        camera_deadline = deadline - 1.5  # keep time for inference and the store
        for camera in self.cameras.values():
            if not camera.join(max(0.0, camera_deadline - time.monotonic())):
                log.warning("camera %s did not stop in time (a blocked read); leaving it", camera.name)
        worker_done = self.worker is None or self.worker.join(max(0.0, deadline - time.monotonic() - 0.5))
        if not worker_done:
            log.warning("inference did not stop in time")
        if not self.store.stop(max(0.2, deadline - time.monotonic() - (0.8 if self.link else 0))):
            log.error("store writer did not finish in time")
        if self.syncer is not None and self.link is not None:
            self.syncer.stop(0.3)
            self.link.stop(max(0.1, deadline - time.monotonic()))
        if self.detector is not None and worker_done:  # never free a model that is still running
            self.detector.close()

    # -- status -------------------------------------------------------------------
    def status(self) -> dict:
        """A snapshot for the console, CLI and (later) telemetry and the health page."""
        cameras = {}
        for name, camera in self.cameras.items():
            stats = asdict(camera.stats())
            stats["state"] = stats["state"].value
            summary = self.metrics.camera_summary(name)
            summary["stages"] = {"decode": camera.read_ms.summary(), **summary["stages"]}
            cameras[name] = {**stats, **summary}
        return {
            "device_id": self.device_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_mono, 1) if self.started_mono else 0.0,
            "engine": None if self.detector is None else asdict(self.detector.info),
            "model_error": self.model_error,
            "inference_errors": self.worker.errors if self.worker else 0,
            "frames_failed": self.worker.frames_failed if self.worker else 0,
            "cameras": cameras,
            "sync": None if self.syncer is None else self.syncer.stats(),
            "store": {
                "committed_rows": self.store.committed_rows,
                "commits": self.store.commits,
                "queue_depth": self.store.queue_depth,
                "dropped": self.store.dropped,
                "write_errors": self.store.write_errors,
                "last_error": self.store.last_error,
            },
        }
