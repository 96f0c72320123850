"""A task of raised priority is leased at once even while the worker holds back work for
a busy route (admission): its calls go first there, so it need not wait for the queue."""

from __future__ import annotations

import asyncio
import time

import pytest

import legion
from legion import Runtime
from legion.llm import Capacity, LLMClient, Route, SimulatedProvider
from legion.sim import SimConfig
from legion.task import TaskStatus


@legion.agent
async def ask(ctx: legion.Context, question: str) -> str:
    return (await ctx.llm.chat([{"role": "user", "content": question}])).text


@legion.agent
async def answer(ctx: legion.Context, question: str) -> str:
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
        # Its lease is on the store's clock (the wall clock), like every other: leased on
        # the monotonic clock, it began in 1970 and ran out at once, and the reaper took
        # the task back (queued again, to run only once the worker was idle).
        info = await rt.store.get(urgent.id)
        assert info is not None and info.started_at is not None
        assert abs(info.started_at - time.time()) < 3600, info.started_at
        for task_id in (*(s.id for s in batch), urgent.id):
            await rt.cancel(task_id)


async def _fill(rt: Runtime) -> list[int]:
    """A batch of `ask` tasks, once the route's first call is made and the next waits."""
    batch = await rt.submit_many(ask, [f"batch {i}?" for i in range(5)])
    async with asyncio.timeout(30):
        while True:
            counts = await rt.store.counts()
            if counts.get(TaskStatus.SUCCEEDED, 0) >= 1 and counts.get(TaskStatus.RUNNING):
                break
            await asyncio.sleep(0.01)
    return [s.id for s in batch]


@pytest.mark.parametrize("submitter", ["same process", "another process"])
async def test_a_busy_route_leases_the_raised_task_of_another_agent_not_a_batch_one(
    db_url: str, submitter: str
) -> None:
    # The raised task is of another agent than the batch: the lease past admission takes
    # only raised tasks, so no batch task takes its place. Submitted by another runtime
    # (no worker of its own, as `legion serve --no-worker`), it is found by the worker's
    # look for raised tasks while the route is busy.
    provider = SimulatedProvider(SimConfig(latency=0.0))
    await provider.start()
    llm = LLMClient([Route("default", provider, "sim-model", Capacity("slow", rpm=6))])
    async with llm, Runtime(db_url, llm=llm) as rt:
        batch = await _fill(rt)
        held = [await _status(rt, i) for i in batch]
        if submitter == "same process":
            urgent = await rt.submit(answer, "now?", priority=10)
        else:
            assert rt.worker is not None
            rt.worker.add_agent(answer)  # as a worker loads its app's agents
            async with Runtime(db_url, worker=False) as api:
                urgent = await api.submit(answer, "now?", priority=10)
        async with asyncio.timeout(5):  # the next paced start is 10 s away
            while True:
                if await _status(rt, urgent.id) is not TaskStatus.QUEUED:
                    break
                await asyncio.sleep(0.01)
        assert [await _status(rt, i) for i in batch] == held  # no batch task was let in
        assert held.count(TaskStatus.QUEUED) >= 3
        for i in (*batch, urgent.id):
            await rt.cancel(i)
