"""A group commit retried after its acknowledgement was lost writes each diagnostic once
(SQLite and PostgreSQL)."""

from __future__ import annotations

from legion import codec
from legion.store import Store, WriteBatch
from legion.store.base import DiagnosticRecord
from legion.task import NewTask

NOW = 1_000_000.0


def finding(task_id: int, attempt: int, message: str) -> DiagnosticRecord:
    data = codec.dumps({"kind": "blocked_loop", "message": message, "seconds": 0.2})
    return DiagnosticRecord(task_id, attempt, "a", "blocked_loop", data)


async def test_a_retried_commit_writes_each_diagnostic_once(store: Store) -> None:
    (task,) = await store.submit([NewTask("a", codec.dumps({}))], NOW)
    (lease,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW)
    found = [finding(task.id, lease.attempt, "first"), finding(task.id, lease.attempt, "second")]
    await store.write(WriteBatch(diagnostics=list(found)), NOW)
    await store.write(WriteBatch(diagnostics=list(found)), NOW)  # the same batch, again
    # The same finding in another attempt is another row.
    await store.write(WriteBatch(diagnostics=[finding(task.id, lease.attempt + 1, "first")]), NOW)
    rows = await store.diagnostics(task_id=task.id)
    assert sorted((r.attempt, codec.loads(r.data)["message"]) for r in rows) == [
        (1, "first"),
        (1, "second"),
        (2, "first"),
    ]
