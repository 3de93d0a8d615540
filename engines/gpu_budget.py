"""One GPU memory budget for the whole process, enforced before memory is taken.

Every device allocation the engines make or permit goes through `reserve`
first: TensorRT weights (through the budget-enforcing allocator), the shared
activation arena, I/O buffers, and the arena ONNX Runtime's CUDA provider may
grow to (`gpu_mem_limit`). A reservation that does not fit is refused with the
bytes needed and available; nothing is allocated. Use and peak go to telemetry.

Outside any allocator's reach, and so outside the budget: the CUDA context
itself and the cuDNN/cuBLAS handles (tens to hundreds of MiB, fixed per process).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from engines.errors import ModelLoadError

MIB = 1 << 20


class BudgetExceeded(ModelLoadError):
    """Loading this would take the process past `gpu.memory_budget_mb`."""

    def __init__(self, what: str, needed: int, available: int, limit: int) -> None:
        super().__init__(
            f"{what} needs {needed} bytes ({needed / MIB:.1f} MiB) of GPU memory; "
            f"{available} bytes ({available / MIB:.1f} MiB) of the {limit / MIB:.0f} MiB budget are free"
        )
        self.needed = needed
        self.available = available


@dataclass(frozen=True)
class BudgetSnapshot:
    limit_bytes: int
    used_bytes: int
    peak_bytes: int
    refusals: int
    holders: dict[str, int]

    def to_dict(self) -> dict:
        return {"budget_mb": round(self.limit_bytes / MIB, 1), "used_mb": round(self.used_bytes / MIB, 1),
                "peak_mb": round(self.peak_bytes / MIB, 1), "refusals": self.refusals,
                "holders_mb": {k: round(v / MIB, 1) for k, v in sorted(self.holders.items())}}


class GpuMemoryBudget:
    """Thread-safe byte accounting against a hard limit; reservations are named for the report."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes <= 0:
            raise ValueError("the GPU memory budget must be positive")
        self.limit = limit_bytes
        self._lock = threading.Lock()
        self._used = 0
        self._peak = 0
        self._refusals = 0
        self._holders: dict[str, int] = {}

    @classmethod
    def from_mb(cls, megabytes: int) -> GpuMemoryBudget:
        return cls(megabytes * MIB)

    def available(self) -> int:
        with self._lock:
            return self.limit - self._used

    def reserve(self, nbytes: int, holder: str) -> None:
        """Count `nbytes` against the budget, or raise BudgetExceeded and count nothing."""
        if nbytes < 0:
            raise ValueError("cannot reserve a negative size")
        with self._lock:
            free = self.limit - self._used
            if nbytes > free:
                self._refusals += 1
                raise BudgetExceeded(holder, nbytes, free, self.limit)
            self._used += nbytes
            self._peak = max(self._peak, self._used)
            self._holders[holder] = self._holders.get(holder, 0) + nbytes

    def try_reserve(self, nbytes: int, holder: str) -> bool:
        """`reserve` for allocators that must answer 'no' instead of raising."""
        try:
            self.reserve(nbytes, holder)
        except BudgetExceeded:
            return False
        return True

    def release(self, nbytes: int, holder: str) -> None:
        with self._lock:
            held = self._holders.get(holder, 0)
            if nbytes > held:
                raise ValueError(f"{holder} releases {nbytes} bytes but holds {held}")
            self._used -= nbytes
            if held == nbytes:
                del self._holders[holder]
            else:
                self._holders[holder] = held - nbytes

    def snapshot(self) -> BudgetSnapshot:
        with self._lock:
            return BudgetSnapshot(self.limit, self._used, self._peak, self._refusals, dict(self._holders))
