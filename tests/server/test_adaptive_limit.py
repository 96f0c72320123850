"""The bound on requests in progress follows the rate at which they finish (Little's law),
on a fake clock: no timing in the assertions."""

from __future__ import annotations

import pytest

from legion.errors import ConfigError
from legion.server.admission import AdaptiveLimit
from legion.server.settings import ServerSettings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def finish(
    bound: AdaptiveLimit, clock: Clock, count: int, seconds: float, *, reached: bool = True
) -> None:
    """``count`` requests finish evenly over ``seconds`` (the bound ``reached`` or not)."""
    start = clock.now
    for i in range(1, count + 1):
        if reached:
            bound.reached()
        clock.now = start + seconds * i / count
        bound.finished()


def test_the_bound_is_what_finishes_in_the_target_time() -> None:
    clock = Clock()
    bound = AdaptiveLimit(ceiling=128, target=0.1, floor=8, window=0.5, clock=clock)
    assert bound.limit == 128  # until something has been measured
    finish(bound, clock, 150, 0.5)  # 300 requests/s
    assert bound.limit == 30  # 300/s * 0.1 s
    finish(bound, clock, 100, 0.5)  # 200/s: smoothed with the window before
    assert bound.limit == 25
    finish(bound, clock, 5000, 0.5)  # far more than the ceiling allows
    assert bound.limit == 128


def test_below_the_bound_the_rate_is_demand_and_the_bound_grows_back() -> None:
    clock = Clock()
    bound = AdaptiveLimit(ceiling=128, target=0.1, floor=8, window=0.5, clock=clock)
    finish(bound, clock, 5, 0.5, reached=False)  # a quiet server: 10 requests/s asked
    assert bound.limit == 128  # a burst of 100 at once is still taken on
    finish(bound, clock, 50, 0.5)  # saturated at 100/s
    assert bound.limit == 10
    finish(bound, clock, 10, 0.5, reached=False)  # the overload is over
    assert bound.limit == 20
    finish(bound, clock, 10, 0.5, reached=False)
    finish(bound, clock, 10, 0.5, reached=False)
    finish(bound, clock, 10, 0.5, reached=False)
    assert bound.limit == 128


def test_a_slow_server_keeps_the_floor_and_does_not_collapse() -> None:
    clock = Clock()
    bound = AdaptiveLimit(ceiling=128, target=0.1, floor=8, window=0.5, clock=clock)
    for _ in range(10):
        finish(bound, clock, 5, 0.5)  # 10/s: 1 in progress would do; the floor holds
        assert bound.limit == 8


def test_without_a_target_the_bound_is_fixed() -> None:
    clock = Clock()
    bound = AdaptiveLimit(ceiling=32, target=None, clock=clock)
    finish(bound, clock, 10, 5.0)
    assert bound.limit == 32


def test_a_target_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="target_latency"):
        ServerSettings(target_latency=0)
    assert ServerSettings(target_latency=None).target_latency is None


def spans(bound: AdaptiveLimit, clock: Clock, count: int, seconds: float, took: float) -> None:
    """``count`` requests finish evenly over ``seconds``, each ``took`` seconds after it was
    admitted; the bound is never reached."""
    start = clock.now
    for i in range(1, count + 1):
        clock.now = start + seconds * i / count
        bound.finished(took)


def test_requests_queueing_inside_lower_the_bound_though_it_was_never_reached() -> None:
    clock = Clock()
    bound = AdaptiveLimit(ceiling=128, target=0.02, floor=8, window=0.5, clock=clock)
    # 64 clients, never the 128 of the ceiling: 1000 requests/s, each 64 ms (Little).
    spans(bound, clock, 500, 0.5, 0.064)
    assert bound.limit == 20  # 1000/s * 0.02 s: the rest is refused, not queued
    spans(bound, clock, 500, 0.5, 0.015)  # now within the target: only demand measured
    assert bound.limit == 40  # doubling back towards the ceiling


def test_one_slow_request_at_a_time_is_no_queue() -> None:
    clock = Clock()
    bound = AdaptiveLimit(ceiling=128, target=0.1, floor=8, window=0.5, clock=clock)
    spans(bound, clock, 2, 0.5, 0.3)  # each slower than the target, 1.2 in progress
    assert bound.limit == 128


def slow_for_everyone(bound: AdaptiveLimit, clock: Clock, took: float) -> None:
    """One window in which the bound is reached and every request takes ``took`` seconds
    however many are in progress: the process itself is slow."""
    count = max(1, int(bound.limit / took * bound.window))
    start = clock.now
    for i in range(1, count + 1):
        bound.reached()
        clock.now = start + bound.window * i / count
        bound.finished(took)


def test_a_cut_that_does_not_make_requests_faster_is_undone() -> None:
    clock = Clock()
    bound = AdaptiveLimit(ceiling=128, target=0.1, floor=8, window=0.5, clock=clock)
    limits = []
    for _ in range(12):
        slow_for_everyone(bound, clock, 0.15)
        limits.append(bound.limit)
    assert min(limits) >= 64, limits  # cut by the rate alone it fell to the floor


def test_a_cut_that_makes_requests_faster_stays() -> None:
    clock = Clock()
    bound = AdaptiveLimit(ceiling=128, target=0.1, floor=8, window=0.5, clock=clock)
    limits = []
    for _ in range(6):
        # A server that finishes 300 requests a second: by Little's law each one takes
        # (requests in progress) / 300 seconds.
        took = bound.limit / 300
        count = int(300 * bound.window)
        start = clock.now
        for i in range(1, count + 1):
            bound.reached()
            clock.now = start + bound.window * i / count
            bound.finished(took)
        limits.append(bound.limit)
    assert all(29 <= limit <= 30 for limit in limits[-3:]), limits  # 300/s * 0.1 s


class Waits:
    """What the store says its calls waited (``Store.queue_delay``)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.asked = 0

    def __call__(self) -> float | None:
        self.asked += 1
        return self.seconds


def test_a_store_that_keeps_up_keeps_the_bound_however_long_requests_take() -> None:
    # Under a 10x overload the event loop spends its turns reading and refusing: every
    # admitted request takes longer than the target, yet the store waits for work. Cut,
    # the bound only admitted fewer (a tenth of what the server sustains).
    clock = Clock()
    waits = Waits(0.002)
    bound = AdaptiveLimit(
        ceiling=128, target=0.1, floor=8, window=0.5, clock=clock, queue_delay=waits
    )
    for _ in range(6):
        slow_for_everyone(bound, clock, 0.25)
        assert bound.limit == 128
    assert waits.asked == 6  # once a window


def test_requests_queueing_for_the_store_cut_the_bound() -> None:
    clock = Clock()
    waits = Waits(0.08)  # over half the target, waiting for the store's writer
    bound = AdaptiveLimit(
        ceiling=128, target=0.1, floor=8, window=0.5, clock=clock, queue_delay=waits
    )
    finish(bound, clock, 150, 0.5)  # 300 requests/s: what the store writes
    assert bound.limit == 30  # 300/s * 0.1 s
    waits.seconds = 0.01  # the queue is gone; the bound is still reached
    finish(bound, clock, 15, 0.5)
    assert bound.limit == 60  # growing back towards the ceiling


def test_without_a_call_to_the_store_the_requests_time_decides() -> None:
    clock = Clock()
    bound = AdaptiveLimit(
        ceiling=128, target=0.1, floor=8, window=0.5, clock=clock, queue_delay=Waits(None)
    )
    finish(bound, clock, 150, 0.5)  # answered without the store (none began a call)
    assert bound.limit == 30
