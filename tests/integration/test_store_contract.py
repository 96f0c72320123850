"""The Store contract: every implementation must pass these, against a real database.

The ``store`` and ``store_url`` fixtures run each test on SQLite and on PostgreSQL; the
schema tests at the end are SQLite's own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from legion import codec
from legion.errors import IdempotencyConflict
from legion.store import (
    DiagnosticRecord,
    MemoryWrite,
    SQLiteStore,
    Store,
    WorkerInfo,
    WriteBatch,
    store_from_url,
)
from legion.store.queries import migrations
from legion.store.types import ApiKey, Event, TaskQuery
from legion.task import Completion, ErrorInfo, NewTask, Outcome, StepRecord, TaskStatus, Wait
from tests.feed import at_least, until_holds

NOW = 1_000_000.0


def new(agent: str = "a", key: str | None = None, value: object = None, **kw: Any) -> NewTask:
    return NewTask(
        agent, codec.dumps({"x": value}), key, max_attempts=kw.pop("max_attempts", 3), **kw
    )


def done(
    lease_id: int, attempt: int, owner: str, outcome: Outcome = Outcome.SUCCEEDED, **kw: object
) -> Completion:
    return Completion(lease_id, attempt, owner, outcome, started_at=NOW, finished_at=NOW + 1, **kw)  # type: ignore[arg-type]


async def test_submit_assigns_ids_and_queues(store: Store) -> None:
    out = await store.submit([new(value=1), new(value=2)], NOW)
    assert [s.created for s in out] == [True, True]
    assert out[0].id != out[1].id
    assert (await store.counts()) == {TaskStatus.QUEUED: 2}


async def test_a_key_repeated_within_one_submission_makes_one_task(store: Store) -> None:
    a, b, c = await store.submit([new(key="k", value=1), new(value=2), new(key="k", value=1)], NOW)
    assert a.created and b.created and not c.created
    assert c.id == a.id and b.id not in (a.id,)
    assert (await store.counts()) == {TaskStatus.QUEUED: 2}


async def test_a_key_sent_with_another_input_or_agent_is_refused_and_stores_nothing(
    store: Store,
) -> None:
    (first,) = await store.submit([new(key="k", value=1)], NOW)
    with pytest.raises(IdempotencyConflict) as refused:
        await store.submit([new(key="fresh", value=5), new(key="k", value=2)], NOW)
    assert refused.value.keys == ("k",)
    with pytest.raises(IdempotencyConflict):
        await store.submit([new(agent="b", key="k", value=1)], NOW)
    with pytest.raises(IdempotencyConflict):  # within one submission, before the store
        await store.submit([new(key="j", value=1), new(key="j", value=2)], NOW)
    assert (await store.counts()) == {TaskStatus.QUEUED: 1}  # "fresh" and "j" rolled back
    assert await store.find_keys(["fresh", "j"]) == {}
    (again,) = await store.submit([new(key="k", value=1)], NOW)
    assert again.id == first.id and not again.created


async def test_a_key_sent_again_with_an_equal_input_in_another_key_order_is_the_same_task(
    store: Store,
) -> None:
    def task(key: str, raw: bytes) -> NewTask:
        return NewTask("a", raw, key, max_attempts=3)

    (first,) = await store.submit([task("k", b'{"a":1,"b":[{"y":2,"x":1}]}')], NOW)
    (again,) = await store.submit([task("k", b'{"b":[{"x":1,"y":2}],"a":1}')], NOW)
    assert again.id == first.id and not again.created
    both = await store.submit([task("j", b'{"a":1,"b":2}'), task("j", b'{"b":2,"a":1}')], NOW)
    assert both[0].id == both[1].id
    with pytest.raises(IdempotencyConflict):  # equal as JSON is equal; a value is not
        await store.submit([task("k", b'{"b":[{"x":1,"y":3}],"a":1}')], NOW)


async def test_a_key_stored_with_the_fingerprint_of_its_input_as_sent_still_matches(
    tmp_path: Path,
) -> None:
    # Before fingerprints were canonical, a task kept the hash of its input as sent: a
    # resumed run that sends it again, keys in the same order, is answered by it.
    from legion.store.tenancy import _sha256

    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        raw = b'{"b":2,"a":1}'
        (first,) = await store.submit([NewTask("a", raw, "k", max_attempts=3)], NOW)
        db = sqlite3.connect(tmp_path / "s.db")
        with db:
            db.execute("UPDATE tasks SET input_hash = ?", (_sha256("a", raw),))
        db.close()
        (again,) = await store.submit([NewTask("a", raw, "k", max_attempts=3)], NOW)
        assert again.id == first.id and not again.created
    finally:
        await store.aclose()


async def test_concurrent_submissions_are_answered_as_if_made_one_after_the_other(
    store: Store,
) -> None:
    # (SQLite writes submissions that arrive together in one transaction: each still
    # stands or falls alone.)
    (first,) = await store.submit([new(key="k", value=1)], NOW)
    plain, conflict, once, again, known = await asyncio.gather(
        store.submit([new(value=1), new(value=2)], NOW),
        store.submit([new(key="fresh", value=5), new(key="k", value=2)], NOW),
        store.submit([new(key="twice", value=3)], NOW),
        store.submit([new(key="twice", value=3)], NOW),
        store.submit([new(key="k", value=1)], NOW),
        return_exceptions=True,
    )
    assert isinstance(conflict, IdempotencyConflict) and conflict.keys == ("k",)
    assert isinstance(plain, list) and [s.created for s in plain] == [True, True]
    assert isinstance(known, list) and [(s.id, s.created) for s in known] == [(first.id, False)]
    assert isinstance(once, list) and isinstance(again, list)
    assert once[0].id == again[0].id and sorted([once[0].created, again[0].created]) == [
        False,
        True,
    ]
    assert await store.find_keys(["fresh"]) == {}  # the refused submission left nothing
    assert (await store.counts()) == {TaskStatus.QUEUED: 4}


async def test_keys_and_reads_are_per_tenant(store: Store) -> None:
    a, b = await store.submit(
        [new(key="k", value=1, tenant="acme"), new(key="k", value=2, tenant="globex")], NOW
    )
    assert a.created and b.created and a.id != b.id
    assert a.key == b.key == "k"
    (plain,) = await store.submit([new(key="k", value=3)], NOW)  # the default tenant's own
    assert plain.created and plain.id not in (a.id, b.id)
    (again,) = await store.submit([new(key="k", value=1, tenant="acme")], NOW)
    assert again.id == a.id and not again.created
    with pytest.raises(IdempotencyConflict):
        await store.submit([new(key="k", value=2, tenant="acme")], NOW)
    info = await store.get(a.id)
    assert info is not None and info.tenant == "acme" and info.key == "k"
    listed = await store.list_tasks(TaskQuery(tenant="globex"))
    assert [(t.id, t.tenant, t.key) for t in listed] == [(b.id, "globex", "k")]
    assert {t.id for t in await store.list_tasks(TaskQuery())} == {a.id, b.id, plain.id}
    assert await store.count_queued("acme") == 1
    assert await store.count_queued("nobody") == 0
    (lease,) = await store.lease("w", {"a": 1}, 1, NOW + 30, NOW)
    assert lease.id == a.id and lease.key == "k"  # the agent sees the key as sent
    assert await store.count_queued("acme") == 0


async def test_api_keys_keep_their_tenant_and_scope(store: Store) -> None:
    await store.add_api_key(ApiKey("0123456789ab", "ops", b"s" * 16, b"d" * 32, 5.0))
    await store.add_api_key(
        ApiKey("ba9876543210", "acme", b"t" * 16, b"e" * 32, 6.0, tenant="acme", scope="admin")
    )
    plain = await store.api_key("0123456789ab")
    assert plain is not None and (plain.tenant, plain.scope, plain.admin) == (
        "default",
        "tenant",
        False,
    )
    admin = await store.api_key("ba9876543210")
    assert admin is not None and (admin.tenant, admin.admin) == ("acme", True)
    assert [k.tenant for k in await store.api_keys()] == ["default", "acme"]


async def test_same_key_twice_answers_the_first_task(store: Store) -> None:
    (first,) = await store.submit([new(key="k", value=1)], NOW)
    second, third = await store.submit([new(key="k", value=1), new(key="other")], NOW)
    assert second.id == first.id and not second.created
    assert third.created
    info = await store.get(first.id)
    assert info is not None and info.input == {"x": 1}


async def test_lease_is_batched_per_agent_and_capped(store: Store) -> None:
    await store.submit(
        [new("a", value=i) for i in range(5)] + [new("b", value=i) for i in range(5)], NOW
    )
    leases = await store.lease("w1", {"a": 3, "b": 10}, 6, NOW + 60, NOW)
    assert len(leases) == 6
    assert sum(1 for lease in leases if lease.agent == "a") == 3
    assert all(lease.attempt == 1 for lease in leases)
    again = await store.lease("w2", {"a": 10, "b": 10}, 10, NOW + 60, NOW)
    assert len(again) == 4  # nothing is leased twice
    assert not {lease.id for lease in leases} & {lease.id for lease in again}


async def test_priority_then_age_orders_the_queue(store: Store) -> None:
    _, high = await store.submit([new(value=1, priority=0), new(value=2, priority=5)], NOW)
    (first,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW)
    assert first.id == high.id


async def _lease_tenants(store: Store, n: int, agent: str = "a") -> list[str]:
    return [lease.tenant for lease in await store.lease("w", {agent: n}, n, NOW + 60, NOW)]


async def test_tenants_take_turns_at_the_queue(store: Store) -> None:
    """A tenant's backlog does not hold back the tasks another tenant submits after it:
    one task a lease, the tenants alternate (the one with fewer running goes first)."""
    await store.submit([new(value=i, tenant="noisy") for i in range(20)], NOW)
    await store.submit([new(value=i, tenant="quiet") for i in range(2)], NOW)
    one_by_one = [(await _lease_tenants(store, 1))[0] for _ in range(5)]
    assert one_by_one == ["noisy", "quiet", "noisy", "quiet", "noisy"]


async def test_one_lease_takes_each_tenants_tasks_in_turn(store: Store) -> None:
    ids = {}
    for tenant in ("a", "b", "c"):
        out = await store.submit([new(value=i, tenant=tenant) for i in range(10)], NOW)
        ids[tenant] = [s.id for s in out]
    await store.submit([new(value=0, tenant="d")], NOW)
    leased = await store.lease("w", {"a": 13}, 13, NOW + 60, NOW)
    by_tenant = {t: [lease.id for lease in leased if lease.tenant == t] for t in "abcd"}
    assert [len(by_tenant[t]) for t in "abcd"] == [4, 4, 4, 1]
    for tenant in "abc":  # each tenant's own in its queue's order
        assert by_tenant[tenant] == ids[tenant][:4]
    # In the lease's order: the first turn of each tenant first, oldest first.
    assert [lease.tenant for lease in leased[:4]] == ["a", "b", "c", "d"]
    # One tenant left: the rest of the lease in its queue's order.
    rest = await store.lease("w", {"a": 30}, 30, NOW + 60, NOW)
    assert len(rest) == 18


async def test_a_tenant_with_more_running_waits_its_turn(store: Store) -> None:
    """The tenant with fewer tasks of the agent running goes first: one whose tasks hang
    holding slots is served after the others."""
    await store.submit([new(value=i, tenant="busy") for i in range(3)], NOW)
    assert await _lease_tenants(store, 3) == ["busy"] * 3
    await store.submit([new(value=i, tenant="busy") for i in range(3, 9)], NOW)
    await store.submit([new(value=i, tenant="calm") for i in range(3)], NOW)
    assert await _lease_tenants(store, 5) == ["calm", "calm", "calm", "busy", "busy"]


async def test_a_tenant_cap_leases_none_of_a_tenant_at_it(store: Store) -> None:
    async def lease(n: int) -> list[str]:
        got = await store.lease("w", {"a": n}, n, NOW + 60, NOW, tenant_cap=2)
        return [lease.tenant for lease in got]

    await store.submit([new(value=i, tenant="busy") for i in range(5)], NOW)
    assert await lease(5) == ["busy", "busy"]  # one tenant queued
    assert await lease(5) == []
    await store.submit([new(value=i, tenant="calm") for i in range(3)], NOW)
    assert await lease(5) == ["calm", "calm"]  # two: the one at its cap is left out
    (one,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW)  # (no cap: turns alone)
    assert one.tenant == "busy"  # (two running each: the older task)


async def test_priority_goes_before_tenant_turns(store: Store) -> None:
    await store.submit([new(value=i, tenant="low") for i in range(3)], NOW)
    await store.submit([new(value=i, tenant="high", priority=5) for i in range(3)], NOW)
    assert await _lease_tenants(store, 4) == ["high", "high", "high", "low"]


async def test_a_tenant_with_only_delayed_tasks_leaves_the_lease_to_others(
    store: Store,
) -> None:
    await store.submit([new(value=i, tenant="later", not_before=NOW + 60) for i in range(5)], NOW)
    await store.submit([new(value=i, tenant="now") for i in range(5)], NOW)
    assert await _lease_tenants(store, 10) == ["now"] * 5


async def test_the_turns_are_among_tenants_with_a_task_to_lease_now(store: Store) -> None:
    """Tenants whose queued tasks cannot be leased now (delayed, or below the lease's
    lowest priority) take no turn, and a tenant with a lone ready task is not held back by
    them; once due, a delayed tenant takes its turns again."""
    for n in range(30):
        await store.submit([new(value=n, tenant=f"later-{n:02}", not_before=NOW + 60)], NOW)
    await store.submit([new(value=i, tenant="low") for i in range(3)], NOW)
    await store.submit([new(value=i, tenant="high", priority=5) for i in range(2)], NOW)
    raised = await store.lease("w", {"a": 10}, 10, NOW + 60, NOW, min_priority=1)
    assert [lease.tenant for lease in raised] == ["high", "high"]
    assert await _lease_tenants(store, 10) == ["low"] * 3
    due = await store.lease("w", {"a": 40}, 40, NOW + 120, NOW + 61)
    assert sorted(lease.tenant for lease in due) == [f"later-{n:02}" for n in range(30)]


async def test_a_lease_carries_the_tasks_priority_and_tenant(store: Store) -> None:
    """A route orders the task's LLM calls by them (`legion.llm.lanes`)."""
    await store.submit([new(value=1, priority=7, tenant="acme")], NOW)
    (lease,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW)
    assert (lease.priority, lease.tenant) == (7, "acme")


async def test_not_before_delays_a_task(store: Store) -> None:
    await store.submit([new(value=1, not_before=NOW + 10)], NOW)
    assert await store.lease("w", {"a": 5}, 5, NOW + 60, NOW) == []
    assert len(await store.lease("w", {"a": 5}, 5, NOW + 70, NOW + 11)) == 1


async def test_completion_is_fenced_by_owner_and_attempt(store: Store) -> None:
    (s,) = await store.submit([new(value=1)], NOW)
    await store.lease("w1", {"a": 1}, 1, NOW - 1, NOW)  # expired at once
    # w1's lease expires; the task goes back (to run alone) and w2 takes it, the attempt
    # not counted (a first stop is not charged): the same number, another owner.
    await store.reclaim(NOW + 5)
    (lease2,) = await store.lease("w2", {"a": 1}, 1, NOW + 60, NOW + 5, isolated=True)
    assert lease2.attempt == 1
    applied = await store.write(
        WriteBatch(
            completions=[
                done(s.id, 1, "w1", output=b'"stale"'),  # the owner is w2's now
                done(s.id, 2, "w2", output=b'"future"'),  # no such attempt
                done(s.id, 1, "w2", output=b'"fresh"'),
            ]
        ),
        NOW + 6,
    )
    assert applied == [False, False, True]
    info = await store.get(s.id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED and info.output == "fresh"
    # The error the reaper wrote (its worker stopped) is history now, not the task's state:
    # `if result.error:` counted the task as failed.
    assert info.error is None
    (lost,) = [a for a in await store.attempts(s.id) if a.outcome == "lost"]
    assert lost.error is not None and lost.error.type == "LeaseExpired"


async def test_retry_dead_failed_and_released_outcomes(store: Store) -> None:
    ids = [s.id for s in await store.submit([new(value=i) for i in range(4)], NOW)]
    leases = await store.lease("w", {"a": 4}, 4, NOW + 60, NOW)
    by_id = {lease.id: lease for lease in leases}
    err = ErrorInfo("ValueError", "bad", "Traceback...")
    await store.write(
        WriteBatch(
            completions=[
                done(ids[0], 1, "w", Outcome.RETRY, error=err, not_before=NOW + 30),
                done(ids[1], 1, "w", Outcome.DEAD, error=err),
                done(ids[2], 1, "w", Outcome.FAILED, error=err),
                done(ids[3], by_id[ids[3]].attempt, "w", Outcome.RELEASED),
            ]
        ),
        NOW,
    )
    infos = {i.id: i for i in await store.get_many(ids)}
    assert infos[ids[0]].status is TaskStatus.QUEUED and infos[ids[0]].error == err
    assert infos[ids[1]].status is TaskStatus.DEAD and infos[ids[1]].error == err
    assert infos[ids[2]].status is TaskStatus.FAILED
    assert infos[ids[3]].status is TaskStatus.QUEUED and infos[ids[3]].attempt == 0  # not counted
    # The retried one waits for its not-before time; the released one is ready now.
    ready = await store.lease("w", {"a": 4}, 4, NOW + 60, NOW + 1)
    assert [lease.id for lease in ready] == [ids[3]]


async def test_lease_with_a_min_priority_takes_only_raised_tasks(store: Store) -> None:
    low, high, other = await store.submit(
        [new(value=1), new(value=2, priority=10), new(agent="b", value=3, priority=5)], NOW
    )
    leased = await store.lease("w", {"a": 5, "b": 5}, 10, NOW + 60, NOW, min_priority=1)
    assert sorted(lease.id for lease in leased) == sorted([high.id, other.id])
    assert await store.lease("w", {"a": 5}, 5, NOW + 60, NOW, min_priority=1) == []
    (rest,) = await store.lease("w", {"a": 5}, 5, NOW + 60, NOW)
    assert rest.id == low.id


async def test_each_applied_completion_records_its_attempt(store: Store) -> None:
    (s,) = await store.submit([new(value=1, max_attempts=3)], NOW)
    err = ErrorInfo("TimeoutError", "slow", "Traceback...")
    (first,) = await store.lease("w1", {"a": 1}, 1, NOW + 60, NOW)
    retry = Completion(
        s.id, first.attempt, "w1", Outcome.RETRY, error=err, started_at=NOW,
        finished_at=NOW + 10, running=2.5, waited=7.5,
    )  # fmt: skip
    assert await store.write(WriteBatch(completions=[retry]), NOW + 10) == [True]
    (second,) = await store.lease("w2", {"a": 1}, 1, NOW + 100, NOW + 20)
    # A stale completion (w1's lease is gone) applies nothing and records no attempt.
    stale = Completion(s.id, first.attempt, "w1", Outcome.SUCCEEDED, b'"x"', None, 0.0, NOW, NOW)
    ok = Completion(
        s.id, second.attempt, "w2", Outcome.SUCCEEDED, b'"y"', started_at=NOW + 20,
        finished_at=NOW + 23, running=3.0, waited=0.0,
    )  # fmt: skip
    assert await store.write(WriteBatch(completions=[stale, ok]), NOW + 23) == [False, True]
    attempts = await store.attempts(s.id)
    assert [(a.attempt, a.worker, a.outcome) for a in attempts] == [
        (1, "w1", "retry"),
        (2, "w2", "succeeded"),
    ]
    assert attempts[0].error == err and attempts[1].error is None
    assert (attempts[0].started_at, attempts[0].finished_at) == (NOW, NOW + 10)
    assert (attempts[0].running, attempts[0].waited) == (2.5, 7.5)
    assert (attempts[1].running, attempts[1].waited) == (3.0, 0.0)
    assert (attempts[1].started_at, attempts[1].finished_at) == (NOW + 20, NOW + 23)
    info = await store.get(s.id)  # a task that succeeded has no error; the attempts keep all
    assert info is not None and info.status is TaskStatus.SUCCEEDED and info.error is None
    assert await store.attempts(s.id + 1000) == []


async def test_a_released_attempt_is_recorded_and_its_number_used_again(store: Store) -> None:
    (s,) = await store.submit([new(value=1)], NOW)
    (lease,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW)
    await store.write(
        WriteBatch(completions=[done(s.id, lease.attempt, "w", Outcome.RELEASED)]), NOW
    )
    (again,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW + 1)
    await store.write(WriteBatch(completions=[done(s.id, again.attempt, "w")]), NOW + 2)
    attempts = await store.attempts(s.id)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "released"), (1, "succeeded")]


async def test_a_completion_records_its_usage(store: Store) -> None:
    a, b = await store.submit([new(value=1), new(value=2)], NOW)
    await store.lease("w", {"a": 2}, 2, NOW + 60, NOW)
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "cost_usd": 0.5, "llm_calls": 1}
    await store.write(
        WriteBatch(completions=[done(a.id, 1, "w", usage=codec.dumps(usage)), done(b.id, 1, "w")]),
        NOW,
    )
    infos = {i.id: i for i in await store.get_many([a.id, b.id])}
    assert infos[a.id].usage == usage and infos[b.id].usage is None


async def test_steps_are_recorded_once_and_replayed_on_the_next_attempt(store: Store) -> None:
    (s,) = await store.submit([new(value=1)], NOW)
    (lease,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW)
    assert lease.steps == {}
    step = StepRecord(s.id, "search", 1, b"[1,2]", NOW, NOW + 1, "w")
    dup = StepRecord(s.id, "search", 1, b"[9]", NOW, NOW + 1, "w")
    await store.write(WriteBatch(steps=[step, dup]), NOW)
    await store.write(
        WriteBatch(completions=[done(s.id, 1, "w", Outcome.RETRY, error=ErrorInfo("E", "m"))]), NOW
    )
    (again,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW + 1)
    assert again.attempt == 2 and again.steps == {"search": b"[1,2]"}
    (info,) = await store.steps(s.id)
    assert info.key == "search" and info.output == [1, 2]
    assert await store.step_count(s.id) == 1 and await store.step_count(s.id + 1) == 0


async def test_reclaim_requeues_expired_and_buries_the_last_attempt(store: Store) -> None:
    a, b = await store.submit([new(value=1, max_attempts=1), new(value=2, max_attempts=3)], NOW)
    await store.lease("w1", {"a": 1}, 1, NOW + 600, NOW)
    assert (await store.reclaim(NOW + 5)).requeued == 0  # not expired yet
    await store.lease("w2", {"a": 1}, 1, NOW - 1, NOW)  # expired at once
    r = await store.reclaim(NOW + 11)
    # w2 ran b alone, but a first stop may be the worker's own (paused past its lease):
    # not charged, b runs alone next.
    assert (r.requeued, r.dead) == (1, 0)
    assert (await store.reclaim(NOW + 11, ["w1"])).requeued == 1  # a too, on its last try
    for task in await store.get_many([a.id, b.id]):
        assert task.status is TaskStatus.QUEUED and task.attempt == 0
        assert task.error is not None and "alone" not in task.error.message
    # Each runs alone now, as a suspect; stopped again, each is charged: b retried, a dead.
    await store.lease("w3", {"a": 1}, 1, NOW + 600, NOW + 12, isolated=True)
    await store.lease("w4", {"a": 1}, 1, NOW + 600, NOW + 12, isolated=True)
    assert (r := await store.reclaim(NOW + 13, ["w3", "w4"])).dead == 1 and r.requeued == 1
    info = await store.get(a.id)
    assert info is not None and info.status is TaskStatus.DEAD
    assert info.error is not None and info.error.type == "LeaseExpired"
    assert "alone" in info.error.message
    again = await store.get(b.id)
    assert again is not None and again.status is TaskStatus.QUEUED and again.attempt == 1


async def test_a_worker_paused_with_one_task_costs_it_no_attempt(store: Store) -> None:
    # Its lease ran out while it was paused (or its other leases were taken back a pass
    # earlier): a stop of one task's worker is no proof against the task.
    (s,) = await store.submit([new(value=1, max_attempts=1)], NOW)
    await store.lease("w1", {"a": 1}, 1, NOW - 1, NOW)  # expired at once
    assert (await store.reclaim(NOW + 31)).requeued == 1
    (lost,) = await store.attempts(s.id)
    assert lost.outcome == "lost" and lost.error is not None
    assert "alone" not in lost.error.message
    (again,) = await store.lease("w2", {"a": 1}, 1, NOW + 90, NOW + 32, isolated=True)
    assert again.attempt == 1
    assert await store.write(WriteBatch(completions=[done(s.id, 1, "w2")]), NOW + 33) == [True]


async def test_an_attempt_the_reaper_ends_is_recorded_as_lost(store: Store) -> None:
    _, b, c = await store.submit([new(value=1), new(value=2), new(value=3)], NOW)
    (first,) = await store.lease("w1", {"a": 1}, 1, NOW - 1, NOW)  # alone; expired at once
    await store.lease("w2", {"a": 2}, 2, NOW + 600, NOW + 2)  # b and c share w2
    assert (await store.reclaim(NOW + 11, [])).requeued == 1  # only w1's lease expired
    (lost,) = await store.attempts(first.id)
    assert (lost.attempt, lost.worker, lost.outcome) == (1, "w1", "lost")
    assert (lost.started_at, lost.finished_at) == (NOW, NOW + 11)
    assert (lost.running, lost.waited) == (11.0, 0.0)
    assert lost.error is not None and lost.error.type == "LeaseExpired"
    assert "alone" not in lost.error.message  # a first stop: not charged
    assert await store.attempts(b.id) == await store.attempts(c.id) == []  # w2 lives
    assert (await store.reclaim(NOW + 12, ["w2"])).requeued == 2  # w2 is dead
    for task in (b, c):  # not charged (they shared w2): their next attempt reuses the number
        (shared,) = await store.attempts(task.id)
        assert (shared.attempt, shared.worker, shared.outcome) == (1, "w2", "lost")
        assert shared.error is not None and "alone" not in shared.error.message
        assert (shared.running, shared.finished_at) == (10.0, NOW + 12)
    # A second reap ends nothing more and writes nothing more.
    assert (await store.reclaim(NOW + 20, ["w1", "w2"])).requeued == 0
    assert len(await store.attempts(first.id)) == 1
    (again,) = await store.lease("w3", {"a": 1}, 1, NOW + 600, NOW + 30, isolated=True)
    await store.write(WriteBatch(completions=[done(again.id, again.attempt, "w3")]), NOW + 31)
    assert [x.outcome for x in await store.attempts(again.id)] == ["lost", "succeeded"]


async def test_a_crash_is_charged_only_to_a_task_that_ran_alone(store: Store) -> None:
    # Three tasks on one worker that stops: none is charged (attempt not counted), each
    # runs alone next; the one that stops its worker again, alone, is charged and dies.
    ids = [s.id for s in await store.submit([new(value=i, max_attempts=1) for i in range(3)], NOW)]
    await store.lease("w1", {"a": 3}, 3, NOW + 600, NOW)
    r = await store.reclaim(NOW + 1, ["w1"])
    assert (r.requeued, r.dead) == (3, 0)
    assert await store.lease("w2", {"a": 3}, 3, NOW + 600, NOW) == []  # only alone now
    infos = await store.get_many(ids)
    assert {i.attempt for i in infos} == {0} and {i.status for i in infos} == {TaskStatus.QUEUED}
    (culprit,) = await store.lease("w2", {"a": 3}, 3, NOW + 600, NOW, isolated=True)
    assert (await store.reclaim(NOW + 2, ["w2"])).dead == 1
    (innocent,) = await store.lease("w3", {"a": 3}, 3, NOW + 600, NOW, isolated=True)
    assert await store.write(WriteBatch(completions=[done(innocent.id, 1, "w3")]), NOW) == [True]
    info = await store.get(culprit.id)
    assert info is not None and info.status is TaskStatus.DEAD


async def test_the_tasks_of_a_dead_worker_rerun_apart_in_halves(store: Store) -> None:
    # A worker killed with 8 tasks in flight (a reboot, not one of them): they rerun apart
    # from all other work, in two groups of 4, not one by one.
    ids = [s.id for s in await store.submit([new(value=i) for i in range(9)], NOW)]
    await store.lease("w1", {"a": 8}, 8, NOW + 600, NOW)
    assert (await store.reclaim(NOW + 1, ["w1"])).requeued == 8
    first = await store.lease("w2", {"a": 8}, 8, NOW + 600, NOW, isolated=True)
    second = await store.lease("w3", {"a": 8}, 8, NOW + 600, NOW, isolated=True)
    assert len(first) == len(second) == 4
    assert {t.id for t in first + second} == set(ids[:8])
    assert await store.lease("w4", {"a": 8}, 8, NOW + 600, NOW, isolated=True) == []
    # The ninth, never lost, runs with others as ever, and no suspect runs with it.
    (ordinary,) = await store.lease("w4", {"a": 8}, 8, NOW + 600, NOW)
    assert ordinary.id == ids[8]
    # No more than a worker's room: a group of 4 on a worker with 2 free slots is 2.
    await store.reclaim(NOW + 2, ["w2"])  # its 4 shared it: groups of 2 now
    assert len(await store.lease("w5", {"a": 8}, 1, NOW + 600, NOW, isolated=True)) == 1
    assert len(await store.lease("w6", {"a": 8}, 8, NOW + 600, NOW, isolated=True)) == 2
    assert all(t.attempt == 1 for t in first + second)  # a lost attempt is not counted


async def test_a_task_that_kills_every_worker_it_runs_on_ends_alone_and_dead(
    store: Store,
) -> None:
    # Sixteen tasks, one of which stops any worker it runs on: each rerun group that holds
    # it is lost again and halved, until it runs alone, is charged, and dies; the other
    # fifteen succeed, never charged, in a few rounds rather than fifteen.
    ids = [s.id for s in await store.submit([new(value=i) for i in range(16)], NOW)]
    killer = ids[11]
    await store.lease("w0", {"a": 16}, 16, NOW + 600, NOW)
    await store.reclaim(NOW, ["w0"])
    rounds = 0
    while rounds < 40:
        rounds += 1
        owner = f"w{rounds}"
        group = await store.lease(owner, {"a": 16}, 16, NOW + 600, NOW, isolated=True)
        if not group:
            break
        if killer in {t.id for t in group}:
            await store.reclaim(NOW, [owner])
        else:
            batch = WriteBatch(completions=[done(t.id, t.attempt, owner) for t in group])
            assert await store.write(batch, NOW) == [True] * len(group)
    infos = {i.id: i for i in await store.get_many(ids)}
    assert infos[killer].status is TaskStatus.DEAD
    assert infos[killer].attempt == 3  # its three attempts, each spent alone
    assert all(infos[i].status is TaskStatus.SUCCEEDED for i in ids if i != killer)
    assert all(infos[i].attempt == 1 for i in ids if i != killer)  # never charged
    # 8 -> 4 -> 2 -> 1 with the killer, a group each time without it, then 3 alone.
    assert rounds <= 12, rounds


async def test_absolve_lets_the_tasks_taken_from_a_live_worker_run_with_others(
    store: Store,
) -> None:
    # w1 lost three leases and w2 one, all taken back to run alone; w1 turns out to live.
    ids = [s.id for s in await store.submit([new(value=i) for i in range(5)], NOW)]
    await store.lease("w1", {"a": 3}, 3, NOW + 600, NOW)
    await store.lease("w2", {"a": 2}, 2, NOW + 600, NOW)
    assert (await store.reclaim(NOW + 1, ["w1", "w2"])).requeued == 5
    (alone,) = await store.lease("w3", {"a": 1}, 1, NOW + 600, NOW, isolated=True)
    assert await store.absolve("w1") == (3 if alone.id not in ids[:3] else 2)
    assert await store.absolve("w1") == 0  # once
    taken = await store.lease("w4", {"a": 5}, 5, NOW + 600, NOW)
    # w1's run with others; w2's still run alone, one of them on w3 already.
    assert {t.id for t in taken} == set(ids[:3]) - {alone.id}
    assert all(t.attempt == 1 for t in taken)  # the lost attempts were not counted


async def test_reclaim_takes_leases_of_dead_owners_at_once(store: Store) -> None:
    await store.submit([new(value=1), new(value=2)], NOW)
    await store.lease("dead-worker", {"a": 1}, 1, NOW + 600, NOW)
    await store.lease("live-worker", {"a": 1}, 1, NOW + 600, NOW)
    r = await store.reclaim(NOW + 1, ["dead-worker"])
    assert r.requeued == 1
    assert (await store.counts())[TaskStatus.RUNNING] == 1


async def test_extend_leases_keeps_tasks_and_reports_cancel_requests(store: Store) -> None:
    a, b, c = await store.submit([new(value=1), new(value=2), new(value=3)], NOW)
    await store.lease("w", {"a": 3}, 3, NOW - 1, NOW)  # expired at once unless extended
    assert await store.cancel(b.id, NOW) is TaskStatus.RUNNING  # asked, not yet stopped
    # Only the leases the worker runs are extended: c's expires.
    extended = await store.extend_leases("w", [a.id, b.id, 12345], NOW + 100, NOW)
    assert extended.held == {a.id, b.id} and extended.cancel == {b.id}
    assert (await store.reclaim(NOW + 50)).requeued == 1
    assert (await store.get(c.id)).status is TaskStatus.QUEUED  # type: ignore[union-attr]
    assert (await store.extend_leases("other", [a.id], NOW + 100, NOW)).held == set()


async def test_release_unheld_gives_back_only_what_the_worker_does_not_run(store: Store) -> None:
    a, b = await store.submit([new(value=1), new(value=2)], NOW)
    await store.lease("w", {"a": 2}, 2, NOW + 600, NOW)
    assert await store.release_unheld("w", [a.id]) == 1
    info = await store.get(b.id)
    assert info is not None and info.status is TaskStatus.QUEUED and info.attempt == 0
    assert (await store.get(a.id)).status is TaskStatus.RUNNING  # type: ignore[union-attr]


async def test_writes_are_fenced_by_the_lease(store: Store) -> None:
    a, b = await store.submit([new(value=1, key="a"), new(value=2, key="b")], NOW)
    await store.lease("w1", {"a": 2}, 2, NOW + 600, NOW)
    await store.reclaim(NOW, ["w1"])  # w1 is taken for dead; w2 takes the tasks
    la = await store.lease("w2", {"a": 2}, 2, NOW + 600, NOW, isolated=True)
    lb = await store.lease("w2", {"a": 2}, 2, NOW + 600, NOW, isolated=True)
    assert {la[0].id, lb[0].id} == {a.id, b.id} and la[0].attempt == 1
    stale = WriteBatch(
        steps=[StepRecord(a.id, "s", 1, b'"stale"', NOW, NOW, "w1")],
        memory=[MemoryWrite("m", "k", b'"stale"', b.id, 1, "w1")],
        diagnostics=[DiagnosticRecord(a.id, 1, "a", "blocked", b'{"kind":"blocked"}', "w1")],
    )
    await store.write(stale, NOW)
    assert stale.lost == {a.id, b.id}
    assert await store.steps(a.id) == [] and await store.memory_get("m", "k") is None
    assert await store.diagnostics(task_id=a.id) == []
    fresh = WriteBatch(
        steps=[StepRecord(a.id, "s", 1, b'"fresh"', NOW, NOW, "w2")],
        memory=[MemoryWrite("m", "k", b'"fresh"', b.id, 1, "w2")],
    )
    await store.write(fresh, NOW)
    assert fresh.lost == set()
    assert [s.output for s in await store.steps(a.id)] == ["fresh"]
    assert await store.memory_get("m", "k") == b'"fresh"'
    # A released task keeps its steps: the next lease, attempt 1 again, replays them (and
    # a suspect given back is a suspect still: it runs apart).
    await store.write(WriteBatch(completions=[done(a.id, 1, "w2", Outcome.RELEASED)]), NOW)
    (again,) = await store.lease("w3", {"a": 1}, 1, NOW + 600, NOW, isolated=True)
    assert again.attempt == 1 and again.steps == {"s": b'"fresh"'}


async def test_cancel_a_queued_task_at_once(store: Store) -> None:
    (s,) = await store.submit([new(value=1)], NOW)
    assert await store.cancel(s.id, NOW) is TaskStatus.CANCELLED
    assert await store.lease("w", {"a": 1}, 1, NOW + 60, NOW) == []
    assert await store.cancel(12345, NOW) is None


async def test_cancel_many_tasks_in_one_call(store: Store) -> None:
    """What `cancel` does to each task, for many at once (`legion cancel --tenant`): queued
    and waiting ones end cancelled (one change each in the feed, the counts moved),
    running ones are asked to stop, ended ones stay, unknown ids are left out."""
    start = await store.last_event_id()
    queued, waits, runs, ended, later = await store.submit([new(value=i) for i in range(5)], NOW)
    leased = {lease.id for lease in await store.lease("w", {"a": 4}, 4, NOW + 60, NOW)}
    assert leased == {queued.id, waits.id, runs.id, ended.id}
    await store.write(  # queued again (a retry), waiting on a signal, ended; one runs on
        WriteBatch(
            completions=[
                done(queued.id, 1, "w", Outcome.RETRY, error=ErrorInfo("E", "m")),
                done(waits.id, 1, "w", Outcome.WAITING, wait=Wait(event="go", count=1)),
                done(ended.id, 1, "w"),
            ]
        ),
        NOW,
    )
    # (on PostgreSQL an event is handed out once every older transaction on the server
    # has ended, tests beside this one's included: the cursor is taken once the write's
    # own events are out)
    await until_holds(
        lambda got: (ended.id, TaskStatus.SUCCEEDED) in {(e.task_id, e.status) for e in got},
        lambda: store.events_after(start, 100),
    )
    cursor = await store.last_event_id()

    ids = [queued.id, waits.id, runs.id, ended.id, 12345, queued.id, later.id]
    assert await store.cancel_many(ids, NOW) == {
        queued.id: TaskStatus.CANCELLED,
        waits.id: TaskStatus.CANCELLED,
        runs.id: TaskStatus.RUNNING,  # asked: ends when its worker stops it
        ended.id: TaskStatus.SUCCEEDED,
        later.id: TaskStatus.CANCELLED,
    }
    extended = await store.extend_leases("w", [runs.id], NOW + 120, NOW)
    assert extended.cancel == {runs.id}

    def cancellations(events: Sequence[Event]) -> list[tuple[int, TaskStatus]]:
        return sorted((e.task_id, e.status) for e in events if e.status is TaskStatus.CANCELLED)

    events = await until_holds(
        lambda got: len(cancellations(got)) >= 3, lambda: store.events_after(cursor, 100)
    )
    assert cancellations(events) == [
        (queued.id, TaskStatus.CANCELLED),
        (waits.id, TaskStatus.CANCELLED),
        (later.id, TaskStatus.CANCELLED),
    ]
    assert await counts_of(store) == await counted_by_hand(store)
    assert await store.cancel_many([], NOW) == {}
    assert start < cursor


async def test_requeue_dead_tasks_with_a_fresh_budget(store: Store) -> None:
    ids = [s.id for s in await store.submit([new(value=i) for i in range(3)], NOW)]
    await store.lease("w", {"a": 3}, 3, NOW + 60, NOW)
    err = ErrorInfo("E", "m")
    await store.write(
        WriteBatch(
            completions=[
                done(ids[0], 1, "w", Outcome.DEAD, error=err),
                done(ids[1], 1, "w", Outcome.FAILED, error=err),
                done(ids[2], 1, "w"),
            ]
        ),
        NOW,
    )
    assert await store.requeue([TaskStatus.DEAD]) == 1
    assert await store.requeue_one(ids[1])
    assert not await store.requeue_one(ids[2])  # succeeded tasks stay
    leases = await store.lease("w", {"a": 3}, 3, NOW + 60, NOW)
    assert sorted(lease.id for lease in leases) == ids[:2]
    assert all(lease.attempt == 1 for lease in leases)


async def test_requeue_by_status_keeps_to_a_tenant_and_an_agent(store: Store) -> None:
    """`legion retry --dead --tenant T [--agent A]`: only that tenant's (agent's) tasks."""
    made = [new(value=i, tenant="acme") for i in range(3)]
    made += [new("b", value=i, tenant="acme") for i in range(2)]
    made += [new(value=i, tenant="globex") for i in range(4)]
    ids = [s.id for s in await store.submit(made, NOW)]
    leases = await store.lease("w", {"a": 9, "b": 9}, 9, NOW + 60, NOW)
    err = ErrorInfo("E", "m")
    ended = [done(lease.id, lease.attempt, "w", Outcome.DEAD, error=err) for lease in leases]
    assert await store.write(WriteBatch(completions=ended), NOW) == [True] * 9
    assert await store.requeue([TaskStatus.DEAD], tenant="acme", agent="a") == 3
    assert await store.requeue([TaskStatus.DEAD], tenant="nobody") == 0
    assert await store.requeue([TaskStatus.DEAD], tenant="acme") == 2  # its agent b's
    statuses = await store.statuses(ids)
    assert [statuses[i] for i in ids] == [TaskStatus.QUEUED] * 5 + [TaskStatus.DEAD] * 4
    assert await counts_of(store) == await counted_by_hand(store)


async def test_requeue_many_queues_what_ended_badly_and_counts_it(store: Store) -> None:
    """`requeue_many`, what `legion retry ID...` queues with: each dead, failed or
    cancelled task of the ids once (an id given twice too), nothing else; the feed and the
    counts follow."""
    ids = [s.id for s in await store.submit([new(value=i) for i in range(6)], NOW)]
    leases = {lease.id: lease for lease in await store.lease("w", {"a": 5}, 5, NOW + 60, NOW)}
    err = ErrorInfo("E", "m")
    ended = [
        done(ids[0], leases[ids[0]].attempt, "w", Outcome.DEAD, error=err),
        done(ids[1], leases[ids[1]].attempt, "w", Outcome.FAILED, error=err),
        done(ids[2], leases[ids[2]].attempt, "w", Outcome.CANCELLED),
        done(ids[3], leases[ids[3]].attempt, "w"),
    ]
    assert await store.write(WriteBatch(completions=ended), NOW) == [True] * 4
    cursor = await store.last_event_id()
    # ids[4] is running, ids[5] queued, 10**9 is no task
    named = [ids[0], ids[3], ids[1], ids[0], ids[4], ids[5], 10**9, ids[2]]
    assert sorted(await store.requeue_many(named)) == ids[:3]
    # (on PostgreSQL the completions' own events may show after the cursor: the feed
    # holds back a row until what committed before it is visible)
    events = await until_holds(
        lambda found: sum(e.status is TaskStatus.QUEUED for e in found) >= 3,
        lambda: store.events_after(cursor, 100),
    )
    assert sorted(e.task_id for e in events if e.status is TaskStatus.QUEUED) == ids[:3]
    assert all(e.status is not TaskStatus.QUEUED or e.task_id in ids[:3] for e in events)
    statuses = await store.statuses(ids)
    assert [statuses[i] for i in ids] == [TaskStatus.QUEUED] * 3 + [
        TaskStatus.SUCCEEDED,
        TaskStatus.RUNNING,
        TaskStatus.QUEUED,
    ]
    assert await counts_of(store) == await counted_by_hand(store)
    assert await store.requeue_many(ids[:3]) == []  # queued now: nothing to do
    assert await store.requeue_many([]) == []


async def counted_by_hand(store: Store) -> dict[str, Any]:
    """What the counts should say, counted from the tasks themselves."""
    tasks = await store.list_tasks(TaskQuery(limit=1000))
    by: dict[str, dict[Any, dict[TaskStatus, int]]] = {"tenant": {}, "agent": {}}
    total: dict[TaskStatus, int] = {}
    for t in tasks:
        total[t.status] = total.get(t.status, 0) + 1
        for name, group in (("tenant", t.tenant), ("agent", t.agent)):
            counts = by[name].setdefault(group, {})
            counts[t.status] = counts.get(t.status, 0) + 1
    queued = {tenant: c.get(TaskStatus.QUEUED, 0) for tenant, c in by["tenant"].items()}
    return {"all": total, **by, "queued": queued}


async def counts_of(store: Store) -> dict[str, Any]:
    by_tenant = await store.counts_by_tenant()
    return {
        "all": await store.counts(),
        "tenant": by_tenant,
        "agent": await store.counts_by_agent(),
        "queued": {tenant: await store.count_queued(tenant) for tenant in by_tenant},
    }


async def test_the_counts_follow_every_status_change(store: Store) -> None:
    """Submits (keyed or not), leases, each outcome, cancels, reclaims, releases,
    requeues and wake-ups: after each, the counts by status, tenant and agent and a
    tenant's backlog are the tasks' own."""

    async def check() -> None:
        assert await counts_of(store) == await counted_by_hand(store)

    await store.submit([new(value=i, tenant="acme") for i in range(6)], NOW)
    await store.submit([new("b", key=f"k{i}", value=i, tenant="globex") for i in range(6)], NOW)
    await store.submit([new("b", key="k0", value=0, tenant="globex")], NOW)  # answered, not new
    await check()
    a = await store.lease("w", {"a": 6}, 6, NOW + 60, NOW)
    b = await store.lease("v", {"b": 6}, 6, NOW + 60, NOW)
    await check()
    err = ErrorInfo("E", "m")
    outcomes = [Outcome.SUCCEEDED, Outcome.FAILED, Outcome.DEAD, Outcome.RETRY]
    ends = [done(t.id, t.attempt, "w", o, error=err) for t, o in zip(a, outcomes, strict=False)]
    await store.write(
        WriteBatch(
            completions=[
                *ends,
                done(a[4].id, a[4].attempt, "w", Outcome.WAITING, wait=Wait(wake_at=NOW + 5)),
                done(b[0].id, b[0].attempt, "v", Outcome.WAITING, wait=Wait(event="go", count=1)),
                done(b[1].id, b[1].attempt, "v", Outcome.WAITING, wait=Wait(event="no", count=1)),
                done(b[2].id, b[2].attempt, "stale", Outcome.SUCCEEDED),  # fenced: not applied
            ]
        ),
        NOW,
    )
    await check()
    assert await store.cancel(b[1].id, NOW) is TaskStatus.CANCELLED  # a waiting task
    assert await store.cancel(a[3].id, NOW) is TaskStatus.CANCELLED  # a queued one
    assert await store.cancel(b[2].id, NOW) is TaskStatus.RUNNING  # asked: ends later
    await check()
    await store.signal(b[0].id, "go", b"1", NOW)
    assert await store.wake_due(NOW + 10) == 1
    await check()
    await store.reclaim(NOW + 120, dead_owners=["v"])  # expired ones and the dead owner's
    await check()
    again = await store.lease("w", {"a": 6, "b": 6}, 12, NOW + 200, NOW + 120)
    assert again
    assert await store.release_unheld("w", [again[0].id]) >= len(again) - 1
    await check()
    kept = again[0]
    assert await store.cancel(kept.id, NOW) is TaskStatus.RUNNING
    retried = done(kept.id, kept.attempt, "w", Outcome.RETRY)
    await store.write(WriteBatch(completions=[retried]), NOW)
    info = await store.get(kept.id)
    assert info is not None and info.status is TaskStatus.CANCELLED  # asked while running
    await check()
    assert await store.requeue([TaskStatus.DEAD, TaskStatus.FAILED, TaskStatus.DEAD]) >= 2
    assert await store.requeue_one(a[3].id)  # the cancelled one
    assert not await store.requeue_one(a[0].id)  # succeeded tasks stay
    await check()


@pytest.mark.parametrize("told", [True, False], ids=["told", "not-told"])
async def test_the_feed_and_counts_of_completions_are_the_tasks_own(
    store: Store, told: bool
) -> None:
    """A completion from a worker says its task's tenant and agent, and the SQLite store
    then logs the change and moves the counts from what the completion says, without
    reading the tasks; one that does not say them is logged from the tasks' rows. Either
    way each change in the feed is what the task holds, the counts are the tasks' own,
    and a retry of a task whose cancellation was asked is logged as cancelled."""
    await store.submit([new("a", value=i, tenant="acme") for i in range(5)], NOW)
    await store.submit([new("b", value=i, tenant="globex") for i in range(5)], NOW)
    leases = await store.lease("w", {"a": 5, "b": 5}, 10, NOW + 60, NOW)
    assert len(leases) == 10

    def end(lease: Any, outcome: Outcome, owner: str = "w", **kw: Any) -> Completion:
        if told:
            kw.update(tenant=lease.tenant, agent=lease.agent)
        return done(lease.id, lease.attempt, owner, outcome, **kw)

    err = ErrorInfo("E", "m")
    cursor = await store.last_event_id()
    first = [
        end(leases[0], Outcome.SUCCEEDED, output=codec.dumps(1)),
        end(leases[1], Outcome.FAILED, error=err),
        end(leases[5], Outcome.DEAD, error=err),
        end(leases[6], Outcome.CANCELLED),
        end(leases[2], Outcome.WAITING, wait=Wait(event="go", count=1)),
        end(leases[7], Outcome.SUCCEEDED, owner="stale"),  # fenced: not applied
    ]
    assert await store.write(WriteBatch(completions=first), NOW) == [True] * 5 + [False]
    events = await at_least(5, lambda: store.events_after(cursor, 100))
    assert sorted(e.task_id for e in events) == sorted(c.id for c in first[:5])
    for e in events:
        info = await store.get(e.task_id)
        assert info is not None
        assert (e.status, e.attempt, e.worker) == (info.status, info.attempt, "w")
    assert await counts_of(store) == await counted_by_hand(store)

    assert await store.cancel(leases[3].id, NOW) is TaskStatus.RUNNING  # asked: ends later
    cursor = await store.last_event_id()
    second = [
        end(leases[3], Outcome.RETRY, error=err, not_before=NOW + 5),
        end(leases[8], Outcome.RETRY, error=err, not_before=NOW + 5),
        end(leases[9], Outcome.SUCCEEDED),
        end(leases[4], Outcome.RELEASED),
    ]
    assert await store.write(WriteBatch(completions=second), NOW) == [True] * 4
    events = await at_least(4, lambda: store.events_after(cursor, 100))
    assert {e.task_id: e.status for e in events} == {
        leases[3].id: TaskStatus.CANCELLED,  # a retry, but its cancellation was asked
        leases[8].id: TaskStatus.QUEUED,
        leases[9].id: TaskStatus.SUCCEEDED,
        leases[4].id: TaskStatus.QUEUED,
    }
    assert len(events) == 4
    for e in events:
        info = await store.get(e.task_id)
        assert info is not None and (e.status, e.attempt) == (info.status, info.attempt)
    assert await counts_of(store) == await counted_by_hand(store)


async def test_memory_is_keyed_by_session(store: Store) -> None:
    await store.write(
        WriteBatch(
            memory=[
                MemoryWrite("s1", "k", b"1"),
                MemoryWrite("s2", "k", b"2"),
                MemoryWrite("s1", "j", b"3"),
            ]
        ),
        NOW,
    )
    assert await store.memory_get("s1", "k") == b"1"
    assert await store.memory_items("s1") == {"j": b"3", "k": b"1"}
    await store.write(WriteBatch(memory=[MemoryWrite("s1", "k", None)]), NOW)
    assert await store.memory_get("s1", "k") is None


async def test_event_feed_follows_status_changes_in_order(store: Store) -> None:
    start = await store.last_event_id()
    (s,) = await store.submit([new(value=1)], NOW)
    await store.lease("w", {"a": 1}, 1, NOW + 60, NOW)
    await store.write(WriteBatch(completions=[done(s.id, 1, "w")]), NOW)
    events = await at_least(1, lambda: store.events_after(start))
    assert [(e.task_id, e.status) for e in events] == [(s.id, TaskStatus.SUCCEEDED)]
    (t,) = await store.submit([new(value=2)], NOW)
    await store.cancel(t.id, NOW)
    more = await at_least(1, lambda: store.events_after(events[-1].id))
    assert [(e.task_id, e.status) for e in more] == [(t.id, TaskStatus.CANCELLED)]
    assert events[0].id < more[0].id
    assert await store.events_after(more[-1].id) == []


async def test_every_status_change_is_in_the_feed_with_the_lease_it_ended(store: Store) -> None:
    """Retries, cancels of a retry, reclaims, released leases and requeues each log one
    event: the status the task holds after it, its attempt, and whose lease it ended."""
    start = await store.last_event_id()
    a, b, c, d = await store.submit([new(value=i) for i in range(4)], NOW)
    await store.lease("w1", {"a": 2}, 2, NOW + 60, NOW)  # a, b
    await store.cancel(b.id, NOW)  # asked while running: its retry ends it cancelled
    retry = dict(error=ErrorInfo("E", "boom"), not_before=NOW + 5)
    await store.write(
        WriteBatch(
            completions=[
                done(a.id, 1, "w1", Outcome.RETRY, **retry),
                done(b.id, 1, "w1", Outcome.RETRY, **retry),
            ]
        ),
        NOW,
    )
    await store.lease("w2", {"a": 1}, 1, NOW + 60, NOW)  # c
    await store.reclaim(NOW + 1, dead_owners=["w2"])  # c: queued again (to run alone)
    await store.lease("w3", {"a": 1}, 1, NOW + 60, NOW + 2)  # d
    assert await store.release_unheld("w3", keep=[]) == 1  # d: queued, attempt not counted
    await store.lease("w4", {"a": 1}, 1, NOW + 60, NOW + 3)  # d
    failed = done(d.id, 1, "w4", Outcome.FAILED, error=ErrorInfo("E", "x"))
    await store.write(WriteBatch(completions=[failed]), NOW + 4)
    assert await store.requeue([TaskStatus.FAILED]) == 1
    final = await at_least(6, lambda: store.events_after(start))
    events = [(e.task_id, e.status, e.attempt, e.worker) for e in final]
    assert events == [
        (a.id, TaskStatus.QUEUED, 1, "w1"),
        (b.id, TaskStatus.CANCELLED, 1, "w1"),
        (c.id, TaskStatus.QUEUED, 0, "w2"),  # a first stop: its attempt not counted
        (d.id, TaskStatus.QUEUED, 0, "w3"),
        (d.id, TaskStatus.FAILED, 1, "w4"),
        (d.id, TaskStatus.QUEUED, 0, None),
    ]


async def test_workers_register_and_leave(store: Store) -> None:
    now = await store.now()
    await store.register_worker(WorkerInfo("w1", "host", 42, now, now, {"in_flight": 3}))
    (first,) = await store.workers()
    await store.register_worker(
        WorkerInfo("w1", "host", 42, now, now + 5, {"in_flight": 4}, "boot", "pid:[1]", 77)
    )
    (w,) = await store.workers()
    assert (w.id, w.load["in_flight"]) == ("w1", 4)
    assert w.heartbeat_at >= first.heartbeat_at >= now - 1  # (PostgreSQL: its own clock)
    assert (first.boot_id, first.pid_ns, first.proc_start) == ("", "", 0)
    await store.remove_worker("w1")
    assert await store.workers() == []


async def test_wait_for_work_answers_false_when_nothing_comes(store: Store) -> None:
    assert await store.wait_for_work(0.05) is False


async def test_reopening_keeps_everything(store_url: str) -> None:
    s1 = store_from_url(store_url)
    await s1.open()
    (t,) = await s1.submit([new(key="k", value=1)], NOW)
    await s1.aclose()
    s2 = store_from_url(store_url)
    await s2.open()
    try:
        (t2,) = await s2.submit([new(key="k", value=1)], NOW)
        assert t2.id == t.id and not t2.created
    finally:
        await s2.aclose()


async def test_migrations_reproduce_the_schema(tmp_path: Path) -> None:
    """Opening a store applies every migration; the result matches applying them by hand."""
    s = SQLiteStore(tmp_path / "m.db")
    await s.open()
    assert await s.schema_version() == migrations("sqlite")[-1][0]
    await s.aclose()
    by_hand = sqlite3.connect(":memory:")
    for _, script in migrations("sqlite"):
        by_hand.executescript(script)
    opened = sqlite3.connect(tmp_path / "m.db")
    schema = (
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    )
    assert opened.execute(schema).fetchall() == by_hand.execute(schema).fetchall()
    opened.close()
    by_hand.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 999")
    db.close()
    s = SQLiteStore(path)
    with pytest.raises(Exception, match="newer than this legion"):
        await s.open()
    await s.aclose()


async def test_a_store_made_before_tenants_moves_to_the_default_tenant(tmp_path: Path) -> None:
    """Keys and tasks of a store made before tenants belong to the default tenant; its
    idempotency keys still answer their tasks (they have no fingerprint to differ from)."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for version, script in migrations("sqlite"):
        if version < 8:
            db.executescript(script)
            db.execute(f"PRAGMA user_version = {version}")
    db.execute(
        "INSERT INTO api_keys (id, name, salt, digest, created_at) "
        "VALUES ('0123456789ab', 'old', x'00', x'00', 1.0)"
    )
    db.execute(
        "INSERT INTO tasks (agent, input, key, status, max_attempts, created_at) "
        "VALUES ('a', '{\"x\": 1}', 'k', 'queued', 3, 1.0)"
    )
    db.commit()
    db.close()
    s = SQLiteStore(path)
    await s.open()
    try:
        key = await s.api_key("0123456789ab")
        assert key is not None and (key.tenant, key.admin) == ("default", False)
        (again,) = await s.submit([new(key="k", value=2)], NOW)
        assert not again.created  # no fingerprint kept: it answers the first task
        info = await s.get(again.id)
        assert info is not None and info.tenant == "default" and info.input == {"x": 1}
        (other,) = await s.submit([new(key="k", value=2, tenant="acme")], NOW)
        assert other.created and other.id != again.id
    finally:
        await s.aclose()


async def test_a_store_made_before_the_counts_table_counts_its_tasks(tmp_path: Path) -> None:
    """Schema 18 counts the tasks a store holds already, then keeps counting."""
    path = tmp_path / "v17.db"
    db = sqlite3.connect(path)
    for version, script in migrations("sqlite"):
        if version <= 17:
            db.executescript(script)
            db.execute(f"PRAGMA user_version = {version}")
    rows = [("a", "acme", "queued")] * 3 + [("b", "acme", "succeeded"), ("a", "globex", "dead")]
    db.executemany(
        "INSERT INTO tasks (agent, tenant, status, input, max_attempts, created_at) "
        "VALUES (?, ?, ?, '{}', 3, 1.0)",
        rows,
    )
    db.commit()
    db.close()
    s = SQLiteStore(path)
    await s.open()
    try:
        assert await s.counts_by_tenant() == {
            "acme": {TaskStatus.QUEUED: 3, TaskStatus.SUCCEEDED: 1},
            "globex": {TaskStatus.DEAD: 1},
        }
        await s.submit([new(tenant="acme")], NOW)
        await s.lease("w", {"a": 2}, 2, NOW + 60, NOW)
        assert await s.count_queued("acme") == 2
        assert await counts_of(s) == await counted_by_hand(s)
    finally:
        await s.aclose()


async def test_the_store_says_how_long_its_calls_waited(store: Store) -> None:
    store.queue_delay()  # (what opening it waited)
    assert store.queue_delay() is None  # no call since the last read
    await store.submit([new(value=1)], NOW)
    await store.submit([new(value=2)], NOW)
    waited = store.queue_delay()
    assert waited is not None and waited >= 0
    assert store.queue_delay() is None  # a mean since the last read


async def test_purge_deletes_ended_tasks_with_what_hangs_off_them(store: Store) -> None:
    """A store kept every task, step, attempt and feed row for ever: a fleet's disk filled
    with history nobody asked to keep."""
    ended = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED
    a, b, d = await store.submit([new(value=i, key=f"k{i}") for i in range(3)], NOW)
    await store.lease("w", {"a": 3}, 3, NOW + 60, NOW)
    await store.write(WriteBatch(steps=[StepRecord(a.id, "s", 1, b"1", NOW, NOW, "w")]), NOW)
    late = Completion(d.id, 1, "w", Outcome.SUCCEEDED, started_at=NOW, finished_at=NOW + 100)
    failed = done(b.id, 1, "w", Outcome.FAILED, error=ErrorInfo("E", "no"))
    await store.write(WriteBatch(completions=[done(a.id, 1, "w"), failed, late]), NOW + 100)
    (c,) = await store.submit([new(value=9)], NOW + 100)  # queued: never purged
    with pytest.raises(ValueError, match="only ended tasks"):
        await store.purge(NOW + 50, [TaskStatus.QUEUED])
    assert await store.purgeable(NOW + 50, ended) == 2
    assert await store.purgeable(NOW + 50, ended, agent="other") == 0
    assert (await store.purge(NOW + 50, ended, limit=1)).tasks == 1  # a chunk at a time
    assert (await store.purge(NOW + 50, ended)).tasks == 1
    assert (await store.purge(NOW + 50, ended)).tasks == 0
    assert await store.get_many([a.id, b.id]) == []
    assert await store.steps(a.id) == [] and await store.attempts(a.id) == []
    assert await store.counts() == {TaskStatus.SUCCEEDED: 1, TaskStatus.QUEUED: 1}
    (again,) = await store.submit([new(value=0, key="k0")], NOW + 200)  # its key is free
    assert again.created and again.id != a.id
    # The change feed's rows older than the cut go too, those of tasks that are gone
    # (theirs were written at the store's own time): a reader behind them still finds
    # the rows of the tasks it can wait for.
    purged = await store.purge(time.time() + 60, ended)
    assert purged.tasks == 1 and purged.events > 0
    assert {e.task_id for e in await store.events_after(0)} <= {c.id, again.id}
    assert {t.id for t in await store.get_many([c.id, d.id, again.id])} == {c.id, again.id}


async def test_no_id_is_given_twice_after_the_newest_tasks_are_purged(store: Store) -> None:
    """On SQLite a new row took the largest id there plus one: with the newest tasks
    purged (an idle store), the next task took a purged one's id (and read its memory,
    kept under ``task-<id>``), and the next change took an id that a reader following the
    feed had read past, so the caller waiting for that task never heard of its end."""
    ended = TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED
    old = await store.submit([new(value=i) for i in range(3)], NOW)
    await store.lease("w", {"a": 3}, 3, NOW + 60, NOW)
    await store.write(WriteBatch(completions=[done(t.id, 1, "w") for t in old]), NOW + 1)
    read_up_to = await store.last_event_id()
    assert (await store.purge(time.time() + 60, ended)).tasks == 3
    assert await store.events_after(0) == []  # the whole feed went with them
    (fresh,) = await store.submit([new(value="after")], NOW + 2)
    assert fresh.id > max(t.id for t in old)
    await store.lease("w", {"a": 1}, 1, NOW + 60, NOW + 2)
    await store.write(WriteBatch(completions=[done(fresh.id, 1, "w")]), NOW + 3)
    assert [e.task_id for e in await store.events_after(read_up_to)][-1:] == [fresh.id]
    assert await store.statuses([fresh.id, old[0].id]) == {fresh.id: TaskStatus.SUCCEEDED}


async def test_a_purge_goes_on_from_the_last_task_it_deleted(store: Store) -> None:
    """`legion purge` read the tasks it keeps (live ones, others' statuses) again at every
    chunk, from the lowest id: it now goes on from the last one it deleted (``after``),
    and purges the feed after the tasks, from the last row it deleted."""
    kept, *mine = await store.submit([new(value=i) for i in range(5)], NOW)
    await store.lease("w", {"a": 5}, 5, NOW + 60, NOW)
    ended = [done(kept.id, 1, "w", Outcome.DEAD, error=ErrorInfo("E", "m"))]
    ended += [done(t.id, 1, "w") for t in mine]
    await store.write(WriteBatch(completions=ended), NOW + 1)
    cut, ok = time.time() + 60, [TaskStatus.SUCCEEDED]
    first = await store.purge(cut, ok, limit=2, feed=False)
    assert (first.tasks, first.events, first.last) == (2, 0, mine[1].id)
    # From after it: an id at or below `after` is not read, whatever it is.
    assert (await store.purge(cut, ok, after=mine[2].id, feed=False)).last == mine[3].id
    rest = await store.purge(cut, ok, after=first.last, feed=False)
    assert (rest.tasks, rest.last) == (1, mine[2].id)
    empty = await store.purge(cut, ok, after=rest.last, feed=False)
    assert (empty.tasks, empty.last) == (0, 0)
    assert {t.id for t in await store.get_many([kept.id, *(t.id for t in mine)])} == {kept.id}
    # The feed's rows of the four gone, a chunk at a time; the kept task's stay.
    feed = await store.purge_feed(cut, limit=3)
    assert feed.events == 3 and feed.last > 0
    more = await store.purge_feed(cut, after=feed.last, limit=3)
    assert more.events == 1 and more.last > feed.last
    assert (await store.purge_feed(cut, after=more.last)).events == 0
    assert {e.task_id for e in await store.events_after(0)} == {kept.id}


async def test_purge_deletes_the_memory_only_a_purged_task_could_read(store: Store) -> None:
    """A task without a session keeps its memory under its own ``task-<id>`` (within its
    tenant), which no other task reads: it stayed for ever once the task was purged (the
    README's one key per task grew the store without end). A named session's stays."""
    ended = (TaskStatus.SUCCEEDED,)
    alone, named = await store.submit([new(value=1), new(value=2, session="s")], NOW)
    (other,) = await store.submit([new(value=3, tenant="acme")], NOW)
    await store.lease("w", {"a": 3}, 3, NOW + 60, NOW)
    own = {alone.id: f"task-{alone.id}", named.id: "s", other.id: f"\x1facme\x1ftask-{other.id}"}
    writes = [MemoryWrite(session, "k", b"1", t, 1, "w") for t, session in own.items()]
    writes.append(MemoryWrite(f"task-{other.id}", "k", b"2"))  # the default tenant's, unrelated
    await store.write(WriteBatch(memory=writes), NOW)
    await store.write(WriteBatch(completions=[done(t, 1, "w") for t in own]), NOW + 1)
    purged = await store.purge(NOW + 50, ended)
    assert purged.tasks == 3
    assert sorted(purged.sessions) == sorted([own[alone.id], own[other.id]])  # (not "s")
    assert await store.memory_get(own[alone.id], "k") is None
    assert await store.memory_get(own[other.id], "k") is None
    assert await store.memory_get("s", "k") == b"1"
    assert await store.memory_get(f"task-{other.id}", "k") == b"2"


async def test_idle_sessions_and_the_sessions_live_tasks_name(store: Store) -> None:
    """What `legion purge --sessions` reads and deletes: sessions whose memory nobody wrote
    since a time, less those a queued, running or waiting task names (its own included)."""
    busy, own, other = await store.submit(
        [new(value=1, session="busy"), new(value=2), new(value=3, tenant="acme")], NOW
    )
    theirs = f"\x1facme\x1ftask-{other.id}"
    old = ["old", "busy", f"task-{own.id}", "\x1facme\x1fold", theirs, "half"]
    await store.write(WriteBatch(memory=[MemoryWrite(x, "k", b"1") for x in old]), NOW)
    late = [MemoryWrite("fresh", "k", b"1"), MemoryWrite("half", "k2", b"1")]
    await store.write(WriteBatch(memory=late), NOW + 100)
    assert await store.live_sessions() == {"busy", f"task-{own.id}", theirs}
    idle = await store.idle_sessions(NOW + 50, "", 100)
    assert idle == sorted(["old", "busy", f"task-{own.id}", "\x1facme\x1fold", theirs])
    assert await store.idle_sessions(NOW + 50, idle[1], 2) == idle[2:4]  # (a page)
    # A session written since the cut is kept whole (a write came between the read and
    # the delete).
    assert await store.drop_memory(["old", "half"], NOW + 50) == 1
    assert await store.memory_get("old", "k") is None
    assert await store.memory_items("half") == {"k": b"1", "k2": b"1"}
    (lease,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW)
    assert lease.id == busy.id  # (the oldest)
    await store.write(WriteBatch(completions=[done(lease.id, 1, "w")]), NOW + 1)
    assert "busy" not in await store.live_sessions()


async def test_a_purge_keeps_what_the_purged_tasks_spent_for_the_budgets(store: Store) -> None:
    """An agent's or a tenant's budget counts the usage recorded on its tasks: a purge took
    it with them, and a limit "in all" began again after each purge."""
    from legion.run.spending import recorded_spend

    def used(calls: int, cost: float) -> bytes:
        return codec.dumps(
            {
                "llm_calls": calls,
                "prompt_tokens": 10 * calls,
                "completion_tokens": calls,
                "cost_usd": cost,
            }
        )

    tasks = await store.submit(
        [new("a", value=1, tenant="acme"), new("a", value=2), new("b", value=3, tenant="acme")],
        NOW,
    )
    await store.lease("w", {"a": 2, "b": 1}, 3, NOW + 60, NOW)
    ends = [
        done(t.id, 1, "w", usage=used(n, 0.5 * n)) for t, n in zip(tasks, (1, 2, 4), strict=True)
    ]
    await store.write(WriteBatch(completions=ends), NOW + 1)
    before = {
        (scope, name): await recorded_spend(store, scope, name)
        for scope, name in (("agent", "a"), ("agent", "b"), ("tenant", "acme"))
    }
    assert before[("tenant", "acme")].calls == 5
    assert (await store.purge(NOW + 50, (TaskStatus.SUCCEEDED,))).tasks == 3
    after = {key: await recorded_spend(store, *key) for key in before}
    assert after == before
    assert await store.purged_spend("tenant", "acme") == (5, 55, 2.5)
    assert await store.purged_spend("tenant", "nobody") == (0, 0, 0.0)


async def test_a_purge_can_keep_to_one_tenant(store: Store) -> None:
    ended = (TaskStatus.SUCCEEDED,)
    tasks = await store.submit([new(value=1, tenant="acme"), new(value=2), new(value=3)], NOW)
    await store.lease("w", {"a": 3}, 3, NOW + 60, NOW)
    await store.write(WriteBatch(completions=[done(t.id, 1, "w") for t in tasks]), NOW + 1)
    assert await store.purgeable(NOW + 50, ended, tenant="acme") == 1
    assert await store.purgeable(NOW + 50, ended, tenant="default") == 2
    assert (await store.purge(NOW + 50, ended, tenant="acme")).tasks == 1
    assert await store.get(tasks[0].id) is None
    assert await store.purgeable(NOW + 50, ended) == 2  # the other tenant's stay


async def test_purge_keeps_a_child_whose_parent_waits_or_may_be_retried(store: Store) -> None:
    (parent,) = await store.submit([new(value="p")], NOW)
    (child,) = await store.submit_children(parent.id, [new(value="c", key="p.c")], NOW)
    await store.lease("w", {"a": 2}, 2, NOW + 60, NOW)
    await store.write(WriteBatch(completions=[done(child.id, 1, "w")]), NOW + 1)
    ended = (TaskStatus.SUCCEEDED, TaskStatus.FAILED)
    assert await store.purgeable(NOW + 50, ended) == 0  # its parent runs on
    failed = done(parent.id, 1, "w", Outcome.FAILED, error=ErrorInfo("ChildFailed", "x"))
    await store.write(WriteBatch(completions=[failed]), NOW + 2)
    # A failed parent may be retried: its children kept, or the retry would run them
    # again (their keys free). It goes first, then they do.
    assert await store.purgeable(NOW + 50, ended) == 1
    assert (await store.purge(NOW + 50, ended, limit=1)).tasks == 1
    assert await store.get(child.id) is not None
    assert (await store.purge(NOW + 50, ended)).tasks == 1


async def test_an_attempt_that_suspends_after_its_cancel_was_asked_ends_cancelled(
    store: Store,
) -> None:
    """A parent cancelled while it ran went on to suspend for the children it had just
    submitted, was woken, and ran a whole attempt more before it was cancelled."""
    a, b = await store.submit([new(value=1), new(value=2)], NOW)
    await store.lease("w", {"a": 2}, 2, NOW + 60, NOW)
    await store.cancel(a.id, NOW)  # asked while running
    batch = [
        done(a.id, 1, "w", Outcome.WAITING, wait=Wait(children=0)),
        done(b.id, 1, "w", Outcome.WAITING, wait=Wait(event="go", count=1)),
    ]
    await store.write(WriteBatch(completions=batch), NOW + 1)
    info, other = await store.get_many([a.id, b.id])
    assert info.status is TaskStatus.CANCELLED and info.finished_at is not None
    assert other.status is TaskStatus.WAITING  # (its cancel was not asked)
    assert await store.counts() == {TaskStatus.CANCELLED: 1, TaskStatus.WAITING: 1}
    assert [t.id for t in await store.waiting_tasks()] == [b.id]


async def test_a_suspect_given_back_unrun_stays_a_suspect(store: Store) -> None:
    """A worker that drained (or took a group of suspects it then let go) gave them back as
    ordinary tasks: the next worker ran them with others, a suspect of a crash included."""
    (s,) = await store.submit([new(value=1)], NOW)
    await store.lease("w1", {"a": 1}, 1, NOW + 60, NOW)
    await store.reclaim(NOW + 1, ["w1"])  # a suspect now
    (held,) = await store.lease("w2", {"a": 1}, 1, NOW + 60, NOW + 2, isolated=True)
    released = done(held.id, held.attempt, "w2", Outcome.RELEASED)
    assert await store.write(WriteBatch(completions=[released]), NOW + 3) == [True]
    assert await store.lease("w3", {"a": 1}, 1, NOW + 60, NOW + 4) == []  # not with others
    (again,) = await store.lease("w3", {"a": 1}, 1, NOW + 60, NOW + 4, isolated=True)
    assert again.id == s.id


async def _parent_waiting_for(store: Store, n: int) -> tuple[int, list[int]]:
    """A parent that suspended until all of its ``n`` queued children end."""
    (parent,) = await store.submit([new(agent="p", value="p")], NOW)
    await store.lease("w", {"p": 1}, 1, NOW + 60, NOW)
    kids = await store.submit_children(
        parent.id, [new(value=i, key=f"{parent.id}.{i}") for i in range(n)], NOW
    )
    waiting = done(parent.id, 1, "w", Outcome.WAITING, wait=Wait(children=0))
    assert await store.write(WriteBatch(completions=[waiting]), NOW + 1) == [True]
    assert (await store.get(parent.id)).status is TaskStatus.WAITING  # type: ignore[union-attr]
    return parent.id, [k.id for k in kids]


async def test_a_child_cancelled_before_it_ran_ends_its_parents_wait(store: Store) -> None:
    """A cancel of a queued or waiting child ended it outside any completion, and only a
    completion woke its parent: the parent waited for good ('waits for child tasks' with
    none left unfinished)."""
    parent, (first, second) = await _parent_waiting_for(store, 2)
    await store.lease("w2", {"a": 1}, 1, NOW + 60, NOW + 2)  # the first child runs
    assert await store.write(WriteBatch(completions=[done(first, 1, "w2")]), NOW + 3) == [True]
    assert (await store.get(parent)).status is TaskStatus.WAITING  # type: ignore[union-attr]
    assert await store.cancel(second, NOW + 4) is TaskStatus.CANCELLED  # queued: at once
    assert (await store.get(parent)).status is TaskStatus.QUEUED  # type: ignore[union-attr]


async def test_a_child_the_reaper_ends_ends_its_parents_wait(store: Store) -> None:
    """The same for a child that the reaper ends: its cancel asked while it ran, its
    worker gone."""
    parent, (kid,) = await _parent_waiting_for(store, 1)
    await store.lease("w2", {"a": 1}, 1, NOW + 60, NOW + 2)
    await store.cancel(kid, NOW + 3)  # asked: it runs
    reclaimed = await store.reclaim(NOW + 4, ["w2"])
    assert reclaimed.cancelled == 1
    assert (await store.get(parent)).status is TaskStatus.QUEUED  # type: ignore[union-attr]
