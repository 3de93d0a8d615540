"""Exponential backoff with jitter, so many cameras do not retry in lock-step."""

from __future__ import annotations

import random


class Backoff:
    """Delays initial, 2×, 4× … capped at max, each drawn from [d/2, d] or, with
    full jitter (for many devices hitting one broker), from [0, d]."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None,
                 full_jitter: bool = False) -> None:
        self.initial_s, self.max_s = initial_s, max_s
        self.attempts = 0
        self._rng = rng or random.Random()
        self._floor = 0.0 if full_jitter else 0.5

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * (2 ** min(self.attempts, 32)))
        self.attempts += 1
        return self._rng.uniform(ceiling * self._floor, ceiling)

    def reset(self) -> None:
        self.attempts = 0
