"""The native TensorRT backend: build or load a cached plan, run it with name-based I/O.

One `TrtHost` per process: the TensorRT runtime with the budget-enforcing
allocator (engine weights), the shared activation arena and the one CUDA
stream. Each `TensorRTBackend` owns pinned host buffers and device I/O buffers
allocated once at load, for its largest batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from engines.backend import InferenceBackend, TensorSpec
from engines.config import TensorRTConfig
from engines.errors import BackendUnavailable, ModelLoadError
from engines.gpu_budget import BudgetExceeded, GpuMemoryBudget
from engines.model_input import model_input_size
from engines.tensorrt.allocator import BudgetedAllocations, make_trt_allocator
from engines.tensorrt.arena import ActivationArena
from engines.tensorrt.build import BuildError, BuildJob, build_in_subprocess
from engines.tensorrt.cuda_runtime import CudaRuntime
from engines.tensorrt.features import TrtFeatures
from engines.tensorrt.plan_cache import EngineKey, PlanCache, l4t_release

log = logging.getLogger(__name__)
WEIGHTS_HOLDER = "tensorrt:weights"


class TrtHost:
    """Process-wide TensorRT state shared by every loaded engine."""

    def __init__(self, budget: GpuMemoryBudget, device_id: int = 0, trt: Any = None,
                 cuda: Any = None, trt_module: str = "tensorrt",
                 cuda_factory: str = "engines.tensorrt.cuda_runtime:CudaRuntime") -> None:
        if trt is None:
            try:
                import tensorrt as trt
            except ImportError as exc:
                raise BackendUnavailable(f"TensorRT is not installed ({exc})") from exc
        self.trt = trt
        self.features = TrtFeatures.parse(trt.__version__)
        self.cuda = cuda or CudaRuntime(device_id)
        self.budget = budget
        self.device_id = device_id
        self.trt_module, self.cuda_factory = trt_module, cuda_factory  # what the build child imports
        self.gpu_name, self.compute_capability = self.cuda.device_properties()
        self.l4t = l4t_release()
        self.weights = BudgetedAllocations(self.cuda, budget, WEIGHTS_HOLDER)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.runtime.gpu_allocator = make_trt_allocator(trt, self.weights)
        self.arena = ActivationArena(self.cuda, budget)
        self.stream = self.cuda.create_stream()


def onnx_input(path: Path) -> tuple[str, list, dict[str, str], bool]:
    """Input name, shape (ints or names), metadata, and whether the model is QDQ (INT8)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot read ONNX model {path}: {exc}") from exc
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in inp.type.tensor_type.shape.dim]
    meta = {p.key: p.value for p in model.metadata_props}
    has_qdq = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    return inp.name, shape, meta, has_qdq


class TensorRTBackend(InferenceBackend):
    name = "tensorrt"

    def __init__(self, path: Path, config: TensorRTConfig, host: TrtHost, model_sha256: str, max_batch: int,
                 input_size: tuple[int, int] | None = None,
                 on_progress: Callable[[str], None] | None = None) -> None:
        self._host = host
        input_name, shape, self._metadata, has_qdq = onnx_input(path)
        h, w = model_input_size(str(path), tuple(shape), self._metadata, input_size)
        fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        batch = fixed_batch or max_batch
        precision = host.features.precision_plan(has_qdq, config.precision)
        self.precision = "int8" if has_qdq else precision
        key = EngineKey(
            model_sha256=model_sha256, tensorrt_version=host.features.text, gpu_name=host.gpu_name,
            compute_capability=host.compute_capability, l4t_release=host.l4t, precision=precision,
            input_name=input_name, min_shape=(fixed_batch or 1, 3, h, w), opt_shape=(batch, 3, h, w),
            max_shape=(batch, 3, h, w), workspace_bytes=config.workspace_mb << 20, dla_core=config.dla_core,
        )
        cache = PlanCache(config.cache_dir)
        self.plan_path = cache.plan_path(key, path.stem)
        progress = on_progress or (lambda text: log.info("TensorRT build %s: %s", path.name, text))
        self._engine = self._load_or_build(path, key, cache, config, progress)
        self._owner = f"{path.name}@{id(self):x}"
        self._context = None
        self._buffers: list[tuple[str, int, int, np.ndarray]] = []  # name, device ptr, host ptr, host view
        try:
            self._setup_io(input_name, batch, h, w)
        except BaseException:
            self.close()
            raise

    # -- loading --------------------------------------------------------------------
    def _load_or_build(self, path: Path, key: EngineKey, cache: PlanCache, config: TensorRTConfig,
                       progress: Callable[[str], None]) -> Any:
        plan = cache.load(self.plan_path)
        if plan is not None:
            engine = self._deserialize(plan)
            if engine is not None:
                return engine
            log.warning("cached plan %s does not deserialize on this TensorRT; rebuilding", self.plan_path)
            cache.discard(self.plan_path)
        self._build(path, key, cache, config, progress)
        engine = self._deserialize(self.plan_path.read_bytes())
        if engine is None:
            raise ModelLoadError(f"{path}: TensorRT built a plan it cannot load")
        return engine

    def _deserialize(self, plan: bytes) -> Any:
        before = self._host.weights.last_refusal
        engine = self._host.runtime.deserialize_cuda_engine(plan)
        refusal = self._host.weights.last_refusal
        if engine is None and refusal is not None and refusal is not before:
            raise BudgetExceeded("the TensorRT engine's weights", refusal.needed, refusal.available,
                                 self._host.budget.limit)
        return engine

    def _build(self, path: Path, key: EngineKey, cache: PlanCache, config: TensorRTConfig,
               progress: Callable[[str], None]) -> None:
        budget = self._host.budget
        cap = budget.available()  # the build may use what is free now, and no more
        budget.reserve(cap, "tensorrt:build")
        try:
            job = BuildJob(path, self.plan_path, key, cache.timing_cache_path(key), cap, self._host.device_id,
                           self._host.trt_module, self._host.cuda_factory)
            build_in_subprocess(job, progress, config.build_timeout_s)
        except BuildError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        finally:
            budget.release(cap, "tensorrt:build")

    def _setup_io(self, input_name: str, batch: int, h: int, w: int) -> None:
        trt, engine, host = self._host.trt, self._engine, self._host
        if host.features.user_managed_strategy:
            self._context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        else:
            self._context = engine.create_execution_context_without_device_memory()
        need = engine.device_memory_size_v2 if host.features.device_memory_v2 else engine.device_memory_size
        host.arena.attach(self._owner, int(need), self._bind_arena)
        self._context.set_input_shape(input_name, (batch, 3, h, w))
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [input_name]:
            raise ModelLoadError(f"the engine has inputs {inputs}; one image input {input_name!r} is supported")
        self._input = TensorSpec(input_name, (None if batch > 1 else 1, 3, h, w))
        self._outputs = []
        for name in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            dims = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in dims):
                raise ModelLoadError(f"output {name} has an unresolved shape {dims}")
            device, host_ptr, view = self._allocate_io(int(np.prod(dims)) * dtype.itemsize)
            self._buffers.append((name, device, host_ptr, view.view(dtype).reshape(dims)))
            if name != input_name:
                self._outputs.append(TensorSpec(name, (None, *dims[1:])))
        self._io = {name: (device, host_ptr, view) for name, device, host_ptr, view in self._buffers}
        for name, device, _, _ in self._buffers:  # fixed for the engine's life: bound once, not per frame
            self._context.set_tensor_address(name, device)

    def _allocate_io(self, nbytes: int) -> tuple[int, int, np.ndarray]:
        """A device buffer and a pinned host buffer, counted in the budget; nothing is held if either fails."""
        host, holder = self._host, f"tensorrt:io:{self._owner}"
        host.budget.reserve(nbytes, holder)
        device = None
        try:
            device = host.cuda.malloc(nbytes)
            host_ptr, view = host.cuda.host_alloc(nbytes)
        except BaseException:
            try:
                if device is not None:
                    host.cuda.free(device)
            finally:
                host.budget.release(nbytes, holder)
            raise
        return device, host_ptr, view

    def _bind_arena(self, ptr: int, size: int) -> None:
        if self._host.features.device_memory_v2:
            self._context.set_device_memory(ptr, size)
        else:
            self._context.device_memory = ptr

    # -- InferenceBackend -----------------------------------------------------------
    @property
    def providers(self) -> tuple[str, ...]:
        return (f"TensorRT {self._host.features.text}", self._host.gpu_name)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        host, cuda, stream = self._host, self._host.cuda, self._host.stream
        n = batch.shape[0]
        in_dev, in_host, in_view = self._io[self._input.name]
        with host.arena.exclusive():  # one engine at a time: they share the arena and the stream
            np.copyto(in_view[:n], batch, casting="same_kind")
            cuda.copy_htod_async(in_dev, in_host, in_view[:n].nbytes, stream)
            self._context.set_input_shape(self._input.name, batch.shape)
            if not self._context.execute_async_v3(stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            results = []
            for spec in self._outputs:
                device, host_ptr, view = self._io[spec.name]
                cuda.copy_dtoh_async(host_ptr, device, view[:n].nbytes, stream)
                results.append(view)
            cuda.synchronize(stream)
            return [r[:n].astype(np.float32) for r in results]  # copies: the pinned buffers are reused

    def close(self) -> None:
        host = self._host
        for _, device, host_ptr, view in self._buffers:
            host.cuda.free(device)
            host.cuda.host_free(host_ptr)
            host.budget.release(view.nbytes, f"tensorrt:io:{self._owner}")
        self._buffers = []
        if self._context is not None:
            host.arena.detach(self._owner)
            self._context = None
        self._engine = None  # TensorRT frees the weights through the allocator
