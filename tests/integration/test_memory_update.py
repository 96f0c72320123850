"""``ctx.memory.update``: a read-modify-write of one key that no other writer of the key
can interleave with (tasks of one session run at once), on both stores; and the
compare-and-set it is built on, fenced by the writer's lease like any memory write."""

from __future__ import annotations

import json

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.errors import LeaseLost
from legion.store.base import Store
from legion.store.types import MemoryWrite
from legion.task import NewTask

TASKS = 40


@legion.agent(retries=0)
async def appends(ctx: legion.Context, n: int) -> list[int]:
    return await ctx.memory.update("seen", lambda seen: [*seen, n], default=[])  # type: ignore[no-any-return]


@legion.agent(retries=0)
async def appends_by_hand(ctx: legion.Context, n: int) -> None:
    seen = await ctx.memory.get("seen", [])
    await ctx.memory.set("seen", [*seen, n])


async def _session_list(store_url: str, agent: legion.Agent) -> list[int]:
    async with Runtime(store_url, concurrency=TASKS) as rt:
        subs = await rt.submit_many(agent, range(TASKS), session="chat")
        results = [r async for r in rt.results([s.id for s in subs])]
        assert {r.status for r in results} == {TaskStatus.SUCCEEDED}
        raw = await rt.store.memory_get("chat", "seen")
    assert raw is not None
    seen: list[int] = json.loads(raw)
    return seen


async def test_concurrent_updates_of_one_key_lose_nothing(store_url: str) -> None:
    assert sorted(await _session_list(store_url, appends)) == list(range(TASKS))


async def test_the_race_that_update_closes_is_real(store_url: str) -> None:
    # The same appends by get and set (the README's "last writer wins"): entries are lost,
    # so the test above is one that could fail.
    assert len(await _session_list(store_url, appends_by_hand)) < TASKS


async def test_a_swap_compares_sets_deletes_and_is_fenced(store: Store) -> None:
    now = 1000.0
    assert await store.memory_swap(MemoryWrite("s", "k", b"1"), None, now)
    assert not await store.memory_swap(MemoryWrite("s", "k", b"2"), None, now)  # it holds 1
    assert not await store.memory_swap(MemoryWrite("s", "k", b"2"), b"3", now)
    assert await store.memory_swap(MemoryWrite("s", "k", b"2"), b"1", now)
    assert await store.memory_get("s", "k") == b"2"
    assert await store.memory_swap(MemoryWrite("s", "k", None), b"2", now)  # a delete
    assert await store.memory_get("s", "k") is None
    # A write from a lease that does not hold (the task is queued: nobody runs it).
    (sub,) = await store.submit([NewTask(agent="a", input=b"{}")], now)
    stale = MemoryWrite("s", "k", b"9", sub.id, 1, "gone-worker")
    with pytest.raises(LeaseLost):
        await store.memory_swap(stale, None, now)
    assert await store.memory_get("s", "k") is None
