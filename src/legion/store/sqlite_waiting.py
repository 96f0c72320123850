"""Durable waiting on SQLite (see `legion.store.waiting`): mixed into ``SQLiteStore``.

Every write transaction starts with ``BEGIN IMMEDIATE``, so a suspension and whatever ends
its wait (a signal, a child's end) are serialised: whichever commits second sees the
other, and no wake-up is lost.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from legion import codec
from legion.store.queries import queries
from legion.store.rows import child_info, waiting_info
from legion.store.sqlite_feed import log_changes
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

T = TypeVar("T")
W = queries("sqlite", "waiting")
_ENDED = frozenset({Outcome.SUCCEEDED, Outcome.FAILED, Outcome.DEAD, Outcome.CANCELLED})


def after_completions(
    db: sqlite3.Connection, batch: WriteBatch, applied: Sequence[bool], now: float
) -> None:
    """In the write transaction, after its completions: suspended tasks record what they
    wait for (and go back to the queue at once if it holds already); the parents of tasks
    that ended are queued again if they waited for them."""
    waits = [c for c, ok in zip(batch.completions, applied, strict=True) if ok and c.wait]
    for c in waits:
        assert c.wait is not None
        w = c.wait
        params = {
            "id": c.id,
            "event": w.event,
            "count": w.count,
            "children": w.children,
            "wake_at": w.wake_at,
            "info": w.info,
        }
        db.execute(W["suspend"], params)
    if waits:
        wake_ready(db, [c.id for c in waits], now)
    ended = [
        c.id for c, ok in zip(batch.completions, applied, strict=True) if ok and c.outcome in _ENDED
    ]
    wake_parents(db, ended, now)


def wake_parents(db: sqlite3.Connection, ended: Sequence[int], now: float) -> None:
    """In a write transaction that ended the tasks ``ended`` (a completion, a cancel, a
    reclaim, a frozen worker's release): their parents that wait for them are queued
    again if their wait is over. Only a waiting parent can be woken: while no task waits
    (most batches), the ended tasks' rows are not read for their parents. The transaction
    holds the write lock, so no task starts waiting meanwhile; one that waits later counts
    its ended children itself (`wake_ready` after `suspend`)."""
    if ended and db.execute(W["any_waiting"]).fetchone() is not None:
        ids = codec.dumps(list(ended)).decode()
        parents = [r[0] for r in db.execute(W["parents_of"], {"ids": ids})]
        if parents:
            wake_ready(db, parents, now)


def wake_ready(db: sqlite3.Connection, ids: Sequence[int], now: float) -> list[int]:
    params = {"ids": codec.dumps(list(ids)).decode(), "now": now}
    woken = [r[0] for r in db.execute(W["wake_ready"], params).fetchall()]
    log_changes(db, woken, now, was=TaskStatus.WAITING)
    return woken


class SQLiteWaiting:
    """The `legion.store.waiting.WaitingStore` methods of ``SQLiteStore``."""

    if TYPE_CHECKING:  # what they use of SQLiteStore

        async def _call(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        @property
        def _db(self) -> sqlite3.Connection: ...

        @staticmethod
        def _submit(
            db: sqlite3.Connection, tasks: Sequence[NewTask], now: float
        ) -> list[Submitted]: ...

    async def signal(
        self, task_id: int, event: str, data: bytes, now: float, *, waiting: int | None = None
    ) -> TaskStatus | None:
        def run(db: sqlite3.Connection) -> TaskStatus | None:
            row = db.execute(
                "SELECT status, wait_event, wait_count FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
            if row is None:
                return None
            if TaskStatus(row[0]).terminal:
                return TaskStatus(row[0])
            if waiting is not None:
                not_awaited(task_id, event, waiting, TaskStatus(row[0]), row[1], row[2])
            params = {"task_id": task_id, "event": event, "data": data, "now": now}
            db.execute(W["insert_signal"], params)
            woken = wake_ready(db, [task_id], now)
            return TaskStatus.QUEUED if woken else TaskStatus(row[0])

        return await self._call(self._transaction, run)

    async def signal_data(self, task_id: int, event: str, index: int) -> bytes | None:
        def run() -> bytes | None:
            params = {"task_id": task_id, "event": event, "skip": index}
            row = self._db.execute(W["signal_data"], params).fetchone()
            return bytes(row[0]) if row else None

        return await self._call(run)

    async def time_out_wait(
        self, task_id: int, attempt: int, event: str, index: int, now: float
    ) -> bytes:
        def run(db: sqlite3.Connection) -> bytes:
            row = db.execute("SELECT status, attempt FROM tasks WHERE id = ?", (task_id,))
            fenced(task_id, attempt, *(row.fetchone() or (None, None)))
            params = {"task_id": task_id, "event": event, "skip": index}
            found = db.execute(W["signal_data"], params).fetchone()
            if found is not None:
                return bytes(found[0])
            signal = {"task_id": task_id, "event": event, "data": TIMED_OUT, "now": now}
            db.execute(W["insert_signal"], signal)
            return TIMED_OUT

        return await self._call(self._transaction, run)

    async def wake_due(self, now: float) -> int:
        def run(db: sqlite3.Connection) -> int:
            woken = [r[0] for r in db.execute(W["wake_due"], {"now": now}).fetchall()]
            log_changes(db, woken, now, was=TaskStatus.WAITING)
            return len(woken)

        return await self._call(self._transaction, run)

    async def submit_children(
        self, parent: int, tasks: Sequence[NewTask], now: float
    ) -> list[Submitted]:
        def run(db: sqlite3.Connection) -> list[Submitted]:
            out = self._submit(db, tasks, now)
            ids = codec.dumps([s.id for s in out]).decode()
            db.execute(W["set_parent"], {"parent": parent, "ids": ids})
            return out

        return await self._call(self._transaction, run)

    async def children(self, parent: int) -> list[ChildInfo]:
        def run() -> list[ChildInfo]:
            return [child_info(r) for r in self._db.execute(W["children_of"], {"parent": parent})]

        return await self._call(run)

    async def waiting_tasks(
        self, *, tenant: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[WaitingInfo]:
        def run() -> list[WaitingInfo]:
            rows = self._db.execute(
                W["waiting_tasks"], {"tenant": tenant, "limit": limit, "before": before}
            )
            return [waiting_info(r) for r in rows]

        return await self._call(run)

    async def add_schedule(self, schedule: Schedule, now: float) -> None:
        params = _schedule_params(schedule, now)
        await self._call(self._transaction, lambda db: db.execute(W["upsert_schedule"], params))

    async def schedules(self) -> list[Schedule]:
        return await self._call(
            lambda: [Schedule(*r) for r in self._db.execute(W["schedules"]).fetchall()]
        )

    async def remove_schedule(self, name: str) -> bool:
        return await self._call(
            self._transaction,
            lambda db: db.execute(W["delete_schedule"], {"name": name}).rowcount == 1,
        )

    async def due_schedules(self, now: float) -> list[Schedule]:
        return await self._call(
            lambda: [Schedule(*r) for r in self._db.execute(W["due_schedules"], {"now": now})]
        )

    async def move_tick(self, schedule: Schedule, next_tick: float) -> bool:
        params = {"name": schedule.name, "tick": schedule.next_tick, "next": next_tick}
        return await self._call(
            self._transaction, lambda db: db.execute(W["claim_tick"], params).rowcount == 1
        )

    async def claim_tick(
        self, schedule: Schedule, next_tick: float, task: NewTask, now: float
    ) -> bool:
        params = {"name": schedule.name, "tick": schedule.next_tick, "next": next_tick}

        def run(db: sqlite3.Connection) -> bool:
            if db.execute(W["claim_tick"], params).rowcount != 1:
                return False
            # The tick's task made already (by this schedule as it was before it was
            # replaced): the tick has run; moved on without another, as on PostgreSQL.
            if db.execute(W["task_of_key"], {"key": task.key}).fetchone() is not None:
                return False
            (made,) = self._submit(db, [task], now)
            db.execute(W["set_last_task"], {"name": schedule.name, "task": made.id})
            return True

        return await self._call(self._transaction, run)


def _schedule_params(s: Schedule, now: float) -> dict[str, Any]:
    return {
        "name": s.name,
        "cron": s.cron,
        "agent": s.agent,
        "input": s.input,
        "max_attempts": s.max_attempts,
        "next_tick": s.next_tick,
        "now": now,
        "overlap": s.overlap,
    }
