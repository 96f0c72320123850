"""A long Retry-After and hedged calls, end to end: real SQLite store, the simulator
over real HTTP, agents run by the runtime's worker."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

import legion
from legion import Runtime, TaskStatus, deadline
from legion.errors import RetryAfterTooLong
from legion.llm import Capacity, LLMClient, OpenAIProvider, Route
from legion.llm.hedge import HedgeSettings
from legion.llm.types import ChatRequest
from legion.retry import RetryPolicy
from legion.sim import SimConfig, Simulator
from legion.sim.behaviour import Fault, FaultInjector

USER = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def limited() -> AsyncIterator[Simulator]:
    """A provider allowing one request per 3 s window, that window already used."""
    async with Simulator(SimConfig(rpm=20, window_seconds=3.0, window="fixed")) as sim:
        other = OpenAIProvider(base_url=sim.base_url)  # another process on the same key
        await other.chat(ChatRequest("sim-model", tuple(USER), {}, False), timeout=10)
        await other.aclose()
        yield sim


async def test_a_retry_after_beyond_the_timeout_requeues_the_task_without_spending_an_attempt(
    db_url: str, limited: Simulator
) -> None:
    @legion.agent(timeout=1.0, retries=0)
    async def ask(ctx: legion.Context, q: str) -> str:
        return (await ctx.llm.chat([{"role": "user", "content": q}])).text

    llm = LLMClient(
        [Route("default", OpenAIProvider(base_url=limited.base_url), "sim-model", Capacity())],
        retry=RetryPolicy(retries=0),
    )
    async with llm, Runtime(db_url, llm=llm) as rt:
        r = await rt.result((await rt.submit(ask, "hi")).id)
    # The call was answered 429 with a Retry-After of up to 3 s, past the 1 s the attempt
    # had: the attempt ended at once, saying so, and the task came back after the wait.
    # With no retries allowed, it succeeded on its first (and only) counted attempt.
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 1
    stats = limited.stats()
    assert (stats.rate_limited, stats.succeeded) == (1, 2)
    assert llm.statistics().routes["default"].errors == {"RetryAfterTooLong": 1}


async def test_the_error_names_the_429_and_the_wait(limited: Simulator) -> None:
    llm = LLMClient(
        [Route("default", OpenAIProvider(base_url=limited.base_url), "sim-model", Capacity())]
    )
    token = deadline.bind(lambda: 1.4)  # what the runner binds: the attempt's time left
    try:
        async with llm:
            with pytest.raises(RetryAfterTooLong) as first:
                await llm.chat(USER)
            # The route is now paused for the Retry-After: a call that cannot outlast the
            # pause ends at once, without being sent.
            with pytest.raises(RetryAfterTooLong) as second:
                await llm.chat(USER)
    finally:
        deadline.reset(token)
    assert re.fullmatch(
        r"openai answered 429 with Retry-After [23] s, beyond this attempt's remaining 1 s; "
        r"the task goes back to the queue until then",
        str(first.value),
    ), first.value
    assert first.value.retry_after is not None and first.value.retry_after > 1.4
    assert re.fullmatch(
        r"openai answered 429 with Retry-After [23] s \(route 'default' is paused that long\), "
        r"beyond this attempt's remaining 1 s; the task goes back to the queue until then",
        str(second.value),
    ), second.value
    assert first.value.retryable and limited.stats().rate_limited == 1  # one 429, one call sent


def _seed(faults: list[Fault]) -> int:
    for seed in range(10_000):
        injector = FaultInjector(SimConfig(hang_rate=0.5, seed=seed))
        if [injector.plan(False).fault for _ in faults] == faults:
            return seed
    raise AssertionError("no seed found")


async def test_a_hedged_call_is_one_recorded_step(db_url: str) -> None:
    # Request 1 answers, request 2 hangs, request 3 (the second call's hedge) answers.
    config = SimConfig(hang_rate=0.5, seed=_seed([Fault.NONE, Fault.HANG, Fault.NONE]))

    @legion.agent(timeout=60, retries=0)
    async def ask(ctx: legion.Context, q: str) -> list[str]:
        first = await ctx.llm.chat([{"role": "user", "content": q}])
        second = await ctx.llm.chat([{"role": "user", "content": q + " again"}])
        return [first.text, second.text]

    async with Simulator(config) as sim:
        hedge = HedgeSettings(percentile=95, min_delay=0.2, min_samples=1)
        route = Route(
            "default", OpenAIProvider(base_url=sim.base_url), "sim-model", Capacity(), hedge=hedge
        )
        llm = LLMClient([route], retry=RetryPolicy(retries=0))
        async with llm, Runtime(db_url, llm=llm) as rt:
            r = await rt.result((await rt.submit(ask, "hi")).id)
            steps = await rt.store.steps(r.id)
        stats = sim.stats()
    assert r.status is TaskStatus.SUCCEEDED and r.output is not None and all(r.output)
    assert len([s for s in steps if s.key.startswith("llm.")]) == 2
    assert (stats.requests_total, stats.hangs, stats.succeeded) == (3, 1, 2)
    assert r.usage is not None and r.usage["llm_calls"] == 2
    route_stats = llm.statistics().routes["default"]
    assert (route_stats.hedged, route_stats.hedges_won) == (1, 1)
