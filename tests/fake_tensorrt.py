"""FAKE TensorRT and FAKE CUDA, for tests only: no GPU or TensorRT exists on CI.

They implement the subset of the `tensorrt` module and of `CudaRuntime` the
backend uses, with the documented semantics that matter to our logic:
allocations go through `runtime.gpu_allocator` / `builder.gpu_allocator` and a
0 from it fails the load; a plan built by another TensorRT version does not
deserialize; a context with user-managed memory refuses to run before its
memory is set, or with less than `device_memory_size`. "Device memory" is host
NumPy memory addressed by integer pointers, and an engine computes its outputs
by running its ONNX model in ONNX Runtime (CPU), so every byte copied in and
out through the backend's buffers is real and checked.
"""

from __future__ import annotations

import json
import os
from enum import IntEnum

import numpy as np
import onnxruntime as ort

__version__ = os.environ.get("FAKE_TRT_VERSION", "10.3.0")
PLAN_MAGIC = b"FAKETRT1"


# -- FAKE CUDA ------------------------------------------------------------------------
class FakeCudaRuntime:
    """Device memory as NumPy buffers behind integer addresses; tracks bytes in use and peak."""

    def __init__(self, device_id: int = 0) -> None:
        self.device_id = device_id
        self.device: dict[int, np.ndarray] = {}
        self.host: dict[int, np.ndarray] = {}
        self._next = 0x10000
        self.in_use = 0
        self.peak = 0

    def _address(self, nbytes: int) -> int:
        ptr = self._next
        self._next += (max(nbytes, 1) + 255) // 256 * 256 + 256
        return ptr

    def malloc(self, nbytes: int) -> int:
        ptr = self._address(nbytes)
        self.device[ptr] = np.zeros(nbytes, np.uint8)
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)
        return ptr

    def free(self, ptr: int) -> None:
        self.in_use -= self.device.pop(ptr).nbytes  # KeyError: a double free or a foreign pointer

    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        ptr = self._address(nbytes)
        self.host[ptr] = np.zeros(nbytes, np.uint8)
        return ptr, self.host[ptr]

    def host_free(self, ptr: int) -> None:
        del self.host[ptr]

    def copy_htod_async(self, dst: int, src_host: int, nbytes: int, stream: int) -> None:
        self.device[dst][:nbytes] = self.host[src_host][:nbytes]

    def copy_dtoh_async(self, dst_host: int, src: int, nbytes: int, stream: int) -> None:
        self.host[dst_host][:nbytes] = self.device[src][:nbytes]

    def create_stream(self) -> int:
        return 1

    def destroy_stream(self, stream: int) -> None:
        pass

    def synchronize(self, stream: int) -> None:
        pass

    def mem_info(self) -> tuple[int, int]:
        return (8 << 30) - self.in_use, 8 << 30

    def device_properties(self) -> tuple[str, str]:
        return "FAKE GPU (tests)", "8.7"


CUDA = FakeCudaRuntime()  # one per process, as the real device is; the build child gets its own


def shared_cuda(device_id: int = 0) -> FakeCudaRuntime:
    return CUDA


# -- FAKE TensorRT --------------------------------------------------------------------
class Logger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class IGpuAllocator:
    def __init__(self) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class TensorIOMode(IntEnum):
    INPUT = 1
    OUTPUT = 2


class ExecutionContextAllocationStrategy(IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class NetworkDefinitionCreationFlag(IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(IntEnum):
    FP16 = 0
    INT8 = 1
    GPU_FALLBACK = 2


class MemoryPoolType(IntEnum):
    WORKSPACE = 0


class DeviceType(IntEnum):
    GPU = 0
    DLA = 1


class DataType(IntEnum):
    FLOAT = 0


def nptype(dtype: DataType) -> type:
    return np.float32


def _version() -> str:
    return __version__


def _allocate(allocator: IGpuAllocator, size: int) -> int:
    major = int(_version().split(".")[0])
    return allocator.allocate_async(size, 256, 0, 1) if major >= 10 else allocator.allocate(size, 256, 0)


def _deallocate(allocator: IGpuAllocator, ptr: int) -> None:
    major = int(_version().split(".")[0])
    allocator.deallocate_async(ptr, 1) if major >= 10 else allocator.deallocate(ptr)


class _Engine:
    def __init__(self, header: dict, model: bytes, weights: list[int], allocator: IGpuAllocator) -> None:
        self.header = header
        self._weights, self._allocator = weights, allocator
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.outputs = [o.name for o in self.session.get_outputs()]
        h, w = header["max_shape"][2:]
        self.device_memory_size = self.device_memory_size_v2 = 4 * 3 * h * w * header["max_shape"][0]
        self.num_io_tensors = 1 + len(self.outputs)
        self.contexts = 0

    def __del__(self) -> None:  # TensorRT frees an engine's weights through the allocator
        for ptr in self._weights:
            _deallocate(self._allocator, ptr)

    def get_tensor_name(self, index: int) -> str:
        return ([self.input.name, *self.outputs])[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.input.name else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def create_execution_context(self, strategy: ExecutionContextAllocationStrategy) -> _Context:
        assert strategy == ExecutionContextAllocationStrategy.USER_MANAGED
        return _Context(self)

    def create_execution_context_without_device_memory(self) -> _Context:
        assert int(_version().split(".")[0]) < 10, "TensorRT 10 removed this call"
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.memory: tuple[int, int] | None = None
        self.addresses: dict[str, int] = {}
        self.shape: tuple[int, ...] | None = None
        self.runs = 0

    @property
    def device_memory(self) -> int:
        return self.memory[0] if self.memory else 0

    @device_memory.setter
    def device_memory(self, ptr: int) -> None:
        self.memory = (ptr, self.engine.device_memory_size)

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.memory = (ptr, size)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, hi = self.engine.header["min_shape"], self.engine.header["max_shape"]
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise ValueError(f"shape {shape} outside the profile {lo}..{hi}")
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == self.engine.input.name:
            return self.shape
        index = self.engine.outputs.index(name)
        dummy = np.zeros(self.shape, np.float32)
        return tuple(self.engine.session.run(None, {self.engine.input.name: dummy})[index].shape)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        if self.memory is None or self.memory[0] not in CUDA.device:
            return False  # user-managed memory never set, or freed under us
        if CUDA.device[self.memory[0]].nbytes < self.engine.device_memory_size:
            return False
        n = int(np.prod(self.shape))
        x = CUDA.device[self.addresses[self.engine.input.name]][: n * 4].view(np.float32).reshape(self.shape)
        outs = self.engine.session.run(None, {self.engine.input.name: x})
        for name, out in zip(self.engine.outputs, outs):
            raw = np.ascontiguousarray(out, np.float32).view(np.uint8).ravel()
            CUDA.device[self.addresses[name]][: raw.size] = raw
        self.runs += 1
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.gpu_allocator: IGpuAllocator | None = None

    def deserialize_cuda_engine(self, plan: bytes) -> _Engine | None:
        if not plan.startswith(PLAN_MAGIC):
            return None
        header_line, _, model = plan[len(PLAN_MAGIC):].partition(b"\n")
        try:
            header = json.loads(header_line)
        except ValueError:
            return None
        if header.get("version") != _version():
            return None  # TensorRT refuses plans from another version
        ptr = _allocate(self.gpu_allocator, len(model))  # the weights
        if not ptr:
            return None
        return _Engine(header, model, [ptr], self.gpu_allocator)


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.model: bytes | None = None


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self._network = network
        self.num_errors = 0

    def parse(self, model: bytes) -> bool:
        import onnx

        try:
            onnx.load_from_string(model)
        except Exception:
            self.num_errors = 1
            return False
        self._network.model = model
        return True

    def get_error(self, index: int) -> str:
        return "FAKE: not an ONNX model"


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.builds = int(data or b"0")

    def serialize(self) -> bytes:
        return str(self.builds + 1).encode()


class _Profile:
    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes = (name, tuple(lo), tuple(opt), tuple(hi))


class _BuilderConfig:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = set()
        self.pools: dict[MemoryPoolType, int] = {}
        self.profiles: list[_Profile] = []
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.progress_monitor: IProgressMonitor | None = None
        self._timing: _TimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self._timing = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self._timing


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.gpu_allocator: IGpuAllocator | None = None
        self.num_DLA_cores = 0

    def create_network(self, flags: int) -> _Network:
        if int(_version().split(".")[0]) < 10:
            assert flags & (1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH), "8.x needs explicit batch"
        return _Network(flags)

    def create_builder_config(self) -> _BuilderConfig:
        return _BuilderConfig()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _BuilderConfig) -> bytes | None:
        if config.progress_monitor is not None:
            config.progress_monitor.phase_start("FAKE tactic selection", None, 2)
            config.progress_monitor.step_complete("FAKE tactic selection", 0)
            config.progress_monitor.phase_finish("FAKE tactic selection")
        scratch = min(config.pools.get(MemoryPoolType.WORKSPACE, 0), 1 << 20)
        ptr = _allocate(self.gpu_allocator, scratch)  # the builder's scratch memory, through its allocator
        if not ptr:
            return None
        _deallocate(self.gpu_allocator, ptr)
        import onnx

        graph = onnx.load_from_string(network.model).graph
        inp = graph.input[0]
        dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        shapes = config.profiles[0].shapes if config.profiles else (inp.name, dims, dims, dims)
        header = {
            "version": _version(), "min_shape": list(shapes[1]), "max_shape": list(shapes[3]),
            "strongly_typed": bool(network.flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED)),
            "flags": sorted(f.name for f in config.flags), "dla_core": config.DLA_core
            if config.default_device_type == DeviceType.DLA else None,
        }
        return PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.model
