"""The CUDA calls TensorRT needs, through cuda-python; the seam tests replace.

`cuda.bindings.runtime` (cuda-python ≥ 12.6) with `cuda.cudart` (older
releases) as fallback. Every call's error code is checked.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from engines.errors import BackendUnavailable


class CudaError(RuntimeError):
    pass


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendUnavailable(f"cuda-python is not installed ({exc}); pip install cuda-python") from exc
    return cudart


class CudaRuntime:
    """Device and pinned host memory, copies and one stream."""

    def __init__(self, device_id: int = 0, cudart: Any = None) -> None:
        self._rt = cudart or import_cudart()
        self._check(self._rt.cudaSetDevice(device_id), "cudaSetDevice")
        self.device_id = device_id

    def _check(self, result: tuple, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self._rt.cudaGetErrorString(err)
            raise CudaError(f"{what}: {text.decode() if isinstance(text, bytes) else text}")
        return values[0] if len(values) == 1 else values

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(nbytes), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Page-locked host memory (fast async copies) and a uint8 NumPy view of it."""
        ptr = int(self._check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        return ptr, np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))

    def host_free(self, ptr: int) -> None:
        self._check(self._rt.cudaFreeHost(ptr), "cudaFreeHost")

    def copy_htod_async(self, dst: int, src_host: int, nbytes: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(dst, src_host, nbytes, kind, stream), "cudaMemcpyAsync H2D")

    def copy_dtoh_async(self, dst_host: int, src: int, nbytes: int, stream: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(dst_host, src, nbytes, kind, stream), "cudaMemcpyAsync D2H")

    def create_stream(self) -> int:
        return int(self._check(self._rt.cudaStreamCreate(), "cudaStreamCreate"))

    def destroy_stream(self, stream: int) -> None:
        self._check(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: int) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def mem_info(self) -> tuple[int, int]:
        free, total = self._check(self._rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(free), int(total)

    def device_properties(self) -> tuple[str, str]:
        """GPU name and compute capability ('8.7'): both invalidate a TensorRT plan."""
        prop = self._check(self._rt.cudaGetDeviceProperties(self.device_id), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"
