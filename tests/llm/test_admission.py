"""Admission arithmetic on a fake clock: an attempt's waits, finding an untold limit
(slow start, then AIMD), a failing route's probes, calls of earlier attempts first."""

from __future__ import annotations

import asyncio
import itertools
import math
import random

import pytest

from legion import attempt
from legion.llm import Capacity
from legion.llm.types import RateLimitInfo
from legion.testing import FakeClock


def test_waits_pause_the_attempts_timeout_but_not_its_deadline() -> None:
    now = [100.0]
    time_ = attempt.AttemptTime(10.0, 30.0, now=lambda: now[0])
    now[0] += 2.0  # running
    time_.begin_wait()
    now[0] += 5.0
    assert time_.due() == 130.0  # while it waits, only the deadline can end it
    time_.begin_wait()  # a second wait at the same time (calls under gather)
    now[0] += 3.0
    time_.end_wait("capacity on route a", 105.0)
    now[0] += 1.0
    time_.end_wait("capacity on route b", 102.0)
    assert time_.waited() == pytest.approx(9.0)
    assert time_.running() == pytest.approx(2.0)
    assert time_.remaining() == pytest.approx(8.0)
    assert time_.due() == pytest.approx(100.0 + 9.0 + 10.0)
    now[0] += 8.0
    assert time_.remaining() == pytest.approx(0.0)
    assert not time_.past_deadline()
    assert time_.explain() == (
        "waited 9.0 s for capacity on route b; waited 5.0 s for capacity on route a; 10 s running"
    )
    # A wait too short to show says nothing ("waited 0.0 s for the breaker of route ...").
    time_.begin_wait()
    now[0] += 0.01
    time_.end_wait("the breaker of route b", 200.0)
    assert "breaker" not in time_.explain()


def test_a_deadline_counts_the_waits() -> None:
    now = [0.0]
    time_ = attempt.AttemptTime(None, 5.0, now=lambda: now[0])
    time_.begin_wait()
    now[0] = 5.0
    assert time_.past_deadline()
    assert time_.remaining() == 0.0
    assert attempt.AttemptTime(None, None, now=lambda: 0.0).remaining() is None


async def test_the_queue_reports_its_wait_to_the_attempt() -> None:
    clock = FakeClock()
    capacity = Capacity("default", rpm=60, timer=clock, rng=random.Random(1))
    times = []
    running = []

    async def one() -> None:
        time_ = attempt.AttemptTime(1.0, now=clock.now)
        attempt.CURRENT.set(time_)
        async with capacity.reserve(1):
            times.append(time_)
            running.append(time_.running())

    await clock.run(asyncio.gather(*(asyncio.create_task(one()) for _ in range(5))))
    assert times[0].waited() == 0.0
    assert [round(t.waited()) for t in times[1:]] == [1, 2, 3, 4]
    assert running == [0.0] * 5  # the wait used none of the 1 s timeout
    assert "for capacity on route default (60 rpm)" in times[4].explain()


async def test_calls_of_earlier_attempts_go_first() -> None:
    clock = FakeClock()
    capacity = Capacity("c", rpm=60, timer=clock, rng=random.Random(1))
    early = attempt.AttemptTime(None, now=clock.now)
    late = attempt.AttemptTime(None, now=clock.now)
    order: list[str] = []

    async def call(name: str, time_: attempt.AttemptTime) -> None:
        attempt.CURRENT.set(time_)
        async with capacity.reserve(1):
            order.append(name)

    async def scenario() -> None:
        first = asyncio.create_task(call("first", late))
        await asyncio.sleep(0)
        queued = [asyncio.create_task(call(f"late-{i}", late)) for i in range(3)]
        await asyncio.sleep(0)
        # The second call of an attempt that started earlier jumps the new ones' queue.
        ahead = asyncio.create_task(call("early", early))
        await asyncio.gather(first, *queued, ahead)

    await clock.run(scenario())
    # late-0 held the head of the queue already; the earlier attempt's call comes next.
    assert order == ["first", "late-0", "early", "late-1", "late-2"]


async def test_slow_start_sends_a_small_burst_then_doubles() -> None:
    clock = FakeClock()
    capacity = Capacity("untold", discover=True, timer=clock, rng=random.Random(1))
    starts: list[float] = []

    async def one() -> None:
        async with capacity.reserve(1) as slot:
            starts.append(clock.now())
            slot.settle(1)

    await clock.run(asyncio.gather(*(one() for _ in range(400))))
    first_second = sum(1 for t in starts if t < 1.0)
    assert first_second <= 15  # 8 a second, then 16: not 400 at once
    per_second = [sum(1 for t in starts if s <= t < s + 1) for s in range(int(starts[-1]) + 1)]
    assert per_second[2] > per_second[0] * 2  # it grows while callers queue
    stats = capacity.statistics()
    assert stats.found_rpm is not None and stats.found_rpm > 8 * 60


async def test_slow_start_does_not_grow_a_rate_the_calls_do_not_use() -> None:
    # Behind a token limit the callers queue for tokens, not requests: the request rate
    # found doubled every second all the same (1.8e56 rpm after 300 calls), and an
    # unadvertised request limit would then take ~180 429s to halve it back.
    clock = FakeClock()
    capacity = Capacity("tokens", discover=True, timer=clock, rng=random.Random(1))

    async def one() -> None:
        async with capacity.reserve(100) as slot:  # 1 call a second, once it is learned
            slot.settle(100)
        capacity.observe(RateLimitInfo(limit_tokens=6000), sent_at=slot.started_at)

    await clock.run(asyncio.gather(*(one() for _ in range(120))))
    stats = capacity.statistics()
    assert clock.now() > 60  # (two minutes of calls)
    assert stats.found_rpm is not None and stats.found_rpm <= 8 * 60 * 2, stats.found_rpm


async def test_a_429_halves_the_rate_found_then_it_grows_additively() -> None:
    clock = FakeClock()
    capacity = Capacity("untold", discover=True, timer=clock, rng=random.Random(1))
    found = capacity.statistics().found_rpm
    assert found == 8 * 60
    async with capacity.reserve(1) as slot:
        sent = slot.started_at
        slot.settle(1)  # the route works
    clock_now = clock.now()
    capacity.rate_limited(None, sent_at=sent + 1e-9 if sent == clock_now else sent)
    assert capacity.statistics().found_rpm == pytest.approx(found * 0.5)
    await clock.advance(1.0)

    async def success() -> None:
        async with capacity.reserve(1) as slot:
            slot.settle(1)

    await clock.run(success())
    assert capacity.statistics().found_rpm == pytest.approx(found * 0.5 + 6.0)


async def test_a_failing_route_starts_one_probe_a_second_and_recovers_at_once() -> None:
    clock = FakeClock()
    capacity = Capacity("c", rpm=6000, timer=clock, rng=random.Random(1))

    # A storm: three 429s in a row, none of them followed by a success.
    async def rejected() -> None:
        async with capacity.reserve(1) as slot:
            pass
        capacity.rate_limited(0.0, sent_at=slot.started_at)

    for _ in range(3):
        await clock.run(rejected())
    assert capacity.statistics().failing
    factor_rpm = capacity.statistics().effective_rpm
    starts: list[float] = []

    async def probe() -> None:
        async with capacity.reserve(1) as slot:
            starts.append(clock.now())
        capacity.rate_limited(0.0, sent_at=slot.started_at)

    await clock.run(asyncio.gather(*(probe() for _ in range(10))))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 1.0 - 1e-9
    assert capacity.statistics().effective_rpm == factor_rpm  # no decrease while failing

    # One success ends the storm: the rate before it, at once.
    async def success() -> None:
        async with capacity.reserve(1) as slot:
            slot.settle(1)

    await clock.run(success())
    stats = capacity.statistics()
    assert not stats.failing
    assert factor_rpm is not None and factor_rpm < 6000  # the storm's first 429s lowered it
    assert stats.effective_rpm == 6000  # the rate before the storm's first 429
    assert capacity.headroom(1.0) > 50


def test_headroom_is_rate_times_horizon_less_the_queue() -> None:
    capacity = Capacity("c", rpm=600)
    assert capacity.headroom(3.0) == pytest.approx(600 / 60 * 0.98 * 3.0)
    assert Capacity("unlimited").headroom(3.0) == math.inf


async def test_a_raised_lane_has_headroom_while_the_batch_fills_the_route() -> None:
    clock = FakeClock()
    capacity = Capacity("c", rpm=600, timer=clock, rng=random.Random(1))  # 9.8 starts/s
    started: list[int] = []

    async def call(priority: int) -> None:
        attempt.CURRENT.set(attempt.AttemptTime(None, now=clock.now, priority=priority))
        async with capacity.reserve(1):
            started.append(priority)

    async def scenario() -> None:
        batch = [asyncio.create_task(call(0)) for _ in range(40)]
        await asyncio.sleep(0)
        # One call started at once, 39 queue: the batch has no headroom left.
        assert capacity.headroom(3.0) == pytest.approx(9.8 * 3.0 - 39)
        # The lane of priority 10 counts only its own calls, at (1 - lower_share) of the
        # rate: the lower lane keeps its guaranteed share.
        assert capacity.headroom(3.0, priority=10) == pytest.approx(9.8 * 0.9 * 3.0)
        raised = [asyncio.create_task(call(10)) for _ in range(5)]
        await asyncio.sleep(0)
        assert capacity.headroom(3.0, priority=10) == pytest.approx(9.8 * 0.9 * 3.0 - 5)
        assert capacity.headroom(3.0, priority=0) == pytest.approx(9.8 * 0.9 * 3.0 - 44)
        await asyncio.gather(*batch, *raised)

    await clock.run(scenario())
    # The first batch call started, the second held the head; the raised ones came next,
    # ahead of the rest of the batch.
    assert started[:7] == [0, 0, 10, 10, 10, 10, 10]
