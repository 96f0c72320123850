"""The client's breaker and hedging against the simulator over loopback HTTP.

Time on the client's side runs 10x faster than real time (`ScaledClock`), so open
periods of seconds pass in a fraction of one; every assertion is a count.
"""

from __future__ import annotations

import asyncio
import random

from legion.errors import ProviderUnavailable
from legion.llm import Capacity, LLMClient, OpenAIProvider, Route
from legion.llm.breaker import Breaker, BreakerSettings, BreakerState
from legion.llm.hedge import HedgeSettings
from legion.retry import RetryPolicy
from legion.sim import SimConfig
from legion.sim.behaviour import Fault, FaultInjector
from legion.testing import ScaledClock
from tests.llm.conftest import StartSimulator

NO_RETRY = RetryPolicy(retries=0)


def ask(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}"}]


async def test_an_outage_opens_the_breaker_callers_wait_and_a_probe_closes_it(
    start_simulator: StartSimulator,
) -> None:
    # Request 1 succeeds, requests 2-6 are answered 503 (an outage), then the provider is back.
    sim = await start_simulator(outage_after=1, outage_requests=5, latency=0.05)
    clock = ScaledClock(10.0)
    breaker = Breaker(BreakerSettings(failures=3, open_for=1.0, max_open_for=30.0), timer=clock)
    client = LLMClient(
        [
            Route(
                "main",
                OpenAIProvider(base_url=sim.base_url),
                "sim-model",
                Capacity("main", timer=clock),
                breaker=breaker,
            )
        ],
        retry=NO_RETRY,  # one attempt per call: a call that waited must not have spent it
        timer=clock,
        rng=random.Random(1),
    )
    async with client:
        await client.chat(ask(0))
        for i in range(1, 4):  # three transient failures in a row open the breaker
            try:
                await client.chat(ask(i))
                raise AssertionError("the outage answered")
            except ProviderUnavailable:
                pass
        assert breaker.state is BreakerState.OPEN
        sim.reset_stats()
        # Ten calls while it is open: they wait. The first probe (request 5) fails and
        # re-opens it for twice as long; the second (request 6) too; the third finds the
        # provider back, closes it, and the nine others go.
        replies = await asyncio.gather(*(client.chat(ask(i)) for i in range(10, 20)))
    assert len(replies) == 10 and all(reply.text for reply in replies)
    stats = sim.stats()
    assert stats.requests_total == 12  # 2 failed probes + 10 calls, nothing else
    assert stats.errors_injected == 2 and stats.succeeded == 10
    assert stats.max_in_flight <= 9  # the probe went alone; the others after its answer
    b = breaker.statistics()
    assert (b.state, b.probes, b.opened, b.waiting) == (BreakerState.CLOSED, 3, 3, 0)
    route = client.statistics().routes["main"]
    assert route.breaker == b and route.failed == 3 and route.succeeded == 11


async def test_a_route_that_never_answered_fails_its_calls_instead_of_waiting(
    start_simulator: StartSimulator,
) -> None:
    # The route's failures are not waited out as an outage (``max_outage=0``: a client
    # gives up on a failing route at once), so only the breaker decides: its failed probes
    # count against the call, since the route never worked.
    sim = await start_simulator(error_rate=1.0, error_statuses=(503,))
    clock = ScaledClock(10.0)
    breaker = Breaker(BreakerSettings(failures=2), timer=clock)
    client = LLMClient(
        [
            Route(
                "main",
                OpenAIProvider(base_url=sim.base_url),
                "sim-model",
                Capacity("main", timer=clock),
                breaker=breaker,
            )
        ],
        retry=RetryPolicy(retries=3, backoff=0.01, max_backoff=0.01),
        timer=clock,
        max_outage=0.0,
    )
    async with client:
        try:
            await client.chat(ask(0))
            raise AssertionError("the outage answered")
        except ProviderUnavailable as exc:
            said = str(exc)
    # Two requests opened the breaker, the probe was counted (the route never worked),
    # and, the route being down past max_outage, the call failed rather than wait for the
    # next probe.
    assert sim.stats().requests_total == 3
    assert breaker.statistics().probes == 1
    assert "has failed every call" in said


def seed_where(config: dict[str, float], faults: list[Fault]) -> int:
    """A simulator seed whose first requests draw ``faults``, in order."""
    for seed in range(10_000):
        injector = FaultInjector(SimConfig(seed=seed, **config))  # type: ignore[arg-type]
        if [injector.plan(False).fault for _ in faults] == faults:
            return seed
    raise AssertionError("no seed found")


async def test_a_hung_call_is_hedged_and_only_the_winner_is_returned(
    start_simulator: StartSimulator,
) -> None:
    # Request 1 answers, request 2 hangs, request 3 (the hedge of the second call) answers.
    seed = seed_where({"hang_rate": 0.5}, [Fault.NONE, Fault.HANG, Fault.NONE])
    sim = await start_simulator(hang_rate=0.5, seed=seed)
    client = LLMClient(
        [
            Route(
                "main",
                OpenAIProvider(base_url=sim.base_url),
                "sim-model",
                Capacity("main"),
                hedge=HedgeSettings(percentile=95, min_delay=0.2, min_samples=1),
            )
        ],
        retry=NO_RETRY,
    )
    async with client:
        first = await client.chat(ask(1))
        second = await client.chat(ask(2))
    assert first.text and second.text
    route = client.statistics().routes["main"]
    assert (route.calls, route.succeeded, route.hedged, route.hedges_won) == (2, 2, 1, 1)
    stats = sim.stats()
    assert (stats.requests_total, stats.hangs, stats.succeeded) == (3, 1, 2)
    assert route.usage.completion_tokens == stats.completion_tokens  # one answer per call
