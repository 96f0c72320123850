"""Retry policy arithmetic: how many attempts, and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter.

    ``retries`` is the number of tries *after* the first one, so a task runs at most
    ``retries + 1`` times. The wait before try ``n + 1`` is drawn uniformly from
    ``[0, min(max_backoff, backoff * 2 ** (n - 1))]`` ("full jitter"): retries of many
    tasks that failed together spread out instead of arriving as one wave.
    """

    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.retries > 1_000_000:  # (a store keeps attempts as a 32-bit integer)
            raise ValueError("retries must be at most 1,000,000 (bound the time instead)")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        # (the exponent capped: 2.0 ** 1024 overflows, and any ceiling is reached by 2 ** 64)
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(max(0, attempt - 1), 64))
        return (rng or random).uniform(0.0, ceiling)
