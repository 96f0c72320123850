"""A tenant's most of queued tasks holds for submissions in flight together, against a real
SQLite store: each is admitted, then written (group-committed), then counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from legion.server.admission import Shed, TenantLimits
from legion.store import SQLiteStore
from legion.task import NewTask


async def test_submissions_in_flight_together_stay_within_the_queued_limit(
    tmp_path: Path,
) -> None:
    # Each was checked against the queued count alone, and counted only once stored: 20
    # submissions sent at once found room for themselves, and 14 were queued under a
    # limit of 3.
    store = SQLiteStore(tmp_path / "q.db")
    await store.open()
    now = [0.0]
    try:
        limits = TenantLimits(
            rate=None,
            burst=None,
            max_queued=3,
            count_queued=store.count_queued,
            clock=lambda: now[0],
        )

        async def submit(i: int) -> bool:
            try:
                await limits.admit("acme", 1)
            except Shed:
                return False
            try:
                task = NewTask("work", b'{"n": 1}', tenant="acme", not_before=9e18)
                (stored,) = await store.submit([task], time.time())
            except BaseException:
                limits.release("acme", 1)
                raise
            limits.queued("acme", int(stored.created), 1)
            return True

        accepted = await asyncio.gather(*(submit(i) for i in range(20)))
        assert sum(accepted) == 3
        assert await store.count_queued("acme") == 3
        # Nothing is left reserved: with one task leased away, one more fits once the
        # count is read again.
        assert len(await store.lease("w", {"work": 1}, 1, time.time() + 60, 1e19)) == 1
        now[0] += 1.0  # (past the count's refresh)
        assert sum(await asyncio.gather(*(submit(i) for i in range(5)))) == 1
        assert await store.count_queued("acme") == 3
    finally:
        await store.aclose()
