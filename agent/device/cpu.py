"""CPU busy share between two readings, measured by the caller's own baseline.

psutil.cpu_percent() keeps one baseline per process, so two callers (telemetry, the quality loop)
would make each other's figures meaningless; each keeps its own CpuBusy instead.
"""

from __future__ import annotations

import psutil


class CpuBusy:
    def __init__(self) -> None:
        self._before = psutil.cpu_times()

    def percent(self) -> float:
        """Busy share of all cores since the previous call (or since creation)."""
        now = psutil.cpu_times()
        before, self._before = self._before, now
        total = sum(now) - sum(before)
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
        return round(100.0 * (1.0 - idle / total), 1) if total > 0 else 0.0
