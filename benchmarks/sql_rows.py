"""The SQLite store's completions' UPDATE with its rows as a JSON array or as VALUES.

SQLite 3.40 (Debian bookworm's, Python 3.11's there) parses a JSON text again at every
``json_extract``: a completion's 14 columns read from its row of a JSON array parse that
row 14 times. The store binds them as a ``VALUES`` list instead
(``legion/store/sqlite_rows.py``). This runs both on the same store file, 20,000 leased
tasks completed in batches of 1,000, and prints CPU microseconds a task:

    python benchmarks/sql_rows.py

Measured on this machine (idle, nine runs over three sittings): JSON array 8.0-8.9 us a
task, VALUES 5.05-6.13.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson

from legion.store.sqlite_rows import execute_rows

sys.path.insert(0, str(Path(__file__).parent))
from sql_per_row import Q, _store

# The statement as it was: each column read from the row's JSON text.
COLUMNS = [
    "status",
    "output",
    "error",
    "not_before",
    "uncount",
    "finished_at",
    "id",
    "attempt",
    "owner",
    "usage",
    "succeeded_on",
    "started_at",
    "running",
    "waited",
]
JSON_ROWS = (
    Q["complete_many"].split("FROM (\n")[0]
    + "FROM (SELECT "
    + ", ".join(f"json_extract(value, '$[{k}]') AS {c}" for k, c in enumerate(COLUMNS))
    + " FROM json_each(?1)) AS c WHERE tasks.id = c.id AND tasks.attempt = c.attempt "
    "AND tasks.lease_owner = c.owner AND tasks.status = 'running'"
)
OWNER = "worker-abc-123"


def _leased(db: sqlite3.Connection, n: int) -> list[int]:
    for _ in range(0, n, 5000):
        rows = [("a", b"1", None, 0, "queued", 1, 0.0, 1.0, "default", None)] * 5000
        db.execute("BEGIN IMMEDIATE")
        execute_rows(db, Q["insert_tasks"], rows)
        db.execute("COMMIT")
    lease = {"owner": OWNER, "until": 1e10, "now": 2.0, "agent": "a", "limit": 1000}
    lease |= {"tenant": "default"}
    lease |= {"offer": "{}", "min_priority": -(2**63)}
    ids: list[int] = []
    while True:
        db.execute("BEGIN IMMEDIATE")
        picked = orjson.loads(db.execute(Q["lease_pick"], lease).fetchone()[0])
        taken = orjson.dumps([r[0] for r in picked]).decode()
        db.execute(Q["lease_take"], {**lease, "ids": taken})
        db.execute("COMMIT")
        if not picked:
            return ids
        ids.extend(r[0] for r in picked)


def run(rows: str, n: int = 20_000) -> float:
    """CPU microseconds a task to complete ``n`` leased tasks, rows as ``json`` or
    ``values``."""
    with tempfile.TemporaryDirectory() as tmp:
        db = _store(Path(tmp))
        ids = _leased(db, n)
        t0 = time.thread_time()
        for lo in range(0, len(ids), 1000):
            params = [
                ("succeeded", b"1", None, 0.0, 0, 1.7e9, i, 1, OWNER, None, OWNER, 1.7e9, 0.01, 0.0)
                for i in ids[lo : lo + 1000]
            ]
            db.execute("BEGIN IMMEDIATE")
            if rows == "json":
                text = [[p[0], p[1].decode(), *p[2:]] for p in params]
                changed = db.execute(JSON_ROWS, (orjson.dumps(text),)).rowcount
            else:
                changed = execute_rows(db, Q["complete_many"], params, pad=True)
            db.execute("COMMIT")
            assert changed == len(params), (changed, len(params))
        cpu = time.thread_time() - t0
        db.close()
    return cpu / n * 1e6


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    for _ in range(3):
        print(f"JSON array {run('json'):.2f} us a task, VALUES {run('values'):.2f}")
