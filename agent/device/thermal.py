"""Temperatures and clock throttling, read straight from sysfs (cheap enough for every control tick).

`/sys/class/thermal/thermal_zone*/{type,temp}` exists on Jetsons (cpu-thermal, gpu-thermal, tj-thermal,
...) and on most x86 boards (x86_pkg_temp, acpitz); temp is in millidegrees. Intel CPUs count
throttling in `/sys/devices/system/cpu/cpu*/thermal_throttle/*_throttle_count`. The root is
configurable (`quality.sysfs_root`) so tests can use a fake tree. Neither has run on a Jetson here.
"""

from __future__ import annotations

from pathlib import Path


def read_zones(sysfs_root: Path) -> dict[str, float]:
    """Zone type → °C; a type seen twice gets its zone number (`acpitz.1`). Unreadable zones are left out."""
    out: dict[str, float] = {}
    for zone in sorted((sysfs_root / "class" / "thermal").glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            celsius = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):  # a zone that is powered down reads as an error on some boards
            continue
        name = kind if kind not in out else f"{kind}.{zone.name.removeprefix('thermal_zone')}"
        out[name] = celsius
    return out


def throttle_count(sysfs_root: Path) -> int | None:
    """Clock-throttle events so far, summed over the CPUs; None where the kernel does not count them."""
    total, found = 0, False
    for counter in (sysfs_root / "devices" / "system" / "cpu").glob("cpu[0-9]*/thermal_throttle/*_throttle_count"):
        try:
            total += int(counter.read_text().strip())
            found = True
        except (OSError, ValueError):
            continue
    return total if found else None
