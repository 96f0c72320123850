"""A group commit retried after its acknowledgement was lost writes each diagnostic once
(SQLite and PostgreSQL)."""

from __future__ import annotations

from legion import codec
from legion.store import Store, WriteBatch
from legion.store.types import DiagnosticRecord
from legion.task import NewTask

NOW = 1_000_000.0


def finding(task_id: int, attempt: int, message: str) -> DiagnosticRecord:
    data = codec.dumps({"kind": "blocked_loop", "message": message, "seconds": 0.2})
    return DiagnosticRecord(task_id, attempt, "a", "blocked_loop", data, owner="w")


async def test_a_retried_commit_writes_each_diagnostic_once(store: Store) -> None:
    tasks = await store.submit([NewTask("a", codec.dumps({"n": n})) for n in (1, 2)], NOW)
    one, two = await store.lease("w", {"a": 2}, 2, NOW + 60, NOW)
    found = [finding(one.id, one.attempt, "first"), finding(one.id, one.attempt, "second")]
    await store.write(WriteBatch(diagnostics=list(found)), NOW)
    await store.write(WriteBatch(diagnostics=list(found)), NOW)  # the same batch, again
    # The same finding about another task is another row.
    await store.write(WriteBatch(diagnostics=[finding(two.id, two.attempt, "first")]), NOW)
    rows = await store.diagnostics(task_id=one.id) + await store.diagnostics(task_id=two.id)
    assert sorted((r.task_id, codec.loads(r.data)["message"]) for r in rows) == [
        (tasks[0].id, "first"),
        (tasks[0].id, "second"),
        (tasks[1].id, "first"),
    ]
