"""A worker cut off from PostgreSQL by a blackhole (a proxy that stops forwarding) fails
its store calls after its timeout instead of hanging, the healthy worker's commits go on
meanwhile, and once the blackhole ends every task completes exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

import legion
from legion import codec
from legion.errors import StoreUnavailable
from legion.run.worker import Worker, WorkerConfig
from legion.store import PostgresStore
from legion.task import NewTask, TaskStatus
from tests.feed import until_holds
from tests.integration.tcp_proxy import Proxy, proxy_to

pytestmark = pytest.mark.slow

LEASE = 6.0  # store calls are bounded by a third of it: 2 s
LONG_LEASE = 15.0  # (an outage of two failed writes, 10 s, within it)
TASKS = 300


@legion.agent(name="effect", timeout=60, retries=5, backoff=0)
async def effect(ctx: legion.Context, n: int, ledger: str) -> int:
    def touch() -> int:
        with open(ledger, "a") as f:
            f.write(json.dumps({"task": ctx.task_id, "n": n}) + "\n")
        return n

    done = await ctx.step("touch", touch)
    await asyncio.sleep(0.05)
    return int(done)


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = 120.0) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds (a generous bound)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def cut_off(
    postgres_url: str, lease: float, agent: str, count: int, ledger: Path
) -> AsyncIterator[tuple[PostgresStore, PostgresStore, Proxy]]:
    """A store reached directly and one through a proxy that can blackhole it, with
    ``count`` tasks of ``agent`` submitted (each told the ``ledger``); both closed after."""
    direct = PostgresStore(postgres_url, lease_seconds=lease)
    await direct.open()
    async with proxy_to("127.0.0.1", urlsplit(postgres_url).port or 5432) as proxy:
        cut = PostgresStore(through(postgres_url, proxy.port), lease_seconds=lease)
        await cut.open()
        try:
            await direct.submit(
                [
                    NewTask(agent, codec.dumps({"n": i, "ledger": str(ledger)}), f"{agent}{i}")
                    for i in range(count)
                ],
                time.time(),
            )
            yield direct, cut, proxy
        finally:
            await cut.aclose()
            await direct.aclose()


async def test_a_blackholed_worker_times_out_and_the_healthy_one_goes_on(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="legion")
    ledger = tmp_path / "ledger.jsonl"
    async with cut_off(postgres_url, LEASE, "effect", TASKS, ledger) as (direct, cut, proxy):
        config = WorkerConfig(
            concurrency=10, lease_seconds=LEASE, poll_interval=0.2, watchdog=False
        )
        healthy = Worker(direct, agents=[effect], config=config)
        cutoff = Worker(cut, agents=[effect], config=config)
        runs = [
            asyncio.create_task(w.run(), name=f"worker-{i}")
            for i, w in enumerate((healthy, cutoff))
        ]

        async def both_working() -> bool:
            return min(healthy.statistics().succeeded, cutoff.statistics().succeeded) > 0

        await until("both workers complete tasks", both_working)
        proxy.blackhole()
        before = healthy.statistics().succeeded

        # The cut off worker's calls fail with a store error (bounded: no hang).
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await cut.counts()
        assert time.monotonic() - started < cut.timeouts.call + 10  # a generous bound

        async def healthy_goes_on() -> bool:
            return healthy.statistics().succeeded >= before + 30

        await until("the healthy worker completes tasks during the blackhole", healthy_goes_on)

        async def beat_failed() -> bool:
            return any("heartbeat failed" in r.getMessage() for r in caplog.records)

        await until("the cut off worker's heartbeat fails", beat_failed)
        proxy.blackhole(False)

        async def all_done() -> bool:
            return (await direct.counts()).get(TaskStatus.SUCCEEDED, 0) == TASKS

        await until("every task succeeds", all_done)

        async def said_back() -> bool:  # (an outage's errors end with a line saying so)
            return any("the store answers again" in r.getMessage() for r in caplog.records)

        await until("the cut off worker says the store answers again", said_back)
        for w in (healthy, cutoff):
            w.stop()
        await asyncio.gather(*runs)

        # Nothing lost, each completion recorded once, every side effect made.
        assert await direct.counts() == {TaskStatus.SUCCEEDED: TASKS}
        events = await until_holds(
            lambda es: sum(e.status is TaskStatus.SUCCEEDED for e in es) >= TASKS,
            lambda: direct.events_after(0),
        )
        done = Counter(e.task_id for e in events if e.status is TaskStatus.SUCCEEDED)
        assert len(done) == TASKS and set(done.values()) == {1}
        effects = [json.loads(line) for line in ledger.read_text().splitlines()]
        assert {e["n"] for e in effects} == set(range(TASKS))


@legion.agent(name="started", timeout=60, retries=5, backoff=0)
async def started(ctx: legion.Context, n: int, ledger: str) -> int:
    with open(ledger, "a") as f:  # noqa: ASYNC230 - outside any step: runs as the agent does
        f.write(json.dumps({"task": ctx.task_id, "attempt": ctx.attempt}) + "\n")
    await asyncio.sleep(0.2)
    return n


async def test_tasks_whose_ends_wait_for_the_store_are_not_given_back_as_unheld(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # After an outage shorter than the lease, the worker gave back the leases a failed
    # lease call might have taken and nothing ran: with them, tasks whose instances had
    # ended and whose ends were still waiting to be written. It leased them again and
    # ran their agents a second time (28-49 of 2,000 over a 12 s restart).
    caplog.set_level(logging.WARNING, logger="legion")
    ledger = tmp_path / "ledger.jsonl"
    count = 60
    async with cut_off(postgres_url, LONG_LEASE, "started", count, ledger) as (direct, cut, proxy):
        config = WorkerConfig(
            concurrency=10, lease_seconds=LONG_LEASE, poll_interval=0.2, watchdog=False
        )
        worker = Worker(cut, agents=[started], config=config)
        run = asyncio.create_task(worker.run(), name="worker")

        async def running() -> bool:
            return worker.statistics().succeeded > 0

        await until("the worker completes tasks", running)
        proxy.blackhole()

        async def lease_failed() -> bool:
            return any("leasing failed" in r.getMessage() for r in caplog.records)

        async def writes_failed() -> bool:  # (its retries now wait longer than a lease
            # call's: the lease loop is the first to reach the store again)
            return sum("store write of" in r.getMessage() for r in caplog.records) >= 2

        await until("a lease call fails", lease_failed)
        await until("ends wait for the store", writes_failed)
        proxy.blackhole(False)

        async def all_done() -> bool:
            return (await direct.counts()).get(TaskStatus.SUCCEEDED, 0) == count

        await until("every task succeeds", all_done)
        worker.stop()
        await run
        starts = Counter(json.loads(line)["task"] for line in ledger.read_text().splitlines())
        assert len(starts) == count
        assert [t for t, n in starts.items() if n > 1] == []
