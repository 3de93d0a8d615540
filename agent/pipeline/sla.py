"""The latency SLA monitor: per-stage budgets, the share of samples over budget, alerts with hysteresis.

Each tick it is given every stage's samples of the last `window_s` (decode, pre, infer, post, store,
capture→PUBACK). An alert is raised when the share over budget stays above `raise_rate` for
`raise_after_s`, and cleared when it stays below `clear_rate` for `clear_after_s`: a stage hovering
around its budget raises one alert, not one a second. Raised and cleared alerts are events
(`<prefix>/<id>/events/alert`); the active ones show in status and on the health page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from agent.profiles import Budgets

MIN_SAMPLES = 20  # fewer samples in the window say nothing either way


@dataclass
class _Stage:
    rate: float | None = None
    p95_ms: float | None = None
    samples: int = 0
    over_since: float | None = None
    under_since: float | None = None
    alert_since_ms: int | None = None  # set while an alert is raised


class SlaMonitor:
    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self._stages = {name: _Stage() for name in budgets.stages()}
        self.raised_total = 0

    def update(self, samples: dict[str, np.ndarray], now: float) -> list[dict]:
        """One tick; the alert events it raises or clears."""
        events = []
        b = self.budgets
        for name, budget in b.stages().items():
            st = self._stages[name]
            values = samples.get(name)
            st.samples = 0 if values is None else len(values)
            if values is None or len(values) < MIN_SAMPLES:
                st.rate = st.p95_ms = None
                st.over_since = st.under_since = None
                continue
            st.rate = float(np.mean(values > budget))
            st.p95_ms = float(np.percentile(values, 95))
            if st.alert_since_ms is None:
                st.over_since = (st.over_since or now) if st.rate > b.raise_rate else None
                if st.over_since is not None and now - st.over_since >= b.raise_after_s:
                    st.alert_since_ms, st.under_since = int(time.time() * 1000), None
                    self.raised_total += 1
                    events.append(self._event("raised", name, budget, st))
            else:
                st.under_since = (st.under_since or now) if st.rate < b.clear_rate else None
                if st.under_since is not None and now - st.under_since >= b.clear_after_s:
                    events.append(self._event("cleared", name, budget, st))
                    st.alert_since_ms, st.over_since = None, None
        return events

    def _event(self, kind: str, stage: str, budget: float, st: _Stage) -> dict:
        b = self.budgets
        if kind == "raised":
            reason = (f"{stage}: {st.rate:.0%} of samples over the {budget:.0f} ms budget for {b.raise_after_s:.0f} s "
                      f"(p95 {st.p95_ms:.0f} ms)")
        else:
            reason = f"{stage}: {st.rate:.0%} over the {budget:.0f} ms budget for {b.clear_after_s:.0f} s"
        return {"type": kind, "alert": "sla", "stage": stage, "budget_ms": budget,
                "violation_rate": round(st.rate or 0.0, 4),
                "p95_ms": None if st.p95_ms is None else round(st.p95_ms, 1),
                "window_s": b.window_s, "since_ms": st.alert_since_ms, "ts_ms": int(time.time() * 1000),
                "reason": reason}

    def active(self) -> list[str]:
        """The raised alerts, in words (health reasons, the page)."""
        out = []
        for name, st in self._stages.items():
            if st.alert_since_ms is not None:
                rate = "" if st.rate is None else f": {st.rate:.0%} of samples over budget"
                out.append(f"SLA alert, {name} over its {self.budgets.stages()[name]:.0f} ms budget{rate}")
        return out

    def status(self) -> dict:
        return {
            "window_s": self.budgets.window_s, "raised_total": self.raised_total, "alerts": self.active(),
            "stages": {name: {"budget_ms": self.budgets.stages()[name],
                              "violation_rate": None if st.rate is None else round(st.rate, 4),
                              "p95_ms": None if st.p95_ms is None else round(st.p95_ms, 1),
                              "samples": st.samples, "alert": st.alert_since_ms is not None,
                              "since_ms": st.alert_since_ms}
                       for name, st in self._stages.items()},
        }
