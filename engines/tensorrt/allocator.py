"""TensorRT's device allocations (engine weights, build scratch) counted against the budget.

`BudgetedAllocations` is the logic; `make_trt_allocator` wraps it in the
`IGpuAllocator` subclass TensorRT calls (synchronous methods on 8.x, the async
ones on 10.x; both are defined). Returning 0 tells TensorRT the allocation
failed; it then fails the load, and `last_refusal` says why.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from engines.gpu_budget import BudgetExceeded, GpuMemoryBudget

log = logging.getLogger(__name__)


class BudgetedAllocations:
    def __init__(self, cuda: Any, budget: GpuMemoryBudget, holder: str) -> None:
        self._cuda = cuda
        self._budget = budget
        self._holder = holder
        self._lock = threading.Lock()
        self.outstanding: dict[int, int] = {}
        self.last_refusal: BudgetExceeded | None = None

    def allocate(self, size: int) -> int:
        try:
            self._budget.reserve(size, self._holder)
        except BudgetExceeded as exc:
            self.last_refusal = exc
            log.warning("TensorRT allocation refused: %s", exc)
            return 0
        try:
            ptr = self._cuda.malloc(size)
        except Exception as exc:
            self._budget.release(size, self._holder)
            log.warning("TensorRT allocation of %d bytes failed in CUDA: %s", size, exc)
            return 0
        with self._lock:
            self.outstanding[ptr] = size
        return ptr

    def free(self, ptr: int) -> bool:
        with self._lock:
            size = self.outstanding.pop(int(ptr), None)
        if size is None:
            return False
        self._cuda.free(int(ptr))
        self._budget.release(size, self._holder)
        return True

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(self.outstanding.values())


def make_trt_allocator(trt: Any, allocations: BudgetedAllocations) -> Any:
    """An `IGpuAllocator` for `runtime.gpu_allocator` / `builder.gpu_allocator`."""

    class BudgetAllocator(trt.IGpuAllocator):
        def __init__(self) -> None:
            trt.IGpuAllocator.__init__(self)

        def allocate(self, size: int, alignment: int, flags: int) -> int:  # TensorRT 8.x
            return allocations.allocate(size)

        def allocate_async(self, size: int, alignment: int, flags: int, stream: int) -> int:  # 10.x
            return allocations.allocate(size)

        def deallocate(self, memory: int) -> bool:
            return allocations.free(memory)

        def deallocate_async(self, memory: int, stream: int) -> bool:
            return allocations.free(memory)

    return BudgetAllocator()
