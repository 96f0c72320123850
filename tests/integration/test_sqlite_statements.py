"""The SQLite store runs each batch as a few statements over all its rows, a ``VALUES``
list of bound parameters (``legion/store/sqlite_rows.py``): what goes through them comes
back exactly as it went in, in order, whatever the batch's size and the chunks it takes."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from legion import codec
from legion.store import SQLiteStore, WriteBatch
from legion.store.sqlite_rows import execute_rows
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


async def test_inputs_past_the_longest_value_sqlite_makes_are_leased_by_row(
    store: SQLiteStore,
) -> None:
    # 100 inputs of 10 MB were packed into one value to be read, past SQLite's limit of
    # 1 GB a value: every lease failed ("string or blob too big"), for ever. The limit is
    # lowered here to 100 KB: 10 inputs of 20 KB pass it together.
    await store._call(lambda: store._db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000))
    inputs = [codec.dumps({"text": f"{i}" * 20_000}) for i in range(10)]
    submitted = await store.submit([NewTask("a", raw, None, None, 0, 3) for raw in inputs], NOW)
    leases = await store.lease("w", {"a": 10}, 10, NOW + 60, NOW)
    assert sorted((lease.id, lease.input) for lease in leases) == [
        (s.id, raw) for s, raw in zip(submitted, inputs, strict=True)
    ]


def test_rows_go_in_order_in_chunks_the_variable_limit_allows(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "rows.db")  # one transaction: no sync per statement
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a, b)")
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)  # 50 rows of two at most
    rows = [(f"r{n}", n * 0.1) for n in range(2_537)]
    assert execute_rows(db, "INSERT INTO t (a, b) VALUES {rows}", rows) == len(rows)
    assert db.execute("SELECT a, b FROM t ORDER BY id").fetchall() == rows
    db.close()


@pytest.mark.parametrize("pad", [False, True])
def test_nulls_and_blobs_keep_their_types_in_every_mix_of_rows(tmp_path: Path, pad: bool) -> None:
    """A column NULL in every row of a chunk is written as the literal NULL, a column of
    blobs bound as bytearray: what comes back is what went in, NULL as NULL, a blob as
    a blob (never text), whatever each chunk's first row holds."""
    db = sqlite3.connect(tmp_path / "rows.db")  # one transaction: no sync per statement
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a, b, c, d)")
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 40)  # chunks of 8 rows at most
    rng = random.Random(3)
    kinds = [None, b"", b"\x00\xff blob", "text", 7, 0.5]
    rows = [
        (None, b"x" if n % 3 else None, rng.choice(kinds), None if n < 20 else rng.choice(kinds))
        for n in range(61)
    ]
    query = "INSERT INTO t (a, b, c, d) SELECT * FROM (VALUES {rows}) WHERE true"
    if pad:  # a row of NULLs inserts nothing
        query = query.replace("WHERE true", "WHERE column2 IS NOT NULL OR column3 IS NOT NULL")
        rows = [r for r in rows if r[1] is not None or r[2] is not None]
    assert execute_rows(db, query, rows, pad=pad) == len(rows)
    got = db.execute("SELECT a, b, c, d, typeof(b), typeof(c) FROM t ORDER BY id").fetchall()
    assert [g[:4] for g in got] == rows
    blob_or_null = {type(None): "null", bytes: "blob", str: "text", int: "integer", float: "real"}
    assert [g[4:] for g in got] == [
        (blob_or_null[type(r[1])], blob_or_null[type(r[2])]) for r in rows
    ]
    db.close()


@pytest.mark.parametrize("n", [1, 2, 3, 200, 256, 257, 700, 2_500])
def test_a_padded_update_changes_its_rows_and_no_other(tmp_path: Path, n: int) -> None:
    db = sqlite3.connect(tmp_path / "rows.db")  # one transaction: no sync per statement
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    db.executemany("INSERT INTO t (id, v) VALUES (?, 0)", [(i,) for i in range(1, 5_001)])
    update = (
        "UPDATE t SET v = c.column2 FROM (SELECT column1, column2 FROM (VALUES {rows})) AS c"
        " WHERE t.id = c.column1"
    )
    wanted = {i: i * 2 for i in range(1, 2 * n + 1, 2)}  # every other id
    assert execute_rows(db, update, list(wanted.items()), pad=True) == n
    got = dict(db.execute("SELECT id, v FROM t").fetchall())
    assert got == {i: wanted.get(i, 0) for i in range(1, 5_001)}
    db.close()


async def test_a_batch_larger_than_a_statement_keeps_its_ids_and_feed_in_order(
    store: SQLiteStore,
) -> None:
    n = 2_100  # chunks of at most 256 rows, the last one padded
    inputs = [codec.dumps({"i": i}) for i in range(n)]
    submitted = await store.submit([NewTask("a", raw, None, None, 0, 3) for raw in inputs], NOW)
    first = submitted[0].id
    assert [s.id for s in submitted] == list(range(first, first + n))
    leases = await store.lease("w", {"a": n}, n, NOW + 60, NOW)
    assert {lease.id: lease.input for lease in leases} == {
        first + i: raw for i, raw in enumerate(inputs)
    }
    order = sorted(leases, key=lambda lease: (lease.id * 7919) % n)  # not the ids' order
    completions = [
        Completion(lease.id, 1, "w", Outcome.SUCCEEDED, output=lease.input, finished_at=NOW)
        for lease in order
    ]
    assert await store.write(WriteBatch(completions=completions), NOW) == [True] * n
    infos = {i.id: i for i in await store.get_many([s.id for s in submitted])}
    assert all(infos[first + i].output == {"i": i} for i in range(n))
    events = await store.events_after(0, 3 * n)
    assert [e.task_id for e in events if e.status.terminal] == [c.id for c in completions]


def _steps(db: sqlite3.Connection, sql: str, params: dict[str, object]) -> int:
    """How many of SQLite's virtual machine instructions ``sql`` runs (in hundreds),
    rolled back: the work a statement does, counted rather than timed."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    db.execute("BEGIN")
    db.set_progress_handler(tick, 100)
    try:
        db.execute(sql, params).fetchall()
    finally:
        db.set_progress_handler(None, 100)
        db.rollback()
    return count


async def test_the_look_for_suspects_does_not_read_the_queue(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """A worker looks for tasks to run apart (suspects of a crash) every few polls; with a
    backlog queued, that look read every queued task of the agent (the queue's index,
    which SQLite's planner took without statistics), while holding the write lock."""
    from legion.store.sqlite import Q

    params = {"owner": "w", "until": NOW + 60, "now": NOW, "agents": '["a"]', "offer": "{}"}
    params["limit"] = 10
    await store.submit([NewTask("a", b"1", None, None, 0, 3) for _ in range(10)], NOW)
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    few = _steps(db, Q["lease_isolated"], params)
    await store.submit([NewTask("a", b"1", None, None, 0, 3) for _ in range(5000)], NOW)
    many = _steps(db, Q["lease_isolated"], params)
    db.close()
    assert many <= few + 5, (few, many)


async def test_tenants_with_nothing_to_lease_now_are_not_read(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """A lease reads the tasks of each tenant that `queued_tenants` names, a statement
    each: a tenant whose queued tasks are all delayed (a retry's backoff) is not named.
    10,000 such tenants made every lease ~80 ms longer, and a worker 4.5 times slower."""
    from legion.store.sqlite import Q

    later = [NewTask("a", b"1", tenant=f"t{n}", not_before=NOW + 60) for n in range(200)]
    await store.submit(later, NOW)
    await store.submit([NewTask("a", b"1", tenant=t) for t in ("x", "y")], NOW)
    params = {"agent": "a", "now": NOW, "min_priority": -(2**31)}
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    named = db.execute(Q["queued_tenants"], params).fetchall()
    due = db.execute(Q["queued_tenants"], {**params, "now": NOW + 60}).fetchall()
    db.close()
    assert named == [("x", 0), ("y", 0)]
    assert len(due) == 202


async def test_a_purge_chunk_from_the_last_one_does_not_read_the_tasks_kept(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """`legion purge --status succeeded` beside older dead tasks it keeps: each chunk read
    them all again, from the lowest id; going on from the last task deleted, it does not."""
    from legion.store.sqlite import Q

    async def ended(n: int, outcome: Outcome) -> list[int]:
        ids = [s.id for s in await store.submit([NewTask("a", b"1") for _ in range(n)], NOW)]
        await store.lease("w", {"a": n}, n, NOW + 60, NOW)
        error = None if outcome is Outcome.SUCCEEDED else ErrorInfo("E", "m")
        ends = [Completion(i, 1, "w", outcome, error=error, started_at=NOW, finished_at=NOW)
                for i in ids]  # fmt: skip
        await store.write(WriteBatch(completions=ends), NOW)
        return ids

    await ended(5000, Outcome.DEAD)
    ok = await ended(40, Outcome.SUCCEEDED)
    chunk = await store.purge(NOW + 1, [TaskStatus.SUCCEEDED], limit=10, feed=False)
    assert chunk.last == ok[9]  # (this one read the dead ones, once)
    params = {"before": NOW + 1, "statuses": '["succeeded"]', "agent": None, "tenant": None}
    params["limit"] = 10
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    on = _steps(db, Q["purge_tasks"], {**params, "after": chunk.last})
    from_start = _steps(db, Q["purge_tasks"], {**params, "after": 0})  # (as each chunk was)
    db.close()
    assert from_start > 10 * on, (from_start, on)
