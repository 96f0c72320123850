"""The Store's provisioning part, on SQLite and PostgreSQL: the backlog the scaling policy
reads and the autoscalers' published decisions."""

from __future__ import annotations

from legion import codec
from legion.store import Store
from legion.store.base import AutoscalerInfo
from legion.task import NewTask

NOW = 1_000_000.0


async def test_backlog_counts_ready_tasks_and_the_oldest(store: Store) -> None:
    assert (await store.backlog(NOW)).ready == 0
    assert (await store.backlog(NOW)).oldest_created_at is None
    await store.submit([NewTask("a", codec.dumps(i), None, max_attempts=3) for i in range(3)], NOW)
    await store.submit([NewTask("a", codec.dumps(9), None, max_attempts=3)], NOW + 5)
    b = await store.backlog(NOW + 10)
    assert b.ready == 4
    assert b.oldest_created_at == NOW
    leases = await store.lease("w", {"a": 2}, 2, NOW + 40, NOW + 10)
    assert len(leases) == 2
    assert (await store.backlog(NOW + 10)).ready == 2


async def test_autoscalers_publish_refresh_and_remove(store: Store) -> None:
    first = AutoscalerInfo("h:1", "h", 1, NOW, 2, 1, 1, 4, "scaling up to 2")
    await store.publish_autoscaler(first)
    await store.publish_autoscaler(AutoscalerInfo("old:2", "old", 2, NOW - 100, 1, 1, 0, 1, "x"))
    assert await store.autoscalers(NOW - 10) == [first]
    later = AutoscalerInfo("h:1", "h", 1, NOW + 1, 2, 2, 1, 4, "held at 2: route r is at 99 %")
    await store.publish_autoscaler(later)
    assert await store.autoscalers(NOW - 10) == [later]
    await store.remove_autoscaler("h:1")
    assert await store.autoscalers(NOW - 10) == []
