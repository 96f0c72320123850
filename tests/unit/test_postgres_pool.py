"""The store's pool tries to reconnect at most 2 s apart (psycopg_pool's own delay doubles
without end until its reconnect timeout: after a database restart of 35 s, the store
answered 15.7 s after the database was back; with the cap, 0.2 s)."""

from __future__ import annotations

import pytest

from legion.store import postgres_pool, store_from_url
from legion.store.postgres_pool import RECONNECT_EVERY, Pool


def test_attempts_to_reconnect_are_at_most_two_seconds_apart() -> None:
    attempt = postgres_pool._Attempt(timeout=300.0)
    delays = []
    for now in range(10):
        attempt.update_delay(float(now))
        delays.append(attempt.delay)
    assert delays[0] == pytest.approx(1.0, abs=0.1)  # (psycopg_pool's first, jittered)
    assert max(delays) == RECONNECT_EVERY and delays[-1] == RECONNECT_EVERY


async def test_the_store_makes_its_pool_with_the_cap(postgres_url: str) -> None:
    store = store_from_url(postgres_url)
    await store.open()
    try:
        assert isinstance(store._pool, Pool)  # type: ignore[attr-defined]
    finally:
        await store.aclose()
