"""The store's part of the gateway (`legion.store.ledger`), on SQLite and PostgreSQL: usage
per key added up by many writers, and recorded calls where the first answer stays."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from legion.errors import StoreError
from legion.gateway.usage import UsageBook
from legion.llm.types import Usage
from legion.store import SQLiteStore, store_from_url
from legion.store.base import Store
from legion.store.ledger import KeyTotals, RecordedCall


async def test_usage_added_by_many_gateways_at_once_is_one_total_per_key(
    store: Store, store_url: str
) -> None:
    other = store_from_url(store_url)  # a second gateway's connection
    await other.open()
    try:
        a_round = KeyTotals("a", calls=1, prompt_tokens=10, completion_tokens=2, cost_usd=0.5)
        b_round = KeyTotals("b", failed=1, replayed=2, unpriced_calls=1)
        rounds = [
            [replace(a_round, updated_at=float(i)), replace(b_round, updated_at=float(i))]
            for i in range(20)
        ]
        await asyncio.gather(
            *(s.add_key_usage(r) for r in rounds for s in (store, other)),
        )
    finally:
        await other.aclose()
    a, b = await store.key_usages()
    assert a == KeyTotals("a", 40, 0, 0, 400, 80, 20.0, 0, 19.0)
    assert b == KeyTotals("b", 0, 40, 80, 0, 0, 0.0, 40, 19.0)
    assert not b.cost_known
    assert await store.key_usage("a") == a
    assert await store.key_usage("nobody") is None
    await store.add_key_usage([])


async def test_the_first_answer_recorded_for_a_step_stays(store: Store) -> None:
    assert await store.gateway_call("k", "t", "s") is None
    first = RecordedCall("chat.1", b'{"text":"one"}')
    second = RecordedCall("chat.1", b'{"text":"two"}')
    kept = await asyncio.gather(
        store.record_gateway_call("k", "t", "s", first, 1.0),
        store.record_gateway_call("k", "t", "s", second, 2.0),
    )
    assert kept[0] == kept[1] in (first, second)
    assert await store.gateway_call("k", "t", "s") == kept[0]
    assert await store.gateway_call("other-key", "t", "s") is None
    await store.record_gateway_call("k", "t", "s2", second, 3.0)
    await store.record_gateway_call("k", "u", "s", second, 4.0)
    assert await store.gateway_tasks("k") == {"u": 1, "t": 2}
    assert list(await store.gateway_tasks("k", limit=1)) == ["u"]


async def test_counts_the_store_refused_are_added_next_round(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "usage.db")  # not open yet: every call is refused
    book = UsageBook(store, clock=lambda: 5.0)
    book.account("a").add(Usage(10, 2), 0.25)
    book.account("a").failed += 1
    with pytest.raises(StoreError):
        await book.flush()
    book.account("a").add(Usage(1, 1), None)
    await store.open()
    try:
        assert await book.totals("a") == KeyTotals("a", 2, 1, 0, 11, 3, 0.25, 1, 5.0)
        assert await book.totals("b") == KeyTotals("b")
        await book.flush()  # nothing new: nothing added twice
        assert (await store.key_usage("a")) == await book.totals("a")
    finally:
        await store.aclose()
