"""Suspects of a worker's death (tasks that must run apart) on a busy worker, against
real stores: the worker holds a group of them and runs it as soon as what runs beside it
has ended, instead of when the whole queue behind them is done (a worker in a busy fleet
is never idle)."""

from __future__ import annotations

import asyncio
import time

import legion
from legion import Runtime, TaskStatus
from legion.testing import FakeClock
from tests.polling import wait_until


async def test_a_busy_worker_runs_a_suspect_alone_before_the_queue_behind_it(
    store_url: str,
) -> None:
    gates: dict[int, asyncio.Event] = {}
    running: set[int] = set()
    started: list[int] = []
    beside: dict[int, set[int]] = {}  # what ran on the worker as each task started

    @legion.agent(name="work", retries=0)
    async def work(ctx: legion.Context, n: int) -> int:
        beside[ctx.task_id] = set(running)
        running.add(ctx.task_id)
        started.append(ctx.task_id)
        try:
            await gates.setdefault(ctx.task_id, asyncio.Event()).wait()
        finally:
            running.discard(ctx.task_id)
        return n

    clock = FakeClock(wall=time.time())
    async with Runtime(
        store_url, concurrency=4, lease_seconds=600, clock=clock, agents=[work], drain_timeout=0
    ) as rt:
        blockers = [s.id for s in await rt.submit_many(work, list(range(4)))]
        await wait_until(lambda: len(running) == 4)
        # A task taken back from a worker that died while it ran with others: a suspect,
        # to run apart from all other work.
        (suspect,) = await rt.submit_many(work, [100])
        (ghost,) = await rt.store.lease("ghost", {"work": 1}, 1, time.time() + 600, time.time())
        assert ghost.id == suspect.id
        assert (await rt.store.reclaim(time.time(), ["ghost"])).requeued == 1
        queue = [s.id for s in await rt.submit_many(work, list(range(8)))]
        await clock.advance(10)  # (the worker looks for suspects every few poll intervals)
        for task_id in blockers:  # the worker stays busy: what ends is replaced at once
            gates.setdefault(task_id, asyncio.Event()).set()
            await wait_until(lambda task_id=task_id: task_id not in running)  # type: ignore[misc]
        await wait_until(lambda: suspect.id in running, limit=10)
        assert beside[suspect.id] == set()  # alone
        assert not set(queue) & set(started)  # ahead of the queue behind it
        gates.setdefault(suspect.id, asyncio.Event()).set()
        for task_id in queue:
            gates.setdefault(task_id, asyncio.Event()).set()
        results = [r async for r in rt.results([suspect.id, *queue])]
    assert all(r.status is TaskStatus.SUCCEEDED for r in results)
    assert all(suspect.id not in beside[t] for t in queue)  # and nothing beside it
