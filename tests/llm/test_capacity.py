"""Capacity arithmetic on a fake clock: pacing, token reservations, AIMD,
learning from headers, FIFO waiting. No sockets, no real sleeping."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from typing import Any

import pytest

from legion.llm import Capacity, RateLimitInfo
from legion.testing import FakeClock


def make(clock: FakeClock, *, window: float = 60.0, **limits: Any) -> Capacity:
    """A capacity whose burst is 1 % of a minute's budget (``window=60``), whose every
    429 decreases the rate by 30 % (``first_decrease=0.7``) and whose successes add one
    request per minute back after a decrease (``recovery=18``), which keeps the
    arithmetic below readable; the defaults are tested at the end."""
    return Capacity(
        "test",
        timer=clock,
        rng=random.Random(1),
        window=window,
        burst=0.01,
        recovery=18.0,
        first_decrease=0.7,
        **limits,
    )


async def start_times(clock: FakeClock, capacity: Capacity, tokens: Sequence[int]) -> list[float]:
    """When each of ``tokens`` reservations, made at once and in order, started."""
    starts: list[tuple[int, float]] = []

    async def one(index: int, estimate: int) -> None:
        async with capacity.reserve(estimate):
            starts.append((index, clock.now()))

    await clock.run(asyncio.gather(*(one(i, t) for i, t in enumerate(tokens))))
    assert [index for index, _ in starts] == list(range(len(tokens)))  # FIFO
    return [time for _, time in starts]


def interval(rpm: float, burst: float = 0.01) -> float:
    return 60.0 / (rpm * (1 - burst))


async def test_requests_are_spread_evenly() -> None:
    clock = FakeClock()
    capacity = make(clock, rpm=60)  # starts may run 0.3 s ahead: none at once
    starts = await start_times(clock, capacity, [1] * 10)
    assert starts == pytest.approx([0.0] + [i * interval(60) - 0.3 for i in range(1, 10)])
    assert capacity.statistics().requests == 10


async def test_small_burst_then_pace_and_no_window_over_the_limit() -> None:
    clock = FakeClock()
    starts = await start_times(clock, make(clock, rpm=600), [1] * 700)
    # Starts may run ahead of the schedule by half of 1 % of the minute (0.3 s), the other
    # half being kept as a margin for the jitter between a start and its admission.
    assert starts[:3] == [0.0] * 3
    assert starts[3] == pytest.approx(3 * interval(600) - 0.3)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts[3:])]
    assert gaps == pytest.approx([interval(600)] * len(gaps))
    for index, start in enumerate(starts):  # every 60 s window holds at most 600 starts
        assert sum(1 for other in starts[index:] if other < start + 60) <= 600


async def test_unlimited_capacity_never_waits() -> None:
    clock = FakeClock()
    capacity = make(clock)
    assert await start_times(clock, capacity, [10**9] * 50) == [0.0] * 50
    assert clock.sleepers == 0


# -- tokens ----------------------------------------------------------------------

TPM = 6000  # a bucket of 60 tokens, refilled at 99 tokens/s
REFILL = TPM * 0.99 / 60


async def second_start_after(settle_with: int | None) -> float:
    """When a 50-token call starts after a 100-token call settled with ``settle_with``."""
    clock = FakeClock()
    capacity = make(clock, tpm=TPM)
    async with capacity.reserve(100) as slot:  # a full bucket may be overdrawn: level -40
        if settle_with is not None:
            slot.settle(settle_with)
    return (await start_times(clock, capacity, [50]))[0]


async def test_tokens_are_reserved_then_settled_with_real_usage() -> None:
    # A 50-token call starts once the bucket holds 55: its tokens, and half of the 10
    # left of the bucket (the other half is a margin for jitter, as for requests).
    assert await second_start_after(None) == pytest.approx((55 + 40) / REFILL)  # estimate kept
    assert await second_start_after(100) == pytest.approx((55 + 40) / REFILL)
    assert await second_start_after(10) == pytest.approx(5 / REFILL)  # refund of 90: level 50
    assert await second_start_after(300) == pytest.approx((55 + 240) / REFILL)  # 200 more


async def test_a_call_the_provider_refused_is_charged_nothing() -> None:
    # A request too large for the provider's limit, refused outright (429 with
    # x-should-retry: false): its estimate, kept charged, held every other caller of the
    # route for as long as the overdrawn bucket took to refill (51 s behind a 5,000-token
    # request on a 6,000 TPM route, seen).
    clock = FakeClock()
    capacity = make(clock, tpm=TPM)
    async with capacity.reserve(5000) as slot:
        slot.refund()
    assert (await start_times(clock, capacity, [50]))[0] == 0.0
    assert capacity.statistics().tokens_used == 0
    with pytest.raises(RuntimeError, match="already settled"):
        slot.settle(10)


async def test_no_refund_for_a_provider_that_counts_the_whole_reservation() -> None:
    clock = FakeClock()
    capacity = make(clock, tpm=TPM)
    async with capacity.reserve(100) as slot:
        slot.settle(10, refund=False)  # charged 100 (max_tokens counted), 10 used
    assert capacity.statistics().tokens_used == 10
    assert (await start_times(clock, capacity, [50]))[0] == pytest.approx((55 + 40) / REFILL)


async def test_a_refund_wakes_a_caller_waiting_for_tokens() -> None:
    clock = FakeClock()
    capacity = make(clock, tpm=TPM)
    release = asyncio.Event()
    started: list[float] = []

    async def big() -> None:
        async with capacity.reserve(100) as slot:
            await release.wait()
            slot.settle(10)

    async def small() -> None:
        async with capacity.reserve(50):
            started.append(clock.now())

    first = asyncio.create_task(big())
    await clock.settle()
    second = asyncio.create_task(small())
    await clock.advance(0.1)
    assert started == [] and capacity.statistics().waiting == 1
    release.set()
    await clock.settle()
    assert started == [pytest.approx(0.1)]  # not at 0.909 s: woken by the refund
    await asyncio.gather(first, second)
    assert capacity.statistics().tokens_used == 10


# -- in flight -------------------------------------------------------------------


async def test_max_in_flight_queues_the_rest_fifo() -> None:
    clock = FakeClock()
    capacity = make(clock, max_in_flight=2)
    gates = [asyncio.Event() for _ in range(5)]
    order: list[int] = []

    async def call(index: int) -> None:
        async with capacity.reserve(1):
            order.append(index)
            await gates[index].wait()

    tasks = [asyncio.create_task(call(i)) for i in range(5)]
    await clock.settle()
    stats = capacity.statistics()
    assert (order, stats.in_flight, stats.waiting) == ([0, 1], 2, 3)
    gates[1].set()
    await clock.settle()
    assert order == [0, 1, 2]
    for gate in gates:
        gate.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4] and capacity.statistics().in_flight == 0
    assert clock.now() == 0.0  # nobody slept


async def test_acquire_and_release_hold_a_turn_as_reserve_does() -> None:
    """`Capacity.acquire` is `reserve` without a context manager: a turn held until
    `release`, the next caller queued behind it meanwhile."""
    clock = FakeClock()
    capacity = make(clock, max_in_flight=1)
    with pytest.raises(ValueError, match="estimated_tokens"):
        await capacity.acquire(-1)
    slot = await capacity.acquire(10, input_tokens=6, output_tokens=4)
    assert (slot.estimated_tokens, slot.estimated_split) == (10, (6, 4))
    second = asyncio.ensure_future(capacity.acquire(1))
    await clock.settle()
    assert not second.done() and capacity.statistics().in_flight == 1
    slot.settle(8)
    capacity.release()
    await clock.settle()
    assert second.done() and capacity.statistics().in_flight == 1
    capacity.release()
    assert capacity.statistics().in_flight == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    clock = FakeClock()
    capacity = make(clock, rpm=60)
    starts: list[int] = []

    async def call(index: int) -> None:
        async with capacity.reserve(1):
            starts.append(index)

    tasks = [asyncio.create_task(call(i)) for i in range(4)]
    await clock.settle()
    assert starts == [0] and capacity.statistics().waiting == 3
    tasks[1].cancel()  # the head, asleep until its turn
    tasks[2].cancel()  # one behind it
    await clock.run(asyncio.gather(*tasks, return_exceptions=True))
    assert starts == [0, 3]
    assert clock.now() == pytest.approx(interval(60) - 0.3)
    assert capacity.statistics().waiting == 0


# -- AIMD --------------------------------------------------------------------------


async def test_429_pauses_everyone_and_decreases_once_per_episode() -> None:
    clock = FakeClock()
    capacity = make(clock, rpm=600)
    async with capacity.reserve(1) as early:
        pass
    await clock.advance(1)
    capacity.rate_limited(10.0, sent_at=early.started_at)
    stats = capacity.statistics()
    assert stats.effective_rpm == pytest.approx(420)
    assert 10.0 <= stats.paused_for <= 11.0  # Retry-After plus up to 10 % jitter
    capacity.rate_limited(10.0, sent_at=early.started_at)  # same episode: no new decrease
    stats = capacity.statistics()
    assert stats.effective_rpm == pytest.approx(420) and stats.rate_limited == 2
    assert 10.0 <= stats.paused_for <= 11.0  # the pause ends at the latest of the two

    starts = await start_times(clock, capacity, [1, 1])
    resume = 1 + stats.paused_for
    assert starts == pytest.approx([resume, resume + interval(420)])  # paced: no burst

    capacity.rate_limited(None)  # a call sent after the decrease: a new episode
    assert capacity.statistics().effective_rpm == pytest.approx(420 * 0.7)
    assert capacity.statistics().paused_for <= 1.1  # the default pause


async def test_successes_after_the_decrease_add_one_request_per_minute() -> None:
    clock = FakeClock()
    capacity = make(clock, rpm=100)
    async with capacity.reserve(1) as before:
        pass
    await clock.advance(1)
    capacity.rate_limited(1.0)
    before.settle(1)  # sent before the 429: says nothing about the new rate
    assert capacity.statistics().effective_rpm == pytest.approx(70)
    await clock.advance(2)
    for _ in range(5):
        async with capacity.reserve(1) as slot:
            slot.settle(1)
        await clock.advance(1)
    assert capacity.statistics().effective_rpm == pytest.approx(75)
    for _ in range(40):
        async with capacity.reserve(1) as slot:
            slot.settle(1)
        await clock.advance(1)
    assert capacity.statistics().effective_rpm == pytest.approx(100)  # never above the limit


async def test_token_only_limit_recovers_by_the_tokens_of_each_success() -> None:
    clock = FakeClock()
    capacity = make(clock, tpm=10_000)
    capacity.rate_limited(0.5)
    await clock.advance(1)
    async with capacity.reserve(10) as slot:
        slot.settle(500)
    assert capacity.statistics().effective_tpm == pytest.approx(7_000 + 500)


# -- learning from headers --------------------------------------------------------


def test_headers_lower_a_limit_or_supply_a_missing_one() -> None:
    clock = FakeClock()
    configured = make(clock, rpm=1000, tpm=100_000)
    configured.observe(RateLimitInfo(limit_requests=500, limit_tokens=200_000))
    stats = configured.statistics()
    assert (stats.learned_rpm, stats.effective_rpm) == (500, 500)
    assert (stats.learned_tpm, stats.effective_tpm) == (None, 100_000)  # higher: ignored
    configured.observe(RateLimitInfo(limit_requests=2000))
    assert configured.statistics().effective_rpm == 1000  # no longer undercut

    unconfigured = make(clock)
    unconfigured.observe(RateLimitInfo(limit_requests=60, limit_tokens=1000))
    stats = unconfigured.statistics()
    assert (stats.limit_rpm, stats.effective_rpm, stats.effective_tpm) == (None, 60, 1000)


async def test_request_and_token_limits_learned_from_headers_pace_as_configured_ones_do() -> None:
    """A route with no limits of its own (and no discovery) learns them from an answer's
    headers; its calls then start when those of a route configured with them would."""
    for limits, learned in (
        ({"rpm": 60}, RateLimitInfo(limit_requests=60)),
        ({"tpm": 60_000}, RateLimitInfo(limit_tokens=60_000)),
    ):
        clock = FakeClock()
        configured = make(clock, discover=False, **limits)
        expected = await start_times(clock, configured, [400] * 6)
        clock = FakeClock()
        headers = make(clock, discover=False)
        headers.observe(learned)
        assert await start_times(clock, headers, [400] * 6) == pytest.approx(expected)
        assert expected[-1] > 1.0  # (paced: without a limit all six start at once)


@pytest.mark.parametrize(
    "limits",
    [{"rpm": 600}, {"rpm": 600, "tpm": 60_000}, {"discover": True}],
    ids=["rpm", "rpm+tpm", "discovered"],
)
async def test_the_pace_kept_is_the_rate_reported_whatever_happened(limits: Any) -> None:
    """A route works its pace out once for each change of its limits, share or rate
    factor: after any mix of calls (one at a time, or several at once), 429s, storms (a
    429 and failures, then the probe that gets through), shares and headers, the rate it
    starts requests at is the effective rate its statistics work out from scratch."""
    clock = FakeClock()
    capacity = make(clock, **limits)
    rng = random.Random(7)

    async def call() -> None:
        slot = await capacity.acquire(100)
        try:
            await clock.sleep(rng.random())
            slot.settle(rng.choice([50, 100, 150]))
        finally:
            capacity.release()

    ops = ["call", "call", "call", "calls", "429", "storm", "share"]
    if "discover" not in limits:  # (a limit from headers ends the discovery)
        ops.append("headers")
    checked = 0
    for _ in range(600):
        op = rng.choice(ops)
        if op in ("call", "calls"):
            await clock.run(asyncio.gather(*(call() for _ in range(1 if op == "call" else 4))))
        elif op == "429":
            capacity.rate_limited(rng.choice([None, 0.5]), sent_at=clock.now() - rng.random())
        elif op == "storm":
            capacity.rate_limited(None, sent_at=clock.now())
            for _ in range(3):
                capacity.failed(sent_at=clock.now())
        elif op == "share":
            capacity.set_share(rng.choice([0.25, 0.5, 1.0]))
        else:
            capacity.observe(RateLimitInfo(limit_requests=rng.choice([300, 600, 1200])))
        stats = capacity.statistics()
        if not stats.failing and stats.effective_rpm is not None:
            assert capacity.request_rate() == pytest.approx(stats.effective_rpm * 0.99 / 60)
            checked += 1
    assert checked > 300


async def test_remaining_headers_cut_the_burst_to_what_is_left() -> None:
    clock = FakeClock()
    capacity = make(clock, rpm=600)
    capacity.observe(RateLimitInfo(limit_requests=600, remaining_requests=2))
    starts = await start_times(clock, capacity, [1] * 3)
    assert starts == pytest.approx([0.0, 0.0, interval(600)])

    tokens = make(clock, tpm=60_000)  # a bucket of 600 tokens, refilled at 990 tokens/s
    tokens.observe(RateLimitInfo(limit_tokens=60_000, remaining_tokens=0))
    now = clock.now()
    start = (await start_times(clock, tokens, [99]))[0]
    assert start - now == pytest.approx((99 + (600 - 99) / 2) / 990)


async def test_remaining_headers_count_from_when_the_call_was_sent() -> None:
    """A full window the provider saw when it admitted a call sent 0.5 s ago says nothing
    about starts now: the 49 starts paced since then are on the schedule already."""
    clock = FakeClock()
    capacity = make(clock, rpm=600)
    await clock.advance(10.0)
    capacity.observe(RateLimitInfo(limit_requests=600, remaining_requests=0), sent_at=9.5)
    assert (await start_times(clock, capacity, [1]))[0] == 10.0
    capacity.observe(RateLimitInfo(limit_requests=600, remaining_requests=0), sent_at=10.0)
    assert (await start_times(clock, capacity, [1]))[0] == pytest.approx(10.0 + interval(600))


def test_invalid_settings_and_double_settle_are_refused() -> None:
    with pytest.raises(ValueError, match="rpm"):
        Capacity(rpm=0)
    with pytest.raises(ValueError, match="decrease"):
        Capacity(decrease=1.5)
    with pytest.raises(ValueError, match="estimated_tokens"):
        Capacity().reserve(-1)


async def test_a_slot_settles_once() -> None:
    capacity = Capacity(timer=FakeClock())
    async with capacity.reserve(1) as slot:
        slot.settle(1)
        with pytest.raises(RuntimeError, match="already settled"):
            slot.settle(1)


async def test_by_default_no_one_second_window_sees_more_than_the_limit() -> None:
    """Providers quantize per-minute limits over short windows: 60,000 rpm may mean
    1,000 requests in any second. By default the pace is 98 % of the limit and the burst
    allowance 2 % of one second, half of it (10 ms) for late starts to catch up."""
    clock = FakeClock()
    capacity = Capacity(rpm=60_000, timer=clock)
    starts = await start_times(clock, capacity, [1] * 3000)
    paced = interval(60_000, burst=0.02)
    assert starts[:10] == [0.0] * 10  # 10 ms ahead of the schedule
    assert starts[10] == pytest.approx(10 * paced - 0.01)
    assert starts[-1] == pytest.approx(2999 * paced - 0.01)
    for index, start in enumerate(starts):
        assert sum(1 for other in starts[index : index + 1100] if other < start + 1) <= 990


async def test_by_default_a_stray_429_costs_little_and_a_second_one_more() -> None:
    clock = FakeClock()
    capacity = Capacity(rpm=6000, timer=clock)

    async def calls(n: int) -> None:
        for _ in range(n):
            async with capacity.reserve(1) as slot:
                slot.settle(1)

    capacity.rate_limited(0.0)  # the first in a while: -10 %
    assert capacity.statistics().effective_rpm == pytest.approx(5400)
    await clock.advance(0.1)
    capacity.rate_limited(0.0)  # another one soon after: -30 %
    assert capacity.statistics().effective_rpm == pytest.approx(5400 * 0.7)
    await clock.advance(0.1)
    await clock.run(calls(150))  # the calls of 1.5 s at the full rate of 100 a second
    assert capacity.statistics().effective_rpm == pytest.approx(3780 + 900)
    await clock.run(calls(150))  # 3 s of them add back 30 % of the limit
    assert capacity.statistics().effective_rpm == pytest.approx(3780 + 1800)
    await clock.run(calls(100))  # and the rest: never above the limit
    assert capacity.statistics().effective_rpm == pytest.approx(6000)
    await clock.advance(10.0)  # a quiet spell: the next 429 is stray again
    capacity.rate_limited(0.0)
    assert capacity.statistics().effective_rpm == pytest.approx(5400)


def test_the_window_and_recovery_are_checked() -> None:
    with pytest.raises(ValueError, match="window"):
        Capacity(window=0)
    with pytest.raises(ValueError, match="recovery"):
        Capacity(recovery=0)
    with pytest.raises(ValueError, match="first_decrease"):
        Capacity(first_decrease=1.0)
