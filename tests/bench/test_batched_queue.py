"""The reference batched queue runs every job once and stores every output durably."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from legion.bench import batched_queue


async def _double(x: int) -> int:
    return 2 * x


async def test_sqlite_queue_runs_each_job_once_and_stores_its_output(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    n = batched_queue.CHUNK + 123  # more than one submit chunk
    done = await batched_queue.run_sqlite(str(path), _double, range(n), concurrency=64)
    assert done == n
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT input, status, output FROM jobs").fetchall()
    assert len(rows) == n
    assert all(status == 2 and int(out) == 2 * int(inp) for inp, status, out in rows)


async def test_postgres_queue_runs_each_job_once_and_stores_its_output(
    postgres_server: str,
) -> None:
    schema = f"queue_test_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(postgres_server, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = f"{postgres_server}?options=-csearch_path%3D{schema}"
    try:
        done = await batched_queue.run_postgres(url, _double, range(500), concurrency=32)
        assert done == 500
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute("SELECT input, status, output FROM jobs")
            rows = await cur.fetchall()
        assert len(rows) == 500
        assert all(st == 2 and int(bytes(o)) == 2 * int(bytes(i)) for i, st, o in rows)
    finally:
        async with await psycopg.AsyncConnection.connect(postgres_server, autocommit=True) as c:
            await c.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
