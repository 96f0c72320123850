"""``Runtime.result`` never misses a task that finishes while its status is being read
(what made a server test wait for its 120 s timeout when PostgreSQL answered slowly)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.run.delivery import RECHECK_SECONDS, Delivery
from legion.store.sqlite import SQLiteStore
from legion.store.types import WriteBatch
from legion.task import Completion, NewTask, Outcome, TaskInfo


class SlowRead(SQLiteStore):
    """A real SQLite store whose ``get_many`` made by task ``slow`` runs ``meanwhile``
    after reading and before answering: the read is stale by the time it arrives, as a
    slow server's is."""

    slow: asyncio.Task[object] | None = None
    meanwhile: Callable[[], Awaitable[None]] | None = None
    slowed = 0

    async def get_many(self, ids: Sequence[int]) -> list[TaskInfo]:
        infos = await super().get_many(ids)
        if self.meanwhile is not None and asyncio.current_task() is self.slow:
            self.slowed += 1
            await self.meanwhile()
        return infos


async def test_a_task_that_finishes_during_the_status_read_is_delivered(tmp_path: Path) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @legion.agent(retries=0)
    async def held(ctx: legion.Context, x: int) -> int:
        started.set()
        await release.wait()
        return x * 2

    store = SlowRead(str(tmp_path / "slow.db"))
    await store.open()
    try:
        async with Runtime(store) as rt:
            task = await rt.submit(held, 21)
            await started.wait()
            first = asyncio.create_task(rt.result(task.id))

            async def finish_meanwhile() -> None:
                release.set()  # the task finishes while the second read is on its way
                await first

            store.meanwhile = finish_meanwhile
            store.slow = slow = asyncio.create_task(rt.result(task.id))
            async with asyncio.timeout(30):  # a bound on the bug, not a synchronisation
                second = await slow
            assert store.slowed == 1
            assert first.result().output == 42
            assert (second.status, second.output) == (TaskStatus.SUCCEEDED, 42)
            many = [r async for r in rt.results([task.id, task.id, 999_999])]
            assert [r.output for r in many] == [42]  # once each; an unknown id is skipped
    finally:
        await store.aclose()


class NoticedReads(SQLiteStore):
    """A real SQLite store that says when a ``get_many`` has answered."""

    read: asyncio.Event

    async def get_many(self, ids: Sequence[int]) -> list[TaskInfo]:
        infos = await super().get_many(ids)
        self.read.set()
        return infos


async def test_a_task_ended_by_whoever_took_its_lease_is_delivered(tmp_path: Path) -> None:
    # The local worker loses the lease of a running task, and the reaper that takes it
    # back ends it (cancelled: its cancel was asked). The feed names the local worker on that
    # change, as the lease was its, and the follower skips the local worker's changes:
    # the waiter hung until the worker told the delivery which tasks it had stopped.
    started = asyncio.Event()

    @legion.agent(retries=0)
    async def stuck(ctx: legion.Context, x: int) -> int:
        started.set()
        await asyncio.Event().wait()  # never ends by itself
        return x

    store = NoticedReads(str(tmp_path / "lost.db"))
    store.read = asyncio.Event()
    await store.open()
    try:
        async with Runtime(store, lease_seconds=1.5) as rt:
            assert rt.worker is not None
            task = await rt.submit(stuck, 1)
            await started.wait()
            store.read.clear()
            waiter = asyncio.create_task(rt.result(task.id))
            await store.read.wait()  # the waiter has read the task running, and waits
            # Another process's reaper, deciding this worker has stopped, ends the task:
            # its cancel was asked (a first stop alone is charged to no task: it would be
            # queued again, not ended).
            await store.cancel(task.id, await store.now())
            reclaimed = await store.reclaim(await store.now(), dead_owners=[rt.worker.id])
            assert reclaimed.cancelled == 1
            async with asyncio.timeout(30):  # a bound on the bug, not a synchronisation
                result = await waiter
            assert result.status is TaskStatus.CANCELLED
    finally:
        await store.aclose()


HELD = asyncio.Event()


@legion.agent(timeout=60, retries=0)
async def held(ctx: legion.Context, n: int) -> int:
    await HELD.wait()
    return n


async def test_a_result_awaited_when_the_runtime_closes_raises(tmp_path: Path) -> None:
    """A service closing its runtime on SIGTERM: the handlers still awaiting a result
    hung for good (and the process could not exit). They get WorkerStopped now, and a
    task submitted while it drained too; the task stays queued in the store."""
    rt = Runtime(f"sqlite:///{tmp_path / 'close.db'}", drain_timeout=0.2)
    await rt.open()
    submitted = await rt.submit(held, 1)
    waiter = asyncio.create_task(rt.result(submitted))
    many = asyncio.create_task(anext(rt.results([submitted])))
    await asyncio.sleep(0)  # (both are waiting)
    await rt.aclose()
    for pending in (waiter, many):
        with pytest.raises(legion.WorkerStopped, match="the runtime was closed"):
            await pending
    # (a RuntimeError of the executor's at first, then "the store is closed", which
    # read as a fault of the database)
    with pytest.raises(RuntimeError, match="this Runtime is closed"):
        await rt.get(submitted)
    with pytest.raises(RuntimeError, match="this Runtime is closed"):
        await rt.open()
    async with Runtime(f"sqlite:///{tmp_path / 'close.db'}", worker=False) as other:
        info = await other.get(submitted)
    assert info is not None and info.status is TaskStatus.QUEUED  # released, not lost


async def test_a_task_purged_before_its_end_was_read_is_skipped_not_waited_for(
    tmp_path: Path,
) -> None:
    # A caller without a worker waits for two tasks; another process runs them and purges
    # one, its change-feed rows with it, before the caller reads the feed (paused, or cut
    # off from the store): nothing in the feed will ever say it ended, and `legion run`
    # waited for it for good. The follower asks the store where every task it waits for
    # stands every RECHECK_SECONDS (its clock here a fake one): one that is gone is
    # skipped, as a task that never existed is.
    store = NoticedReads(str(tmp_path / "purged.db"))
    store.read = asyncio.Event()
    await store.open()
    follower: asyncio.Task[None] | None = None
    try:
        purged, kept = await store.submit([NewTask("a", b"1"), NewTask("a", b"2")], 1.0)
        delivery = Delivery(store, local_worker=lambda: None)
        await delivery.start()
        results = delivery.results([purged.id, kept.id])
        first = asyncio.ensure_future(anext(results))
        await store.read.wait()  # both waited for, both read queued
        await store.lease("w", {"a": 2}, 2, 1e12, 2.0)
        ends = [Completion(t.id, 1, "w", Outcome.SUCCEEDED, output=b"0") for t in (purged, kept)]
        await store.write(WriteBatch(completions=ends), 3.0)
        assert (await store.purge(1e12, [TaskStatus.SUCCEEDED], limit=1)).tasks == 1
        assert await store.statuses([purged.id, kept.id]) == {kept.id: TaskStatus.SUCCEEDED}

        now = [0.0]
        follower = asyncio.create_task(delivery.follow(monotonic=lambda: now[0]))
        async with asyncio.timeout(30):  # a bound on a hung test, not a synchronisation
            assert (await first).id == kept.id  # read from the feed
            now[0] = RECHECK_SECONDS  # the next pass asks where the other stands
            assert [r async for r in results] == []
    finally:
        if follower is not None:
            follower.cancel()
        await store.aclose()


async def test_a_reading_runtime_closes_right_after_a_result_on_postgres(
    postgres_url: str,
) -> None:
    # A result read, then the runtime closed at once: the follower of the event feed was
    # waiting for a pool connection the read had just given back, and on Python 3.11 the
    # pool's wait dropped the close's cancel: the close waited for ever (5 of 5 runs).
    @legion.agent
    async def echo(ctx: legion.Context, x: int) -> int:
        return x

    async with Runtime(postgres_url) as rt:
        done = [r async for r in rt.map(echo, [1])]
    for _ in range(5):
        reader = Runtime(postgres_url, worker=False)
        await reader.__aenter__()
        assert (await reader.result(done[0].id)).output == 1
        # (bounded only so that a hang fails the test instead of the whole run)
        await asyncio.wait_for(reader.aclose(), timeout=60)


def test_closing_from_another_event_loop_says_so(tmp_path: Path) -> None:
    # It raised a bare CancelledError (the worker's task, cancelled with its own loop).
    async def opened() -> Runtime:
        rt = Runtime(f"sqlite:///{tmp_path / 'loops.db'}")
        await rt.__aenter__()
        return rt

    rt = asyncio.run(opened())
    with pytest.raises(RuntimeError, match="opened in another event loop"):
        asyncio.run(rt.aclose())


async def test_waiting_for_tasks_no_worker_serves_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Runtime opened to read results by id, its agent not registered: its worker runs
    # none of them, and the wait went on in silence.
    @legion.agent
    async def echo(ctx: legion.Context, x: int) -> int:
        return x

    url = f"sqlite:///{tmp_path / 'unserved.db'}"
    async with Runtime(url, worker=False) as submitter:
        queued = await submitter.submit(echo, 1)
    with caplog.at_level(logging.WARNING, logger="legion.runtime"):
        async with Runtime(url) as reader:
            waiting = asyncio.create_task(reader.result(queued.id))
            for _ in range(1000):  # (until it is said, or 10 s)
                if "no live worker serves it" in caplog.text:
                    break
                await asyncio.sleep(0.01)
            waiting.cancel()
    assert "the tasks of agent 'echo' wait for a worker" in caplog.text
    # The same runtime with the agent registered says nothing, and runs it.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="legion.runtime"):
        async with Runtime(url, agents=[echo]) as served:
            assert (await served.result(queued.id)).output == 1
    assert "no live worker serves it" not in caplog.text


async def test_an_agent_defined_again_under_its_name_says_how_to_go_on(tmp_path: Path) -> None:
    # A notebook's cell run twice defines the agent anew: the refusal gave no way on.
    def define() -> legion.Agent:
        @legion.agent(name="cell")
        async def cell(ctx: legion.Context, x: int) -> int:
            return x

        return cell

    async with Runtime(f"sqlite:///{tmp_path / 'cells.db'}", agents=[define()]) as rt:
        with pytest.raises(
            legion.ConfigError, match=r"two different agents are named 'cell'.* name="
        ):
            rt.register(define())
