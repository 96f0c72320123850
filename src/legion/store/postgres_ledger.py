"""``legion gateway``'s part of the store on PostgreSQL (see `legion.store.ledger`):
mixed into ``PostgresStore``. Totals are added in the statement that writes them
(``ON CONFLICT DO UPDATE``), so gateways on any number of machines add up without a
lost update."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import TupleRow

from legion.store.ledger import KeyTotals, RecordedCall, totals_params
from legion.store.queries import queries

L = queries("postgres", "ledger")
Cursor = psycopg.AsyncCursor[TupleRow]


class PostgresLedger:
    """The `legion.store.ledger.GatewayLedger` methods of ``PostgresStore``."""

    if TYPE_CHECKING:  # what they use of PostgresStore

        def _cursor(self, *, transaction: bool = False) -> AbstractAsyncContextManager[Cursor]: ...

    async def add_key_usage(self, usage: Sequence[KeyTotals]) -> None:
        # Sorted by key: two gateways adding to the same keys lock their rows in one order.
        rows = [totals_params(totals) for totals in sorted(usage, key=lambda t: t.key_id)]
        if rows:
            async with self._cursor(transaction=True) as cur:
                await cur.executemany(L["add_key_usage"], rows)

    async def key_usage(self, key_id: str) -> KeyTotals | None:
        async with self._cursor() as cur:
            await cur.execute(L["key_usage"], {"key_id": key_id})
            row = await cur.fetchone()
        return _totals(row) if row is not None else None

    async def key_usages(self) -> list[KeyTotals]:
        async with self._cursor() as cur:
            await cur.execute(L["key_usages"])
            return [_totals(row) for row in await cur.fetchall()]

    async def gateway_call(self, key_id: str, task: str, step: str) -> RecordedCall | None:
        async with self._cursor() as cur:
            await cur.execute(L["gateway_call"], {"key_id": key_id, "task": task, "step": step})
            row = await cur.fetchone()
        return RecordedCall(row[0], bytes(row[1])) if row is not None else None

    async def record_gateway_call(
        self, key_id: str, task: str, step: str, call: RecordedCall, now: float
    ) -> RecordedCall:
        params = {"key_id": key_id, "task": task, "step": step}
        insert = {**params, "request": call.request, "output": call.output, "now": float(now)}
        async with self._cursor(transaction=True) as cur:
            await cur.execute(L["record_gateway_call"], insert)
            await cur.execute(L["gateway_call"], params)
            row = await cur.fetchone()
        assert row is not None  # inserted, or there already
        return RecordedCall(row[0], bytes(row[1]))

    async def gateway_tasks(self, key_id: str, limit: int = 100) -> dict[str, int]:
        async with self._cursor() as cur:
            await cur.execute(L["gateway_tasks"], {"key_id": key_id, "limit": limit})
            return {str(task): int(n) for task, n in await cur.fetchall()}


def _totals(row: Sequence[Any]) -> KeyTotals:
    key_id, calls, failed, replayed, prompt, completion, cost, unpriced, updated = row
    return KeyTotals(
        str(key_id),
        int(calls),
        int(failed),
        int(replayed),
        int(prompt),
        int(completion),
        float(cost),
        int(unpriced),
        float(updated),
    )
