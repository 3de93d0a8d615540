"""What the installed TensorRT can do, from its version number, never from the platform name.

8.5/8.6 (JetPack 5, 6.0), 10.3 (JetPack 6.1+), 10.12+ and 11 (x86). Below 8.5
there is no name-based I/O (`set_tensor_address`, `execute_async_v3`): refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engines.errors import BackendUnavailable

MINIMUM = (8, 5)


@dataclass(frozen=True)
class TrtFeatures:
    version: tuple[int, int, int]

    @classmethod
    def parse(cls, text: str) -> TrtFeatures:
        match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
        if not match:
            raise BackendUnavailable(f"cannot read TensorRT version {text!r}")
        version = (int(match[1]), int(match[2]), int(match[3] or 0))
        if version[:2] < MINIMUM:
            raise BackendUnavailable(f"TensorRT {text} is too old; 8.5 or newer is needed (name-based I/O)")
        return cls(version)

    @property
    def text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def async_allocator(self) -> bool:
        """10.0+: IGpuAllocator.allocate_async/deallocate_async replace allocate/deallocate."""
        return self.version >= (10, 0, 0)

    @property
    def user_managed_strategy(self) -> bool:
        """10.0+: create_execution_context(USER_MANAGED); before: ..._without_device_memory()."""
        return self.version >= (10, 0, 0)

    @property
    def device_memory_v2(self) -> bool:
        """10.1+: device_memory_size_v2 and set_device_memory(ptr, size)."""
        return self.version >= (10, 1, 0)

    @property
    def implicit_explicit_batch(self) -> bool:
        """10.0+: networks are always explicit-batch; the flag is gone."""
        return self.version >= (10, 0, 0)

    @property
    def progress_monitor(self) -> bool:
        """10.0+: IProgressMonitor reports build phases."""
        return self.version >= (10, 0, 0)

    @property
    def strongly_typed_qdq(self) -> bool:
        """10.12+: the INT8 builder flag is deprecated; QDQ models build as strongly typed networks."""
        return self.version >= (10, 12, 0)

    def precision_plan(self, has_qdq: bool, requested: str) -> str:
        """The build mode: 'int8-strongly-typed', 'int8+fp16', 'fp16' or 'fp32'."""
        if has_qdq:
            return "int8-strongly-typed" if self.strongly_typed_qdq else "int8+fp16"
        return "fp32" if requested == "fp32" else "fp16"
