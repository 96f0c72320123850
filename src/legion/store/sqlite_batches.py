"""The batch tier on SQLite (see `legion.store.batches`): mixed into ``SQLiteStore``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from legion import codec
from legion.store.batches import BatchCall
from legion.store.queries import queries
from legion.store.sqlite_waiting import wake_ready
from legion.task import TaskStatus

T = TypeVar("T")
B = queries("sqlite", "batches")
W = queries("sqlite", "waiting")


def _call_of(row: Any) -> BatchCall:
    return BatchCall(int(row[0]), row[1], row[2], bytes(row[3]), float(row[4]), row[5], row[6])


class SQLiteBatches:
    """The `legion.store.batches.BatchStore` methods of ``SQLiteStore``."""

    if TYPE_CHECKING:  # what they use of SQLiteStore

        async def _call(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def batch_enqueue(self, call: BatchCall, now: float) -> None:
        params = {
            "task_id": call.task_id,
            "event": call.event,
            "route": call.route,
            "request": call.request,
            "fallback_at": call.fallback_at,
            "now": now,
        }
        await self._call(self._transaction, lambda db: db.execute(B["batch_enqueue"], params))

    async def batch_claim(
        self, route: str, limit: int, claim: str, now: float, stale: float
    ) -> list[BatchCall]:
        params = {"route": route, "limit": limit, "claim": claim, "now": now, "stale": stale}

        def run(db: sqlite3.Connection) -> list[BatchCall]:
            return [_call_of(r) for r in db.execute(B["batch_claim"], params).fetchall()]

        return await self._call(self._transaction, run)

    async def batch_sent(self, claim: str, job: str, poll_at: float) -> None:
        params = {"claim": claim, "job": job, "poll_at": poll_at}
        await self._call(self._transaction, lambda db: db.execute(B["batch_sent"], params))

    async def batch_due(self, now: float, next_poll: float) -> list[BatchCall]:
        def run(db: sqlite3.Connection) -> list[BatchCall]:
            rows = db.execute(B["batch_due"], {"now": now, "next": next_poll}).fetchall()
            return [_call_of(r) for r in rows]

        return await self._call(self._transaction, run)

    async def batch_deliver(
        self, answers: Sequence[tuple[int, str, bytes | None]], now: float
    ) -> None:
        tasks = sorted({t for t, _, _ in answers})
        ids = codec.dumps(tasks).decode()

        def run(db: sqlite3.Connection) -> None:
            statuses = dict(db.execute(B["batch_task_status"], {"ids": ids}).fetchall())
            for task_id, event, data in answers:
                status = statuses.get(task_id)
                if data is not None and status is not None and not TaskStatus(status).terminal:
                    signal = {"task_id": task_id, "event": event, "data": data, "now": now}
                    db.execute(W["insert_signal"], signal)
                db.execute(B["batch_delete"], {"task_id": task_id, "event": event})
            wake_ready(db, tasks, now)  # (logged, and counted)

        if answers:
            await self._call(self._transaction, run)

    async def batch_forget(self, calls: list[tuple[int, str]]) -> None:
        params = [{"task_id": t, "event": e} for t, e in calls]

        def run(db: sqlite3.Connection) -> None:
            db.executemany(B["batch_forget"], params)
            db.executemany(B["batch_drop"], params)

        if params:
            await self._call(self._transaction, run)
