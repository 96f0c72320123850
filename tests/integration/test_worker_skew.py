"""A worker whose host's clock is far from the database's: what it writes for the other
workers is on the database's clock (a retry's not-before time, its capacity claims), and
its own leases are not taken back by its own reaper when its clock steps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

import legion
from legion import Runtime, TaskStatus
from legion.clock import ForwardSteps, Scheduled, StoreTime
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.store import store_from_url
from legion.testing import FakeClock, ScriptedProvider
from tests.conftest import POSTGRES_URL

AHEAD = 300.0


class Ahead:
    """The system's clock, its wall time `AHEAD` seconds ahead (a host out of step)."""

    def wall(self) -> float:
        return time.time() + AHEAD

    monotonic = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], object]) -> Scheduled:
        return asyncio.get_running_loop().call_later(delay, callback)


@legion.agent(retries=1, backoff=60, max_backoff=60)
async def asks_then_fails(ctx: legion.Context, x: int) -> int:
    await ctx.llm.chat([{"role": "user", "content": f"q{x}"}])
    raise ValueError("first")


async def test_a_worker_ahead_writes_on_the_databases_clock(postgres_url: str) -> None:
    # Its retry's not-before time was its own clock's: the other workers left the task
    # queued for the five minutes its clock was ahead (or ran it at once, for a clock
    # behind); its capacity claims looked fresh to the others for five minutes, and a
    # pause it relayed after a 429 held every worker for five.
    store = store_from_url(postgres_url)
    await store.open()
    route = Route("r", ScriptedProvider(["fine"]), "m", Capacity("r", rpm=600))
    try:
        async with (
            LLMClient([route]) as llm,
            Runtime(store, clock=Ahead(), llm=llm) as rt,
            asyncio.timeout(60),
        ):
            task = await rt.submit(asks_then_fails, 1)
            while True:  # until its first attempt has failed (a bound: the timeout)
                info = await rt.get(task.id)
                if info is not None and info.attempt == 1 and info.status is TaskStatus.QUEUED:
                    break
                await asyncio.sleep(0.01)
            db_now = await store.now()
            schema = postgres_url.split("search_path%3D")[1].split("&")[0]
            with psycopg.connect(POSTGRES_URL) as conn:
                not_before, claimed_at = conn.execute(
                    f'SELECT (SELECT not_before FROM "{schema}".tasks WHERE id = %s), '
                    f'(SELECT max("at") FROM "{schema}".capacity_claims)',
                    (task.id,),
                ).fetchone()  # type: ignore[misc]
            assert 0 < not_before - db_now <= 60  # (its backoff, jittered; was 300 more)
            assert abs(claimed_at - db_now) < 10  # (was ~300 ahead)
    finally:
        await store.aclose()


def test_a_clock_in_step_with_its_store_reads_the_local_one_itself() -> None:
    local = Ahead()
    clock = StoreTime(local)
    assert clock.wall == local.wall  # (no function of its own: read at every start and end)
    clock.follow(store_now=1000.1, local_now=1000.0)  # a round trip's worth: in step
    assert clock.wall == local.wall and clock.offset == 0.0
    clock.follow(store_now=1000.0 - AHEAD, local_now=1000.0)
    assert clock.offset == -AHEAD and abs(clock.wall() - time.time()) < 1
    clock.follow(store_now=1000.0, local_now=1000.0)
    assert clock.wall == local.wall


def _held() -> tuple[asyncio.Event, list[int], legion.Agent]:
    """An agent that records its input as it starts, then holds until the event is set."""
    release = asyncio.Event()
    started: list[int] = []

    @legion.agent(retries=0)
    async def held(ctx: legion.Context, x: int) -> int:
        started.append(x)
        await release.wait()
        return x

    return release, started, held


async def test_a_step_of_the_hosts_clock_does_not_take_a_workers_own_leases(
    tmp_path: Path,
) -> None:
    # On SQLite (the host's clock), a forward step of the wall clock made every lease of
    # the worker look expired to its own reaper: each running task was stopped, given
    # back and run again from its start.
    release, started, held = _held()

    clock = FakeClock()
    async with Runtime(f"sqlite:///{tmp_path / 's.db'}", clock=clock) as rt:
        ids = [s.id for s in await rt.submit_many(held, range(3))]
        await _until(lambda: len(started) == 3)
        clock.step_wall(+600)
        assert rt.worker is not None
        await rt.worker.reap()
        assert all(rt.worker.holds(i) for i in ids)
        release.set()
        results = [r async for r in rt.results(ids)]
    assert [(r.status, r.attempt) for r in results] == [(TaskStatus.SUCCEEDED, 1)] * 3
    assert sorted(started) == [0, 1, 2]  # none ran again


async def test_a_step_of_the_hosts_clock_does_not_take_another_workers_leases(
    tmp_path: Path,
) -> None:
    # Two workers on one SQLite file share their host's clock. A forward step of it made
    # the other worker's heartbeat and leases look that much older to each reaper: the
    # second worker took back every lease of the first, alive all along, and each of its
    # tasks ran again from its last step.
    release, started, held = _held()

    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 's.db'}"
    async with Runtime(url, clock=clock) as first:
        ids = [s.id for s in await first.submit_many(held, range(3))]
        await _until(lambda: len(started) == 3)
        async with Runtime(url, clock=clock, agents=[held]) as second:
            assert first.worker is not None and second.worker is not None
            await second.worker.reap()  # (its reaper runs every few seconds: it saw the clock)
            clock.step_wall(+600)
            await second.worker.reap()
            assert all(first.worker.holds(i) for i in ids)
            release.set()
            results = [r async for r in first.results(ids)]
    assert [(r.status, r.attempt) for r in results] == [(TaskStatus.SUCCEEDED, 1)] * 3
    assert sorted(started) == [0, 1, 2]  # none ran again


def test_forward_steps_hold_for_a_while_and_only_ahead() -> None:
    steps = ForwardSteps()
    assert steps.behind(1000.0, 0.0, hold=30) == 0.0  # (the first reading: nothing to compare)
    assert steps.behind(1002.4, 2.0, hold=30) == 0.0  # a slow round trip is no step
    assert steps.behind(1604.0, 4.0, hold=30) == pytest.approx(599.6)
    assert steps.behind(1620.0, 20.0, hold=30) == pytest.approx(599.6)
    assert steps.behind(1320.0, 20.5, hold=30) == pytest.approx(599.6)  # back: no less held
    assert steps.behind(1330.0, 35.0, hold=30) == 0.0  # the hold is over


async def _until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):  # (a bound on a broken test, not a synchronisation)
        while True:
            if done():
                return
            await asyncio.sleep(0.002)
