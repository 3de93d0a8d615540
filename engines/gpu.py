"""The process's GPU resources: the memory budget and, once a TensorRT engine loads, its host."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from engines.gpu_budget import GpuMemoryBudget

DEFAULT_BUDGET_MB = 1024


class GpuResources:
    """Owned by whoever runs detectors (the agent runtime, a CLI command); shared by all of them."""

    def __init__(self, budget_mb: int = DEFAULT_BUDGET_MB, device_id: int = 0,
                 trt_host_factory: Callable[[GpuMemoryBudget, int], Any] | None = None) -> None:
        self.budget = GpuMemoryBudget.from_mb(budget_mb)
        self.device_id = device_id
        self._trt_host_factory = trt_host_factory
        self._trt_host: Any = None
        self._lock = threading.Lock()

    def trt_host(self) -> Any:
        """The TensorRT runtime, arena and stream, made on first use; BackendUnavailable if absent."""
        with self._lock:
            if self._trt_host is None:
                if self._trt_host_factory is None:
                    from engines.tensorrt.backend import TrtHost

                    self._trt_host = TrtHost(self.budget, self.device_id)
                else:
                    self._trt_host = self._trt_host_factory(self.budget, self.device_id)
            return self._trt_host

    def report(self) -> dict:
        """Budget use and peak for telemetry and the health page."""
        out = self.budget.snapshot().to_dict()
        host = self._trt_host
        if host is not None:
            out["activation_arena_mb"] = round(host.arena.size / (1 << 20), 1)
        return out
