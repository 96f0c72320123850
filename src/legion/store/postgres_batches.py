"""The batch tier on PostgreSQL (see `legion.store.batches`): mixed into ``PostgresStore``."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import TupleRow

from legion.store.batches import BatchCall
from legion.store.queries import queries
from legion.task import TaskStatus

B = queries("postgres", "batches")
W = queries("postgres", "waiting")
Cursor = psycopg.AsyncCursor[TupleRow]


def _call_of(row: Any) -> BatchCall:
    return BatchCall(int(row[0]), row[1], row[2], bytes(row[3]), float(row[4]), row[5], row[6])


class PostgresBatches:
    """The `legion.store.batches.BatchStore` methods of ``PostgresStore``."""

    if TYPE_CHECKING:  # what they use of PostgresStore

        def _cursor(self, *, transaction: bool = False) -> AbstractAsyncContextManager[Cursor]: ...

    async def batch_enqueue(self, call: BatchCall, now: float) -> None:
        params = {
            "task_id": call.task_id,
            "event": call.event,
            "route": call.route,
            "request": call.request,
            "fallback_at": float(call.fallback_at),
            "now": float(now),
        }
        async with self._cursor() as cur:
            await cur.execute(B["batch_enqueue"], params)

    async def batch_claim(
        self, route: str, limit: int, claim: str, now: float, stale: float
    ) -> list[BatchCall]:
        params = {
            "route": route,
            "limit": limit,
            "claim": claim,
            "now": float(now),
            "stale": float(stale),
        }
        async with self._cursor() as cur:
            await cur.execute(B["batch_claim"], params)
            return [_call_of(r) for r in await cur.fetchall()]

    async def batch_sent(self, claim: str, job: str, poll_at: float) -> None:
        async with self._cursor() as cur:
            params = {"claim": claim, "job": job, "poll_at": float(poll_at)}
            await cur.execute(B["batch_sent"], params)

    async def batch_due(self, now: float, next_poll: float) -> list[BatchCall]:
        async with self._cursor() as cur:
            await cur.execute(B["batch_due"], {"now": float(now), "next": float(next_poll)})
            return [_call_of(r) for r in await cur.fetchall()]

    async def batch_deliver(
        self, answers: Sequence[tuple[int, str, bytes | None]], now: float
    ) -> None:
        if not answers:
            return
        ids = sorted({t for t, _, _ in answers})
        async with self._cursor(transaction=True) as cur:
            # The tasks' rows first, in id order (as a signal locks its task's row): a
            # suspension that commits after this sees the signals, one before is woken here.
            await cur.execute(B["batch_lock_tasks"], {"ids": ids})
            live = {int(r[0]) for r in await cur.fetchall() if not TaskStatus(r[1]).terminal}
            kept = [(t, e, d) for t, e, d in answers if t in live and d is not None]
            if kept:
                params = {
                    "task_ids": [t for t, _, _ in kept],
                    "events": [e for _, e, _ in kept],
                    "data": [d for _, _, d in kept],
                    "now": float(now),
                }
                await cur.execute(B["batch_signals"], params)
            gone = {"task_ids": [t for t, _, _ in answers], "events": [e for _, e, _ in answers]}
            await cur.execute(B["batch_delete"], gone)
            await cur.execute(W["wake_ready"], {"ids": sorted(live), "now": float(now)})

    async def batch_forget(self, calls: list[tuple[int, str]]) -> None:
        if not calls:
            return
        async with self._cursor(transaction=True) as cur:
            params = {"task_ids": [t for t, _ in calls], "events": [e for _, e in calls]}
            await cur.execute(B["batch_forget"], params)
            await cur.execute(B["batch_drop"], params)
