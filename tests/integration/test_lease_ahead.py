"""Leases held ahead of free slots (`legion.run.ahead`): a slot that frees starts one at
once, with no lease call between; the heartbeat keeps them, a stop gives them back unrun
and uncharged, a cancel ends one unrun, and a store that took them back is believed.

The worker is brought to hold leases by what sizes the hold: instances that end while a
lease call is out. A gate on the store's lease calls (the real store, its answers held
back as a slow store would hold them) makes that interleaving certain."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.run.worker import Worker

CONCURRENCY = 10  # (a lease is due as soon as one slot is free: a tenth of 10 is 1)
TASKS = 40


async def wait_until(condition: Callable[[], bool], limit: float = 30.0) -> None:
    """Poll a condition of the worker (it changes in its own loop) until it holds."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110 - a state of the worker, no event to wait on
            await asyncio.sleep(0.01)


class LeaseGate:
    """Holds the store's lease calls while closed and counts those answered."""

    def __init__(self, rt: Runtime) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = 0
        self.answered = 0
        inner = rt.store.lease

        async def lease(*args: Any, **kwargs: Any) -> Any:
            self.waiting += 1
            try:
                await self.open.wait()
            finally:
                self.waiting -= 1
            found = await inner(*args, **kwargs)
            self.answered += 1
            return found

        rt.store.lease = lease  # type: ignore[method-assign]


class Tasks:
    """An agent whose task ``x`` runs until ``release(x)``; the order they began in."""

    def __init__(self) -> None:
        self.gates: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.began: list[int] = []

        @legion.agent(name="held-ahead")
        async def waits(ctx: legion.Context, x: int) -> int:
            self.began.append(x)
            await self.gates[x].wait()
            return x

        self.agent = waits

    def release(self, xs: list[int]) -> None:
        for x in xs:
            self.gates[x].set()


async def hold_ten(rt: Runtime, tasks: Tasks) -> tuple[Worker, LeaseGate]:
    """Run 10 tasks and hold 10 more ahead: half the running ones end while a lease call
    is out, so the worker learns that 5 slots free during one (and holds twice that)."""
    worker = rt.worker
    assert worker is not None
    gate = LeaseGate(rt)
    await rt.submit_many(tasks.agent, range(TASKS))
    await wait_until(lambda: len(tasks.began) == CONCURRENCY)
    gate.open.clear()
    tasks.release(tasks.began[:5])
    await wait_until(lambda: gate.waiting == 1)  # the lease for the freed slots, held
    tasks.release(tasks.began[5:10])
    await wait_until(lambda: worker.statistics().in_flight == 0)
    gate.open.set()
    await wait_until(
        lambda: len(tasks.began) == 2 * CONCURRENCY and worker.health()["held_ahead"] == 10
    )
    return worker, gate


async def test_a_slot_that_frees_starts_a_task_held_ahead_with_no_lease_call_between(
    store_url: str,
) -> None:
    tasks = Tasks()
    async with Runtime(store_url, concurrency=CONCURRENCY, lease_ahead=1.0, drain_timeout=5) as rt:
        worker, gate = await hold_ten(rt, tasks)
        infos = await rt.store.get_many(list(range(1, TASKS + 1)))
        leased = {i.input for i in infos if i.status is TaskStatus.RUNNING}
        assert len(leased) == 20 and all(
            i.lease_owner == worker.id for i in infos if i.status is TaskStatus.RUNNING
        )
        # Every lease call from here on is held: the next start can only be a held task.
        gate.open.clear()
        answered = gate.answered
        tasks.release([tasks.began[10]])
        await wait_until(lambda: len(tasks.began) == 21)
        assert gate.answered == answered
        assert tasks.began[20] in leased  # one of the tasks held ahead
        assert worker.health()["held_ahead"] == 9
        gate.open.set()
        tasks.release(list(range(TASKS)))
        done = [r async for r in rt.results(list(range(1, TASKS + 1)))]
    assert [r.status for r in done] == [TaskStatus.SUCCEEDED] * TASKS
    assert sorted(tasks.began) == list(range(TASKS))  # each began once


async def test_a_stop_gives_the_tasks_held_ahead_back_unrun_and_not_charged(
    store_url: str,
) -> None:
    tasks = Tasks()
    async with Runtime(store_url, concurrency=CONCURRENCY, lease_ahead=1.0, drain_timeout=5) as rt:
        worker, _ = await hold_ten(rt, tasks)
        running = tasks.began[10:]
        worker.stop()
        assert worker.health()["held_ahead"] == 0
        tasks.release(running)
        await rt.drain()
        infos = {i.input: i for i in await rt.store.get_many(list(range(1, TASKS + 1)))}
    assert sorted(tasks.began) == sorted(set(tasks.began))  # none began twice
    for x, info in infos.items():
        if x in tasks.began:
            assert info.status is TaskStatus.SUCCEEDED, (x, info.status)
        else:  # held ahead or never leased: back in the queue, no attempt spent
            assert info.status is TaskStatus.QUEUED and info.attempt == 0, (x, info)
            assert info.lease_owner is None


async def test_a_task_held_ahead_that_is_cancelled_ends_cancelled_unrun(store_url: str) -> None:
    tasks = Tasks()
    async with Runtime(store_url, concurrency=CONCURRENCY, lease_ahead=1.0, drain_timeout=5) as rt:
        worker, _ = await hold_ten(rt, tasks)
        infos = await rt.store.get_many(list(range(1, TASKS + 1)))
        held = [i for i in infos if i.status is TaskStatus.RUNNING and i.input not in tasks.began]
        assert len(held) == 10 and worker.holds(held[0].id)
        assert await rt.cancel(held[0].id) is TaskStatus.RUNNING
        result = await asyncio.wait_for(rt.result(held[0].id), 30)
        assert not worker.holds(held[0].id)
        tasks.release(list(range(TASKS)))
        await rt.drain()
    assert result.status is TaskStatus.CANCELLED
    assert held[0].input not in tasks.began


async def test_held_leases_the_store_took_back_are_dropped_unstarted(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat extends held leases with the running ones: those it could not extend
    (the store took them back, as from a worker it thought dead) are forgotten, never
    started here; the tasks run once, when leased again."""
    caplog.set_level(logging.WARNING, logger="legion.worker")
    tasks = Tasks()
    async with Runtime(db_url, concurrency=CONCURRENCY, lease_ahead=1.0, lease_seconds=600) as rt:
        worker, _ = await hold_ten(rt, tasks)
        held = {
            i.input
            for i in await rt.store.get_many(list(range(1, TASKS + 1)))
            if i.status is TaskStatus.RUNNING and i.input not in tasks.began
        }
        assert (await rt.store.reclaim(time.time(), [worker.id])).requeued == 20
        await worker.heartbeat()
        assert worker.health()["held_ahead"] == 0
        assert not held & set(tasks.began)
        tasks.release(list(range(TASKS)))
        await wait_until(lambda: set(tasks.began) == set(range(TASKS)))
        await rt.drain()
        done = await rt.store.get_many(list(range(1, TASKS + 1)))
    assert [i.status for i in done] == [TaskStatus.SUCCEEDED] * TASKS
    assert all(tasks.began.count(x) == 1 for x in held)  # a held task ran once, not twice
    warned = [r.getMessage() for r in caplog.records if "held ahead" in r.getMessage()]
    assert warned == ["leases on 10 tasks held ahead were lost; not started"]


async def test_long_tasks_are_not_held_ahead(db_url: str) -> None:
    """No instance ends while a lease call is out: the worker holds nothing ahead, and
    the store shows only the tasks it runs as running."""
    tasks = Tasks()
    async with Runtime(db_url, concurrency=CONCURRENCY, lease_ahead=1.0, drain_timeout=5) as rt:
        worker = rt.worker
        assert worker is not None
        await rt.submit_many(tasks.agent, range(TASKS))
        await wait_until(lambda: len(tasks.began) == CONCURRENCY)
        for n in range(5):  # one at a time: each end, then its slot's lease, answered
            tasks.release([tasks.began[n]])
            await wait_until(lambda n=n: len(tasks.began) == CONCURRENCY + n + 1)  # type: ignore[misc]
            assert worker.health()["held_ahead"] == 0
        infos = await rt.store.get_many(list(range(1, TASKS + 1)))
        assert sum(i.status is TaskStatus.RUNNING for i in infos) == CONCURRENCY
        tasks.release(list(range(TASKS)))
        await rt.drain()
