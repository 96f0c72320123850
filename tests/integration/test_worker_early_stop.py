"""An instance stopped before its task first runs still ends as its stop says: a task
cancelled in the turn of the loop that started it never ran its coroutine, so it wrote no
completion and stayed leased until its lease ran out (then the reaper ended it, a change
the local worker's own result follower skips: `legion run` and the API waited forever)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import legion
from legion import codec
from legion.journal import Committed
from legion.run.runner import Instance
from legion.run.worker import Worker, WorkerConfig
from legion.store.sqlite import SQLiteStore
from legion.task import Lease, NewTask, Outcome, TaskStatus

ran: list[int] = []


@legion.agent(retries=0)
async def never(ctx: legion.Context, n: int) -> int:
    ran.append(n)
    return n


class CancelledAsItStarts(Worker):
    """A real worker to which every cancel arrives in the turn that starts the instance."""

    def _start(self, lease: Lease) -> Instance:
        inst = super()._start(lease)
        self.cancel_local(lease.id)
        return inst


async def test_a_task_cancelled_as_it_starts_is_recorded_cancelled_at_once(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "early.db"))
    await store.open()
    committed: list[Committed] = []
    done = asyncio.Event()

    def on_committed(batch: Sequence[Committed]) -> None:
        committed.extend(batch)
        done.set()

    worker = CancelledAsItStarts(
        store,
        agents=[never],
        config=WorkerConfig(lease_seconds=60, watchdog=False),
        on_committed=on_committed,
    )
    run = asyncio.create_task(worker.run())
    try:
        (task,) = await store.submit([NewTask("never", codec.dumps({"n": 1}))], time.time())
        async with asyncio.timeout(20):  # a bound on the bug (60 s leases), not a sync
            await done.wait()
        (c,) = committed
        assert (c.completion.id, c.completion.outcome, c.applied) == (
            task.id,
            Outcome.CANCELLED,
            True,
        )
        info = await store.get(task.id)
        assert info is not None and info.status is TaskStatus.CANCELLED
        assert ran == []  # the agent's code never ran
    finally:
        worker.stop()
        await run
        await store.aclose()
