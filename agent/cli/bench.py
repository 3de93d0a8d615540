"""`edge-agent bench`: the bare engine against the full pipeline, in one process and run.

(a) engine: the pre-processed input tensor through the runtime, nothing else.
(b) pipeline: N unpaced clips → decode → letterbox → infer → decode+NMS → SQLite
commit, everything the agent does per frame. `ratio` = pipeline / engine fps
tells how much the surrounding work costs the detector.
"""

from __future__ import annotations

import resource
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from agent.config import validate_config
from agent.demo.clips import write_clip
from agent.demo.scene import SceneGenerator
from agent.runtime import Runtime
from engines import DetectorConfig, GpuResources, load_detector
from engines.config import ENGINE_PRESETS

STAGES = ("decode", "capture_age", "pre", "infer", "post", "result", "store")  # result: capture → detections
RESOLUTIONS = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}


def engine_fps(model_config: DetectorConfig, batch: int, seconds: float,
                gpu: GpuResources | None = None) -> tuple[float, dict]:
    """The engine's ceiling: pre-processed batches through `infer` alone, as many runs at once as the
    pipeline keeps in flight (`concurrent_runs`), each on its own input buffer."""
    detector = load_detector(model_config, gpu)
    batch = min(batch, detector.max_batch)
    runs = detector.concurrent_runs
    frames = [SceneGenerator(seed=i).next_frame()[0] for i in range(batch)]
    prepared = [detector.preprocess(frames, buffer) for buffer in range(runs)]
    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        detector.infer(prepared[0])
    counts = [0] * runs
    deadline = time.monotonic() + seconds

    def run(lane: int) -> None:
        while time.monotonic() < deadline or counts[lane] < 5:
            detector.infer(prepared[lane])
            counts[lane] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(lane,)) for lane in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    info = {"model": detector.info.model_path, "input": [detector.input_h, detector.input_w],
            "layout": detector.info.layout, "batch": batch, "concurrent_runs": runs,
            "providers": list(detector.info.providers),
            "backend": detector.info.backend, "precision": detector.info.precision}
    detector.close()
    return batch * sum(counts) / elapsed, info


def bench_clips(workdir: Path, cameras: int, resolution: str, codec: str, clip: Path | None) -> list[Path]:
    """One clip per camera: the user's file for all, or generated moving scenes (H.264 like a camera's)."""
    if clip is not None:
        if not clip.is_file():
            raise FileNotFoundError(f"no such clip: {clip}")
        return [clip] * cameras
    width, height = RESOLUTIONS[resolution]
    return [write_clip(workdir / f"bench-{i}.mp4", seconds=10.0, seed=500 + i, width=width, height=height,
                       codec=codec) for i in range(cameras)]


def _pipeline(model_config: DetectorConfig, clips: list[Path], seconds: float, workdir: Path,
              decoder: str = "auto") -> dict:
    cameras = len(clips)
    config = validate_config({
        "cameras": [{"name": f"cam{i}", "source": str(c), "realtime": False, "loop": True, "decoder": decoder}
                    for i, c in enumerate(clips)],
        "model": model_config.model_dump(mode="json"),
        "storage": {"path": str(workdir / "data")},
        "quality": {"mode": "fixed", "level": "high"}, "web": {"listen": None},  # the pipeline as configured
    })
    runtime = Runtime(config)
    runtime.start()
    try:
        names = list(runtime.cameras)
        deadline = time.monotonic() + 60
        while sum(runtime.metrics.frames.get(n, 0) for n in names) < 5 * cameras:  # warm-up
            if time.monotonic() > deadline:
                raise RuntimeError(f"pipeline produced no frames: {runtime.status()}")
            time.sleep(0.05)
        proc = psutil.Process()
        cpu0 = sum(proc.cpu_times()[:2])
        frames0 = sum(runtime.metrics.frames[n] for n in names)
        t0 = time.monotonic()
        rss = proc.memory_info().rss
        while (left := t0 + seconds - time.monotonic()) > 0:  # the measurement window, RSS sampled along it
            time.sleep(min(0.5, left))
            rss = max(rss, proc.memory_info().rss)
        elapsed = time.monotonic() - t0
        frames = sum(runtime.metrics.frames[n] for n in names) - frames0
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        status = runtime.status()
    finally:
        runtime.stop()
    stages = {}
    for stage in STAGES:
        p50s = [c["stages"][stage]["p50_ms"] for c in status["cameras"].values()]
        p95s = [c["stages"][stage]["p95_ms"] for c in status["cameras"].values()]
        known = [(a, b) for a, b in zip(p50s, p95s) if a is not None]
        stages[stage] = {"p50_ms": round(float(np.mean([a for a, _ in known])), 2) if known else None,
                         "p95_ms": round(float(np.max([b for _, b in known])), 2) if known else None}
    return {
        "pipeline_fps": frames / elapsed,
        "per_camera_fps": {n: c["fps"] for n, c in status["cameras"].items()},
        "stages": stages,
        "cpu_cores_busy": round(cpu / elapsed, 2),
        "pipeline_rss_mb": round(rss / 2**20, 1),  # the running agent, without the engine stage before it
        "detections_committed": status["store"]["committed_rows"],
        "store_dropped": status["store"]["dropped"],
        "frames_dropped": sum(c["frames_dropped"] for c in status["cameras"].values()),
    }


def engine_config(engine: str, threads: int = 0, runs: int = 0) -> dict:
    """The `model.engine` section for a named engine choice (`--engine`); 0: the engine's auto choice."""
    settings = dict(ENGINE_PRESETS[engine])
    if settings["type"] == "onnxruntime":
        settings["intra_op_threads"] = threads
        settings["concurrent_runs"] = runs
    return settings


def run_bench(model: str, cameras: int, seconds: float, threads: int = 0, engine: str = "onnxruntime-cpu",
              gpu: GpuResources | None = None, resolution: str = "720p", codec: str = "h264",
              clip: Path | None = None, runs: int = 0, decoder: str = "auto") -> dict:
    model_config = DetectorConfig(path=model, engine=engine_config(engine, threads, runs))
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:  # the pipeline first: its RSS is its own
        clips = bench_clips(Path(tmp), cameras, resolution, codec, clip)
        frame = cv2.VideoCapture(str(clips[0]))
        stream = {"clip": str(clip) if clip else f"generated {resolution} {codec}",
                  "frame_size": [int(frame.get(cv2.CAP_PROP_FRAME_WIDTH)), int(frame.get(cv2.CAP_PROP_FRAME_HEIGHT))]}
        frame.release()
        pipeline = _pipeline(model_config, clips, seconds, Path(tmp), decoder)
    fps, info = engine_fps(model_config, cameras, seconds, gpu)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pipeline_fps = pipeline.pop("pipeline_fps")
    return {
        **info,
        **stream,
        "cameras": cameras,
        "decoder": decoder,
        "seconds": seconds,
        "engine_fps": round(fps, 2),
        "pipeline_fps": round(pipeline_fps, 2),
        "ratio": round(pipeline_fps / fps, 3),
        **pipeline,
        "peak_rss_mb": round(peak_rss_mb, 1),
    }
