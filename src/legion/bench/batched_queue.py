"""The reference: a small, hand-rolled, durable batched queue, on SQLite and PostgreSQL.

It does what a competent engineer would write in an afternoon for "run N coroutines
durably": inputs inserted in batches, jobs leased in batches (an owner and an expiry
written, ``SKIP LOCKED`` on PostgreSQL), one asyncio task per job, outputs group-committed
(fenced by the lease owner, so a job taken back is not overwritten) while the next batch
fills, and results handed back once durable. Inputs and outputs are JSON (orjson), like
legion's.

It has none of legion's features: no retries, timeouts, steps, memory, events,
heartbeats, reclaiming, cancellation, diagnostics or per-agent limits. It is the physical
limit of a batched durable queue on this machine, against which ``legion bench overhead``
measures legion in the same run. Nothing in it comes from legion.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

T = TypeVar("T")

Job = Callable[[Any], Awaitable[Any]]
OWNER = "reference-queue"
CHUNK = 5000  # inputs per insert transaction, as legion's map() submits them


class _Runner:
    """Leases jobs in batches, runs one task each, commits their outputs in batches."""

    def __init__(
        self,
        lease: Callable[[int], Awaitable[list[tuple[int, bytes]]]],
        finish: Callable[[list[tuple[bytes, int]]], Awaitable[None]],
        job: Job,
        concurrency: int,
    ) -> None:
        self._lease = lease
        self._finish = finish
        self._job = job
        self._concurrency = concurrency
        self._batch = max(1, concurrency // 10)
        self._running = 0
        self._done: list[tuple[bytes, int]] = []
        self._flush_wanted = asyncio.Event()
        self._slots = asyncio.Event()
        self._submitted = asyncio.Event()
        self._submitted_total = 0
        self.results: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def one(self, job_id: int, raw: bytes) -> None:
        out = await self._job(orjson.loads(raw))
        self._done.append((orjson.dumps(out), job_id))
        self._flush_wanted.set()

    def _ended(self, _: asyncio.Task[None]) -> None:
        self._running -= 1
        if self._concurrency - self._running >= self._batch:
            self._slots.set()

    def submitted(self, n: int) -> None:
        self._submitted_total += n
        self._submitted.set()

    async def lease_loop(self, total: int) -> None:
        leased = 0
        while leased < total:
            free = self._concurrency - self._running
            if free < self._batch and self._running:
                self._slots.clear()
                await self._slots.wait()
                continue
            self._submitted.clear()
            seen = self._submitted_total
            rows = await self._lease(free)
            if not rows:
                if seen == self._submitted_total:  # nothing new since the lease was sent
                    await self._submitted.wait()
                continue
            leased += len(rows)
            self._running += len(rows)
            for job_id, raw in rows:
                asyncio.Task(self.one(job_id, raw)).add_done_callback(self._ended)

    async def flush_loop(self, total: int) -> None:
        flushed = 0
        while flushed < total:
            if not self._done:
                self._flush_wanted.clear()
                await self._flush_wanted.wait()
                continue
            batch, self._done = self._done, []
            await self._finish(batch)
            flushed += len(batch)
            for out, job_id in batch:
                self.results.put_nowait((job_id, out))


async def _drive(
    submit: Callable[[list[bytes]], Awaitable[None]],
    runner: _Runner,
    inputs: Sequence[Any],
) -> int:
    """Submit every input in chunks, run them, and count the results as they come."""
    n = len(inputs)
    workers = [
        asyncio.create_task(runner.lease_loop(n)),
        asyncio.create_task(runner.flush_loop(n)),
    ]
    try:
        got = 0
        for lo in range(0, n, CHUNK):
            chunk = [orjson.dumps(i) for i in inputs[lo : lo + CHUNK]]
            await submit(chunk)
            runner.submitted(len(chunk))
            while not runner.results.empty():
                runner.results.get_nowait()
                got += 1
        while got < n:
            await runner.results.get()
            got += 1
        await asyncio.gather(*workers)
        return got
    finally:
        for w in workers:
            w.cancel()


# -- SQLite ----------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    input BLOB NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,  -- 0 queued, 1 leased, 2 done
    owner TEXT,
    lease_until REAL,
    output BLOB
);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (id) WHERE status = 0;
"""


async def run_sqlite(path: str, job: Job, inputs: Sequence[Any], concurrency: int) -> int:
    """Run ``job`` on every input through the queue in the SQLite file ``path``; answers
    how many results came back."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-sqlite")
    loop = asyncio.get_running_loop()
    db = await loop.run_in_executor(
        pool, lambda: sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    )

    def setup() -> None:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SQLITE_SCHEMA)

    def in_tx(fn: Callable[[], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out

    def insert(raw: list[bytes]) -> None:
        in_tx(lambda: db.executemany("INSERT INTO jobs (input) VALUES (?)", [(r,) for r in raw]))

    def lease(limit: int) -> list[tuple[int, bytes]]:
        sql = (
            "UPDATE jobs SET status = 1, owner = ?, lease_until = ? WHERE id IN "
            "(SELECT id FROM jobs WHERE status = 0 ORDER BY id LIMIT ?) RETURNING id, input"
        )
        return in_tx(lambda: db.execute(sql, (OWNER, time.time() + 30, limit)).fetchall())

    def finish(done: list[tuple[bytes, int]]) -> None:
        sql = "UPDATE jobs SET status = 2, output = ? WHERE id = ? AND owner = ? AND status = 1"
        in_tx(lambda: db.executemany(sql, [(out, i, OWNER) for out, i in done]))

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        return await loop.run_in_executor(pool, fn, *args)

    try:
        await call(setup)
        runner = _Runner(
            lambda n: call(lease, n), lambda done: call(finish, done), job, concurrency
        )
        return await _drive(lambda raw: call(insert, raw), runner, inputs)
    finally:
        await call(db.close)
        pool.shutdown(wait=True)


# -- PostgreSQL ------------------------------------------------------------------------

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id bigserial PRIMARY KEY,
    input bytea NOT NULL,
    status smallint NOT NULL DEFAULT 0,
    owner text,
    lease_until timestamptz,
    output bytea
);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (id) WHERE status = 0;
"""
_PG_LEASE = """
UPDATE jobs AS j SET status = 1, owner = %(owner)s, lease_until = now() + interval '30 s'
FROM (SELECT id FROM jobs WHERE status = 0 ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
     AS picked
WHERE j.id = picked.id
RETURNING j.id, j.input
"""
_PG_FINISH = """
UPDATE jobs AS j SET status = 2, output = d.output
FROM unnest(%(output)b::bytea[], %(id)s::bigint[]) AS d(output, id)
WHERE j.id = d.id AND j.owner = %(owner)s AND j.status = 1
"""


async def run_postgres(url: str, job: Job, inputs: Sequence[Any], concurrency: int) -> int:
    """The same queue in PostgreSQL at ``url`` (its tables go in the connection's current
    schema); one connection submits and leases, another commits outputs."""
    import psycopg

    leaser = await psycopg.AsyncConnection.connect(url, autocommit=True)
    finisher = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await leaser.execute(_PG_SCHEMA)
        lock = asyncio.Lock()  # the leasing connection also submits

        async def insert(raw: list[bytes]) -> None:
            async with lock:
                await leaser.execute(
                    "INSERT INTO jobs (input) SELECT unnest(%(input)b::bytea[])", {"input": raw}
                )

        async def lease(limit: int) -> list[tuple[int, bytes]]:
            async with lock:
                cur = await leaser.execute(_PG_LEASE, {"owner": OWNER, "limit": limit})
                return await cur.fetchall()

        async def finish(done: list[tuple[bytes, int]]) -> None:
            await finisher.execute(
                _PG_FINISH,
                {"output": [o for o, _ in done], "id": [i for _, i in done], "owner": OWNER},
            )

        return await _drive(insert, _Runner(lease, finish, job, concurrency), inputs)
    finally:
        await leaser.close()
        await finisher.close()
