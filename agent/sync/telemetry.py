"""Periodic health readings: system, GPU, and the agent's own figures.

An APScheduler job takes a reading every `telemetry.interval_s` and hands it to
the store, which queues it in the outbox like a detection: readings taken
while the broker is away arrive later too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from apscheduler.schedulers.background import BackgroundScheduler

from agent.device.cpu import CpuBusy
from agent.device.gpu_probe import open_gpu_probe

log = logging.getLogger(__name__)


def _temperatures() -> dict[str, float] | None:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except OSError:
        return None
    return {f"{chip}/{t.label or i}": t.current for chip, temps in sensors.items() for i, t in enumerate(temps)} \
        or None


class Telemetry:
    def __init__(self, interval_s: float, data_dir: Path, agent_status: Callable[[], dict],
                 publish: Callable[[str], bool]) -> None:
        self.interval_s = interval_s
        self._data_dir = data_dir
        self._agent_status = agent_status
        self._publish = publish
        self._process = psutil.Process()
        self._process.cpu_percent()  # the first call only starts the measurement
        self._cpu = CpuBusy()  # system CPU between readings, on our own baseline
        self._gpu, self._gpu_absent = open_gpu_probe()
        self._scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1})
        self.readings = 0
        self.last: dict[str, Any] | None = None

    def start(self) -> None:
        self._scheduler.add_job(self.take_reading, "interval", seconds=self.interval_s, id="telemetry")
        self._scheduler.start()

    def stop(self) -> None:
        self._scheduler.shutdown(wait=False)

    def reschedule(self, interval_s: float) -> None:
        """A new period, from now on, without restarting anything."""
        self.interval_s = interval_s
        if self._scheduler.running:
            self._scheduler.reschedule_job("telemetry", trigger="interval", seconds=interval_s)

    def take_reading(self) -> None:
        try:
            reading = self.read()
            self.last = reading
            self.readings += 1
            self._publish(json.dumps(reading, separators=(",", ":")))
        except Exception:  # a reading must never take the scheduler down
            log.exception("telemetry reading failed")

    def read(self) -> dict[str, Any]:
        mem = psutil.virtual_memory()
        disk = shutil.disk_usage(self._data_dir)
        gpu: dict[str, Any]
        if self._gpu is None:
            gpu = {"available": False, "reason": self._gpu_absent}
        else:
            try:
                gpu = {"available": True, "source": self._gpu.name, "devices": self._gpu.read()}
            except Exception as exc:
                gpu = {"available": False, "reason": f"{self._gpu.name}: {exc}"}
        status = self._agent_status()
        quality = status.get("quality")
        return {
            "ts_ms": int(time.time() * 1000),
            "system": {
                "cpu_percent": self._cpu.percent(), "load": list(os.getloadavg()),
                "memory_used_percent": mem.percent, "memory_available_mb": round(mem.available / 2**20),
                "disk_free_mb": round(disk.free / 2**20), "disk_used_percent": round(100 * disk.used / disk.total, 1),
                "temperatures_c": _temperatures(),
            },
            "process": {"rss_mb": round(self._process.memory_info().rss / 2**20, 1),
                        "threads": self._process.num_threads(), "cpu_percent": self._process.cpu_percent()},
            "gpu": gpu,
            "gpu_memory": status.get("gpu_memory"),  # the budget: limit, use, peak, refusals
            "engine": status.get("engine") and {k: status["engine"][k] for k in
                                                ("backend", "model_path", "precision", "layout", "providers",
                                                 "accuracy_gate")},
            "model_error": status.get("model_error"),
            "inference": {k: status.get(k, 0) for k in ("inference_errors", "frames_failed", "engine_reloads")},
            "cameras": {
                name: {k: cam.get(k) for k in ("state", "degraded", "fps", "detect_fps", "frames_captured",
                                               "frames_dropped", "frames_skipped", "reconnects", "outage_s",
                                               "last_error", "stages", "motion", "quality_level")}
                for name, cam in status.get("cameras", {}).items()
            },
            "quality": quality and {k: quality.get(k) for k in ("mode", "profile", "level", "reason", "since_ms",
                                                                 "cameras", "shed", "model_variant", "error")},
            "sla_alerts": (status.get("sla") or {}).get("alerts", []),
            "objects": status.get("objects"),  # per camera: tracks, open events, event totals
            "store": status.get("store"),
            "sync": status.get("sync"),
            "commands": status.get("commands"),
            "config": status.get("config"),
            "problems": status.get("problems", []),
        }
