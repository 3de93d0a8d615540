"""Build a TensorRT plan from ONNX in a child process that reports progress.

Builds take minutes on a Jetson and can use a lot of memory: a separate process
keeps the agent responsive, lets a hung or runaway build be killed, and gives
the builder its own GPU allocator capped at the memory the parent set aside.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.files import atomic_write
from engines.gpu_budget import GpuMemoryBudget
from engines.tensorrt.allocator import BudgetedAllocations, make_trt_allocator
from engines.tensorrt.features import TrtFeatures
from engines.tensorrt.plan_cache import EngineKey, PlanCache

log = logging.getLogger(__name__)


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class BuildJob:
    onnx_path: Path
    plan_path: Path
    key: EngineKey
    timing_cache_path: Path
    build_memory_bytes: int  # cap for the builder's own allocations
    device_id: int = 0
    trt_module: str = "tensorrt"  # set by code, never by config: tests name their fake here
    cuda_factory: str = "engines.tensorrt.cuda_runtime:CudaRuntime"


def _network_flags(trt: Any, features: TrtFeatures, strongly_typed: bool) -> int:
    flags = 0
    if not features.implicit_explicit_batch:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _progress_monitor(trt: Any, report: Callable[[str], None]) -> Any:
    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            report(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


def _load_object(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def run_build(job: BuildJob, report: Callable[[str], None]) -> None:
    """The build itself (runs in the child). Writes the plan and timing cache atomically."""
    trt = importlib.import_module(job.trt_module)
    features = TrtFeatures.parse(trt.__version__)
    cuda = _load_object(job.cuda_factory)(job.device_id)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    budget = GpuMemoryBudget(max(job.build_memory_bytes, 1))
    builder.gpu_allocator = make_trt_allocator(trt, BudgetedAllocations(cuda, budget, "tensorrt:build"))
    precision = job.key.precision
    network = builder.create_network(_network_flags(trt, features, precision == "int8-strongly-typed"))
    parser = trt.OnnxParser(network, logger)
    report("parsing ONNX")
    if not parser.parse(job.onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT cannot parse {job.onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, job.key.workspace_bytes)
    if precision == "int8+fp16":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if job.key.dla_core is not None and job.key.dla_core >= builder.num_DLA_cores:
        report(f"no DLA core {job.key.dla_core} on this device ({builder.num_DLA_cores} DLA cores); "
               "building for the GPU")
    elif job.key.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = job.key.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if job.key.min_shape != job.key.max_shape:
        profile = builder.create_optimization_profile()
        profile.set_shape(job.key.input_name, job.key.min_shape, job.key.opt_shape, job.key.max_shape)
        config.add_optimization_profile(profile)
    cached = job.timing_cache_path.read_bytes() if job.timing_cache_path.is_file() else b""
    timing = config.create_timing_cache(cached)
    config.set_timing_cache(timing, ignore_mismatch=False)
    if features.progress_monitor:
        config.progress_monitor = _progress_monitor(trt, report)
    report(f"building {precision} engine (TensorRT {features.text}, workspace "
           f"{job.key.workspace_bytes >> 20} MiB, build memory cap {job.build_memory_bytes >> 20} MiB)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError("TensorRT failed to build the engine (see the TensorRT log above)")
    cache = PlanCache(job.plan_path.parent)
    cache.store(job.plan_path, job.key, bytes(plan))
    atomic_write(job.timing_cache_path, bytes(config.get_timing_cache().serialize()))
    report("done")


def _child(job: BuildJob, messages: Any) -> None:
    try:
        run_build(job, lambda text: messages.put(("progress", text)))
        messages.put(("ok", ""))
    except BaseException as exc:  # everything goes back to the parent as text
        messages.put(("error", f"{type(exc).__name__}: {exc}"))


def build_in_subprocess(job: BuildJob, on_progress: Callable[[str], None], timeout_s: float) -> None:
    """Run `run_build` in a spawned process; raises BuildError with the child's reason."""
    ctx = mp.get_context("spawn")  # never fork a process that holds a CUDA context
    messages = ctx.Queue()
    child = ctx.Process(target=_child, args=(job, messages), name="tensorrt-build", daemon=True)
    child.start()
    deadline = time.monotonic() + timeout_s
    outcome: tuple[str, str] | None = None
    try:
        while outcome is None:
            try:
                kind, text = messages.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise BuildError(f"the TensorRT build took longer than {timeout_s:g} s and was stopped") from None
                if not child.is_alive() and messages.empty():
                    raise BuildError(f"the TensorRT build process died (exit code {child.exitcode})") from None
                continue
            if kind == "progress":
                on_progress(text)
            else:
                outcome = (kind, text)
    finally:
        if child.is_alive():
            child.join(timeout=5 if outcome else 0)
            if child.is_alive():
                child.terminate()
                child.join(5)
    if outcome[0] == "error":
        raise BuildError(outcome[1])
