"""The worker on a `FakeClock`: timeouts, heartbeats, lease expiry, reaping, durable
sleep and the drain timeout follow the clock the test moves, not real time.

The store is SQLite in memory (no file) on the same clock; the waits below are for its
answers, never for time to pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import legion
from legion import Runtime, TaskStatus, codec, identity
from legion.run.worker import Worker
from legion.store import SQLiteStore, WorkerInfo
from legion.task import NewTask
from legion.testing import FakeClock

OTHER_NAMESPACE = "pid:[4026531999]"  # a worker whose process cannot be looked at


@legion.agent(timeout=60, retries=0)
async def hangs(ctx: legion.Context, x: int) -> None:
    await asyncio.Event().wait()


@legion.agent(retries=0)
async def waits(ctx: legion.Context, x: int) -> None:
    await asyncio.Event().wait()


@legion.agent(retries=0)
async def echo(ctx: legion.Context, x: int) -> int:
    return x


@legion.agent(retries=0)
async def naps(ctx: Any, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "rested"


async def until(check: Callable[[], bool | Awaitable[bool]], limit: float = 10.0) -> None:
    """Wait for the store's answers (real I/O, on its thread) until ``check`` holds."""
    async with asyncio.timeout(limit):
        while True:
            found = check()
            if found if isinstance(found, bool) else await found:
                return
            await asyncio.sleep(0.002)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(clock: FakeClock) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(":memory:", clock=clock)
    await s.open()
    yield s
    await s.aclose()


async def beat_through(worker: Worker, store: SQLiteStore, clock: FakeClock, seconds: int) -> None:
    """Move the clock one heartbeat period (5 s) at a time, each time until the worker's
    heartbeat of that moment is in the store: its writes are real I/O on the store's
    thread, so moving on before they land would let its leases expire however busy the
    machine is."""

    async def beaten() -> bool:
        rows = {w.id: w for w in await store.workers()}
        return rows[worker.id].heartbeat_at >= clock.wall()

    for _ in range(seconds // 5):
        await clock.advance(5)
        await until(beaten)


def local(rt: Runtime) -> Worker:
    assert rt.worker is not None
    return rt.worker


async def test_a_timeout_ends_an_instance_when_the_clock_passes_it(
    store: SQLiteStore, clock: FakeClock
) -> None:
    async with Runtime(store, clock=clock, agents=[hangs]) as rt:
        t = await rt.submit(hangs, 1)
        await until(lambda: local(rt).holds(t.id))
        await beat_through(local(rt), store, clock, 55)
        await clock.advance(4.9)
        assert local(rt).holds(t.id)  # a minute of running, and still within its time
        await clock.advance(0.1)
        r = await rt.result(t.id)
    assert r.status is TaskStatus.DEAD and r.error is not None
    assert r.error.type == "TaskTimeout"
    assert r.error.message == "agent 'hangs' ran past its timeout of 60s (60 s running)"


async def test_heartbeats_keep_the_leases_of_running_instances_as_the_clock_moves(
    store: SQLiteStore, clock: FakeClock
) -> None:
    await store.submit([NewTask("elsewhere", codec.dumps(1))], clock.wall())
    (theirs,) = await store.lease("gone", {"elsewhere": 1}, 1, clock.wall() + 30, clock.wall())
    # (drain_timeout=0: the instance still running at the end is given back at once)
    async with Runtime(store, clock=clock, lease_seconds=30, drain_timeout=0, agents=[waits]) as rt:
        worker = local(rt)
        mine = await rt.submit(waits, 1)
        await until(lambda: worker.holds(mine.id))

        await beat_through(worker, store, clock, 60)  # two leases in all
        await worker.reap()  # (the reaper loop's pass, now)
        infos = {i.id: i for i in await store.get_many([mine.id, theirs.id])}
        mine_info, theirs_info = infos[mine.id], infos[theirs.id]
        assert worker.holds(mine.id)
    assert clock.now() == 60
    assert mine_info.status is TaskStatus.RUNNING and mine_info.lease_owner == worker.id
    # The lease nobody heartbeat for expired after its 30 s and went back to the queue.
    assert theirs_info.status is TaskStatus.QUEUED and theirs_info.lease_owner is None


async def test_the_reaper_takes_back_a_silent_workers_lease_then_its_row(
    store: SQLiteStore, clock: FakeClock
) -> None:
    me = identity.current()
    beat = clock.wall()
    await store.register_worker(
        WorkerInfo("other", "elsewhere", 1, beat, beat, {}, me.boot_id, OTHER_NAMESPACE, 1)
    )
    (task,) = await store.submit([NewTask("echo", codec.dumps(7))], clock.wall())
    await store.lease("other", {"echo": 1}, 1, clock.wall() + 30, clock.wall())
    async with Runtime(store, clock=clock, lease_seconds=30, agents=[echo]) as rt:
        worker = local(rt)
        await clock.advance(29)
        await worker.reap()
        info = await store.get(task.id)
        assert info is not None and info.lease_owner == "other"  # its lease still holds
        await clock.advance(2)
        await worker.reap()
        result = await rt.result(task.id)  # taken back, and run here
        assert "other" in {w.id for w in await store.workers()}  # silent for 31 s only
        await clock.advance(30)
        await worker.reap()
        workers = {w.id for w in await store.workers()}
    assert result.status is TaskStatus.SUCCEEDED and result.output == 7
    assert workers == {worker.id}  # silent for two leases: taken for dead


async def test_a_durable_sleep_ends_when_the_clock_passes_it(
    store: SQLiteStore, clock: FakeClock
) -> None:
    async with Runtime(store, clock=clock, agents=[naps]) as rt:
        t = await rt.submit(naps, 60)

        async def waiting() -> bool:
            info = await store.get(t.id)
            return info is not None and info.status is TaskStatus.WAITING

        await until(waiting)
        await clock.advance(59)
        await local(rt).reap()
        assert await waiting()
        await clock.advance(1)
        await local(rt).reap()
        r = await rt.result(t.id)
    assert r.output == "rested"


async def test_the_drain_timeout_is_counted_on_the_clock(
    store: SQLiteStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="legion.worker")
    rt = Runtime(store, clock=clock, drain_timeout=30, agents=[waits])
    await rt.open()
    t = await rt.submit(waits, 1)
    await until(lambda: local(rt).holds(t.id))
    closing = asyncio.create_task(rt.aclose())
    await until(lambda: any("draining" in r.getMessage() for r in caplog.records))
    await clock.advance(29.9)
    assert not closing.done() and local(rt).holds(t.id)
    await clock.advance(0.1)
    async with asyncio.timeout(10):
        await closing
    info = await store.get(t.id)
    assert info is not None and (info.status, info.attempt) == (TaskStatus.QUEUED, 0)


async def test_fake_timers_fire_in_order_and_can_be_cancelled(clock: FakeClock) -> None:
    fired: list[str] = []
    clock.call_later(2, lambda: fired.append("b"))
    clock.call_later(1, lambda: fired.append("a"))
    clock.call_later(1.5, lambda: fired.append("never")).cancel()
    clock.call_later(0, lambda: fired.append("now"))
    wall = clock.wall()
    await clock.advance(1.5)
    assert fired == ["now", "a"] and clock.monotonic() == 1.5
    await clock.advance(1)
    assert fired == ["now", "a", "b"] and clock.wall() == wall + 2.5


class QueuesDuringALease(SQLiteStore):
    """The real store, with one interleaving made certain: once armed, a lease that
    finds nothing lets ``during`` queue a task (and wake the worker) before it answers,
    as a submission from this process that lands while a lease is under way does. Its
    wait for work ends only when the worker is woken (SQLite's sleeps in real time, which
    would hide a lost wake behind the next poll)."""

    during: Callable[[], Awaitable[None]] | None = None

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109
        await asyncio.Event().wait()
        return False

    async def lease(self, *args: Any, **kwargs: Any) -> list[Any]:
        found = await super().lease(*args, **kwargs)
        if kwargs.get("isolated"):  # the look for a task that must run alone comes first
            return found
        during, self.during = self.during, None
        if during is not None and not found:
            await during()
        return found


async def test_work_queued_while_a_lease_finds_none_is_run_without_waiting_for_the_next_poll(
    clock: FakeClock,
) -> None:
    store = QueuesDuringALease(":memory:", clock=clock)
    await store.open()
    queued: list[int] = []

    async def submit() -> None:
        queued.append((await rt.submit(echo, 7)).id)

    try:
        # (poll_interval=60: on a clock that does not move, the next poll never comes)
        async with Runtime(store, clock=clock, poll_interval=60, agents=[echo]) as rt:
            store.during = submit
            local(rt).wake()  # a lease now, which finds nothing while a task is queued
            await until(lambda: bool(queued))
            r = await asyncio.wait_for(rt.result(queued[0]), 10)
    finally:
        await store.aclose()
    assert r.status is TaskStatus.SUCCEEDED and r.output == 7


async def test_tasks_taken_from_a_worker_that_lives_run_with_others_again(
    store: SQLiteStore, clock: FakeClock
) -> None:
    # After a store outage (or a pause) longer than the lease, every task of every worker
    # was taken back as if its worker had crashed, and ran alone: one at a time a worker.
    async with Runtime(store, clock=clock, lease_seconds=30, drain_timeout=0, agents=[waits]) as rt:
        worker = local(rt)
        ids = [s.id for s in await rt.submit_many(waits, [1, 2, 3])]
        await until(lambda: all(worker.holds(i) for i in ids))
        # Another worker's reaper, once the leases ran out while this one was cut off:
        assert (await store.reclaim(clock.wall() + 31)).requeued == 3
        await clock.advance(5)  # this worker's next heartbeat finds its leases gone

        async def all_running_again() -> bool:
            infos = await store.get_many(ids)
            return all(i.status is TaskStatus.RUNNING for i in infos)

        # It lives: what was taken from it runs with others, all three at once again.
        await until(all_running_again)
        infos = await store.get_many(ids)
    assert {i.lease_owner for i in infos} == {worker.id}
    assert {i.attempt for i in infos} == {1}  # the lost attempt was not counted
