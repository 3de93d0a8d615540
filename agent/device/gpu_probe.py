"""GPU and board figures, from whichever source this machine has.

NVML (`nvidia-ml-py`) on x86 with an NVIDIA GPU, `jtop` (`jetson-stats`) on a
Jetson. Each is optional: a missing library or device is reported as absent
with the reason, never an error. Neither has run on real hardware here yet.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class NvmlProbe:
    name = "nvml"

    def __init__(self) -> None:
        import pynvml  # from nvidia-ml-py

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def read(self) -> list[dict[str, Any]]:
        nv = self._nvml
        out = []
        for i, h in enumerate(self._handles):
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h)
            out.append({
                "index": i, "name": nv.nvmlDeviceGetName(h),
                "util_percent": util.gpu, "memory_used_mb": round(mem.used / 2**20, 1),
                "memory_total_mb": round(mem.total / 2**20, 1),
                "temperature_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
            })
        return out


class JtopProbe:
    name = "jtop"

    def __init__(self) -> None:
        from jtop import jtop  # from jetson-stats

        self._jetson = jtop()
        self._jetson.start()

    def read(self) -> list[dict[str, Any]]:
        stats = dict(self._jetson.stats)
        return [{"index": 0, "name": "jetson", "util_percent": stats.get("GPU"),
                 "temperature_c": stats.get("Temp gpu") or stats.get("Temp GPU"),
                 "power_mw": stats.get("Power TOT")}]


def open_gpu_probe() -> tuple[NvmlProbe | JtopProbe | None, str | None]:
    """The first source that works, or None and why none did."""
    reasons = []
    for probe in (JtopProbe, NvmlProbe):
        try:
            return probe(), None
        except ImportError:
            reasons.append(f"{probe.name}: library not installed")
        except Exception as exc:  # library present, no device or no permission
            reasons.append(f"{probe.name}: {exc}")
    return None, "; ".join(reasons)
