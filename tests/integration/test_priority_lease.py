"""A task of raised priority is leased at once even while the worker holds back work for
a busy route (admission): its calls go first there, so it need not wait for the queue."""

from __future__ import annotations

import asyncio

import legion
from legion import Runtime
from legion.llm import Capacity, LLMClient, Route, SimulatedProvider
from legion.sim import SimConfig
from legion.task import TaskStatus


@legion.agent
async def ask(ctx: legion.Context, question: str) -> str:
    return (await ctx.llm.chat([{"role": "user", "content": question}])).text


async def _status(rt: Runtime, task_id: int) -> TaskStatus:
    info = await rt.store.get(task_id)
    assert info is not None
    return info.status


async def test_a_priority_task_is_leased_past_a_full_route(db_url: str) -> None:
    provider = SimulatedProvider(SimConfig(latency=0.0))
    await provider.start()
    # One call every 10 s: with the first call queued, the route's 3 s admission
    # horizon holds every other batch task back in the store.
    llm = LLMClient([Route("default", provider, "sim-model", Capacity("slow", rpm=6))])
    async with llm, Runtime(db_url, llm=llm) as rt:
        batch = await rt.submit_many(ask, [f"batch {i}?" for i in range(5)])
        async with asyncio.timeout(30):  # one call made, the next one waiting its turn
            while True:
                counts = await rt.store.counts()
                if counts.get(TaskStatus.SUCCEEDED, 0) >= 1 and counts.get(TaskStatus.RUNNING):
                    break
                await asyncio.sleep(0.01)
        urgent = await rt.submit(ask, "now?", priority=10)
        async with asyncio.timeout(5):  # the next paced start is 10 s away
            while True:
                if await _status(rt, urgent.id) is not TaskStatus.QUEUED:
                    break
                await asyncio.sleep(0.01)
        statuses = [await _status(rt, s.id) for s in batch]
        assert statuses.count(TaskStatus.QUEUED) >= 3  # the batch is still held back
        for s in batch:
            await rt.cancel(s.id)
