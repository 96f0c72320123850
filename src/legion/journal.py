"""Group commit: the writes of many agent instances, committed together.

Instances hand their step results, memory writes and completions to the
`Journal`; one flusher commits whatever has accumulated in one store
transaction, then wakes the instances that wait for durability. While a commit is in
flight the next batch fills up, so batches grow exactly when load does.

Every write carries its lease and the store refuses those of a lease that no longer
holds: the writer's wait then raises `legion.errors.LeaseLost`, and ``on_lost``
hears the task and attempt of each (the worker stops the instances that run those
attempts). The same statements tell which
tasks' cancellation was asked (``on_cancel``), so a cancel is seen at every step.

A commit whose answer was lost is written again; a completion the store then calls "not
applied" is looked up, and counts as applied when the task holds exactly what it wrote.
A write the store keeps refusing while it is up and has room is written in halves, so
that a row it cannot hold holds up no other task's (see `Journal._isolate`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from legion import codec, faults
from legion.clock import Clock, system_clock
from legion.errors import LeaseLost, OutputError, StorageFull, StoreUnavailable
from legion.record import record
from legion.store.base import TaskQueue, TaskReader
from legion.store.types import DiagnosticRecord, MemoryWrite, WriteBatch
from legion.task import Completion, ErrorInfo, Lease, Outcome, StepRecord, TaskInfo, TaskStatus

log = logging.getLogger("legion.journal")

CompletionCallback = Callable[[Sequence["Committed"]], None]
LostCallback = Callable[[set[int]], None]
RefusedCallback = Callable[[set[tuple[int, int]]], None]
"""Told the (task id, attempt) of each write the store refused: the lease that attempt
wrote under no longer holds. (An attempt that ended before its write landed - a task
its agent left running - is told of too: the task's next attempt holds it now.)"""


@record
class Committed:
    """A completion after its commit; ``applied`` is false when the lease had been lost."""

    lease: Lease
    completion: Completion
    applied: bool


class CommitStore(TaskQueue, TaskReader, Protocol):
    """The roles the journal plays: it commits batches, and reads back the tasks of a
    commit whose answer was lost."""


class Journal:
    def __init__(
        self,
        store: CommitStore,
        *,
        clock: Clock = system_clock,
        on_committed: CompletionCallback,
        on_lost: RefusedCallback | None = None,
        on_cancel: LostCallback | None = None,
        max_retry_delay: float = 5.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_committed = on_committed
        self._on_lost = on_lost
        self._on_cancel = on_cancel
        self._max_retry_delay = max_retry_delay
        self._batch = WriteBatch()
        # Who waits for the batch, with the task whose lease the write came from (None:
        # a write not fenced by any lease).
        self._waiters: list[tuple[int | None, int, asyncio.Future[None]]] = []
        self._leases: list[Lease] = []
        self._pending = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # Whether a write came since the flusher last took the batch (the two events are
        # set and cleared once per batch, not once per write).
        self._kicked = False
        self._closing = False
        # Rows the store refused alone, for good (see `_isolate`), until the flush that
        # wrote their batch answers for them: the tasks whose step or memory write it was,
        # with why, and the failed ends written for refused completions, by the original.
        self._unstorable: dict[int, str] = {}
        self._committing: tuple[int, ...] = ()  # (the tasks of the completions being written)
        self._replaced: dict[int, Completion] = {}
        self.commits = 0
        self.rows = 0

    def record_step(self, step: StepRecord) -> asyncio.Future[None]:
        """Queue a step result; the future resolves once it is durable."""
        self._batch.steps.append(step)
        return self._wait(step.task_id, step.attempt)

    def write_memory(self, write: MemoryWrite) -> asyncio.Future[None]:
        """Queue a memory write; the future resolves once it is durable (or raises
        `LeaseLost` if the store refused it)."""
        self._batch.memory.append(write)
        return self._wait(write.task_id, write.attempt)

    def complete(self, lease: Lease, completion: Completion) -> None:
        """Queue the end of an attempt; ``on_committed`` reports it after the commit."""
        self._batch.completions.append(completion)
        self._leases.append(lease)
        for d in completion.diagnostics:
            self._batch.diagnostics.append(
                DiagnosticRecord(
                    completion.id,
                    completion.attempt,
                    lease.agent,
                    str(d.kind),
                    codec.dumps(d.to_json()),
                    completion.owner,
                )
            )
        self._kick()

    def completing(self) -> list[int]:
        """The tasks whose ends are queued or being written: their leases are still this
        worker's to settle (given back as unheld after a store outage, they ran again)."""
        return [*self._committing, *(c.id for c in self._batch.completions)]

    def _wait(self, task_id: int | None, attempt: int) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((task_id, attempt, fut))
        self._kick()
        return fut

    def _kick(self) -> None:
        if not self._kicked:
            self._kicked = True
            self._idle.clear()
            self._pending.set()

    async def wait_flushed(self) -> None:
        """Return once everything queued so far is committed."""
        await self._idle.wait()

    def close(self) -> None:
        """Ask `run` to return once everything queued is committed."""
        self._closing = True
        self._pending.set()

    async def run(self) -> None:
        """Commit batches until `close`; a batch being written is never abandoned."""
        while True:
            if not len(self._batch):
                if self._closing:
                    return
                # Nothing queued: sleep until a write or close() comes. (Checked and
                # cleared in one step of the loop, so no wake-up can slip in between.)
                self._pending.clear()
                await self._pending.wait()
                continue
            await asyncio.shield(self._flush_task())

    def _flush_task(self) -> asyncio.Task[None]:
        # The flush is its own task so that cancelling run() cannot cut a commit in half:
        # the batch still lands and its waiters and callbacks still fire.
        return asyncio.get_running_loop().create_task(self._flush(), name="legion-journal-flush")

    async def _flush(self) -> None:
        # One turn of the loop first: the completions that fill a batch also free the
        # worker's slots, and its lease, asked in the same turn, then reaches the store
        # before this write does. The next tasks start while this batch is written,
        # instead of the event loop waiting for the write and then for the lease (a
        # single SQLite thread runs them in the order they come).
        await asyncio.sleep(0)
        batch, self._batch = self._batch, WriteBatch()
        self._kicked = False
        waiters, self._waiters = self._waiters, []
        leases, self._leases = self._leases, []
        if len(batch):
            self._committing = tuple(c.id for c in batch.completions)
            try:
                applied = await self._commit(batch)
            finally:
                self._committing = ()
            self.commits += 1
            self.rows += len(batch)
            lost = batch.lost
            refused: set[tuple[int, int]] = set()
            unstorable = self._unstorable  # (empty but after a refusal: nothing made)
            if unstorable:
                self._unstorable = {}
            for task_id, attempt, fut in waiters:
                if unstorable and task_id is not None and task_id in unstorable:
                    if not fut.done():
                        fut.set_exception(OutputError(unstorable[task_id]))
                elif task_id is not None and task_id in lost:
                    refused.add((task_id, attempt))
                    if not fut.done():
                        fut.set_exception(LeaseLost(task_id, attempt))
                elif not fut.done():
                    fut.set_result(None)
            if refused and self._on_lost is not None:
                self._on_lost(refused)
            if batch.cancelled and self._on_cancel is not None:
                self._on_cancel(batch.cancelled)
            if batch.completions and faults.ARMED:
                faults.hit("completed")
            if batch.completions:
                completions = batch.completions
                replaced = self._replaced
                if replaced:  # (failures written for refused ends, see `_isolate`)
                    self._replaced = {}
                    completions = [replaced.get(id(c), c) for c in completions]
                self._on_committed(
                    [
                        Committed(lease, c, ok)
                        for lease, c, ok in zip(leases, completions, applied, strict=True)
                    ]
                )
        if not len(self._batch):
            self._idle.set()

    async def _commit(self, batch: WriteBatch, *, retried: bool = False) -> list[bool]:
        delay = 0.05
        refused = 0  # failures in a row that were not the store being away or full
        while True:
            try:
                applied = await self._store.write(batch, self._clock.wall())
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down or locked: keep the batch, try again
                log.error(
                    "store write of %d rows failed (%s); retrying in %.2fs", len(batch), exc, delay
                )
                retried = True
                batch.lost.clear()
                batch.cancelled.clear()
                refused = 0 if isinstance(exc, StoreUnavailable | StorageFull) else refused + 1
                if refused >= REFUSALS:
                    return await self._isolate(batch, exc)
                await self._clock.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
        if retried and not all(applied):
            applied = await self._recognise(batch.completions, applied)
        return applied

    async def _isolate(self, batch: WriteBatch, error: Exception) -> list[bool]:
        """The store refused ``batch`` REFUSALS times in a row, not because it was away or
        full: something in it cannot be stored, and the other tasks' rows must not wait on
        it. Its halves are written apart, down to the rows the store refuses alone: what
        the task gave cannot be kept (a result past the store's size limit), and running
        it again would give it again. A refused step or memory write raises `OutputError`
        where the agent awaits it; a refused end of an attempt is written as a failure
        that says so, without its result; a diagnostic is dropped. Should the store
        refuse that too, the task's writes count as refused (`WriteBatch.lost`: the
        instance stops, and the task runs again once its lease runs out)."""
        if len(batch) == 1:
            task_id = _task_of(batch)
            why = f"the store refused to keep it {REFUSALS} times, alone ({error})"
            if batch.completions and not _bare(batch.completions[0]):
                refused = batch.completions[0]
                failed = _failed(refused, f"the end of attempt {refused.attempt}: {why}")
                log.error("task %s: %s; written failed, without it", task_id, why)
                written = await self._commit(WriteBatch(completions=[failed]), retried=True)
                if written[0]:
                    self._replaced[id(refused)] = failed
                return written
            if task_id is not None and (batch.steps or batch.memory):
                what = (
                    f"step {codec.quoted(batch.steps[0].key)}" if batch.steps else "a memory write"
                )
                log.error("task %s: %s: %s", task_id, what, why)
                self._unstorable[task_id] = f"{what} of this task cannot be stored: {why}"
                return []
            if batch.diagnostics:
                log.error("task %s: a diagnostic dropped: %s", task_id, why)
                return []
            log.error(
                "the store refused a write of task %s %d times (%s): given up; the task runs "
                "again once its lease runs out",
                task_id,
                REFUSALS,
                error,
            )
            if task_id is not None:
                batch.lost.add(task_id)
            return [False] * len(batch.completions)
        applied: list[bool] = []
        for half in _halves(batch):
            applied += await self._commit(half, retried=True)
            batch.lost |= half.lost
            batch.cancelled |= half.cancelled
        return applied

    async def _recognise(
        self, completions: Sequence[Completion], applied: list[bool]
    ) -> list[bool]:
        """After a write that failed and was written again, a completion "not applied" may
        be one the failed write applied (its answer was lost): it is, if the task holds
        exactly what the completion wrote."""
        ids = [c.id for c, ok in zip(completions, applied, strict=True) if not ok]
        delay = 0.05
        while True:
            try:
                infos = {i.id: i for i in await self._store.get_many(ids)}
                break
            except Exception as exc:
                log.error("reading back %d completions failed (%s)", len(ids), exc)
                await self._clock.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
        return [
            ok or _holds(infos.get(c.id), c) for c, ok in zip(completions, applied, strict=True)
        ]


REFUSALS = 3
"""Failures of one write in a row, none of them the store being away or full, after which
the journal writes the batch's halves apart (see `Journal._isolate`)."""


def _halves(batch: WriteBatch) -> tuple[WriteBatch, WriteBatch]:
    """``batch``'s rows cut in two, in the order they are written (steps, memory,
    diagnostics, completions): both halves hold rows, and the first is written first."""
    rows = [
        *(("steps", r) for r in batch.steps),
        *(("memory", r) for r in batch.memory),
        *(("diagnostics", r) for r in batch.diagnostics),
        *(("completions", r) for r in batch.completions),
    ]
    halves = (WriteBatch(), WriteBatch())
    middle = len(rows) // 2
    for n, (kind, row) in enumerate(rows):
        getattr(halves[n >= middle], kind).append(row)
    return halves


def _bare(c: Completion) -> bool:
    """Whether a completion carries nothing the store could refuse to keep (nothing but
    its outcome and times): a refused one is never replaced again."""
    return c.output is None and c.usage is None and c.error is None and c.wait is None


def _failed(c: Completion, why: str) -> Completion:
    """``c`` as a failure that keeps nothing of what it carried: not retried, since the
    attempt would give the same again."""
    return Completion(
        c.id,
        c.attempt,
        c.owner,
        Outcome.FAILED,
        error=ErrorInfo("OutputError", why[:2000]),
        started_at=c.started_at,
        finished_at=c.finished_at,
        running=c.running,
        waited=c.waited,
        tenant=c.tenant,
        agent=c.agent,
    )


def _task_of(batch: WriteBatch) -> int | None:
    """The task whose write a batch of one row is (None: a write of no task's)."""
    if batch.steps:
        return batch.steps[0].task_id
    if batch.memory:
        return batch.memory[0].task_id
    if batch.diagnostics:
        return batch.diagnostics[0].task_id
    return batch.completions[0].id if batch.completions else None


def _holds(info: TaskInfo | None, c: Completion) -> bool:
    """Whether a task is in the state that applying completion ``c`` left it in."""
    if info is None or info.lease_owner is not None:
        return False
    attempt = c.attempt - 1 if c.outcome in (Outcome.RELEASED, Outcome.WAITING) else c.attempt
    if info.attempt != attempt:
        return False
    if info.status is TaskStatus.CANCELLED and c.outcome in (Outcome.RETRY, Outcome.RELEASED):
        return True  # a cancel request turned the retry into a cancel
    if c.outcome is Outcome.WAITING:  # woken since, perhaps: queued again
        return info.status in (TaskStatus.WAITING, TaskStatus.QUEUED)
    if info.status is not c.outcome.status:
        return False
    if c.outcome in (Outcome.RETRY, Outcome.RELEASED):
        return True
    # (To the microsecond: the time travelled to the store as JSON text.)
    return info.finished_at is not None and abs(info.finished_at - c.finished_at) < 1e-6
