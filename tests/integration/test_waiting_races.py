"""No lost wake-up when what ends a wait races with the suspension: signals sent while
their tasks start, and children ending on two workers at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import legion
from legion import TaskStatus


@legion.agent(retries=0)
async def listens(ctx: Any, i: int) -> Any:
    return await ctx.wait_for("go")


@legion.agent(retries=0)
async def leaf(ctx: Any, i: int) -> int:
    return i


@legion.agent(retries=0)
async def root(ctx: Any, n: int) -> int:
    return sum(await ctx.map(leaf, [{"i": i} for i in range(n)], concurrency=n))


async def test_signals_racing_the_suspensions_wake_every_task(store_url: str) -> None:
    n = 200
    async with (
        legion.Runtime(store_url, concurrency=50, agents=[listens]) as one,
        legion.Runtime(store_url, concurrency=50, agents=[listens]) as two,
    ):
        subs = await one.submit_many(listens, [{"i": i} for i in range(n)])
        # Signalled at once: some before their task ran, some while it suspends, some after.
        for s in subs:
            await two.signal(s.id, "go", s.id)
        async with asyncio.timeout(120):
            results = [r async for r in one.results([s.id for s in subs])]
    assert sorted((r.id, r.output) for r in results) == sorted((s.id, s.id) for s in subs)
    assert {r.status for r in results} == {TaskStatus.SUCCEEDED}


async def test_children_ending_together_on_two_workers_wake_their_parent(store_url: str) -> None:
    async with (
        legion.Runtime(store_url, concurrency=100, agents=[root, leaf]) as one,
        legion.Runtime(store_url, concurrency=100, agents=[root, leaf]) as two,
    ):
        ids = [(await one.submit(root, {"n": 300})).id, (await two.submit(root, {"n": 150})).id]
        async with asyncio.timeout(120):
            results = {r.id: r async for r in one.results(ids)}
    assert results[ids[0]].output == sum(range(300))
    assert results[ids[1]].output == sum(range(150))
