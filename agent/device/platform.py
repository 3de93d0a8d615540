"""What hardware this is, for `quality.profile: auto`: a Jetson's board string, or an NVIDIA driver."""

from __future__ import annotations

from pathlib import Path

MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")


def board_model(root: Path = Path("/")) -> str | None:
    """The device tree's model string (Jetsons: "NVIDIA Jetson Orin Nano Developer Kit"), if any."""
    for name in MODEL_FILES:
        try:
            text = (root / name).read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if text:
            return text
    if (root / "etc" / "nv_tegra_release").is_file():
        return "NVIDIA Jetson (model unknown)"
    return None


def nvidia_gpu_present(root: Path = Path("/")) -> bool:
    """The NVIDIA kernel driver is loaded (cheaper and surer than starting NVML)."""
    return (root / "proc" / "driver" / "nvidia" / "version").is_file() or (root / "dev" / "nvidia0").exists()
