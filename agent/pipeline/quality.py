"""The quality controller: picks a quality level per camera from what the device measures.

Pure logic, driven by one `Reading` per tick (agent.pipeline.quality_loop takes them), so recorded
sequences test it. The control law:

- a pressure (latency over the SLA, frames waiting or dropped before inference, GPU memory near
  its budget, a watched temperature at its trip point, clock throttling) held for `down_after_s`
  steps down one level;
- everything clear with margin (each figure below `clear_margin` of its threshold, temperatures
  below `clear_c`, CPU busy below `cpu_headroom_percent`) for the up wait steps up one level;
- nothing changes for `cooldown_s` after a change, and the hold timers start again after it;
- a step up undone within `undo_window_s` doubles the up wait (bounded by `up_after_max_s`); one
  that holds that long resets it.

Cameras are grouped by priority into tiers: a step down moves the lowest-priority tier among those
at the best level, a step up the highest-priority tier among those at the worst, so lower
priorities are degraded first and recovered last, and no tier is ever worse served than a lower
one. Levels stay between the profile's ceiling and floor in auto mode; fixed mode holds one level
for every camera. Each change is a Transition with its reason in words and figures.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Literal

from agent.profiles import Level, Profile

HISTORY = 50  # transitions kept
Mode = Literal["auto", "fixed"]


@dataclass(frozen=True)
class Reading:
    """What the device measured over the last tick; None: not measured (no frames, no GPU, ...)."""

    result_p95_ms: float | None = None  # capture → detections, all cameras, over the control window
    queue_p95_ms: float | None = None  # capture → inference start (the wait in the frame slot)
    drop_fraction: float | None = None  # frames overwritten before inference took them, of those captured
    gpu_memory_fraction: float | None = None  # used / budget
    gpu_refusals: int = 0  # new since the last reading
    cpu_percent: float | None = None  # busy share of all cores
    temperatures_c: dict[str, float] = field(default_factory=dict)  # watched zones only
    gpu_temperature_c: float | None = None
    throttle_events: int = 0  # new clock-throttle events since the last reading


@dataclass(frozen=True)
class Pressure:
    signal: str  # latency, queue, drops, gpu_memory, temperature, throttling
    text: str


@dataclass(frozen=True)
class Assessment:
    pressures: list[Pressure]
    blockers: list[str]  # why it is not clear (with margin) to step up, in words
    clear_text: str  # the figures that make it clear, for the step-up reason


def assess(r: Reading, profile: Profile, sla_ms: float) -> Assessment:
    """Each figure against its threshold (pressure) and its clear margin (blocker)."""
    c, t = profile.control, profile.thermal
    m = c.clear_margin
    pressures: list[Pressure] = []
    blockers: list[str] = []
    clear: list[str] = []

    numeric = (  # signal, value, threshold, what it is, how the numbers read, what the threshold is called
        ("latency", r.result_p95_ms, sla_ms, "p95 capture→result", "{:.0f} ms", "SLA "),
        ("queue", r.queue_p95_ms, sla_ms * c.queue_fraction, "p95 wait before inference", "{:.0f} ms", ""),
        ("drops", r.drop_fraction, c.drop_fraction, "frames dropped before inference", "{:.0%}", ""),
        ("gpu_memory", r.gpu_memory_fraction, c.gpu_memory_fraction, "GPU memory of its budget", "{:.0%}", ""),
    )
    for signal, value, limit, what, unit, name in numeric:
        if value is None:
            continue
        figure = f"{what} {unit.format(value)}"
        if value > limit:
            pressures.append(Pressure(signal, f"{figure} > {name}{unit.format(limit)}"))
        elif value > limit * m:
            blockers.append(f"{figure}, near {name}{unit.format(limit)}")
        else:
            clear.append(f"{figure} < {unit.format(limit * m)}")
    if r.gpu_refusals:
        pressures.append(Pressure("gpu_memory", f"GPU memory budget refused {r.gpu_refusals} allocation(s)"))
    for zone, temp in sorted(r.temperatures_c.items()):
        if temp >= t.trip_c:
            pressures.append(Pressure("temperature", f"{zone} at {temp:.0f} °C ≥ trip {t.trip_c:.0f} °C"))
        elif temp >= t.clear_c:
            blockers.append(f"{zone} at {temp:.0f} °C, not below {t.clear_c:.0f} °C")
    g = r.gpu_temperature_c
    if g is not None and t.gpu_trip_c is not None:
        if g >= t.gpu_trip_c:
            pressures.append(Pressure("temperature", f"GPU at {g:.0f} °C ≥ trip {t.gpu_trip_c:.0f} °C"))
        elif g >= (t.gpu_clear_c if t.gpu_clear_c is not None else t.gpu_trip_c - 5):
            blockers.append(f"GPU at {g:.0f} °C")
    if r.throttle_events:
        pressures.append(Pressure("throttling", f"CPU clock throttled {r.throttle_events} time(s)"))
    if r.cpu_percent is not None and r.cpu_percent >= c.cpu_headroom_percent:
        blockers.append(f"CPU {r.cpu_percent:.0f} % busy ≥ {c.cpu_headroom_percent:.0f} %")
    return Assessment(pressures, blockers, ", ".join(x for x in clear if x))


@dataclass(frozen=True)
class Transition:
    ts_ms: int
    from_level: str
    to_level: str
    direction: Literal["down", "up", "set"]
    signal: str  # the first pressure's signal; `clear` for a step up; `operator` or `start` for a set
    reason: str
    cameras: tuple[str, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["from"], d["to"] = d.pop("from_level"), d.pop("to_level")
        d["cameras"] = list(self.cameras)
        return d


class QualityController:
    def __init__(self, profile: Profile, levels: list[Level], sla_ms: float, mode: Mode, level: str | None,
                 now: float) -> None:
        self.profile = profile
        self.levels = levels  # the profile's, less those whose model variants are missing
        self.names = [lv.name for lv in levels]
        self.sla_ms = sla_ms
        self.mode: Mode = mode
        self.transitions: deque[Transition] = deque(maxlen=HISTORY)
        self.reason = "start"
        self.since_ms = int(time.time() * 1000)
        self.waiting = ""  # why no step up now, in words
        self.last: Assessment | None = None
        self._tiers: list[list[str]] = []  # camera names, lowest priority first
        self._tier_level: list[int] = []
        self._start = self._nearest(level or profile.default_level)
        self._pressure_since: dict[str, float] = {}
        self._clear_since: float | None = None
        self._cooldown_until = now
        self._up_wait = profile.control.up_after_s
        self._last_up: float | None = None

    # -- levels -----------------------------------------------------------------------
    def _nearest(self, name: str) -> int:
        """The index of `name`, or of the next available level below it (a skipped level's place)."""
        if name in self.names:
            return self.names.index(name)
        wanted = self.profile.index(name)
        for i, lv in enumerate(self.levels):
            if self.profile.index(lv.name) >= wanted:
                return i
        return len(self.levels) - 1

    @property
    def ceiling(self) -> int:
        return self._nearest(self.profile.ceiling)

    @property
    def floor(self) -> int:
        return self._nearest(self.profile.floor_level)

    def set_cameras(self, priorities: dict[str, int]) -> None:
        """The running cameras and their priorities; a new tier starts at the level of its neighbours."""
        old = {name: self._tier_level[i] for i, tier in enumerate(self._tiers) for name in tier}
        groups: dict[int, list[str]] = {}
        for name, prio in priorities.items():
            groups.setdefault(prio, []).append(name)
        tiers = [sorted(groups[p]) for p in sorted(groups)]
        if tiers == self._tiers:
            return
        levels = []
        for tier in tiers:
            known = [old[n] for n in tier if n in old]
            levels.append(max(known) if known else (max(old.values()) if old else self._start))
        for i in range(len(levels) - 2, -1, -1):  # keep the order: a lower priority never better served
            levels[i] = max(levels[i], levels[i + 1])
        self._tiers, self._tier_level = tiers, levels

    def camera_level(self, camera: str) -> Level:
        for i, tier in enumerate(self._tiers):
            if camera in tier:
                return self.levels[self._tier_level[i]]
        return self.levels[self._start]

    def shed(self, camera: str) -> bool:
        """Shed: no inference for this camera (a `shed` level, and not of the highest priority)."""
        top = self._tiers[-1] if self._tiers else []
        return camera not in top and self.camera_level(camera).shed

    @property
    def device_level(self) -> Level:
        """The level of the highest-priority cameras: it picks what is shared (model variant, batch)."""
        return self.levels[self._tier_level[-1]] if self._tier_level else self.levels[self._start]

    @property
    def level(self) -> Level:
        """The most degraded cameras' level (all of them, with equal priorities)."""
        return self.levels[self._tier_level[0]] if self._tier_level else self.levels[self._start]

    # -- operator -----------------------------------------------------------------------
    def configure(self, mode: Mode, level: str | None, sla_ms: float, now: float) -> Transition | None:
        """A new mode, level or SLA from the config (the `quality` command, desired config)."""
        self.sla_ms = sla_ms
        previous = self.mode
        self.mode = mode
        if mode == "fixed":
            assert level is not None
            return self._set_all(self._nearest(level), now, "operator", f"operator: fixed at {level}")
        self._reset_timers(now)
        if previous == "fixed":
            target = self._nearest(level) if level else None
            if target is not None:
                return self._set_all(target, now, "operator", f"operator: auto from {self.names[target]}")
            self.reason = "operator: auto"
        return None

    def _set_all(self, index: int, now: float, signal: str, reason: str) -> Transition | None:
        before = self.level.name
        changed = [n for i, tier in enumerate(self._tiers) for n in tier if self._tier_level[i] != index]
        self._start = index
        self._tier_level = [index] * len(self._tiers)
        self._reset_timers(now)
        if not changed and before == self.names[index]:
            return None
        return self._record(before, self.names[index], "set", signal, reason, changed)

    # -- the control law ----------------------------------------------------------------
    def update(self, reading: Reading, now: float) -> Transition | None:
        a = self.last = assess(reading, self.profile, self.sla_ms)
        if self.mode == "fixed" or not self._tiers:
            self.waiting = "fixed by the operator" if self.mode == "fixed" else "no cameras"
            return None
        if self._last_up is not None and now - self._last_up >= self.profile.control.undo_window_s:
            self._up_wait, self._last_up = self.profile.control.up_after_s, None  # the step up held
        if now < self._cooldown_until:
            self.waiting = f"cooling down for {self._cooldown_until - now:.0f} s"
            return None
        held = {p.signal for p in a.pressures}
        for signal in list(self._pressure_since):
            if signal not in held:
                del self._pressure_since[signal]
        for p in a.pressures:
            self._pressure_since.setdefault(p.signal, now)
        due = [p for p in a.pressures if now - self._pressure_since[p.signal] >= self.profile.control.down_after_s]
        if due:
            self._clear_since = None
            return self._step_down(due, now)
        if a.pressures or a.blockers:
            self._clear_since = None
            self.waiting = "; ".join([p.text for p in a.pressures] + a.blockers)
            return None
        if self._clear_since is None:
            self._clear_since = now
        clear_for = now - self._clear_since
        if clear_for < self._up_wait:
            self.waiting = f"clear for {clear_for:.0f} of {self._up_wait:.0f} s"
            return None
        return self._step_up(a, now)

    def _step_down(self, due: list[Pressure], now: float) -> Transition | None:
        best = min(self._tier_level)
        if best >= self.floor:
            self.waiting = f"at the floor ({self.names[self.floor]}): " + "; ".join(p.text for p in due)
            return None
        tier = self._tier_level.index(best)  # the lowest priority among those best served
        self._tier_level[tier] += 1
        if self._last_up is not None and now - self._last_up < self.profile.control.undo_window_s:
            self._up_wait = min(self._up_wait * 2, self.profile.control.up_after_max_s)  # it flapped: wait longer
        self._last_up = None
        reason = "; ".join(f"{p.text} for {now - self._pressure_since[p.signal]:.0f} s" for p in due)
        self._reset_timers(now)
        return self._record(self.names[best], self.names[best + 1], "down", due[0].signal, reason, self._tiers[tier])

    def _step_up(self, a: Assessment, now: float) -> Transition | None:
        worst = max(self._tier_level)
        if worst <= self.ceiling:
            self.waiting = f"at the ceiling ({self.names[self.ceiling]})"
            return None
        tier = len(self._tier_level) - 1 - self._tier_level[::-1].index(worst)  # highest priority among worst
        self._tier_level[tier] -= 1
        reason = f"all clear for {now - (self._clear_since or now):.0f} s"
        if a.clear_text:
            reason += f": {a.clear_text}"
        self._last_up = now
        self._reset_timers(now)
        return self._record(self.names[worst], self.names[worst - 1], "up", "clear", reason, self._tiers[tier])

    def _reset_timers(self, now: float) -> None:
        self._pressure_since.clear()
        self._clear_since = None
        self._cooldown_until = now + self.profile.control.cooldown_s

    def _record(self, before: str, after: str, direction: Literal["down", "up", "set"], signal: str, reason: str,
                cameras: list[str]) -> Transition:
        t = Transition(int(time.time() * 1000), before, after, direction, signal, reason, tuple(cameras))
        self.transitions.append(t)
        self.reason = reason
        self.since_ms = t.ts_ms
        self.waiting = ""
        return t

    def status(self) -> dict:
        return {
            "mode": self.mode, "profile": self.profile.name, "level": self.level.name, "levels": self.names,
            "reason": self.reason, "since_ms": self.since_ms, "sla_ms": self.sla_ms,
            "floor": self.names[self.floor], "ceiling": self.names[self.ceiling],
            "up_wait_s": self._up_wait, "waiting": self.waiting,
            "cameras": {n: self.levels[self._tier_level[i]].name for i, tier in enumerate(self._tiers) for n in tier},
            "shed": sorted(n for tier in self._tiers for n in tier if self.shed(n)),
            "transitions": [t.to_dict() for t in self.transitions],
        }
