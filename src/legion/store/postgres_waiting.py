"""Durable waiting on PostgreSQL (see `legion.store.waiting`): mixed into
``PostgresStore``.

No wake-up is lost under READ COMMITTED (see ``sql/postgres/waiting.sql``): a signal or a
child's end first locks the waiting task's row, then checks the wait in a statement of its
own, which sees everything committed by those that held the lock before; a suspension
holds its own row (its completion updated it) while it checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import TupleRow

from legion.errors import StoreUnavailable
from legion.store.postgres_params import submit_params
from legion.store.queries import queries
from legion.store.rows import child_info, waiting_info
from legion.store.types import WriteBatch
from legion.store.waiting import (
    TIMED_OUT,
    ChildInfo,
    Schedule,
    WaitingInfo,
    fenced,
    not_awaited,
)
from legion.task import NewTask, Outcome, Submitted, TaskStatus

W = queries("postgres", "waiting")
TASKS = queries("postgres")
LINK_TRIES = 5
"""How many times linking children to their parent is tried when PostgreSQL aborts it
to end a deadlock (see `submit_children`)."""
_ENDED = frozenset({Outcome.SUCCEEDED, Outcome.FAILED, Outcome.DEAD, Outcome.CANCELLED})
Connection = psycopg.AsyncConnection[TupleRow]
Cursor = psycopg.AsyncCursor[TupleRow]


async def after_completions(conn: Connection, batch: WriteBatch, now: float) -> None:
    """In the write transaction (pipelined), after its completions: suspended tasks record
    what they wait for (and go back to the queue at once if it holds already); the parents
    of tasks that ended are queued again if they waited for them. A completion refused by
    its fence changes nothing here: its task is not ``waiting`` under this transaction."""
    waits = [c for c in batch.completions if c.wait is not None]
    if waits:
        cur = conn.cursor(binary=True)
        await cur.execute(
            W["suspend"],
            {
                "id": [c.id for c in waits],
                "event": [c.wait.event for c in waits if c.wait],
                "count": [c.wait.count for c in waits if c.wait],
                "children": [c.wait.children for c in waits if c.wait],
                "wake_at": [c.wait.wake_at for c in waits if c.wait],
                "info": [c.wait.info for c in waits if c.wait],
            },
        )
        params = {"ids": [c.id for c in waits], "now": float(now)}
        await conn.cursor(binary=True).execute(W["wake_ready"], params)
    ended = [c.id for c in batch.completions if c.outcome in _ENDED]
    if ended:
        await conn.cursor(binary=True).execute(W["lock_parents"], {"ids": ended})
        await conn.cursor(binary=True).execute(W["wake_parents"], {"ids": ended})


async def wake_parents(cur: Cursor, ended: Sequence[int]) -> None:
    """In a transaction that ended the tasks ``ended`` outside a completion (a cancel, a
    reclaim): their parents that wait for them are queued again if their wait is over,
    each locked first, as `after_completions` does."""
    if ended:
        await cur.execute(W["lock_parents"], {"ids": list(ended)})
        await cur.execute(W["wake_parents"], {"ids": list(ended)})


class PostgresWaiting:
    """The `legion.store.waiting.WaitingStore` methods of ``PostgresStore``."""

    if TYPE_CHECKING:  # what they use of PostgresStore

        def _cursor(self, *, transaction: bool = False) -> AbstractAsyncContextManager[Cursor]: ...

        async def submit(self, tasks: Sequence[NewTask], now: float) -> list[Submitted]: ...

    async def signal(
        self, task_id: int, event: str, data: bytes, now: float, *, waiting: int | None = None
    ) -> TaskStatus | None:
        async with self._cursor(transaction=True) as cur:
            await cur.execute(W["task_status_locked"], {"task_id": task_id})
            row = await cur.fetchone()
            if row is None:
                return None
            status = TaskStatus(row[0])
            if status.terminal:
                return status
            if waiting is not None:
                not_awaited(task_id, event, waiting, status, row[1], row[2])
            params = {"task_id": task_id, "event": event, "data": data, "now": float(now)}
            await cur.execute(W["insert_signal"], params)
            wake = {"ids": [task_id], "now": float(now)}
            await cur.execute(W["wake_ready"], wake)
            return TaskStatus.QUEUED if await cur.fetchall() else status

    async def signal_data(self, task_id: int, event: str, index: int) -> bytes | None:
        async with self._cursor() as cur:
            params = {"task_id": task_id, "event": event, "skip": index}
            await cur.execute(W["signal_data"], params)
            row = await cur.fetchone()
            return bytes(row[0]) if row else None

    async def time_out_wait(
        self, task_id: int, attempt: int, event: str, index: int, now: float
    ) -> bytes:
        async with self._cursor(transaction=True) as cur:
            # (the row locked as a signal locks it: one of the two sees the other's)
            await cur.execute(W["task_attempt_locked"], {"task_id": task_id})
            fenced(task_id, attempt, *((await cur.fetchone()) or (None, None)))
            await cur.execute(W["signal_data"], {"task_id": task_id, "event": event, "skip": index})
            found = await cur.fetchone()
            if found is not None:
                return bytes(found[0])
            signal = {"task_id": task_id, "event": event, "data": TIMED_OUT, "now": float(now)}
            await cur.execute(W["insert_signal"], signal)
            return TIMED_OUT

    async def wake_due(self, now: float) -> int:
        async with self._cursor() as cur:
            await cur.execute(W["wake_due"], {"now": float(now)})
            return len(await cur.fetchall())

    async def submit_children(
        self, parent: int, tasks: Sequence[NewTask], now: float
    ) -> list[Submitted]:
        # Submitted first (its own transaction), then linked: a child that ends before it
        # is linked ends while its parent still runs, and the parent's suspension counts it.
        out = await self.submit(tasks, now)
        linked = {"parent": parent, "ids": [s.id for s in out]}
        for tries in range(1, LINK_TRIES + 1):
            try:
                async with self._cursor() as cur:
                    await cur.execute(W["set_parent"], linked)
                break
            except StoreUnavailable as exc:
                # Linking locks the children in the order of their ids; another worker's
                # completion of some of them (children already running there) locks them
                # in the order they ended. PostgreSQL aborts one of the two: this statement
                # alone, which then runs again (it links only what is not linked yet). The
                # parent failed with the error where it made its children.
                if not isinstance(exc.__cause__, psycopg.errors.DeadlockDetected):
                    raise
                if tries == LINK_TRIES:
                    raise
        return out

    async def children(self, parent: int) -> list[ChildInfo]:
        async with self._cursor() as cur:
            await cur.execute(W["children_of"], {"parent": parent})
            return [child_info(r) for r in await cur.fetchall()]

    async def waiting_tasks(
        self, *, tenant: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[WaitingInfo]:
        async with self._cursor() as cur:
            await cur.execute(
                W["waiting_tasks"], {"tenant": tenant, "limit": limit, "before": before}
            )
            return [waiting_info(r) for r in await cur.fetchall()]

    async def add_schedule(self, schedule: Schedule, now: float) -> None:
        async with self._cursor() as cur:
            await cur.execute(W["upsert_schedule"], _schedule_params(schedule, now))

    async def schedules(self) -> list[Schedule]:
        async with self._cursor() as cur:
            await cur.execute(W["schedules"])
            return [_schedule(r) for r in await cur.fetchall()]

    async def remove_schedule(self, name: str) -> bool:
        async with self._cursor() as cur:
            await cur.execute(W["delete_schedule"], {"name": name})
            return bool(cur.rowcount == 1)

    async def due_schedules(self, now: float) -> list[Schedule]:
        async with self._cursor() as cur:
            await cur.execute(W["due_schedules"], {"now": float(now)})
            return [_schedule(r) for r in await cur.fetchall()]

    async def move_tick(self, schedule: Schedule, next_tick: float) -> bool:
        params = {"name": schedule.name, "tick": schedule.next_tick, "next": float(next_tick)}
        async with self._cursor() as cur:
            await cur.execute(W["claim_tick"], params)
            return bool(await cur.fetchall())

    async def claim_tick(
        self, schedule: Schedule, next_tick: float, task: NewTask, now: float
    ) -> bool:
        params = {"name": schedule.name, "tick": schedule.next_tick, "next": float(next_tick)}
        async with self._cursor(transaction=True) as cur:
            await cur.execute(W["claim_tick"], params)
            if not await cur.fetchall():
                return False
            keyed = [(task, task.key, None)]
            await cur.execute(TASKS["insert_tasks"], submit_params(keyed, now))
            made = await cur.fetchall()
            if not made:  # (the tick's task was made before)
                return False
            await cur.execute(W["set_last_task"], {"name": schedule.name, "task": made[0][0]})
            return True


def _schedule(row: Sequence[Any]) -> Schedule:
    name, cron, agent, input_, attempts, next_tick, created, overlap, last_task = row
    return Schedule(
        name, cron, agent, bytes(input_), attempts, next_tick, created, overlap, last_task
    )


def _schedule_params(s: Schedule, now: float) -> dict[str, Any]:
    return {
        "name": s.name,
        "cron": s.cron,
        "agent": s.agent,
        "input": s.input,
        "max_attempts": s.max_attempts,
        "next_tick": float(s.next_tick),
        "now": float(now),
        "overlap": s.overlap,
    }
