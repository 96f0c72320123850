"""Counters and latency percentiles of a worker, read as frozen snapshots."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from legion.task import Outcome


@dataclass(frozen=True, slots=True)
class Statistics:
    """A worker's counts since it started. Latencies are seconds per attempt."""

    in_flight: int
    leased: int
    succeeded: int
    failed: int
    dead: int
    retried: int
    cancelled: int
    released: int
    lost_leases: int
    p50: float | None
    p95: float | None
    p99: float | None
    abandoned: int = 0
    """Instances that ran on after their stop (their agent catches the cancellation)
    and were abandoned (see `legion.run.runner.abandon`)."""

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.dead + self.cancelled


class LatencySample:
    """A uniform reservoir sample of latencies (exact up to ``size`` values).

    Adding is O(1); the sample is sorted only when a quantile is asked for. Past
    ``size`` values, the sample skips ahead (Li's "Algorithm L"): it draws how many values
    go by before the next one it keeps, so adding a value it skips draws no random
    number (a worker adds one per finished task, for as long as it runs).
    """

    def __init__(self, size: int = 20_000, seed: int = 0) -> None:
        self._size = size
        self._values: list[float] = []
        self._sorted = True
        self._seen = 0
        self._rng = random.Random(seed)
        self._w = 1.0
        self._next = size  # the index (from 0) of the next value kept

    def add(self, value: float) -> None:
        seen = self._seen
        self._seen = seen + 1
        if seen < self._size:
            self._values.append(value)
            self._sorted = False
            if seen + 1 == self._size:
                self._skip()
            return
        if seen == self._next:
            self._values[self._rng.randrange(self._size)] = value
            self._sorted = False
            self._skip()

    def _skip(self) -> None:
        """Draw the next value kept, past the ``size`` first."""
        rng = self._rng
        self._w *= math.exp(math.log(1.0 - rng.random()) / self._size)
        if self._w >= 1.0:  # (a draw of exactly 0: keep the next)
            self._next = self._seen
            return
        gap = math.log(1.0 - rng.random()) / math.log1p(-self._w)
        self._next = self._seen + int(min(gap, float(2**62)))

    def quantile(self, q: float) -> float | None:
        if not self._values:
            return None
        if not self._sorted:
            self._values.sort()
            self._sorted = True
        i = min(len(self._values) - 1, max(0, round(q * (len(self._values) - 1))))
        return self._values[i]


class Counters:
    def __init__(self) -> None:
        self.leased = 0
        self.outcomes = dict.fromkeys(Outcome, 0)
        self.lost_leases = 0
        self.abandoned = 0
        self.latency = LatencySample()

    def count(self, outcome: Outcome, latency: float) -> None:
        self.outcomes[outcome] += 1
        if outcome not in (Outcome.RELEASED, Outcome.WAITING):
            self.latency.add(latency)

    def snapshot(self, in_flight: int) -> Statistics:
        o = self.outcomes
        return Statistics(
            in_flight=in_flight,
            leased=self.leased,
            succeeded=o[Outcome.SUCCEEDED],
            failed=o[Outcome.FAILED],
            dead=o[Outcome.DEAD],
            retried=o[Outcome.RETRY],
            cancelled=o[Outcome.CANCELLED],
            released=o[Outcome.RELEASED],
            lost_leases=self.lost_leases,
            p50=self.latency.quantile(0.50),
            p95=self.latency.quantile(0.95),
            p99=self.latency.quantile(0.99),
            abandoned=self.abandoned,
        )
