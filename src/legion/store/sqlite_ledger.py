"""``legion gateway``'s part of the store on SQLite (see `legion.store.ledger`): mixed
into ``SQLiteStore``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from legion.store.ledger import KeyTotals, RecordedCall, totals_params
from legion.store.queries import queries

T = TypeVar("T")
L = queries("sqlite", "ledger")


class SQLiteLedger:
    """The `legion.store.ledger.GatewayLedger` methods of ``SQLiteStore``."""

    if TYPE_CHECKING:  # what they use of SQLiteStore

        async def _call(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        @property
        def _db(self) -> sqlite3.Connection: ...

    async def add_key_usage(self, usage: Sequence[KeyTotals]) -> None:
        rows = [totals_params(totals) for totals in usage]
        if rows:
            # A statement per key (a flush holds a few): executemany of this upsert, with
            # a second connection writing the same file, failed now and then with
            # "bad parameter or other API misuse" (tests/gateway/test_ledger.py).
            await self._call(self._transaction, lambda db: _add_each(db, rows))

    async def key_usage(self, key_id: str) -> KeyTotals | None:
        def run() -> KeyTotals | None:
            row = self._db.execute(L["key_usage"], {"key_id": key_id}).fetchone()
            return KeyTotals(*row) if row else None

        return await self._call(run)

    async def key_usages(self) -> list[KeyTotals]:
        return await self._call(lambda: [KeyTotals(*r) for r in self._db.execute(L["key_usages"])])

    async def gateway_call(self, key_id: str, task: str, step: str) -> RecordedCall | None:
        params = {"key_id": key_id, "task": task, "step": step}

        def run() -> RecordedCall | None:
            row = self._db.execute(L["gateway_call"], params).fetchone()
            return RecordedCall(row[0], bytes(row[1])) if row else None

        return await self._call(run)

    async def record_gateway_call(
        self, key_id: str, task: str, step: str, call: RecordedCall, now: float
    ) -> RecordedCall:
        params = {"key_id": key_id, "task": task, "step": step}
        insert = {**params, "request": call.request, "output": call.output, "now": now}

        def run(db: sqlite3.Connection) -> RecordedCall:
            db.execute(L["record_gateway_call"], insert)
            row = db.execute(L["gateway_call"], params).fetchone()
            return RecordedCall(row[0], bytes(row[1]))

        return await self._call(self._transaction, run)

    async def gateway_tasks(self, key_id: str, limit: int = 100) -> dict[str, int]:
        params = {"key_id": key_id, "limit": limit}
        return await self._call(lambda: dict(self._db.execute(L["gateway_tasks"], params)))


def _add_each(db: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        db.execute(L["add_key_usage"], row)
