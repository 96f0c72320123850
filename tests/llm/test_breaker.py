"""The circuit breaker's states on a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from legion.llm.breaker import Breaker, BreakerSettings, BreakerState, Ticket
from legion.testing import FakeClock


def state(breaker: Breaker) -> BreakerState:
    """The breaker's state now (read through a call: it changes across awaits)."""
    return breaker.state


def make(clock: FakeClock, **settings: float) -> Breaker:
    return Breaker(BreakerSettings(**settings), timer=clock)  # type: ignore[arg-type]


async def fail_in_a_row(breaker: Breaker, n: int) -> None:
    tickets = [await breaker.wait_turn() for _ in range(n)]
    for ticket in tickets:
        breaker.failed(ticket)


async def test_failures_in_a_row_open_it_and_a_success_between_resets_the_count() -> None:
    clock = FakeClock()
    breaker = make(clock, failures=3)
    await fail_in_a_row(breaker, 2)
    breaker.succeeded(await breaker.wait_turn())
    await fail_in_a_row(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    await fail_in_a_row(breaker, 1)
    assert state(breaker) is BreakerState.OPEN
    assert breaker.statistics().opened == 1 and breaker.statistics().open_for == 1.0


async def test_calls_wait_while_open_one_probe_goes_and_its_success_lets_all_go() -> None:
    clock = FakeClock()
    breaker = make(clock, failures=1)
    await fail_in_a_row(breaker, 1)
    waiters = [asyncio.ensure_future(breaker.wait_turn()) for _ in range(5)]
    await clock.advance(0.999)
    assert not any(w.done() for w in waiters) and breaker.statistics().waiting == 5
    await clock.advance(0.001)
    probes = [w.result() for w in waiters if w.done()]
    assert len(probes) == 1 and probes[0].probe and breaker.state is BreakerState.HALF_OPEN
    await clock.advance(10)
    assert sum(w.done() for w in waiters) == 1  # the others wait for the probe's answer
    breaker.succeeded(probes[0])
    await clock.settle()
    assert all(w.done() for w in waiters) and state(breaker) is BreakerState.CLOSED
    assert not any(w.result().probe for w in waiters if w.result() is not probes[0])


async def test_failed_probes_reopen_it_for_longer_up_to_the_cap() -> None:
    clock = FakeClock()
    breaker = make(clock, failures=1, open_for=1.0, max_open_for=30.0)
    await fail_in_a_row(breaker, 1)
    probe_times = []
    for _ in range(8):
        ticket = await clock.run(breaker.wait_turn())
        assert ticket.probe
        probe_times.append(clock.now())
        breaker.failed(ticket)
    gaps = [b - a for a, b in itertools.pairwise(probe_times)]
    assert probe_times[0] == 1.0
    assert gaps == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert breaker.statistics().opened == 9 and breaker.statistics().probes == 8
    # A success brings the first open period back.
    breaker.succeeded(await clock.run(breaker.wait_turn()))
    await fail_in_a_row(breaker, 1)
    assert breaker.statistics().open_for == 1.0


async def test_probes_are_one_at_a_time_and_at_most_one_a_second() -> None:
    clock = FakeClock()
    breaker = make(clock, failures=1, open_for=0.1, max_open_for=0.1, probe_interval=1.0)
    await fail_in_a_row(breaker, 1)
    probe_times = []
    for _ in range(5):
        ticket = await clock.run(breaker.wait_turn())
        probe_times.append(clock.now())
        breaker.failed(ticket)
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(probe_times))


async def test_a_cancelled_probe_passes_the_turn_no_sooner_than_the_interval() -> None:
    clock = FakeClock()
    breaker = make(clock, failures=1)
    await fail_in_a_row(breaker, 1)
    first = await clock.run(breaker.wait_turn())
    waiter = asyncio.ensure_future(breaker.wait_turn())
    await clock.settle()
    breaker.abandoned(first)
    await clock.settle()
    assert not waiter.done() and breaker.state is BreakerState.OPEN
    await clock.advance(1.0)
    assert waiter.result().probe


async def test_results_of_calls_sent_before_a_change_are_stale() -> None:
    clock = FakeClock()
    breaker = make(clock, failures=2)
    early = [await breaker.wait_turn() for _ in range(5)]
    for ticket in early[:2]:
        breaker.failed(ticket)
    assert breaker.state is BreakerState.OPEN
    breaker.succeeded(early[2])  # sent while it was closed: says nothing of now
    for ticket in early[3:]:
        breaker.failed(ticket)
    assert breaker.state is BreakerState.OPEN and breaker.statistics().opened == 1


async def test_cancelling_a_waiter_leaves_the_others_waiting() -> None:
    clock = FakeClock()
    breaker = make(clock, failures=1)
    await fail_in_a_row(breaker, 1)
    probe = await clock.run(breaker.wait_turn())
    a, b = (asyncio.ensure_future(breaker.wait_turn()) for _ in range(2))
    await clock.settle()
    a.cancel()
    await asyncio.gather(a, return_exceptions=True)
    breaker.succeeded(probe)
    assert (await b) == Ticket(breaker._epoch, probe=False)
    assert breaker.statistics().waiting == 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="failures"):
        BreakerSettings(failures=-1)
    with pytest.raises(ValueError, match="open_for"):
        BreakerSettings(open_for=60, max_open_for=30)
    assert not BreakerSettings(failures=0).enabled
