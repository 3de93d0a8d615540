"""Bounded latency windows: many samples at once keep only the newest, like one at a time."""

from __future__ import annotations

from agent.measure import LatencyWindow


def test_extend_matches_adding_one_by_one_and_keeps_only_the_window() -> None:
    one, many = LatencyWindow(8), LatencyWindow(8)
    values = [float(v) for v in range(1, 21)]
    for v in values[:5]:
        one.add(v)
    many.extend(values[:5])
    assert one.percentiles(0, 50, 100) == many.percentiles(0, 50, 100) == [1.0, 3.0, 5.0]
    many.extend(values[5:])  # 15 more into a window of 8: only 13..20 remain
    assert many.percentiles(0, 100) == [13.0, 20.0]
