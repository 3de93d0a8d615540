"""The runtime owns every part and its threads, starts and stops them in order.

Start: store → config from the fleet → detector → inference worker → cameras.
Stop: cameras → inference → store (which commits whatever is queued). A model
that cannot be loaded, or MQTT credentials that cannot be read, are reported
and the agent keeps capturing and buffering (DESIGN invariant 8). A config
change is applied part by part (agent.control.config_diff): only what changed restarts.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from agent import __version__
from agent.capture.camera import Camera
from agent.capture.frames import Frame, FrameSlot
from agent.config import AgentConfig, CameraConfig
from agent.control.command_channel import CommandChannel
from agent.control.commands import Commands
from agent.control.config_diff import ApplyError, diff_configs
from agent.control.config_service import ConfigService
from agent.control.device_api import CameraView
from agent.device.identity import resolve_device_id
from agent.device.memory import limit_malloc_arenas, trim_heap
from agent.device.sd_notify import Supervision
from agent.measure import LatencyWindow
from agent.pipeline.inference import InferenceWorker
from agent.pipeline.metrics import PipelineMetrics
from agent.pipeline.motion import MotionGate
from agent.pipeline.objects import ObjectTracking
from agent.pipeline.quality_loop import QualityLoop, resolve_profile
from agent.profiles import ProfileError
from agent.store.object_events import list_events, read_snapshot
from agent.store.outbox import TELEMETRY, next_session, requeue_dead_letters
from agent.store.store import Store, StoreError, health_figures, open_readonly
from agent.sync.homeassistant import HomeAssistant
from agent.sync.mqtt_link import ClientSetupError, MqttLink, random_boot_id
from agent.sync.sync import Syncer
from agent.sync.telemetry import Telemetry
from agent.web.server import WebError, WebServer
from agent.web.view import Health
from engines import BackendUnavailable, Detection, Detector, DetectorConfig, GpuResources, ModelError, load_detector

log = logging.getLogger(__name__)

FIGURES_TTL_S = 1.0
CAMERA_TOTALS = ("frames_captured", "frames_dropped", "reconnects")  # kept across camera restarts
GATE_TOTALS = ("gated", "shed")  # the gate's, kept the same way
HEARTBEAT_STALE_S = 15.0  # an inference loop that has not turned for this long is stalled
OUTBOX_BEHIND_S = 60.0  # the outbox's oldest message waiting longer than this is reported
HOT_CELSIUS = 85.0  # a temperature zone at or above this is reported (profiles bring their own trip points)


class Runtime:
    """Owns the parts; to control (commands, desired config) it is an agent.control.device_api.DeviceControl."""

    def __init__(self, config: AgentConfig, data_dir: Path | None = None) -> None:
        limit_malloc_arenas()  # before the parts start their threads (agent.device.memory)
        self.config = config  # what runs: the config file's, with the fleet's overlay on top once restored
        self.quality: QualityLoop | None = None  # made once the config is restored (start)
        self.quality_error: str | None = None
        # One budget for the life of the process: a change to `gpu` takes effect on restart. The profile's
        # budget applies where the config file does not set one.
        self.gpu = GpuResources(self._gpu_budget(config), config.gpu.device_id)
        self.data_dir = (data_dir or config.storage.path).expanduser()
        self.device_id = resolve_device_id(config.device.id, self.data_dir)
        self.metrics = PipelineMetrics()
        self._figures: tuple[float, dict] | None = None  # (monotonic, store figures), see _store_figures
        # What cameras and workers replaced by config changes had counted: totals never go back.
        self._retired: dict[str, dict[str, int]] = {}
        self._retired_inference_errors = 0
        self.store = Store(self.data_dir, config.storage, on_commit=self._on_commit, outbox=config.mqtt is not None,
                           on_open=self._on_store_open, on_unstored=self._publish_around_store)
        self.store.events_config = config.events
        self.link: MqttLink | None = None
        self.syncer: Syncer | None = None
        self.homeassistant: HomeAssistant | None = None
        self.mqtt_error: str | None = None
        if config.mqtt is not None:
            try:
                self.link = MqttLink(config.mqtt, self.device_id, random_boot_id(),
                                     lambda: next_session(self.store.path))
                self.syncer = Syncer(self.link, self.store.path, config.mqtt)
                self.link.problems = self.problems
                self.homeassistant = HomeAssistant(self.link, config, self._model_labels, self._quality_levels)
            except ClientSetupError as exc:  # keep capturing and buffering; fixed by a restart
                self.mqtt_error = str(exc)
                log.error("mqtt disabled, buffering only: %s", exc)
        self.telemetry = Telemetry(
            config.telemetry.interval_s, self.data_dir, self.status,
            self._publish_reading if config.mqtt else lambda _payload: True,
        )
        self._wake = threading.Event()
        self._parts = threading.RLock()  # cameras, detector and worker change under it
        self._stopping = False
        self.cameras: dict[str, Camera] = {}
        self.detector: Detector | None = None
        self.running_model: DetectorConfig | None = None  # what the detector was loaded from (a quality variant)
        self._dynamic_size: tuple[int, int] | None = None  # the configured model's input size, if dynamic
        self._batch_cap: int | None = None
        self.gates: dict[str, MotionGate] = {}  # camera → the gate in front of its inference
        ha = self.homeassistant
        self.objects = ObjectTracking(config, self.store.submit_events,
                                      on_counts=ha.publish_counts if ha is not None else None)
        self.worker: InferenceWorker | None = None
        self.model_error: str | None = None
        self.latest_detections: dict[str, tuple[int, list[Detection]]] = {}  # camera → (frame, detections)
        self.last_detection: dict[str, tuple[int, list[str]]] = {}  # camera → (capture ms, labels)
        self.started_mono: float | None = None
        self.config_service = ConfigService(self, config, self.store.path)
        self.web = WebServer(config.web, self) if config.web.listen else None  # a local-only setting
        self.supervision = Supervision(self._inference_alive, self._summary_line)  # systemd, when under it
        self.channel: CommandChannel | None = None
        if self.link is not None:
            link = self.link
            commands = Commands(self, self.config_service, lambda: link.max_packet_size, link.boot_id)
            self.channel = CommandChannel(link, commands, self.config_service, self.store.path)

    # -- wiring -------------------------------------------------------------------
    @staticmethod
    def _gpu_budget(config: AgentConfig) -> int:
        if "memory_budget_mb" in config.gpu.model_fields_set:
            return config.gpu.memory_budget_mb
        try:
            return resolve_profile(config)[0].gpu_memory_budget_mb or config.gpu.memory_budget_mb
        except ProfileError:
            return config.gpu.memory_budget_mb

    def _store_figures(self) -> dict:
        """The database's figures (outbox depth and age, trims), read at most once per FIGURES_TTL_S:
        status, health probes, metrics scrapes and telemetry all ask."""
        now = time.monotonic()
        cached = self._figures
        if cached is not None and now - cached[0] < FIGURES_TTL_S:
            return cached[1]
        try:
            figures = health_figures(self.data_dir)
        except (OSError, sqlite3.Error) as exc:
            figures = {"error": str(exc)}
        self._figures = (now, figures)
        return figures

    def _publish_reading(self, payload: str, kind: str = TELEMETRY) -> bool:
        """Health and events go through the outbox (nothing lost) while the store takes writes, else straight
        out."""
        if self.store.writable and self.store.submit_reading(kind, payload):
            return True
        return self._publish_around_store(kind, payload)

    def publish_event(self, kind: str, event: dict) -> None:
        """An event on `<prefix>/<id>/events/<kind>` (quality transitions, SLA alerts), through the outbox."""
        if self.config.mqtt is not None:
            self._publish_reading(json.dumps(event, separators=(",", ":")), f"events/{kind}")

    def _publish_around_store(self, kind: str, payload: str) -> bool:
        """The latest reading, when the store cannot keep it (not open, full disk): sent now or not at all."""
        return self.syncer is not None and self.syncer.publish_now(kind, payload)

    def _on_store_open(self) -> None:
        """The database opened after start gave up on it: what start would have restored, restore now."""
        if self.channel is not None:
            self.channel.restore_stored_config()  # in turn with commands and desired config
        else:
            threading.Thread(target=self.config_service.restore_running, name="config-restore", daemon=True).start()

    def _degraded(self, camera: str) -> str | None:
        """Why a running camera yields no detections: no engine, or its frames failing inference."""
        if self.detector is None:
            return f"no detection: {self.model_error or 'no model loaded'}"
        worker = self.worker
        return worker.degraded.get(camera) if worker is not None else None

    def problems(self) -> list[str]:
        """What an operator must fix or know, in words: in the birth message, telemetry and get_stats."""
        out = self.store.problems()
        if self.model_error:
            out.append(f"model not loaded: {self.model_error}")
        worker = self.worker
        if worker is not None and worker.consecutive_errors:
            out.append(f"inference failing ({worker.consecutive_errors} in a row, engine reloaded "
                       f"{worker.reloads} times): {worker.last_error}"
                       + (f"; the last reload failed: {worker.reload_error}" if worker.reload_error else ""))
        if self.config_service.error:
            out.append(f"config: {self.config_service.error}")
        if self.quality_error:
            out.append(f"adaptive quality off: {self.quality_error}")
        if self.quality is not None and self.quality.model_error:
            out.append(f"quality: {self.quality.model_error}")
        return out

    def _on_commit(self, camera: str, ms: float) -> None:
        self.metrics.record_stage(camera, "store", ms)
        if self.syncer is not None:
            self.syncer.notify()

    def _sink(self, frame: Frame, detections: list[Detection]) -> None:
        self.latest_detections[frame.camera] = (frame.number, detections)
        if detections:
            self.last_detection[frame.camera] = (frame.wall_ms, sorted({d.label for d in detections}))
        track_ids = self.objects.observe(frame, detections)
        self.store.submit(frame.camera, frame.number, frame.wall_ms, detections, track_ids)

    def _configure_objects(self, config: AgentConfig) -> None:
        """Tracking, events and their retention, Home Assistant: what follows a config change live."""
        self.store.events_config = config.events
        self.objects.configure(config)
        if self.homeassistant is not None:
            self.homeassistant.configure(config)

    def _model_labels(self) -> list[str]:
        detector = self.detector
        return [] if detector is None else list(detector.info.labels)

    def _quality_levels(self) -> list[str]:
        quality = self.quality
        return [] if quality is None else [level.name for level in quality.controller.levels]

    def _model_input(self) -> tuple[int, int] | None:
        """(width, height) of the running engine's input: the size cameras decode for."""
        detector = self.detector
        return None if detector is None else (detector.input_w, detector.input_h)

    def _slots(self) -> list[FrameSlot]:
        return [cam.slot for cam in list(self.cameras.values())]

    def _load_model(self, model_config) -> Detector:
        detector = load_detector(model_config, self.gpu)
        trim_heap()  # the parsed and rewritten graph is garbage now
        info = detector.info
        log.info("model %s: %s layout, input %dx%d, batch ≤ %d, %d classes, %s",
                 info.model_path, info.layout, info.input_width, info.input_height,
                 info.max_batch, len(info.labels), ",".join(info.providers))
        return detector

    def _start_worker(self) -> None:
        if self.detector is not None:
            self.worker = InferenceWorker(self.detector, self._slots, self._sink, self.metrics, self._wake,
                                          reload=self._reload_detector, gates=self.gates.get,
                                          held=self.objects.hold, tick=self.objects.tick)
            self.worker.batch_cap = self._batch_cap
            self.worker.start()

    def _loaded(self, detector: Detector, model: DetectorConfig, configured: DetectorConfig | None = None) -> None:
        """`detector`, loaded from `model`, is the one that runs from now on; `configured` is the config's
        model (default: the running config's; a config change passes its new one)."""
        self.detector, self.running_model, self.model_error = detector, model, None
        if model == (configured or self.config.model):
            self._dynamic_size = (detector.input_h, detector.input_w) if detector.dynamic_input else None

    def _swap_detector(self, detector: Detector, model: DetectorConfig,
                       configured: DetectorConfig | None = None) -> None:
        """Run `detector` instead of the current one: the worker stops after its batch (frames wait in their
        slots), the new one starts; the old engine is closed once nothing runs it."""
        old = self.detector
        worker_done = self._stop_worker()
        self._loaded(detector, model, configured)
        self._start_worker()
        if old is not None and worker_done:  # never free a model that is still running
            old.close()

    def _reload_detector(self, failing: Detector | None) -> Detector | None:
        """Called by the inference worker (its own thread) when inference keeps failing: the same model,
        loaded afresh. The failing one is closed first (its GPU memory counts against the budget the new
        one needs); a failed load raises and leaves no engine, which the worker tries again later. None:
        not now (a config change under way holds the parts, or stop)."""
        if not self._parts.acquire(timeout=0):  # apply_config may be stopping this very worker: never wait
            return None
        try:
            if self.detector is not failing or self._stopping:
                return None
            self.detector, self.model_error = None, "reloading the engine after inference failures"
            if failing is not None:
                failing.close()  # the worker, its only user, is the caller
            model = self.running_model or self.config.model
            try:
                self._loaded(self._load_model(model), model)
            except (ModelError, BackendUnavailable, OSError, ValueError) as exc:
                self.model_error = f"reload after inference failures: {exc}"
                raise
            return self.detector
        finally:
            self._parts.release()

    def _stop_worker(self, timeout: float = 3.0) -> bool:
        worker, self.worker = self.worker, None
        if worker is None:
            return True
        self._retired_inference_errors += worker.errors
        worker.stop()
        return worker.join(timeout)

    def _start_camera(self, cam_config: CameraConfig) -> None:
        source = cam_config.parsed_source
        slot = FrameSlot(blocking=source.is_file and not cam_config.realtime, wake=self._wake)
        camera = Camera(cam_config, slot, self.data_dir, model_input=self._model_input)
        self.gates[cam_config.name] = MotionGate(cam_config.motion, cam_config.motion_gated)
        self.cameras[cam_config.name] = camera
        camera.start()

    def _stop_camera(self, name: str, timeout: float = 2.0) -> None:
        camera = self.cameras.pop(name, None)
        if camera is None:
            return
        retired = self._retired.setdefault(name, dict.fromkeys(CAMERA_TOTALS + GATE_TOTALS, 0))
        stats = camera.stats()
        for key in CAMERA_TOTALS:
            retired[key] += getattr(stats, key)
        gate = self.gates.pop(name, None)
        if gate is not None:
            retired["gated"] += gate.gated
            retired["shed"] += gate.shed_frames
        camera.stop()
        if not camera.join(timeout):
            log.warning("camera %s did not stop in time (a blocked read); leaving it", name)
        self.latest_detections.pop(name, None)
        self.objects.close_camera(name)  # its objects' events end

    # -- what the quality loop turns (agent.pipeline.quality_loop.QualityHost) ------------
    def running_cameras(self) -> list[tuple[Camera, MotionGate | None]]:
        return [(camera, self.gates.get(name)) for name, camera in list(self.cameras.items())]

    def gpu_report(self) -> dict:
        return self.gpu.report()

    def gpu_temperature_c(self) -> float | None:
        devices = (((self.telemetry.last or {}).get("gpu") or {}).get("devices")) or []
        temps = [d["temperature_c"] for d in devices if isinstance(d.get("temperature_c"), (int, float))]
        return max(temps) if temps else None

    def puback_window(self) -> LatencyWindow | None:
        return None if self.syncer is None else self.syncer.capture_to_puback_ms

    def set_batch_cap(self, cap: int | None) -> None:
        self._batch_cap = cap
        worker = self.worker
        if worker is not None:
            worker.batch_cap = cap

    def run_model(self, model: DetectorConfig) -> bool:
        """Run `model` (a quality level's variant) if it is not what runs; False: not now (a config change
        holds the parts, the engine is failing or absent, or stop). Raises if it does not load."""
        if model == self.running_model:
            return True
        if not self._parts.acquire(timeout=0):
            return False
        try:
            if self._stopping or self.detector is None:
                return False
            self._swap_detector(self._load_model(model), model)
            return True
        finally:
            self._parts.release()

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Start every part that can start; problems are reported, not fatal (invariant 8)."""
        try:
            self.store.start()
        except StoreError as exc:  # tried again in the background; MQTT starts anyway, health says why
            log.error("store unavailable, detections dropped and counted until it opens: %s", exc)
        if self.store.running:
            self.config = self.config_service.restore()
            self.store.config = self.config.storage
            self._configure_objects(self.config)
            self.telemetry.reschedule(self.config.telemetry.interval_s)
        try:
            self.quality = QualityLoop(self.config, self, lambda: self._dynamic_size)
        except ProfileError as exc:  # a profile file that went bad since the config was checked
            self.quality_error = str(exc)
            log.error("adaptive quality off: %s", exc)
        if self.syncer is not None and self.link is not None:  # the fleet must see a device whatever its store
            self.syncer.start()
            if self.channel is not None:
                self.channel.start()
            self.link.start()
        with self._parts:
            self._start_pipeline()
        if self.quality is not None:
            self.quality.start()
        self.telemetry.start()
        self.started_mono = time.monotonic()
        if self.web is not None:
            try:
                self.web.start()
                log.info("health page: %s", self.web.url)
            except WebError as exc:  # the agent runs on without the page
                log.error("health page not served: %s", exc)
        log.info("device %s: %d camera(s), data in %s", self.device_id, len(self.cameras), self.data_dir)
        self.supervision.ready()

    def _start_pipeline(self) -> None:
        if self.detector is None:
            model = self.quality.wanted_model() if self.quality is not None else None
            model = model or self.config.model
            try:
                self._loaded(self._load_model(model), model)
            except (ModelError, BackendUnavailable, OSError, ValueError) as exc:
                self.model_error = str(exc)
                log.error("model not loaded, capturing without detection: %s", exc)
        self._start_worker()
        for cam_config in self.config.cameras:
            if cam_config.enabled:
                self._start_camera(cam_config)

    def restart_pipeline(self) -> list[str]:
        """Stop and start every camera and the inference worker (store and sync keep running)."""
        with self._parts:
            names = list(self.cameras)
            for name in names:
                self._stop_camera(name)
            if not self._stop_worker(timeout=10.0):
                raise ApplyError("pipeline", "inference did not stop in time; cameras stopped, try again")
            self._start_pipeline()
            return sorted(self.cameras)

    def apply_config(self, new: AgentConfig) -> list[str]:
        """Run `new` instead of the current config, touching only what changed.

        A new model is loaded before anything is stopped: if it does not load,
        ApplyError is raised and the running config is untouched.
        """
        with self._parts:
            if self._stopping:
                raise ApplyError("(agent)", "the agent is stopping")
            diff = diff_configs(self.config, new)
            detector = None
            if diff.model_reload:
                try:
                    detector = self._load_model(new.model)
                except (ModelError, BackendUnavailable, OSError, ValueError) as exc:
                    raise ApplyError("model", f"cannot load the model: {exc}") from exc
            for name in diff.cameras_to_stop:
                self._stop_camera(name)
            if detector is not None:
                self._swap_detector(detector, new.model, new.model)
            elif diff.thresholds and self.detector is not None:
                self.detector.score_threshold = new.model.score_threshold
                self.detector.iou_threshold = new.model.iou_threshold
            for cam_config in diff.cameras_to_start:
                self._start_camera(cam_config)
            if diff.telemetry_interval:
                self.telemetry.reschedule(new.telemetry.interval_s)
            self.store.config = new.storage
            self.config = new
            self._configure_objects(new)
            if self.quality is not None and (diff.quality or diff.model_reload or diff.cameras_to_start):
                self.quality.configure(new)
            return diff.summary()

    def stop(self, timeout: float = 4.0) -> None:
        """Stop everything within `timeout` seconds, committing what inference produced.

        Cameras stop first (a read blocked in a dead stream is left behind: its
        thread is a daemon), then inference, then the store drains its queue.
        """
        deadline = time.monotonic() + timeout
        self._stopping = True
        self.supervision.stopping()
        if self.quality is not None:
            self.quality.stop()
        if self.web is not None:
            self.web.stop()
        self.telemetry.stop()
        if self.channel is not None:
            self.channel.stop(0.5)
        locked = self._parts.acquire(timeout=1.0)  # no config change from here on
        cameras = list(self.cameras.values())
        for camera in cameras:
            camera.stop()
        if self.worker is not None:
            self.worker.stop()
        camera_deadline = deadline - 1.5  # keep time for inference and the store
        for camera in cameras:
            if not camera.join(max(0.0, camera_deadline - time.monotonic())):
                log.warning("camera %s did not stop in time (a blocked read); leaving it", camera.name)
        worker_done = self.worker is None or self.worker.join(max(0.0, deadline - time.monotonic() - 0.5))
        if not worker_done:
            log.warning("inference did not stop in time")
        for camera in cameras:
            self.objects.close_camera(camera.name, "agent_stopped")  # their ends are stored with the rest
        if not self.store.stop(max(0.2, deadline - time.monotonic() - (0.8 if self.link else 0))):
            log.error("store writer did not finish in time")
        if self.syncer is not None and self.link is not None:
            self.syncer.stop(0.3)
            self.link.stop(max(0.1, deadline - time.monotonic()))
        if self.detector is not None and worker_done and locked:  # never free a model that may still run
            self.detector.close()
        if locked:
            self._parts.release()

    def object_events(self, camera: str | None, limit: int) -> list[dict]:
        return self._read_store(list_events, camera, limit)

    def event_snapshot(self, event_id: str) -> dict | None:
        return self._read_store(read_snapshot, event_id)

    def _read_store(self, reader, *args):
        """`reader(db, *args)` on a read-only connection of its own (the writer keeps writing)."""
        db = open_readonly(self.data_dir)
        try:
            return reader(db, *args)
        finally:
            db.conn.close()

    def requeue_dead_letters(self) -> int:
        count = requeue_dead_letters(self.store.path)
        if self.syncer is not None:
            self.syncer.rescan()
        log.info("requeued %d dead letters", count)
        return count

    # -- status -------------------------------------------------------------------
    def camera_names(self) -> list[str]:
        return [cam.name for cam in self.config.cameras]

    def health(self) -> Health:
        """Liveness (the inference loop turns and the store takes writes) and readiness (engine loaded, every
        enabled camera delivered frames), with every reason an operator should see, in words."""
        reasons: list[str] = []
        now = time.monotonic()
        worker = self.worker
        alive = self._inference_alive()
        if not alive and worker is not None:
            reasons.append(f"inference stalled for {now - worker.heartbeat:.0f} s")
        writable = self.store.writable
        reasons += self.problems()
        cameras_up = True
        for cam_config in self.config.cameras:
            camera = self.cameras.get(cam_config.name)
            if not cam_config.enabled or camera is None:
                continue
            stats = camera.stats()
            if stats.state.value not in ("running", "finished"):
                cameras_up = False
                reasons.append(f"camera {camera.name} {stats.state.value}" +
                               (f": {stats.last_error}" if stats.last_error else ""))
            elif (degraded := self._degraded(camera.name)) and self.detector is not None:
                reasons.append(f"camera {camera.name}: {degraded}")
        link = self.link
        down_since = None if link is None else link.down_since  # read once: paho's thread may reset it
        if link is not None and down_since is not None and self.started_mono is not None:
            down = now - max(down_since, self.started_mono)
            if down > 5:
                reasons.append(f"broker unreachable for {down:.0f} s: {link.last_error or 'connecting'}")
        if link is not None:
            oldest = self._store_figures().get("outbox_oldest_age_s")
            if oldest is not None and oldest > OUTBOX_BEHIND_S:
                reasons.append(f"outbox growing: its oldest message waits for {oldest:.0f} s")
        refusals = self.gpu.report().get("refusals", 0)
        if refusals:
            reasons.append(f"GPU memory budget refused {refusals} allocation(s)")
        reasons += self._hot_zones()
        if self.quality is not None:
            reasons += self.quality.alerts()
        return Health(ok=alive and writable, ready=self.detector is not None and cameras_up, reasons=reasons)

    def _inference_alive(self) -> bool:
        """The inference loop turned within HEARTBEAT_STALE_S (or is loading an engine, or there is none)."""
        worker = self.worker
        return worker is None or worker.reloading or time.monotonic() - worker.heartbeat < HEARTBEAT_STALE_S

    def _summary_line(self) -> str:
        """One line for systemd's STATUS=: what runs and what is wrong."""
        running = sum(1 for c in list(self.cameras.values()) if c.state.value == "running")
        fps = sum(self.metrics.camera_summary(n)["fps"] for n in list(self.cameras))
        parts = [f"{running}/{len(self.cameras)} cameras running", f"{fps:.1f} fps inferred"]
        if self.quality is not None:
            parts.append(f"quality {self.quality.controller.level.name}")
        if self.link is not None:
            parts.append("mqtt connected" if self.link.connected.is_set() else "mqtt down")
        problems = self.problems()
        if problems:
            parts.append(f"{len(problems)} problem(s): {problems[0]}")
        return ", ".join(parts)

    def _hot_zones(self) -> list[str]:
        temps = ((self.telemetry.last or {}).get("system") or {}).get("temperatures_c") or {}
        return [f"running hot: {zone} at {value:.0f} °C" for zone, value in sorted(temps.items())
                if value >= HOT_CELSIUS]

    def camera_view(self, name: str) -> CameraView | None:
        camera = self.cameras.get(name)
        if camera is None:
            return None
        number, detections = self.latest_detections.get(name, (None, []))
        return CameraView(camera.latest, number, detections)

    def status(self) -> dict:
        """A snapshot for the console, CLI, telemetry, the health page and `get_stats`."""
        quality = self.quality.status() if self.quality is not None else None
        objects = self.objects.stats()
        cameras = {}
        for name, camera in list(self.cameras.items()):
            stats = asdict(camera.stats())
            stats["state"] = stats["state"].value
            summary = self.metrics.camera_summary(name)
            summary["stages"] = {"decode": camera.read_ms.summary(), **summary["stages"]}
            last = self.last_detection.get(name)
            retired = self._retired.get(name, {})
            totals = {f"{key}_total": stats[key] + retired.get(key, 0) for key in CAMERA_TOTALS}
            gate = self.gates.get(name)
            motion = gate.counts() if gate is not None else None
            if motion is not None:
                totals.update(frames_gated_total=motion["gated"] + retired.get("gated", 0),
                              frames_shed_total=motion["shed"] + retired.get("shed", 0))
            cameras[name] = {**stats, **summary, **totals, "degraded": self._degraded(name),
                             "target_fps": camera.config.fps, "detect_fps": round(camera.detect_fps, 2),
                             "priority": camera.config.priority, "motion": motion, "objects": objects.get(name),
                             "quality_level": quality["cameras"].get(name) if quality else None,
                             "last_detection": None if last is None else {"ts_ms": last[0], "labels": last[1]}}
        return {
            "device_id": self.device_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_mono, 1) if self.started_mono else 0.0,
            "engine": None if self.detector is None else asdict(self.detector.info),
            "model_error": self.model_error,
            "mqtt_error": self.mqtt_error,
            "config": {"version": self.config_service.applied_version, "error": self.config_service.error},
            "gpu_memory": self.gpu.report(),
            "inference_errors": self.worker.errors if self.worker else 0,
            "inference_errors_total": self._retired_inference_errors + (self.worker.errors if self.worker else 0),
            "frames_failed": self.worker.frames_failed if self.worker else 0,
            "engine_reloads": self.worker.reloads if self.worker else 0,
            "cameras": cameras,
            "sync": None if self.syncer is None else self.syncer.stats(),
            "objects": objects,
            "homeassistant": None if self.homeassistant is None else self.homeassistant.stats(),
            "commands": None if self.channel is None else self.channel.stats(),
            "store": {**self.store.status(), **self._store_figures()},
            "system": (self.telemetry.last or {}).get("system"),  # the latest reading (telemetry.interval_s)
            "problems": self.problems(),
            "health": asdict(self.health()),
            "web": None if self.web is None else self.web.stats(),
            "quality": quality if quality is not None else {"mode": "off", "error": self.quality_error},
            "sla": None if self.quality is None else self.quality.sla_status(),
            "running_model": None if self.running_model is None else self.running_model.path,
        }
