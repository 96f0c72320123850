"""An agent's LLM budget against the simulator: once it is spent, no call of that agent
reaches the provider, its unfinished tasks wait in the queue with what they recorded,
other agents go on; a worker whose agent has a higher budget resumes them, counting what
the agent's tasks spent before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import legion
from legion import Runtime
from legion.agent import Agent
from legion.sim import SimConfig, Simulator
from legion.task import TaskStatus


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimConfig(models=("sim-model",), seed=5))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def _two_calls(ctx: legion.Context, n: int) -> int:
    for i in range(2):
        await ctx.llm.chat([{"role": "user", "content": f"{n}.{i}"}], max_tokens=8)
    return n


def _limited(max_calls: int) -> Agent:
    # One instance at a time: two tasks spend the four calls, the third is refused.
    return legion.agent(name="limited", retries=0, concurrency=1, max_calls=max_calls)(_two_calls)


async def _first_succeed(rt: Runtime, ids: list[int], n: int) -> None:
    """Wait for the first ``n`` of ``ids`` to end, each a success (the budget's room)."""
    finished = 0
    async for r in rt.results(ids):
        assert r.ok
        finished += 1
        if finished == n:
            return


@legion.agent(retries=0)
async def free(ctx: legion.Context, n: int) -> int:
    await ctx.llm.chat([{"role": "user", "content": f"free {n}"}], max_tokens=8)
    return n


async def test_an_agents_budget_parks_its_tasks_and_a_higher_one_resumes_them(
    simulator: Simulator, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'budget.db'}"
    llm = [f"openai:sim-model@{simulator.base_url}"]
    limited = _limited(4)
    async with Runtime(store, llm=llm, agents=[limited, free]) as rt:
        capped = [s.id for s in await rt.submit_many(limited, list(range(5)))]
        others = [s.id for s in await rt.submit_many(free, list(range(5)))]
        assert all([r.ok async for r in rt.results(others)])  # the other agent went on
        await _first_succeed(rt, capped, 2)
        assert rt.llm is not None
        why = await rt.llm.budgets.agents["limited"].wait_exhausted()
        assert why == "agent 'limited' max_calls 4 reached"
        await rt.drain()
        tasks = await rt.store.get_many(capped)

    stats = simulator.stats()
    assert stats.requests_total == stats.succeeded == 4 + 5  # no call past the budget
    assert sorted(str(t.status) for t in tasks) == ["queued"] * 3 + ["succeeded"] * 2
    parked = [t for t in tasks if t.status is TaskStatus.QUEUED and t.error is not None]
    assert parked and {t.error.type for t in parked if t.error} == {"BudgetExceeded"}
    assert all(t.attempt <= 1 for t in tasks)  # parking spent no attempt

    async with Runtime(store, llm=llm, agents=[_limited(10), free]) as rt:
        assert all([r.ok async for r in rt.results(capped)])
        assert rt.llm is not None
        # The budget started from the four calls recorded before, and spent six more.
        assert rt.llm.budgets.agents["limited"].spent.calls == 10
    assert simulator.stats().succeeded == 4 + 5 + 6  # each call bought once


async def _two_sdk_calls(ctx: legion.Context, n: int) -> int:
    client = ctx.llm.openai()
    for i in range(2):
        await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": f"{n}.{i}"}], max_tokens=8
        )
    return n


async def test_a_budget_stops_sdk_calls_as_it_stops_its_own_without_spending_attempts(
    simulator: Simulator, tmp_path: Path
) -> None:
    """Through ``ctx.llm.openai()`` the budget's stop reaches the agent as the SDK's
    error (a 429, as a provider's ``insufficient_quota``): the task is parked all the
    same, its attempt not spent, and a run with a higher budget finishes it."""
    pytest.importorskip("openai")
    store = f"sqlite:///{tmp_path / 'budget.db'}"
    llm = [f"openai:sim-model@{simulator.base_url}"]

    def limited(max_calls: int) -> Agent:
        return legion.agent(name="sdk", retries=0, concurrency=1, max_calls=max_calls)(
            _two_sdk_calls
        )

    first = limited(4)
    async with Runtime(store, llm=llm, agents=[first]) as rt:
        ids = [s.id for s in await rt.submit_many(first, list(range(5)))]
        await _first_succeed(rt, ids, 2)
        assert rt.llm is not None
        await rt.llm.budgets.agents["sdk"].wait_exhausted()
        await rt.drain()
        tasks = await rt.store.get_many(ids)

    assert sorted(str(t.status) for t in tasks) == ["queued"] * 3 + ["succeeded"] * 2
    parked = [t for t in tasks if t.error is not None]
    assert parked and {t.error.type for t in parked if t.error} == {"BudgetExceeded"}
    assert all(t.attempt <= 1 for t in tasks)  # parking spent no attempt

    async with Runtime(store, llm=llm, agents=[limited(10)]) as rt:
        assert all([r.ok async for r in rt.results(ids)])
    assert simulator.stats().succeeded == 10  # each call bought once
