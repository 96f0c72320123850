"""The store methods behind the HTTP API, on both stores: task lists, API keys, the feed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from legion.errors import StoreError
from legion.store import Store
from legion.store.types import ApiKey, EventDetail, TaskQuery, WriteBatch
from legion.task import Completion, NewTask, Outcome, TaskStatus
from tests.feed import until_holds


def tasks(agent: str, n: int) -> list[NewTask]:
    return [NewTask(agent, b'{"i": %d}' % i) for i in range(n)]


async def test_list_tasks_filters_newest_first(store: Store) -> None:
    a = await store.submit(tasks("a", 4), 10.0)
    b = await store.submit(tasks("b", 3), 20.0)
    leases = await store.lease("w", {"b": 1}, 1, 100.0, 21.0)
    assert [lease.id for lease in leases] == [b[0].id]

    everything = await store.list_tasks(TaskQuery(limit=100))
    assert [t.id for t in everything] == sorted((s.id for s in a + b), reverse=True)
    only_a = await store.list_tasks(TaskQuery(agent="a"))
    assert {t.id for t in only_a} == {s.id for s in a}
    running = await store.list_tasks(TaskQuery(statuses=(TaskStatus.RUNNING,)))
    assert [t.id for t in running] == [b[0].id]
    queued_b = await store.list_tasks(TaskQuery(statuses=(TaskStatus.QUEUED,), agent="b"))
    assert [t.id for t in queued_b] == [b[2].id, b[1].id]
    recent = await store.list_tasks(TaskQuery(created_from=15.0))
    assert {t.id for t in recent} == {s.id for s in b}
    old = await store.list_tasks(TaskQuery(created_to=15.0))
    assert {t.id for t in old} == {s.id for s in a}
    assert await store.list_tasks(TaskQuery(agent="none")) == []


async def test_list_tasks_pages_by_cursor(store: Store) -> None:
    ids = [s.id for s in await store.submit(tasks("a", 7), 1.0)]
    pages, before = [], None
    while True:
        page = await store.list_tasks(TaskQuery(before=before, limit=3))
        if not page:
            break
        pages.append([t.id for t in page])
        before = page[-1].id
    assert pages == [ids[::-1][0:3], ids[::-1][3:6], ids[::-1][6:7]]


async def test_api_keys_are_added_listed_and_revoked(store: Store) -> None:
    key = ApiKey("0123456789ab", "ci", b"s" * 16, b"d" * 32, 5.0)
    await store.add_api_key(key)
    assert await store.api_key(key.id) == key
    assert await store.api_key("ffffffffffff") is None
    with pytest.raises(StoreError, match="exists already"):
        await store.add_api_key(key)
    assert await store.revoke_api_key(key.id, 9.0)
    assert await store.revoke_api_key(key.id, 12.0)  # idempotent: the first time stays
    assert not await store.revoke_api_key("ffffffffffff", 9.0)
    (listed,) = await store.api_keys()
    assert listed.revoked_at == 9.0 and listed.name == "ci"


def succeeded(details: Sequence[EventDetail]) -> bool:
    return any(d.event.status is TaskStatus.SUCCEEDED for d in details)


async def test_event_details_carry_each_tasks_times_and_usage(store: Store) -> None:
    cursor = await store.last_event_id()
    (sub,) = await store.submit([NewTask("a", b"1")], 1.0)
    (lease,) = await store.lease("w", {"a": 1}, 1, 100.0, 2.0)
    done = Completion(
        id=sub.id,
        attempt=lease.attempt,
        owner="w",
        outcome=Outcome.SUCCEEDED,
        output=b"2",
        started_at=2.0,
        finished_at=3.5,
        usage=b'{"prompt_tokens": 3, "completion_tokens": 4, "cost_usd": 0.5, "llm_calls": 1}',
    )
    assert await store.write(WriteBatch(completions=[done]), 3.5) == [True]
    details = await until_holds(succeeded, lambda: store.event_details_after(cursor))
    (detail,) = [d for d in details if d.event.status is TaskStatus.SUCCEEDED]
    assert detail.event.task_id == sub.id and detail.agent == "a"
    assert (detail.started_at, detail.finished_at) == (2.0, 3.5)
    assert detail.usage is not None and detail.usage["completion_tokens"] == 4
    assert await store.event_details_after(details[-1].event.id) == []
