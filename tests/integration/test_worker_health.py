"""A worker watches its own health: it stops leasing while overloaded, and says so."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.run.worker import START_SLICE
from tests.polling import wait_until


async def test_a_lagging_worker_stops_leasing_until_it_recovers(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    @legion.agent
    async def hog(ctx: legion.Context, x: int) -> int:
        time.sleep(0.15)  # noqa: ASYNC251 - the pitfall under test: the worker's loop lags
        return x

    caplog.set_level(logging.INFO, logger="legion.worker")
    async with Runtime(db_url, concurrency=2, max_loop_lag=0.04) as rt:
        results = [r async for r in rt.map(hog, range(8))]
        assert rt.worker is not None
        health = rt.worker.health()
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 8
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("not leasing: event loop lag") for m in messages), messages
    assert any(m.startswith("leasing again") for m in messages), messages
    # Said once each time it begins (a new figure each check was a new line: a pause of
    # 15 s logged 18 of them as the lag fell back).
    said = [m.split(":")[0] for m in messages if m.startswith(("not leasing", "leasing again"))]
    assert all(a != b for a, b in itertools.pairwise(said)), said
    assert isinstance(health["blocked"], int) and health["blocked"] >= 1
    assert isinstance(health["max_loop_lag_ms"], float) and health["max_loop_lag_ms"] >= 100


async def test_a_worker_over_its_memory_mark_does_not_lease(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    @legion.agent
    async def noop(ctx: legion.Context, x: int) -> int:
        return x

    caplog.set_level(logging.INFO, logger="legion.worker")
    # Any process is over 1 MB; the lag mark is out of reach, so that a busy machine's
    # lag is not the reason found first.
    async with Runtime(db_url, max_memory_mb=1, max_loop_lag=3600) as rt:
        submitted = await rt.submit(noop, 1)
        assert rt.worker is not None
        await wait_until(lambda: rt.worker is not None and bool(rt.worker.health()["overloaded"]))
        info = await rt.get(submitted.id)
        health = rt.worker.health()
    assert info is not None and info.status is TaskStatus.QUEUED  # held off, not lost
    assert str(health["overloaded"]).startswith("memory ")
    assert any(r.getMessage().startswith("not leasing: memory") for r in caplog.records)
    # Said at the start too: a limit below what the worker uses before running anything.
    assert any("--max-memory 1 MB is below" in r.getMessage() for r in caplog.records)


async def test_a_large_lease_starts_a_slice_per_turn_of_the_loop(db_url: str) -> None:
    """2,000 tasks leased at once start `START_SLICE` per turn of the event loop: started
    together, each instance's first step ran in one turn, and the loop's timers, I/O and
    the worker's own health check waited behind them all."""
    loop = asyncio.get_running_loop()
    turns = 0
    ticking: list[asyncio.Handle] = []

    def tick() -> None:  # counts the loop's turns: call_soon runs it once per turn
        nonlocal turns
        turns += 1
        ticking[:] = [loop.call_soon(tick)]

    tick()
    began: list[int] = []
    release = asyncio.Event()

    @legion.agent
    async def waits(ctx: legion.Context, x: int) -> int:
        began.append(turns)
        await release.wait()
        return x

    try:
        async with Runtime(db_url, concurrency=2000) as rt:
            results = rt.map(waits, range(2000))
            first = asyncio.ensure_future(anext(results))
            await wait_until(lambda: len(began) == 2000)
            release.set()
            done = [await first] + [r async for r in results]
    finally:
        ticking[0].cancel()
    assert [r.status for r in done] == [TaskStatus.SUCCEEDED] * 2000
    per_turn = Counter(began)
    assert max(per_turn.values()) <= START_SLICE, per_turn.most_common(3)


async def test_a_release_while_a_large_lease_starts_gives_back_the_rest_unrun(
    db_url: str,
) -> None:
    """A release (a second Ctrl-C, a fatal error) that comes while a lease's later slices
    are still to start reaches them too: they end given back without running, rather
    than running until the drain's timeout."""
    began: list[int] = []
    release = asyncio.Event()

    async with Runtime(db_url, concurrency=2000, drain_timeout=30) as rt:
        worker = rt.worker
        assert worker is not None

        @legion.agent
        async def waits(ctx: legion.Context, x: int) -> int:
            began.append(x)
            if len(began) == 1:
                worker.release_now()
            await release.wait()
            return x

        submitted = await rt.submit_many(waits, range(2000))
        await rt.drain()
        infos = await rt.store.get_many([s.id for s in submitted])
    assert len(began) == 1
    assert {info.status for info in infos} == {TaskStatus.QUEUED}
    assert len(infos) == 2000


async def test_an_instance_cancelled_from_outside_before_it_began_frees_its_slot(
    db_url: str,
) -> None:
    """An instance frees its slot as `run_instance` ends. One whose task is cancelled
    before its first step (by code outside the worker) never runs it: the next heartbeat
    finds its task done and frees the slot."""
    victims: list[int] = []

    @legion.agent
    async def first(ctx: legion.Context, x: int) -> int:
        # The two instances started in one turn; this one runs first and cancels the
        # other's task before that task's first step.
        for task in asyncio.all_tasks():
            if task.get_name().startswith("legion-task-") and task is not asyncio.current_task():
                victims.append(int(task.get_name().rsplit("-", 1)[1]))
                task.cancel()
        return x

    async with Runtime(db_url, concurrency=2) as rt:
        worker = rt.worker
        assert worker is not None
        ids = [s.id for s in await rt.submit_many(first, [1, 2])]
        await wait_until(lambda: len(victims) == 1 and not worker.holds(ids[0]))
        (victim,) = victims
        assert victim == ids[1]
        assert worker.holds(victim)  # its task is done, its slot still taken
        await worker.heartbeat()
        assert not worker.holds(victim)
        assert worker.statistics().in_flight == 0
