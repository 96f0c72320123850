"""Fencing in one process, against real stores: lost leases are noticed, ambiguous store
answers are resolved, and a worker's identity decides when its leases are taken early."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import sqlite3
import string
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import legion
from legion import Runtime, TaskStatus, codec, identity
from legion.errors import LeaseLost, StoreError
from legion.run.runner import Instance
from legion.run.upkeep import CANCEL_POLL
from legion.run.worker import Worker, WorkerConfig
from legion.store import SQLiteStore, WorkerInfo, WriteBatch, store_from_url
from legion.store.types import MemoryWrite
from legion.task import Lease, NewTask
from legion.testing import FakeClock
from tests.polling import wait_until


async def test_a_stolen_lease_stops_the_instance_at_its_next_write(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    go = asyncio.Event()
    ran: list[str] = []

    @legion.agent
    async def victim(ctx: legion.Context, x: int) -> int:
        await ctx.step("first", ran.append, "first")
        await go.wait()
        await ctx.step("second", ran.append, "second")  # its record is refused
        ran.append("after")  # never reached
        return x

    caplog.set_level(logging.WARNING, logger="legion.worker")
    async with Runtime(store_url, lease_seconds=600) as rt:
        submitted = await rt.submit(victim, 1)
        assert rt.worker is not None
        async with asyncio.timeout(30):
            while not await rt.store.steps(submitted.id):  # noqa: ASYNC110 - a row to appear
                await asyncio.sleep(0.01)
        # The store takes the task back (as if the worker were dead) and leases it again.
        assert (await rt.store.reclaim(time.time(), [rt.worker.id])).requeued == 1
        (stolen,) = await rt.store.lease(
            "thief", {"victim": 1}, 1, time.time() + 600, time.time(), isolated=True
        )
        go.set()
        await wait_until(lambda: not rt.worker.holds(submitted.id))  # type: ignore[union-attr]
        info = await rt.store.get(submitted.id)
        steps = await rt.store.steps(submitted.id)
    assert ran == ["first", "second"]
    assert info is not None and info.status is TaskStatus.RUNNING and info.lease_owner == "thief"
    assert [s.key for s in steps] == ["first"]  # the late record was refused
    assert stolen.steps.keys() == {"first"}
    lost = [r.getMessage() for r in caplog.records if "lost to" in r.getMessage()]
    assert lost == [f"lease on task {submitted.id} lost to worker thief; stopped"]


async def test_leases_lost_together_are_said_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker paused past its lease lost a hundred tasks at once, and said so a hundred
    # times (a line each).
    go = asyncio.Event()

    @legion.agent
    async def victims(ctx: legion.Context, x: int) -> int:
        await ctx.step("first", int, x)
        await go.wait()
        await ctx.step("second", int, x)  # its record is refused
        return x

    caplog.set_level(logging.WARNING, logger="legion.worker")
    async with Runtime(f"sqlite:///{tmp_path / 'lost.db'}", lease_seconds=600) as rt:
        ids = [(await rt.submit(victims, i)).id for i in range(3)]
        assert rt.worker is not None
        async with asyncio.timeout(30):
            while not all([await rt.store.steps(i) for i in ids]):  # noqa: ASYNC110 - rows to appear
                await asyncio.sleep(0.01)
        assert (await rt.store.reclaim(time.time(), [rt.worker.id])).requeued == 3
        stolen: list[int] = []
        for _ in ids:  # (suspects of a lost worker: a group of 1 each, as lost with 3)
            got = await rt.store.lease(
                "thief", {"victims": 3}, 3, time.time() + 600, time.time(), isolated=True
            )
            stolen += [s.id for s in got]
        assert sorted(stolen) == sorted(ids)
        go.set()
        await wait_until(lambda: not any(rt.worker.holds(i) for i in ids))  # type: ignore[union-attr]
        await wait_until(lambda: any("lost to" in r.getMessage() for r in caplog.records))
    lost = [r.getMessage() for r in caplog.records if "lost to" in r.getMessage()]
    shown = ", ".join(map(str, sorted(ids)))
    assert lost == [f"leases on 3 tasks lost to worker thief; stopped (tasks {shown})"]


async def test_the_heartbeat_stops_an_instance_whose_lease_it_cannot_extend(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()

    @legion.agent
    async def waits(ctx: legion.Context, x: int) -> int:
        await release.wait()  # no write that would notice
        return x

    caplog.set_level(logging.WARNING, logger="legion.worker")
    async with Runtime(db_url, lease_seconds=600) as rt:
        submitted = await rt.submit(waits, 1)
        worker = rt.worker
        assert worker is not None
        await wait_until(lambda: worker.holds(submitted.id))
        first = worker._instances[submitted.id].task
        assert first is not None
        assert (await rt.store.reclaim(time.time(), [worker.id])).requeued == 1
        await worker.heartbeat()
        # (its instance, not whether the worker holds the task: the task, queued again, may
        # be leased again at once, by this worker too, which then held it again)
        await asyncio.wait_for(asyncio.shield(first), 30)
        info = await rt.store.get(submitted.id)
        release.set()  # (the task may be leased again meanwhile: it ends, not drained 30 s)
    # Nothing written over what the reclaim left: queued (its attempt not counted), or
    # running it again.
    assert info is not None and info.output is None, info
    assert info.error is not None and info.error.type == "LeaseExpired", info
    assert (info.status, info.attempt) in ((TaskStatus.QUEUED, 0), (TaskStatus.RUNNING, 1)), info
    assert any("lease on task" in r.getMessage() for r in caplog.records)


async def test_a_cancel_asked_through_the_store_is_seen_at_the_next_step(store_url: str) -> None:
    go = asyncio.Event()
    ran: list[str] = []

    @legion.agent
    async def steps(ctx: legion.Context, x: int) -> int:
        await ctx.step("one", ran.append, "one")
        await go.wait()
        await ctx.step("two", ran.append, "two")  # its record tells of the cancel
        await ctx.step("three", ran.append, "three")  # never runs
        return x

    # No heartbeat comes (the clock stands still): step two's record tells of the cancel.
    clock = FakeClock()
    async with Runtime(store_url, lease_seconds=600, clock=clock) as rt:
        submitted = await rt.submit(steps, 1)
        async with asyncio.timeout(30):
            while not await rt.store.steps(submitted.id):  # noqa: ASYNC110 - step one recorded
                await asyncio.sleep(0.01)
        assert await rt.store.cancel(submitted.id, clock.wall()) is TaskStatus.RUNNING
        go.set()
        async with asyncio.timeout(30):
            result = await rt.result(submitted.id)
    assert result.status is TaskStatus.CANCELLED
    assert ran == ["one", "two"]


async def test_a_cancel_asked_through_the_store_stops_a_task_that_writes_nothing(
    store_url: str,
) -> None:
    # Another process's cancel reached a task that makes no step (an LLM call, a sleep)
    # only at its worker's next heartbeat, 5 s later: most such tasks had finished by
    # then, `succeeded`, their effects done.
    started = asyncio.Event()

    @legion.agent
    async def quiet(ctx: legion.Context, x: int) -> int:
        started.set()
        await asyncio.Event().wait()  # (until it is stopped)
        return x

    clock = FakeClock()
    async with Runtime(store_url, lease_seconds=600, clock=clock) as rt:
        submitted = await rt.submit(quiet, 1)
        await started.wait()
        assert await rt.store.cancel(submitted.id, clock.wall()) is TaskStatus.RUNNING
        await clock.advance(CANCEL_POLL)  # (a heartbeat is 5 s away)
        async with asyncio.timeout(30):  # (a bound on a broken test)
            result = await rt.result(submitted.id)
    assert result.status is TaskStatus.CANCELLED


async def test_a_step_waits_for_a_heartbeat_sent_after_it_asked(store_url: str) -> None:
    """A heartbeat out when the worker was paused answers, after the pause, that the
    leases held (they did, when the store read them); a step that asked for a fresh
    confirmation after the pause must not take that answer: the next heartbeat finds the
    lease gone and the step never runs."""
    go = asyncio.Event()
    ran: list[str] = []

    @legion.agent
    async def steps(ctx: legion.Context, x: int) -> int:
        await ctx.step("one", ran.append, "one")
        await go.wait()
        await ctx.step("two", ran.append, "two")  # under a lease the store took back
        return x

    clock = FakeClock()
    async with Runtime(store_url, lease_seconds=600, clock=clock) as rt:
        worker = rt.worker
        assert worker is not None
        submitted = await rt.submit(steps, 1)
        async with asyncio.timeout(30):
            while not await rt.store.steps(submitted.id):  # noqa: ASYNC110 - step one recorded
                await asyncio.sleep(0.01)
        extend = rt.store.extend_leases
        answer, later = asyncio.Event(), asyncio.Event()
        asked: list[list[int]] = []

        async def paused(owner: str, ids: Any, *args: Any) -> Any:
            asked.append(list(ids))
            if len(asked) == 1:  # read while the lease held; answered after the pause
                found = await extend(owner, ids, *args)
                await answer.wait()
                return found
            await later.wait()
            return await extend(owner, ids, *args)

        rt.store.extend_leases = paused  # type: ignore[method-assign,assignment]
        try:
            out = asyncio.ensure_future(worker.heartbeat())
            await wait_until(lambda: len(asked) == 1)
            # The pause: the lease runs out, the store takes it back, another worker has it.
            assert (await rt.store.reclaim(time.time(), [worker.id])).requeued == 1
            (stolen,) = await rt.store.lease(
                "thief", {"steps": 1}, 1, time.time() + 600, time.time(), isolated=True
            )
            assert stolen.id == submitted.id
            await clock.advance(60)  # (the loop's own heartbeat is out now, held back)
            await wait_until(lambda: len(asked) == 2)
            go.set()
            await wait_until(worker._beat.is_set)  # step two asks for a confirmation
            answer.set()
            await out
            assert ran == ["one"]  # the answer from before the pause did not let it run
        finally:
            answer.set()
            later.set()
        await wait_until(lambda: not worker.holds(submitted.id))
        info = await rt.store.get(submitted.id)
    assert ran == ["one"]
    assert info is not None and info.status is TaskStatus.RUNNING and info.lease_owner == "thief"


class AnswerLost(SQLiteStore):
    """A real SQLite store whose first write (or lease) commits and then fails, as when the
    connection drops before the acknowledgement arrives."""

    def __init__(self, path: Path, *, lose: str) -> None:
        super().__init__(path)
        self.lose = lose

    async def write(self, batch: WriteBatch, now: float) -> list[bool]:
        applied = await super().write(batch, now)
        if self.lose == "write" and batch.completions:
            self.lose = ""
            raise StoreError("the connection was lost before the answer came")
        return applied

    async def lease(
        self,
        owner: str,
        wants: Mapping[str, int],
        total: int,
        until: float,
        now: float,
        *,
        isolated: bool = False,
        offer: Mapping[str, float] | None = None,
        min_priority: int | None = None,
        tenant_cap: int | None = None,
    ) -> list[Lease]:
        leases = await super().lease(
            owner,
            wants,
            total,
            until,
            now,
            isolated=isolated,
            offer=offer,
            min_priority=min_priority,
            tenant_cap=tenant_cap,
        )
        if self.lose == "lease" and leases:
            self.lose = ""
            raise StoreError("the connection was lost before the answer came")
        return leases


class RefusesOneRow(SQLiteStore):
    """A real SQLite store that refuses, for good, every write holding the step named
    ``poison``: a row it cannot store (for a reason legion has not met yet)."""

    async def write(self, batch: WriteBatch, now: float) -> list[bool]:
        if any(step.key == "poison" for step in batch.steps):
            raise StoreError("the store cannot hold this row")
        return await super().write(batch, now)


async def test_a_late_memory_write_of_a_failed_attempt_leaves_the_next_one_alone(
    store_url: str,
) -> None:
    go_on = asyncio.Event()
    late: list[BaseException] = []
    tried = asyncio.Event()

    async def later(ctx: legion.Context) -> None:
        await go_on.wait()
        try:
            await ctx.memory.set("progress", "from attempt 1")
        except Exception as exc:
            late.append(exc)
        tried.set()

    second = asyncio.Event()
    left: list[asyncio.Task[None]] = []

    @legion.agent(retries=1, backoff=0)
    async def flaky(ctx: legion.Context, x: int) -> str:
        if ctx.attempt == 1:
            left.append(asyncio.ensure_future(later(ctx)))  # outlives the attempt
            raise RuntimeError("transient")
        second.set()
        await go_on.wait()
        await tried.wait()
        await ctx.step("after", lambda: None)  # (it was stopped here: its lease taken lost)
        return "attempt 2"

    async with Runtime(store_url) as rt, asyncio.timeout(60):
        submitted = await rt.submit(flaky, 1)
        await second.wait()
        go_on.set()
        r = await rt.result(submitted.id)
        assert await rt.store.memory_get(f"task-{submitted.id}", "progress") is None
    assert r.status is TaskStatus.SUCCEEDED and r.output == "attempt 2" and r.attempt == 2
    (refused,) = late
    assert "its attempt has ended" in str(refused)  # refused before it was written


async def test_a_refused_write_of_an_earlier_attempt_does_not_stop_the_current_one(
    store_url: str,
) -> None:
    go_on = asyncio.Event()
    running = asyncio.Event()

    @legion.agent(retries=1, backoff=0)
    async def flaky(ctx: legion.Context, x: int) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("transient")
        running.set()
        await go_on.wait()
        await ctx.step("after", lambda: None)
        return "attempt 2"

    async with Runtime(store_url) as rt, asyncio.timeout(60):
        submitted = await rt.submit(flaky, 1)
        await running.wait()
        worker = rt.worker
        assert worker is not None
        # A write of attempt 1 that reaches the store now (queued as that attempt ended):
        # refused, its lease gone - and no word about attempt 2, which holds the task.
        stale = MemoryWrite(f"task-{submitted.id}", "k", b"1", submitted.id, 1, worker.id)
        with pytest.raises(LeaseLost):
            await worker._journal.write_memory(stale)
        go_on.set()
        r = await rt.result(submitted.id)
    assert r.status is TaskStatus.SUCCEEDED and r.output == "attempt 2" and r.attempt == 2


async def test_a_row_the_store_refuses_for_good_stalls_no_other_task(tmp_path: Path) -> None:
    """The journal retried a refused batch without end, every task of it left running.
    Refused three times (not as unavailable), the batch is written in halves: the other
    tasks' rows commit, and the refused step raises `OutputError` in its agent."""
    ran: list[int] = []
    release = asyncio.Event()

    @legion.agent(retries=0)
    async def writes(ctx: legion.Context, x: int) -> int:
        if x != 0:
            await release.wait()  # so that every step and completion shares a batch
        await ctx.step("poison" if x == 0 else "fine", lambda: x)
        ran.append(x)
        return x

    store = RefusesOneRow(tmp_path / "s.db")
    await store.open()
    try:
        async with Runtime(store, lease_seconds=600) as rt, asyncio.timeout(60):
            ids = [s.id for s in await rt.submit_many(writes, range(8))]
            release.set()
            others = [r async for r in rt.results(ids[1:])]
            assert sorted(r.output for r in others) == list(range(1, 8))
            (poisoned,) = [r async for r in rt.results(ids[:1])]
            assert (poisoned.status, poisoned.attempt) == (TaskStatus.FAILED, 1), poisoned
            assert poisoned.error is not None and poisoned.error.type == "OutputError"
            assert "step 'poison' of this task cannot be stored" in poisoned.error.message
            assert 0 not in ran  # its step was never recorded, so it did not go on
            assert await rt.store.steps(ids[0]) == []
    finally:
        await store.aclose()


async def test_a_result_past_the_stores_size_limit_fails_its_task_saying_so(
    tmp_path: Path,
) -> None:
    """A result SQLite will not hold (past its length limit, here lowered to 64 KB): the
    task failed at once saying so, its neighbours in the same commit unharmed. It was
    given up as a lost lease, run again, and recorded dead for a crash it never had."""
    release = asyncio.Event()

    @legion.agent(retries=3, backoff=0)
    async def answer(ctx: legion.Context, size: int) -> str:
        await release.wait()  # every end in one commit
        return "x" * size

    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    assert store._conn is not None
    store._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 65_536)  # SQLite's own refusal
    try:
        async with Runtime(store, lease_seconds=600) as rt, asyncio.timeout(60):
            ids = [s.id for s in await rt.submit_many(answer, [100_000, 10, 20, 30])]
            release.set()
            results = {r.id: r async for r in rt.results(ids)}
            big = results[ids[0]]
            assert (big.status, big.attempt) == (TaskStatus.FAILED, 1), big
            assert big.error is not None and big.error.type == "OutputError"
            assert "the end of attempt 1: the store refused to keep it" in big.error.message
            assert "too big" in big.error.message
            stored = await rt.get(ids[0])
            assert stored is not None and stored.status is TaskStatus.FAILED
            assert stored.output is None
            assert [results[i].output for i in ids[1:]] == ["x" * 10, "x" * 20, "x" * 30]
    finally:
        await store.aclose()


async def test_a_step_name_past_postgresqls_index_limit_fails_its_task_and_stalls_none(
    postgres_url: str,
) -> None:
    """PostgreSQL refuses an index row past a third of a page (SQLSTATE 54000), which
    psycopg calls an operational error: taken for the server being away, the write was
    retried for ever, every task of the worker stalled and a SIGTERM could not drain."""
    release = asyncio.Event()
    # (random letters: a repeated one compresses below the limit)
    long_name = "".join(random.Random(1).choices(string.ascii_letters, k=100_000))

    @legion.agent(retries=2, backoff=0)
    async def steps(ctx: legion.Context, x: int) -> int:
        await release.wait()  # every step in one commit
        done: int = await ctx.step(long_name if x == 0 else "fine", lambda: x)
        return done

    async with Runtime(postgres_url, lease_seconds=600) as rt, asyncio.timeout(60):
        ids = [s.id for s in await rt.submit_many(steps, range(5))]
        release.set()
        results = {r.id: r async for r in rt.results(ids)}
    long = results[ids[0]]
    assert (long.status, long.attempt) == (TaskStatus.FAILED, 1), long
    assert long.error is not None and long.error.type == "OutputError"
    # (refused where the agent names it, on every store alike: once by the store's write)
    shown = f"a step's name '{long_name[:40]}'... cannot be stored: it is 100,000 bytes long"
    assert long.error.message.startswith(shown), long.error.message
    assert len(long.error.message) < 2000
    assert [results[i].output for i in ids[1:]] == [1, 2, 3, 4]


@pytest.mark.parametrize("lose", ["write", "lease"])
async def test_an_answer_lost_after_the_commit_leaves_nobody_waiting(
    tmp_path: Path, lose: str
) -> None:
    @legion.agent
    async def double(ctx: legion.Context, x: int) -> int:
        return 2 * x

    store = AnswerLost(tmp_path / "s.db", lose=lose)
    await store.open()
    try:
        # Leases far longer than the test: only the worker's own recovery can finish it.
        async with Runtime(store, lease_seconds=600) as rt:
            async with asyncio.timeout(30):
                results = [r async for r in rt.map(double, range(5))]
    finally:
        await store.aclose()
    assert sorted(r.output for r in results) == [0, 2, 4, 6, 8]
    assert {r.status for r in results} == {TaskStatus.SUCCEEDED}
    assert store.lose == ""  # the fault did happen


def _gone_pid() -> int:
    """A PID that no process has (one that just exited)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    ("name", "same_ns", "pid", "age", "taken"),
    [
        ("gone, same kernel and namespace", True, "gone", 10.0, True),
        ("its PID reused by another process", True, "mine", 10.0, True),
        ("another PID namespace (a container)", False, "gone", 10.0, False),
        ("alive: this very process", True, "me", 10.0, False),
        ("gone, but its heartbeat is fresh", True, "gone", 0.0, False),
        # Its clock ran a year ahead (SQLite has no clock of its own): its tasks waited a
        # year for the two lease periods to pass, though its process was gone.
        ("gone, its heartbeat ahead of this clock", True, "gone", -365 * 86_400.0, True),
        ("alive, its heartbeat ahead of this clock", True, "me", -365 * 86_400.0, False),
    ],
)
async def test_early_reclaim_needs_the_whole_identity(
    tmp_path: Path, name: str, same_ns: bool, pid: str, age: float, taken: bool
) -> None:
    store = store_from_url(f"sqlite:///{tmp_path / 's.db'}")
    await store.open()
    try:
        me = identity.current()
        await store.submit([NewTask("a", codec.dumps({}))], 0.0)
        await store.lease("other", {"a": 1}, 1, time.time() + 600, time.time())
        start = me.start if pid == "me" else (me.start + 1 if pid == "mine" else 12345)
        other_pid = me.pid if pid in ("me", "mine") else _gone_pid()
        ns = me.pid_ns if same_ns else "pid:[4026531999]"
        beat = time.time() - age
        worker = Worker(store, config=WorkerConfig(lease_seconds=30))
        await store.register_worker(
            WorkerInfo("other", worker.host, other_pid, beat, beat, {}, me.boot_id, ns, start)
        )
        await worker.reap()
        counts = await store.counts()
    finally:
        await store.aclose()
    assert counts == ({TaskStatus.QUEUED: 1} if taken else {TaskStatus.RUNNING: 1}), name


def test_identity_reads_this_process() -> None:
    me = identity.current()
    assert me.boot_id and me.pid_ns.startswith("pid:[") and me.start > 0
    assert identity.start_time(me.pid) == me.start
    assert not identity.is_gone(me, me)


async def test_a_finished_task_is_not_held_by_its_timeout_timer(db_url: str) -> None:
    @legion.agent(timeout=300)
    async def big(ctx: legion.Context, blob: str) -> int:
        return len(blob)

    async with Runtime(db_url) as rt:
        results = [r async for r in rt.map(big, ["x" * 1000] * 3)]
        assert rt.worker is not None
        gc.collect()
        # Nothing (a timeout timer, a bucket of them) keeps a finished instance alive.
        held = [o for o in gc.get_objects() if isinstance(o, Instance) and o.agent is big]
    assert [r.output for r in results] == [1000] * 3
    assert held == []


async def test_the_refused_end_of_an_attempt_that_ended_is_said(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker paused past its agent's timeout and its lease: the attempt ended as it
    woke, its end was refused (the lease taken meanwhile), and nothing said so."""
    go = asyncio.Event()

    @legion.agent
    async def paused(ctx: legion.Context, x: int) -> int:
        await go.wait()
        return x

    caplog.set_level(logging.WARNING, logger="legion.worker")
    clock = FakeClock(wall=time.time())  # (no heartbeat meanwhile: time stands still)
    async with Runtime(store_url, lease_seconds=600, clock=clock, drain_timeout=0) as rt:
        submitted = await rt.submit(paused, 1)
        assert rt.worker is not None
        await wait_until(lambda: rt.worker.holds(submitted.id))  # type: ignore[union-attr]
        assert (await rt.store.reclaim(time.time(), [rt.worker.id])).requeued == 1
        until, now = time.time() + 600, time.time()
        assert await rt.store.lease("thief", {"paused": 1}, 1, until, now, isolated=True)
        go.set()  # it ends here; its end is refused
        await wait_until(lambda: any("refused" in r.getMessage() for r in caplog.records))
        info = await rt.store.get(submitted.id)
    assert info is not None and info.status is TaskStatus.RUNNING and info.lease_owner == "thief"
    (said,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert f"the end of 1 attempts (tasks {submitted.id})" in said
