"""Prometheus metrics (`/metrics`), read from the agent's own figures at each scrape.

Nothing is counted twice: a collector turns the status snapshot and the process-wide stage
histograms (agent.measure) into metric families when scraped. Counters never go back, also when a
config change restarts a camera (whose own counts start again from zero): they are the runtime's
`*_total` figures, which add what replaced cameras and workers had counted; the counts kept per
camera by the pipeline live for the whole process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agent import __version__
from agent.measure import BUCKETS_MS, stage_histograms

MB = 1024 * 1024


class AgentCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    @staticmethod
    def _counter(name: str, doc: str, per_camera: dict[str, float]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["camera"])
        for camera, value in sorted(per_camera.items()):
            family.add_metric([camera], float(value))
        return family

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        info = GaugeMetricFamily("edge_agent_build_info", "version and device", labels=["version", "device"])
        info.add_metric([__version__, str(status.get("device_id"))], 1)
        yield info
        cameras: dict[str, dict[str, Any]] = status.get("cameras", {})
        yield self._counter("edge_agent_frames_captured", "frames handed to inference by the camera",
                            {n: c.get("frames_captured_total", 0) for n, c in cameras.items()})
        outcomes = CounterMetricFamily("edge_agent_frames", "what became of the frames captured",
                                       labels=["camera", "outcome"])
        for name, cam in sorted(cameras.items()):
            for outcome, key in (("inferred", "frames"), ("gated", "frames_gated_total"),
                                 ("shed", "frames_shed_total"), ("dropped", "frames_dropped_total")):
                outcomes.add_metric([name, outcome], float(cam.get(key) or 0))
        yield outcomes
        yield self._counter("edge_agent_detections", "detections made",
                            {n: c.get("detections", 0) for n, c in cameras.items()})
        yield self._counter("edge_agent_camera_reconnects", "camera reopen attempts",
                            {n: c.get("reconnects_total", 0) for n, c in cameras.items()})
        objects: dict[str, dict[str, Any]] = status.get("objects") or {}
        events = CounterMetricFamily("edge_agent_object_events", "object event messages made",
                                     labels=["camera", "type"])
        for name, counts in sorted(objects.items()):
            for kind, key in (("new", "events_started"), ("update", "updates"), ("end", "events_ended")):
                events.add_metric([name, kind], float(counts.get(key, 0)))
        yield events
        tracked = GaugeMetricFamily("edge_agent_objects_tracked", "tracks followed now", labels=["camera"])
        open_events = GaugeMetricFamily("edge_agent_object_events_open", "objects with an open event",
                                        labels=["camera"])
        for name, counts in sorted(objects.items()):
            tracked.add_metric([name], float(counts.get("tracks", 0)))
            open_events.add_metric([name], float(counts.get("open_events", 0)))
        yield tracked
        yield open_events
        up = GaugeMetricFamily("edge_agent_camera_up", "1 while the camera delivers frames", labels=["camera"])
        fps = GaugeMetricFamily("edge_agent_camera_fps", "frames through inference per second", labels=["camera"])
        for name, cam in sorted(cameras.items()):
            up.add_metric([name], 1.0 if cam.get("state") in ("running", "finished") else 0.0)
            fps.add_metric([name], float(cam.get("fps") or 0.0))
        yield up
        yield fps
        yield from self._histograms()
        store = status.get("store") or {}  # the store's figures include the outbox's
        sync = status.get("sync") or {}
        yield _one(GaugeMetricFamily, "edge_agent_outbox_pending", "messages waiting for the broker",
                   store.get("outbox_pending"))  # no sample when the database cannot be read
        yield _one(GaugeMetricFamily, "edge_agent_outbox_oldest_age_seconds", "age of the oldest waiting message",
                   store.get("outbox_oldest_age_s"))
        yield _one(GaugeMetricFamily, "edge_agent_outbox_dead", "dead letters kept", store.get("outbox_dead"))
        yield _one(GaugeMetricFamily, "edge_agent_store_writable", "1 while the store takes writes",
                   1.0 if store.get("writable") else 0.0)
        yield _one(CounterMetricFamily, "edge_agent_store_dropped", "frames of results the store could not keep",
                   store.get("dropped") or 0)
        yield _one(GaugeMetricFamily, "edge_agent_mqtt_connected", "1 while connected to the broker",
                   1.0 if sync.get("connected") else 0.0)
        yield _one(GaugeMetricFamily, "edge_agent_mqtt_in_flight", "messages awaiting PUBACK",
                   sync.get("in_flight") or 0)
        gpu = GaugeMetricFamily("edge_agent_gpu_memory_bytes", "GPU memory of the engines", labels=["kind"])
        memory = status.get("gpu_memory") or {}
        for kind, key in (("used", "used_mb"), ("budget", "budget_mb")):
            if memory.get(key) is not None:
                gpu.add_metric([kind], float(memory[key]) * MB)
        yield gpu
        temps = GaugeMetricFamily("edge_agent_temperature_celsius", "temperatures by zone", labels=["zone"])
        for zone, value in sorted(((status.get("system") or {}).get("temperatures_c") or {}).items()):
            temps.add_metric([zone], float(value))
        yield temps
        free_mb = store.get("disk_free_mb")
        yield _one(GaugeMetricFamily, "edge_agent_disk_free_bytes", "free space on the data dir's filesystem",
                   None if free_mb is None else free_mb * MB)
        yield _one(CounterMetricFamily, "edge_agent_inference_errors", "inference failures",
                   status.get("inference_errors_total") or 0)

    @staticmethod
    def _histograms() -> Iterator[Metric]:
        family = HistogramMetricFamily("edge_agent_stage_seconds", "time per pipeline stage", labels=["stage"])
        for stage, histogram in sorted(stage_histograms().items()):
            counts, sum_ms = histogram.snapshot()
            buckets = [(f"{bound / 1000:g}", float(n)) for bound, n in zip(BUCKETS_MS, counts)]
            buckets.append(("+Inf", float(counts[-1])))
            family.add_metric([stage], buckets, sum_ms / 1000)
        yield family


def _one(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, doc: str,
         value: float | None) -> Metric:
    """A metric without labels: one sample, or none when the figure is not known."""
    family = kind(name, doc)
    if value is not None:
        family.add_metric([], float(value))
    return family


def registry_for(status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(status))
    return registry
