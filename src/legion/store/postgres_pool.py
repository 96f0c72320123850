"""psycopg's connection pool, its attempts to reconnect at most `RECONNECT_EVERY` apart.

psycopg_pool waits twice as long after each failed attempt to make a connection (1 s, 2,
4, 8, 16...) until its ``reconnect_timeout``: after a database restart of 35 s the next
attempt came up to 30 s after the database was back, and every worker and server of the
store stood idle, answering 503, all that while. An attempt every 2 s at most costs a
refused connection a second while the database is down; its back is seen within 2 s.
Where psycopg_pool's internals differ from those this relies on, its own pool is used.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

try:
    from psycopg_pool.base import AttemptWithBackoff
except ImportError:  # (another version of psycopg_pool: its own backoff)
    AttemptWithBackoff = None  # type: ignore[assignment,misc]

RECONNECT_EVERY = 2.0
"""The most seconds between two attempts to reconnect."""

Connection = AsyncConnection[TupleRow]


if AttemptWithBackoff is not None:

    class _Attempt(AttemptWithBackoff):
        """psycopg_pool's growing delay between attempts, capped at `RECONNECT_EVERY`."""

        def update_delay(self, now: float) -> None:
            super().update_delay(now)
            self.delay = min(self.delay, RECONNECT_EVERY)


class Pool(AsyncConnectionPool[Connection]):
    """`psycopg_pool.AsyncConnectionPool`, reconnecting at most `RECONNECT_EVERY` apart."""

    async def _add_connection(self, attempt: Any = None, *args: Any, **kwargs: Any) -> None:
        if attempt is None and AttemptWithBackoff is not None:
            attempt = _Attempt(timeout=self.reconnect_timeout)
        await super()._add_connection(attempt, *args, **kwargs)
