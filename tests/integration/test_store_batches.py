"""The batch-tier part of the Store contract (`legion.store.batches`), on SQLite and on
PostgreSQL: calls queued once, claimed by one desk, polled by one desk at a time, claimed
again when their desk died before sending them, and forgotten."""

from __future__ import annotations

from legion.store import Store, WriteBatch
from legion.store.batches import BatchCall
from legion.task import Completion, NewTask, Outcome, TaskStatus, Wait

NOW = 1_000_000.0


def call(task_id: int, n: int, route: str = "main", fallback: float = NOW + 600) -> BatchCall:
    return BatchCall(task_id, f"legion.batch:llm.{route}.{n}", route, b'{"n": %d}' % n, fallback)


async def test_calls_are_queued_once_and_claimed_by_one_desk_oldest_first(store: Store) -> None:
    for n in range(3):
        await store.batch_enqueue(call(1, n), NOW + n)
    await store.batch_enqueue(call(1, 0), NOW + 9)  # a replay queues it again: no change
    await store.batch_enqueue(call(2, 0, route="other"), NOW)
    await store.batch_enqueue(call(3, 0, fallback=NOW), NOW)  # its deadline has come
    first = await store.batch_claim("main", 2, "claim:a", NOW + 5, NOW - 300)
    assert [(c.task_id, c.event, c.job) for c in first] == [
        (1, "legion.batch:llm.main.0", "claim:a"),
        (1, "legion.batch:llm.main.1", "claim:a"),
    ]
    assert first[0].request == b'{"n": 0}'
    second = await store.batch_claim("main", 10, "claim:b", NOW + 5, NOW - 300)
    assert [c.event for c in second] == ["legion.batch:llm.main.2"]
    assert await store.batch_claim("main", 10, "claim:c", NOW + 5, NOW - 300) == []


async def test_sent_calls_are_polled_by_one_desk_at_a_time_then_forgotten(store: Store) -> None:
    for n in range(2):
        await store.batch_enqueue(call(7, n), NOW)
    await store.batch_claim("main", 10, "claim:a", NOW, NOW - 300)
    await store.batch_sent("claim:a", "batch_123", NOW + 2)
    assert await store.batch_due(NOW + 1, NOW + 3) == []  # not due yet
    due = await store.batch_due(NOW + 2, NOW + 4)
    assert {(c.job, c.route) for c in due} == {("batch_123", "main")} and len(due) == 2
    assert await store.batch_due(NOW + 2, NOW + 4) == []  # another desk: already claimed
    assert len(await store.batch_due(NOW + 4, NOW + 6)) == 2  # the next poll
    await store.batch_forget([(7, due[0].event)])  # sent: kept, dropped, till the next poll
    polled = await store.batch_due(NOW + 6, NOW + 8)
    assert sorted(c.state for c in polled) == ["dropped", "sent"]
    await store.batch_deliver([(7, c.event, None) for c in polled], NOW + 6)
    assert await store.batch_due(NOW + 9, NOW + 10) == []


async def test_a_call_given_up_before_it_was_sent_is_gone(store: Store) -> None:
    await store.batch_enqueue(call(5, 0), NOW)
    await store.batch_forget([(5, call(5, 0).event)])
    assert await store.batch_claim("main", 10, "claim:a", NOW, NOW - 300) == []


async def test_calls_claimed_by_a_desk_that_died_are_claimed_again(store: Store) -> None:
    await store.batch_enqueue(call(4, 0), NOW)
    assert len(await store.batch_claim("main", 10, "claim:dead", NOW, NOW - 300)) == 1
    assert await store.batch_claim("main", 10, "claim:b", NOW + 10, NOW - 290) == []
    again = await store.batch_claim("main", 10, "claim:b", NOW + 400, NOW + 100)
    assert [c.job for c in again] == ["claim:b"]
    await store.batch_sent("claim:dead", "batch_late", NOW)  # the dead desk's claim: no-op
    await store.batch_sent("claim:b", "batch_b", NOW)
    assert [c.job for c in await store.batch_due(NOW, NOW + 1)] == ["batch_b"]


async def test_a_jobs_answers_reach_their_tasks_at_once_and_wake_them(store: Store) -> None:
    waiting, ended = await store.submit([NewTask("a", b"{}"), NewTask("a", b"{}")], NOW)
    first, second = call(waiting.id, 0), call(waiting.id, 1)
    for c in (first, second, call(ended.id, 0)):
        await store.batch_enqueue(c, NOW)
    (lease,) = await store.lease("w", {"a": 1}, 1, NOW + 30, NOW)
    assert lease.id == waiting.id
    suspended = Completion(
        lease.id, lease.attempt, "w", Outcome.WAITING, wait=Wait(event=first.event, count=1)
    )
    assert await store.write(WriteBatch(completions=[suspended]), NOW) == [True]
    assert await store.cancel(ended.id, NOW) is TaskStatus.CANCELLED
    assert (await store.get(waiting.id)).status is TaskStatus.WAITING  # type: ignore[union-attr]
    await store.batch_deliver(
        [(waiting.id, first.event, b'"a"'), (waiting.id, second.event, b'"b"'),
         (ended.id, call(ended.id, 0).event, b'"c"')],
        NOW + 1,
    )  # fmt: skip
    assert (await store.get(waiting.id)).status is TaskStatus.QUEUED  # type: ignore[union-attr]
    assert await store.signal_data(waiting.id, first.event, 0) == b'"a"'
    assert await store.signal_data(waiting.id, second.event, 0) == b'"b"'
    assert await store.signal_data(ended.id, call(ended.id, 0).event, 0) is None  # it ended
    assert await store.batch_claim("main", 10, "c", NOW, NOW - 300) == []  # all delivered
