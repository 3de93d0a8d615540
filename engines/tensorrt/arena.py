"""One activation buffer shared by every loaded engine's execution context.

Contexts are created with user-managed device memory and all point into this
arena, sized to the largest engine's need: engines run one at a time on the
one stream (`exclusive()`), so they can share scratch space. Loading a bigger
engine grows the arena (inside the budget) and rebinds every context;
unloading the biggest shrinks it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from engines.gpu_budget import GpuMemoryBudget

Bind = Callable[[int, int], None]  # (device pointer, size) → point a context at it
HOLDER = "tensorrt:activation-arena"


class ActivationArena:
    def __init__(self, cuda: Any, budget: GpuMemoryBudget) -> None:
        self._cuda = cuda
        self._budget = budget
        self._lock = threading.RLock()
        self._users: dict[str, tuple[int, Bind]] = {}
        self.ptr = 0
        self.size = 0

    def exclusive(self) -> threading.RLock:
        """Held while an engine runs: the arena's contents belong to one engine at a time."""
        return self._lock

    def attach(self, owner: str, size: int, bind: Bind) -> None:
        """Make room for `size` bytes (raises BudgetExceeded if it cannot) and bind `owner` to the arena."""
        with self._lock:
            if size > self.size:
                self._resize(size)
            self._users[owner] = (size, bind)
            if self.ptr:
                bind(self.ptr, self.size)

    def detach(self, owner: str) -> None:
        with self._lock:
            self._users.pop(owner, None)
            need = max((s for s, _ in self._users.values()), default=0)
            if need < self.size:
                self._resize(need)

    def _resize(self, size: int) -> None:
        delta = size - self.size
        if delta > 0:
            self._budget.reserve(delta, HOLDER)  # before anything is freed: a refusal changes nothing
        old_ptr, old_size = self.ptr, self.size
        if old_ptr:
            self._cuda.free(old_ptr)  # free first: old + new together could pass the budget
        self.ptr, self.size = 0, 0
        try:
            if size:
                self.ptr, self.size = self._cuda.malloc(size), size
        except Exception:
            if delta > 0:
                self._budget.release(delta, HOLDER)
            self.ptr, self.size = (self._cuda.malloc(old_size), old_size) if old_size else (0, 0)
            self._rebind()
            raise
        if delta < 0:
            self._budget.release(-delta, HOLDER)
        self._rebind()

    def _rebind(self) -> None:
        for _, bind in self._users.values():
            if self.ptr:
                bind(self.ptr, self.size)
