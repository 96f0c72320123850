"""The Store's provisioning part, on SQLite and PostgreSQL: the backlog the scaling policy
reads and the autoscalers' published decisions."""

from __future__ import annotations

import os
import socket

from legion import codec
from legion.provision.board import Board
from legion.store import Store
from legion.store.types import AutoscalerInfo, Backlog, WorkerInfo
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


async def test_backlog_of_some_agents_leaves_the_others_out(store: Store) -> None:
    await store.submit([NewTask("orphan", codec.dumps(0), None, max_attempts=3)], NOW)
    await store.submit(
        [NewTask("a", codec.dumps(i), None, max_attempts=3) for i in range(2)], NOW + 5
    )
    assert (await store.backlog(NOW + 10)).ready == 3
    served = await store.backlog(NOW + 10, agents={"a", "b"})
    assert (served.ready, served.oldest_created_at) == (2, NOW + 5)
    assert (await store.backlog(NOW + 10, agents=())).ready == 0


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


def needing(agent: str, needs: str | None, n: int = 1) -> list[NewTask]:
    return [NewTask(agent, codec.dumps(i), None, max_attempts=3, needs=needs) for i in range(n)]


async def test_a_task_goes_only_to_a_worker_offering_what_it_needs(store: Store) -> None:
    await store.submit(needing("a", '{"gpu":1.0,"memory_mb":512.0}', 2), NOW)
    await store.submit(needing("a", None, 1), NOW)
    # No offer: only the task that needs nothing.
    plain = await store.lease("plain", {"a": 10}, 10, NOW + 30, NOW)
    assert len(plain) == 1
    # Not enough memory, or no gpu: nothing.
    assert await store.lease("small", {"a": 10}, 10, NOW + 30, NOW, offer={"gpu": 1.0}) == []
    assert (
        await store.lease(
            "cpu", {"a": 10}, 10, NOW + 30, NOW, offer={"memory_mb": 4096.0, "cpu": 8.0}
        )
        == []
    )
    assert (
        await store.lease("low", {"a": 10}, 10, NOW + 30, NOW, offer={"gpu": 1, "memory_mb": 256})
        == []
    )
    # Enough of everything (and more): both.
    big = await store.lease(
        "big", {"a": 10}, 10, NOW + 30, NOW, offer={"gpu": 2.0, "memory_mb": 4096.0, "x": 1.0}
    )
    assert len(big) == 2
    assert {t.id for t in big}.isdisjoint({t.id for t in plain})


async def test_a_task_to_run_alone_keeps_its_needs(store: Store) -> None:
    await store.submit(needing("a", '{"gpu":1.0}', 2), NOW)
    leases = await store.lease("w1", {"a": 10}, 10, NOW + 30, NOW, offer={"gpu": 1.0})
    assert len(leases) == 2
    await store.reclaim(NOW + 1, ["w1"])  # it ran both: each runs alone next
    assert await store.lease("w2", {"a": 1}, 1, NOW + 40, NOW + 2, isolated=True) == []
    alone = await store.lease(
        "w3", {"a": 1}, 1, NOW + 40, NOW + 2, isolated=True, offer={"gpu": 1.0}
    )
    assert len(alone) == 1


async def test_a_pool_reads_the_backlog_of_the_agents_its_workers_serve(store: Store) -> None:
    """The autoscaler's reading: tasks of an agent none of its workers serves ask for
    no worker of its pool (another pool's, or none at all)."""
    now = await store.now()
    await store.submit([NewTask("other", codec.dumps(0), None, max_attempts=3)], now - 60)
    clock = FakeClock()
    board = Board(concurrency=10, monotonic=clock)
    assert (await board.read(store, own={os.getpid()})).queued == 1  # none registered yet
    mine = WorkerInfo("w1", socket.gethostname(), os.getpid(), now, now, {"agents": ["a"]})
    await store.register_worker(mine)
    demand = await board.read(store, own={os.getpid()})
    assert (demand.queued, demand.oldest_wait) == (0, 0.0)
    await store.submit([NewTask("a", codec.dumps(1), None, max_attempts=3)], now)
    clock.t += 1  # (a backlog counted in no time is counted again at the next reading)
    assert (await board.read(store, own={os.getpid()})).queued == 1


class FakeClock:
    """A monotonic clock that moves ``step`` seconds each time it is read, and as the test
    moves it."""

    def __init__(self, step: float = 0.0) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


async def test_the_backlog_is_counted_a_fiftieth_of_the_time_at_most(store: Store) -> None:
    """Counting the backlog scans the queue (300,000 tasks queued: 32-58 ms on
    PostgreSQL): `legion serve` counted it at every sample, each second. A count is made
    again once what it cost is a fiftieth of the time since; meanwhile the last one
    answers, moved by the tasks queued or taken since (the counts by status)."""
    now = await store.now()
    later = [NewTask("a", codec.dumps(0), None, max_attempts=3, not_before=now + 60)]
    await store.submit(later, now)  # (queued, not ready: the count alone tells it apart)
    await store.submit([NewTask("a", codec.dumps(1), None, max_attempts=3)], now - 5)
    clock = FakeClock(step=0.1)  # each count "costs" 0.1 s: the next is due 5 s after it
    board = Board(concurrency=10, monotonic=clock)
    first = await board.backlog(store, now, None)
    assert (first.ready, first.oldest_created_at) == (1, now - 5)
    await store.submit([NewTask("a", codec.dumps(i), None, max_attempts=3) for i in range(3)], now)
    clock.t += 2.0
    assert await board.backlog(store, now, None) == Backlog(4, now - 5)  # moved: 3 queued
    await store.lease("w", {"a": 2}, 2, now + 60, now)
    clock.t += 2.0
    assert await board.backlog(store, now, None) == Backlog(2, now - 5)  # not counted again
    assert (await board.backlog(store, now + 120, {"a"})).ready == 3  # counted: 1 more ready
    clock.t += 5.1
    assert (await board.backlog(store, now + 120, {"a"})).ready == 3  # counted again
