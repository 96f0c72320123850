"""Hedged calls: when a call takes longer than most calls of its route, a second copy is
sent, and whichever answers first is the answer.

A route's hedging is off unless it sets ``hedge_percentile``. The delay before the copy
is that percentile of the route's recent call latencies (the last ``window`` successful
calls), at least ``min_delay`` seconds, and no copy goes before ``min_samples`` calls
have been seen. The copy costs a second request: the loser is cancelled once the winner
answers, and its tokens are counted as spent if it completed anyway. Only the winner is
returned (so only it is recorded as the task's step).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """When to send a hedged copy of a call (see the module's documentation)."""

    percentile: float = 95.0
    min_delay: float = 1.0
    min_samples: int = 20
    window: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.percentile < 100:
            raise ValueError("hedge_percentile must be between 0 and 100 (exclusive)")
        if self.min_delay < 0 or not math.isfinite(self.min_delay):
            raise ValueError("hedge_min_delay must be a finite number >= 0")
        if self.min_samples < 1 or self.window < self.min_samples:
            raise ValueError("hedging needs min_samples >= 1 and window >= min_samples")


class Latencies:
    """The latencies of a route's recent successful calls, and their percentile."""

    __slots__ = ("_cached", "_samples", "_settings", "_since")

    def __init__(self, settings: HedgeSettings) -> None:
        self._settings = settings
        self._samples: deque[float] = deque(maxlen=settings.window)
        self._cached: float | None = None
        self._since = 0  # samples added since the percentile was computed

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._since += 1

    def hedge_delay(self) -> float | None:
        """Seconds after which a call gets a hedged copy (``None``: not yet known)."""
        settings = self._settings
        if len(self._samples) < settings.min_samples:
            return None
        if self._cached is None or self._since >= max(1, len(self._samples) // 10):
            ordered = sorted(self._samples)
            index = min(len(ordered) - 1, math.ceil(settings.percentile / 100 * len(ordered)) - 1)
            self._cached = ordered[max(0, index)]
            self._since = 0
        return max(self._cached, settings.min_delay)
