"""The store's part of durable waiting: signals, wake-ups, child tasks and schedules.

A task suspended at a wait is ``waiting`` (see `legion.task.Wait`): it holds no
lease. What ends a wait queues the task again in the same transaction that makes the
wait hold — a signal, the end of a child task, a suspension that finds its wait already
over (no lost wake-up) — except timers, which `WaitingStore.wake_due` serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from legion.errors import LeaseLost, NotAwaited
from legion.task import ErrorInfo, NewTask, Submitted, TaskStatus

TIMED_OUT = b'"\\u0000legion: the wait for this signal timed out"'
"""A signal kept in the place of the one a wait that timed out would have received: the
wait takes its place in the count, and a signal sent after it timed out goes to the next
wait, whose number (``count``) is then another (an answer meant for the wait that timed
out, ``waiting=N``, is not taken for the next one's)."""


def fenced(task_id: int, attempt: int, status: str | None, current: int | None) -> None:
    """Raise `LeaseLost` unless the task runs its attempt ``attempt`` (its ``status`` and
    ``current`` attempt as stored)."""
    if status != "running" or current != attempt:
        raise LeaseLost(task_id, attempt)


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """A child task as its parent sees it (``output`` decoded JSON, once it succeeded;
    ``fingerprint``: what its agent and input were, `legion.store.tenancy.fingerprint`)."""

    id: int
    key: str | None
    status: TaskStatus
    output: Any
    error: ErrorInfo | None
    fingerprint: bytes | None = None


@dataclass(frozen=True, slots=True)
class WaitingInfo:
    """A waiting task and what it waits for (``info``: decoded JSON, e.g. an approval's
    prompt)."""

    id: int
    agent: str
    tenant: str
    event: str | None
    count: int
    children: int | None
    wake_at: float | None
    info: Any
    since: float | None  # when its last attempt started


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron schedule (UTC, five fields) that submits one task of ``agent`` per tick.
    ``overlap``: what a tick does while the task of the last tick run has not ended
    (`OVERLAPS`); ``last_task``: that task (``None`` until a tick has run)."""

    name: str
    cron: str
    agent: str
    input: bytes
    max_attempts: int
    next_tick: float
    created_at: float = 0.0
    overlap: str = "allow"
    last_task: int | None = None


OVERLAPS = ("allow", "skip")
"""A schedule's overlap policies: ``allow``, every tick runs (its task beside the last
tick's, still running); ``skip``, a tick passes while the last tick's task has not ended."""


def not_awaited(
    task_id: int,
    event: str,
    waiting: int,
    status: TaskStatus,
    wait_event: str | None,
    wait_count: int | None,
) -> None:
    """Raise `NotAwaited` unless a task (``status``, waiting for the ``wait_count``-th
    signal ``wait_event``) waits for the ``waiting``-th signal ``event``."""
    if status is TaskStatus.WAITING and wait_event == event and wait_count == waiting:
        return
    raise NotAwaited(
        f"task {task_id} does not wait for signal {event!r} number {waiting} now (it is "
        f"{status}): nothing was kept",
        status,
    )


class WaitingStore(Protocol):
    """The waiting part of `legion.store.base.Store`."""

    async def signal(
        self, task_id: int, event: str, data: bytes, now: float, *, waiting: int | None = None
    ) -> TaskStatus | None:
        """Keep a signal for a task and queue the task again if it waits for it; answer
        the task's status after (``None``: no such task). A finished task gets no signal.
        ``waiting=N``: only if the task waits now for the N-th signal of ``event`` (else
        `legion.errors.NotAwaited`, nothing kept), checked in the same transaction."""

    async def signal_data(self, task_id: int, event: str, index: int) -> bytes | None:
        """The ``index``-th (0-based) signal named ``event`` sent to a task, if it came."""

    async def time_out_wait(
        self, task_id: int, attempt: int, event: str, index: int, now: float
    ) -> bytes:
        """A wait for the ``index``-th signal named ``event`` whose time is up: answer that
        signal if it came meanwhile, else keep `TIMED_OUT` in its place and answer that,
        in one transaction; `legion.errors.LeaseLost` unless the task runs its attempt
        ``attempt``."""

    async def wake_due(self, now: float) -> int:
        """Queue again the waiting tasks whose wake-up time is at or before ``now``."""

    async def now(self) -> float:
        """The store's time (the database's clock on PostgreSQL): a durable wait's
        wake-up time is set and checked on it, as the timers that end the wait are."""

    async def submit_children(
        self, parent: int, tasks: Sequence[NewTask], now: float
    ) -> list[Submitted]:
        """Submit tasks as children of ``parent`` (keyed: a second call answers the same
        tasks), in one transaction."""

    async def cancel(self, task_id: int, now: float) -> TaskStatus | None:
        """Cancel a queued (or waiting) task at once, or ask a running one's worker to
        stop it (`legion.store.base` declares it too: a parent cancels the children it
        submitted while its own cancel was asked)."""

    async def children(self, parent: int) -> list[ChildInfo]:
        """Every child task of ``parent``, oldest first."""

    async def waiting_tasks(
        self, *, tenant: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[WaitingInfo]:
        """Waiting tasks, newest first (those of ids below ``before``: the next page)."""

    async def add_schedule(self, schedule: Schedule, now: float) -> None:
        """Add a schedule, or replace the one of that name (its next tick kept when its
        cron is the same: a tick due and not claimed yet still runs)."""

    async def schedules(self) -> list[Schedule]: ...

    async def remove_schedule(self, name: str) -> bool:
        """Remove a schedule; False if there is none of that name."""

    async def due_schedules(self, now: float) -> list[Schedule]:
        """The schedules whose next tick is at or before ``now``."""

    async def move_tick(self, schedule: Schedule, next_tick: float) -> bool:
        """Move ``schedule`` from its tick to ``next_tick``, submitting nothing, unless
        another worker moved it first (then answer False)."""

    async def claim_tick(
        self, schedule: Schedule, next_tick: float, task: NewTask, now: float
    ) -> bool:
        """Move ``schedule`` from its tick to ``next_tick`` and submit ``task`` for the tick,
        in one transaction, unless another worker did so first (then answer False). A
        tick whose task (its key) was made before - by the schedule as it was before it
        was replaced - is moved on without another (answered False too)."""
