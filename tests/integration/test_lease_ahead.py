"""Leases held ahead of free slots (`legion.run.ahead`): a slot that frees starts one at
once, with no lease call between; the heartbeat keeps them, a stop gives them back unrun
and uncharged, a cancel ends one unrun, and a store that took them back is believed.

The worker is brought to hold leases by what sizes the hold: instances that end while a
lease call is out. A gate on the store's lease calls (the real store, its answers held
back as a slow store would hold them) makes that interleaving certain."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from typing import Any

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.run.worker import Worker
from tests.polling import wait_until

CONCURRENCY = 10  # (a lease is due as soon as one slot is free: a tenth of 10 is 1)
TASKS = 40
IDS = list(range(1, TASKS + 1))  # (the tasks' ids, in a new store: 1 to TASKS)


def holding(url: str, **options: Any) -> Runtime:
    """A runtime that may hold all its slots' worth of tasks ahead."""
    return Runtime(
        url, **{"concurrency": CONCURRENCY, "lease_ahead": 1.0, "drain_timeout": 5, **options}
    )


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
        self.finished: list[int] = []  # past their gate: what a lost lease must not reach
        self.turns = 0  # the event loop's turns, once `count_turns` runs
        self.began_at: dict[int, int] = {}
        self.ended_at: dict[int, int] = {}

        @legion.agent(name="held-ahead")
        async def waits(ctx: legion.Context, x: int) -> int:
            self.began.append(x)
            self.began_at[x] = self.turns
            await self.gates[x].wait()
            self.finished.append(x)
            self.ended_at[x] = self.turns
            return x

        self.agent = waits

    def release(self, xs: list[int]) -> None:
        for x in xs:
            self.gates[x].set()

    def count_turns(self) -> asyncio.Handle:
        """Count the loop's turns (a callback that schedules itself once per turn)."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.turns += 1
            self._tick = loop.call_soon(tick)

        self._tick = loop.call_soon(tick)
        return self._tick

    def stop_counting(self) -> None:
        self._tick.cancel()


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
    async with holding(store_url) as rt:
        worker, gate = await hold_ten(rt, tasks)
        infos = await rt.store.get_many(IDS)
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
        done = [r async for r in rt.results(IDS)]
    assert [r.status for r in done] == [TaskStatus.SUCCEEDED] * TASKS
    assert sorted(tasks.began) == list(range(TASKS))  # each began once


async def test_a_stop_gives_the_tasks_held_ahead_back_unrun_and_not_charged(
    store_url: str,
) -> None:
    tasks = Tasks()
    async with holding(store_url) as rt:
        worker, _ = await hold_ten(rt, tasks)
        running = tasks.began[10:]
        worker.stop()
        assert worker.health()["held_ahead"] == 0
        tasks.release(running)
        await rt.drain()
        infos = {i.input: i for i in await rt.store.get_many(IDS)}
    assert sorted(tasks.began) == sorted(set(tasks.began))  # none began twice
    for x, info in infos.items():
        if x in tasks.began:
            assert info.status is TaskStatus.SUCCEEDED, (x, info.status)
        else:  # held ahead or never leased: back in the queue, no attempt spent
            assert info.status is TaskStatus.QUEUED and info.attempt == 0, (x, info)
            assert info.lease_owner is None


async def test_a_task_held_ahead_that_is_cancelled_ends_cancelled_unrun(store_url: str) -> None:
    tasks = Tasks()
    async with holding(store_url) as rt:
        worker, _ = await hold_ten(rt, tasks)
        infos = await rt.store.get_many(IDS)
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
    async with holding(db_url, lease_seconds=600) as rt:
        worker, _ = await hold_ten(rt, tasks)
        held = {
            i.input
            for i in await rt.store.get_many(IDS)
            if i.status is TaskStatus.RUNNING and i.input not in tasks.began
        }
        assert (await rt.store.reclaim(time.time(), [worker.id])).requeued == 20
        await worker.heartbeat()
        assert worker.health()["held_ahead"] == 0
        assert not held & set(tasks.began)
        tasks.release(list(range(TASKS)))
        await wait_until(lambda: set(tasks.began) == set(range(TASKS)))
        await rt.drain()
        done = await rt.store.get_many(IDS)
    assert [i.status for i in done] == [TaskStatus.SUCCEEDED] * TASKS
    assert all(tasks.began.count(x) == 1 for x in held)  # a held task ran once, not twice
    warned = [r.getMessage() for r in caplog.records if "held ahead" in r.getMessage()]
    assert warned == ["leases on 10 tasks held ahead were lost; not started"]


async def test_long_tasks_are_not_held_ahead(db_url: str) -> None:
    """No instance ends while a lease call is out: the worker holds nothing ahead, and
    the store shows only the tasks it runs as running."""
    tasks = Tasks()
    async with holding(db_url) as rt:
        worker = rt.worker
        assert worker is not None
        await rt.submit_many(tasks.agent, range(TASKS))
        await wait_until(lambda: len(tasks.began) == CONCURRENCY)
        for n in range(5):  # one at a time: each end, then its slot's lease, answered
            tasks.release([tasks.began[n]])
            await wait_until(lambda n=n: len(tasks.began) == CONCURRENCY + n + 1)  # type: ignore[misc]
            assert worker.health()["held_ahead"] == 0
        infos = await rt.store.get_many(IDS)
        assert sum(i.status is TaskStatus.RUNNING for i in infos) == CONCURRENCY
        tasks.release(list(range(TASKS)))
        await rt.drain()


async def test_the_slot_is_filled_in_the_turn_its_instance_ends(db_url: str) -> None:
    """The held task starts in the callback of the instance that ended (it runs its first
    step the turn after), not when the lease loop next wakes."""
    tasks = Tasks()
    async with holding(db_url) as rt:
        await hold_ten(rt, tasks)
        tasks.count_turns()
        try:
            ending = tasks.began[10]
            tasks.release([ending])
            await wait_until(lambda: len(tasks.began) == 21)
        finally:
            tasks.stop_counting()
        started = tasks.began[20]
        # Its task ends in the turn after its return; its done-callback starts the next.
        assert tasks.began_at[started] - tasks.ended_at[ending] <= 2, (
            tasks.ended_at[ending],
            tasks.began_at[started],
        )
        tasks.release(list(range(TASKS)))
        done = [r async for r in rt.results(IDS)]
    assert [r.status for r in done] == [TaskStatus.SUCCEEDED] * TASKS


async def test_a_held_task_started_while_a_heartbeat_is_out_is_stopped_if_its_lease_is_gone(
    db_url: str,
) -> None:
    """The heartbeat asks the store about a held task; a slot frees and the task starts
    before the answer comes; the answer says the store took the lease back: the instance
    is stopped, as a running one would be, and gets no further."""
    tasks = Tasks()
    async with holding(db_url, lease_seconds=600) as rt:
        worker, gate = await hold_ten(rt, tasks)
        gate.open.clear()  # the tasks the store takes back are not leased again meanwhile
        answer = asyncio.Event()
        asked: list[list[int]] = []
        extend = rt.store.extend_leases

        async def held_back(owner: str, ids: Any, *args: Any) -> Any:
            asked.append(list(ids))
            if len(asked) > 1:  # only the heartbeat under test answers
                await asyncio.Event().wait()
            await answer.wait()
            return await extend(owner, ids, *args)

        rt.store.extend_leases = held_back  # type: ignore[method-assign,assignment]
        beat = asyncio.ensure_future(worker.heartbeat())
        await wait_until(lambda: bool(asked))
        assert (await rt.store.reclaim(time.time(), [worker.id])).requeued == 20
        tasks.release([tasks.began[10]])
        await wait_until(lambda: len(tasks.began) == 21)  # a held task, started
        late = tasks.began[20]
        (late_id,) = [i.id for i in await rt.store.get_many(asked[0]) if i.input == late]
        answer.set()
        await beat
        await wait_until(lambda: not worker.holds(late_id))  # stopped, at its gate
        assert late not in tasks.finished
        gate.open.set()
        tasks.release(list(range(TASKS)))
        done = [r async for r in rt.results(IDS)]
    assert [r.status for r in done] == [TaskStatus.SUCCEEDED] * TASKS


async def test_an_overloaded_worker_gives_its_held_tasks_back(db_url: str) -> None:
    """A worker that stops leasing (overloaded) gives back what it holds: held by a worker
    that runs nothing, a task would be charged for that worker's crash."""
    tasks = Tasks()
    async with holding(db_url, poll_interval=0.05) as rt:
        worker, _ = await hold_ten(rt, tasks)
        worker.config = dataclasses.replace(worker.config, max_memory_mb=1)
        await wait_until(lambda: worker.health()["held_ahead"] == 0)
        async with asyncio.timeout(30):  # (their release is a completion: group-committed)
            while True:
                infos = await rt.store.get_many(IDS)
                queued = [i for i in infos if i.status is TaskStatus.QUEUED]
                if len(queued) == TASKS - 2 * CONCURRENCY:  # the held ten back among them
                    break
                await asyncio.sleep(0.01)
        assert worker.statistics().in_flight == CONCURRENCY
        assert all(i.attempt == 0 and i.input not in tasks.began for i in queued)
        worker.config = dataclasses.replace(worker.config, max_memory_mb=None)
        tasks.release(list(range(TASKS)))
        done = [r async for r in rt.results(IDS)]
    assert [r.status for r in done] == [TaskStatus.SUCCEEDED] * TASKS


async def test_an_agent_with_a_cap_of_its_own_gets_nothing_held_ahead(db_url: str) -> None:
    """A held task would not count against its agent's cap: while any agent has one (here
    above the worker's own, so that it never binds), instances that end during a lease
    call size no hold, and the store shows only what runs."""
    began: list[int] = []
    gates: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)

    @legion.agent(name="capped", concurrency=CONCURRENCY + 5)
    async def capped(ctx: legion.Context, x: int) -> int:
        began.append(x)
        await gates[x].wait()
        return x

    async with holding(db_url) as rt:
        worker = rt.worker
        assert worker is not None
        gate = LeaseGate(rt)
        await rt.submit_many(capped, range(TASKS))
        await wait_until(lambda: len(began) == CONCURRENCY)
        gate.open.clear()
        gates[began[0]].set()
        await wait_until(lambda: gate.waiting == 1)  # a lease for the freed slot, held
        for x in began[1:CONCURRENCY]:  # the rest end while it is out
            gates[x].set()
        await wait_until(lambda: worker.statistics().in_flight == 0)
        gate.open.set()
        await wait_until(lambda: len(began) == 2 * CONCURRENCY)
        assert worker.health()["held_ahead"] == 0
        infos = await rt.store.get_many(IDS)
        assert sum(i.status is TaskStatus.RUNNING for i in infos) == CONCURRENCY
        for x in range(TASKS):
            gates[x].set()
        done = [r async for r in rt.results(IDS)]
    assert [r.status for r in done] == [TaskStatus.SUCCEEDED] * TASKS
