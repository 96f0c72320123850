"""The SQLite store runs each batch as one statement over a JSON array of its rows (see
``benchmarks/sql_per_row.py``): what goes through that array comes back exactly as it
went in, and a value JSON text cannot carry takes the row-by-row path instead."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from legion import codec
from legion.store import SQLiteStore, WriteBatch
from legion.task import Completion, ErrorInfo, NewTask, Outcome, StepRecord, TaskStatus

NOW = 1_764_748_800.123456


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "s.db")
    await s.open()
    yield s
    await s.aclose()


async def test_a_batch_comes_back_exactly_as_it_went_in(store: SQLiteStore) -> None:
    rng = random.Random(7)
    inputs = [codec.dumps({"text": f'é\\"{{}}\u2028 {i}', "x": rng.random()}) for i in range(50)]
    tasks = [NewTask("a", raw, None, f"s{i % 3}", i % 2, 3) for i, raw in enumerate(inputs)]
    submitted = await store.submit(tasks, NOW)
    assert [s.id for s in submitted] == list(range(submitted[0].id, submitted[0].id + 50))
    leases = await store.lease("w", {"a": 50}, 50, NOW + 60, NOW)
    by_id = {lease.id: lease for lease in leases}
    assert {i: by_id[s.id].input for i, s in enumerate(submitted)} == dict(enumerate(inputs))
    assert all(lease.attempt == 1 and lease.tenant == "default" for lease in leases)
    finished = [NOW + rng.random() * 1000 for _ in leases]
    completions = [
        Completion(
            lease.id,
            1,
            "w",
            Outcome.SUCCEEDED if n % 2 else Outcome.DEAD,
            output=codec.dumps([n, "ü"]) if n % 2 else None,
            error=None if n % 2 else ErrorInfo("E", f"m{n} \"'"),
            started_at=NOW,
            finished_at=finished[n],
            usage=codec.dumps({"calls": n}),
        )
        for n, lease in enumerate(leases)
    ]
    steps = [
        StepRecord(lease.id, "s", 1, codec.dumps(lease.id), NOW, NOW + 1, "w") for lease in leases
    ]
    assert await store.write(WriteBatch(steps=steps, completions=completions), NOW) == [True] * 50
    for n, lease in enumerate(leases):
        info = await store.get(lease.id)
        assert info is not None
        assert info.finished_at == finished[n]  # floats survive the JSON text exactly
        assert info.status is (TaskStatus.SUCCEEDED if n % 2 else TaskStatus.DEAD)
        assert info.output == ([n, "ü"] if n % 2 else None)
        assert info.error == (None if n % 2 else ErrorInfo("E", f"m{n} \"'"))
        assert info.usage == {"calls": n}
        assert [s.output for s in await store.steps(lease.id)] == [lease.id]
    events = await store.events_after(0, 1000)
    ended = [e.task_id for e in events if e.status.terminal]
    assert ended == [lease.id for lease in leases]  # the feed in the batch's order


async def test_an_input_that_is_not_utf8_text_takes_the_row_by_row_path(
    store: SQLiteStore,
) -> None:
    raw = b'"\xff\xfe"'
    (s,) = await store.submit([NewTask("a", raw, None, None, 0, 3)], NOW)
    (lease,) = await store.lease("w", {"a": 1}, 1, NOW + 60, NOW)
    assert lease.id == s.id and lease.input == raw and lease.attempt == 1
