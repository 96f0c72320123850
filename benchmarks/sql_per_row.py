"""What the SQL of the no-op path costs per task on SQLite, statement by statement.

Runs the statements `legion.store.sqlite` runs for each task - the insert (batches of
5,000), the lease (batches of 500) and the completions' write (batches of 1,000: the
complete UPDATE and the change feed's row; a succeeded attempt is kept on its task's row
since schema 17, with no row of its own), each with the move of the counts by status
(schema 18) - on a fresh store file, and prints CPU microseconds per task for each, best
of three. ``--schema 17`` puts back the index the counts were read from before schema 18
(and moves no counts); ``--schema 13`` puts back what schema 14 removed as well (the
feed's trigger, the two indexes on status), to compare:

    python benchmarks/sql_per_row.py              # schema 18 (today's)
    python benchmarks/sql_per_row.py --schema 17  # the counts index instead of the table
    python benchmarks/sql_per_row.py --schema 13  # the trigger and the two indexes back
    python benchmarks/sql_per_row.py --statements many --busy   # executemany, GIL contended

Measured on this machine (2 busy cores, so within ~15 %), best of three of 20,000:

| schema | insert | lease | write | in all |
|---|---:|---:|---:|---:|
| 13 | 5.2 | 4.9 | 14.0 | 24.1 us |
| 13 without the feed's trigger | 5.2 | 4.9 | 9.0 | 19.0 us |
| 13 with one index on status | 4.6 | 4.1 | 12.4 | 21.1 us |
| 14 | 5.0 | 4.2 | 8.6 | 17.7 us |

The trigger's cost shows only inside the completions' savepoint, where the store writes
them (without it: 9.5 against 8.6): an UPDATE that may fire a trigger keeps an undo
journal of its own.

``--statements many`` runs each batch as ``executemany`` (a step per row) and the lease as
``UPDATE ... RETURNING`` (a step per leased row), as the store did before; the default,
``one``, as the store does now: one statement per batch (per chunk of up to 256 rows)
over all its rows, and the lease as a pick (one JSON row) and a take. Each step lets go of
the GIL and takes it
back: ``--busy`` runs the statements beside a thread busy with Python, as the worker's
event loop is, and the wall time shows what those hand-overs cost (CPU of the measuring
thread; wall time of the three together; best of three of 20,000, same sitting):

| statements | insert | lease | write | CPU in all | wall, alone | wall, beside a busy thread |
|---|---:|---:|---:|---:|---:|---:|
| many (before) | 5.9 | 4.9 | 10.7 | 21.5 us | 26.5 us | 118.6 us |
| one (then) | 3.1 | 4.8 | 10.5 | 18.4 us | 22.9 us | 67.5 us |

The rows of ``one`` first went as a JSON array read back with ``json_extract``, which
SQLite 3.40 runs by parsing the row's JSON text again for each column: a completion's 14
columns cost ~3 us a task of ~8. They go as a ``VALUES`` list of bound parameters now
(``legion/store/sqlite_rows.py``). The completions' ``UPDATE`` alone (``sql_rows.py``:
20,000 leased tasks completed in batches of 1,000, three runs, same sitting): 8.0-8.8 ->
5.05-5.09 us a task; the insert, with eight short columns, 3.1-3.2 -> 2.9-3.4 (the same).
With schema 17 (the write without the attempts' rows, which schema 17 no longer writes for
a success): insert 2.9, lease 4.1, write 6.1, 13.1 us in all. With schema 18 (the counts in
a table, moved once per batch, instead of the index), two pairs in one sitting: 13.9 /
13.2 us with the index, 11.4 / 11.5 us with the table (insert 2.7, lease 3.2-3.4, write
5.4-5.5). With NULL columns written as ``NULL`` and blobs bound as ``bytearray`` (see
``legion/store/sqlite_rows.py``), another sitting: 10.5 / 11.8 -> 8.6-9.1 us (insert
1.6-1.8, lease 2.8-2.9, write 4.0-4.4).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import orjson

from legion.store.queries import queries
from legion.store.sqlite import SQLiteStore
from legion.store.sqlite_counts import count_leased, count_logged, count_new, last_logged
from legion.store.sqlite_rows import execute_rows

Q = queries("sqlite")
SCHEMA_17 = ["CREATE INDEX tasks_counts ON tasks (tenant, status, agent)"]
SCHEMA_13 = [
    "DROP INDEX tasks_errors",
    "DROP INDEX tasks_waiting",
    "CREATE INDEX tasks_status ON tasks (status, agent)",
    "CREATE INDEX tasks_tenant_status ON tasks (tenant, status)",
    """CREATE TRIGGER tasks_status_event AFTER UPDATE OF status ON tasks
WHEN NEW.status IS NOT OLD.status AND NEW.status != 'running'
BEGIN
    INSERT INTO events (task_id, at, status, attempt, worker)
    VALUES (NEW.id, (julianday('now') - 2440587.5) * 86400.0, NEW.status, NEW.attempt,
            OLD.lease_owner);
END""",
]


def _store(folder: Path) -> sqlite3.Connection:
    path = folder / "rows.db"

    async def make() -> None:
        store = SQLiteStore(path)
        await store.open()
        await store.aclose()

    asyncio.run(make())
    db = sqlite3.connect(path, isolation_level=None)
    pragmas = (
        "journal_mode = WAL",
        "synchronous = NORMAL",
        "temp_store = MEMORY",
        "cache_size = -65536",
    )
    for pragma in pragmas:  # as the store sets them
        db.execute(f"PRAGMA {pragma}")
    return db


def _run(db: sqlite3.Connection, n: int, schema: int, one: bool) -> dict[str, float]:
    cpu: dict[str, float] = {}
    wall0 = time.perf_counter()
    t0 = time.thread_time()
    for _ in range(0, n, 5000):
        db.execute("BEGIN IMMEDIATE")
        if one:
            rows = [("a", b"1", None, 0, "queued", 1, 0.0, 1.0, "default", None)] * 5000
            execute_rows(db, Q["insert_tasks"], rows)
            if schema >= 18:
                count_new(db, [("default", "a")] * 5000, "queued")
        else:
            row = ("a", b"1", None, None, 0, 1, 0.0, 1.0, "default", None, None)
            db.executemany(Q["insert_task"], [row] * 5000)
        db.execute("COMMIT")
    cpu["insert"] = time.thread_time() - t0
    ids: list[int] = []
    t0 = time.thread_time()
    lease = {
        "owner": "w",
        "until": 100.0,
        "now": 2.0,
        "agent": "a",
        "tenant": "default",
        "limit": 500,
        "offer": "{}",
        "min_priority": -(2**63),
    }
    while True:
        db.execute("BEGIN IMMEDIATE")
        if one:  # as SQLiteStore._lease does: its tenants, a pick, a take (a step each)
            db.execute(Q["queued_tenants"], lease).fetchall()
            (picked,) = db.execute(Q["lease_pick"], lease).fetchone()
            rows = orjson.loads(picked)
            taken = orjson.dumps([r[0] for r in rows]).decode()
            db.execute(Q["lease_take"], {**lease, "ids": taken})
            if schema >= 18 and rows:
                count_leased(db, [(r[8], r[1]) for r in rows])
        else:
            rows = db.execute(Q["lease"], lease).fetchall()
        db.execute("COMMIT")
        if not rows:
            break
        ids.extend(r[0] for r in rows)
    cpu["lease"] = time.thread_time() - t0
    t0 = time.thread_time()
    for lo in range(0, len(ids), 1000):
        chunk = ids[lo : lo + 1000]
        db.execute("BEGIN IMMEDIATE")
        db.execute("SAVEPOINT completions")  # as the store does (see SQLiteStore._write)
        # A succeeded attempt is kept on its task's row (schema 17): no row in `attempts`.
        done = [
            ("succeeded", b"1", None, 0.0, 0, 3.0, i, 1, "w", None, "w", 2.0, 1.0, 0.0)
            for i in chunk
        ]
        if one:
            execute_rows(db, Q["complete_many"], done, pad=True)
            db.execute("RELEASE completions")
            after = last_logged(db) if schema >= 18 else 0
            execute_rows(db, Q["log_events"], [(i, 3.0, "w") for i in chunk], pad=True)
            if schema >= 18:
                count_logged(db, after, "running")
        else:
            db.executemany(Q["complete"], done)
            db.execute("RELEASE completions")
            if schema >= 14:
                db.executemany(Q["log_event"], [(i, 3.0, "w") for i in chunk])
        db.execute("COMMIT")
    cpu["write"] = time.thread_time() - t0
    cpu["wall"] = time.perf_counter() - wall0
    return {k: v / n * 1e6 for k, v in cpu.items()}


def _spin(stop: threading.Event) -> None:
    """A busy event loop's stand-in: Python bytecode that wants the GIL all the time."""
    x = 0
    while not stop.is_set():
        x += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--schema", type=int, choices=(13, 17, 18), default=18)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--busy",
        action="store_true",
        help="run the statements beside a thread busy with Python (as the event loop is)",
    )
    parser.add_argument(
        "--statements",
        choices=("one", "many"),
        default="one",
        help="one: a statement per batch over a JSON array (today's); many: executemany",
    )
    args = parser.parse_args()
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            db = _store(Path(tmp))
            if args.schema <= 17:
                for statement in SCHEMA_17 if args.schema == 17 else SCHEMA_13:
                    db.execute(statement)
            one = args.statements == "one" and args.schema >= 14
            stop = threading.Event()
            spinner = threading.Thread(target=_spin, args=(stop,))
            if args.busy:
                spinner.start()
            try:
                measured = _run(db, args.tasks, args.schema, one)
            finally:
                stop.set()
                if args.busy:
                    spinner.join()
            for k, v in measured.items():
                best[k] = min(best.get(k, v), v)
            db.close()
    wall = best.pop("wall")
    parts = ", ".join(f"{k} {v:.1f}" for k, v in best.items())
    busy = ", beside a busy thread" if args.busy else ""
    print(
        f"schema {args.schema}, statements {args.statements}{busy}: {parts} us of CPU a task "
        f"({sum(best.values()):.1f} in all; {wall:.1f} us of wall time)"
    )


if __name__ == "__main__":
    main()
