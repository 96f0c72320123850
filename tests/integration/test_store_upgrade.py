"""A store made by an older legion, opened by this one: upgraded once, and not under the
feet of the older workers still running on it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest

from legion import codec, identity
from legion.errors import ConfigError, StoreError
from legion.store import store_from_url
from legion.store.queries import migrations
from legion.task import NewTask, TaskStatus
from tests.conftest import POSTGRES_URL, with_params
from tests.polling import wait_until

OLDER = 17  # the schema of the releases before the counts by status had a table


def older_store(path: Path) -> None:
    """A SQLite store as a legion of schema `OLDER` left it: a task queued and one done."""
    db = sqlite3.connect(path, isolation_level=None)
    for version, script in migrations("sqlite"):
        if version <= OLDER:
            db.executescript(script)
            db.execute(f"PRAGMA user_version = {version}")
    now = time.time()
    for status in ("queued", "succeeded"):
        db.execute(
            "INSERT INTO tasks (agent, input, status, max_attempts, created_at) "
            "VALUES ('a', ?, ?, 1, ?)",
            (codec.dumps({"x": 1}), status, now),
        )
    db.close()


def register_worker(path: Path, pid: int, heartbeat_at: float) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO workers (id, host, pid, started_at, heartbeat_at) "
            "VALUES (?, 'old-host', ?, ?, ?)",
            (f"old-{pid}", pid, heartbeat_at, heartbeat_at),
        )


async def test_an_older_sqlite_store_is_not_upgraded_under_its_running_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker of the older legion ran on after this one upgraded the file (from schema
    # 18 the counts by status are kept by legion's own statements, which it does not
    # make): `legion status` and the metrics said 4 queued of 6 tasks done, for good.
    path = tmp_path / "old.db"
    older_store(path)
    register_worker(path, 4242, time.time())
    register_worker(path, 4343, time.time() - 3600)  # died an hour ago: not counted
    # Killed a moment ago on this host (its pid another process's now): not counted either.
    me = identity.current()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO workers (id, host, pid, started_at, heartbeat_at, boot_id, pid_ns, "
            "proc_start) VALUES ('killed', 'here', ?, ?, ?, ?, ?, ?)",
            (me.pid, time.time(), time.time(), me.boot_id, me.pid_ns, me.start + 1),
        )
    store = store_from_url(f"sqlite:///{path}", create=False)
    with pytest.raises(ConfigError) as refused:
        await store.open()
    said = str(refused.value)
    assert f"schema is version {OLDER}" in said and "1 worker(s)" in said
    assert "pid 4242 on old-host" in said and "4343" not in said and "here" not in said
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (OLDER,)  # nothing changed
        db.execute("DELETE FROM workers WHERE pid = 4242")  # stopped
    caplog.set_level(logging.WARNING, logger="legion.store.sqlite")
    store = store_from_url(f"sqlite:///{path}", create=False)
    await store.open()
    try:
        latest = migrations("sqlite")[-1][0]
        assert await store.schema_version() == latest
        assert [r.getMessage() for r in caplog.records] == [
            f"upgraded the store's schema from version {OLDER} to {latest}"
        ]
        assert await store.counts() == {TaskStatus.QUEUED: 1, TaskStatus.SUCCEEDED: 1}
        await store.submit([NewTask("a", codec.dumps({"x": 2}))], time.time())
        assert (await store.counts())[TaskStatus.QUEUED] == 2
    finally:
        await store.aclose()


async def test_an_older_postgres_store_on_a_read_only_connection_says_what_to_do(
    postgres_url: str,
) -> None:
    # On a standby (or default_transaction_read_only) the upgrade failed with "cannot
    # execute CREATE TABLE in a read-only transaction", taken for a broken store.
    store = store_from_url(postgres_url)
    await store.open()
    latest = migrations("postgres")[-1][0]
    await store.aclose()
    params = dict(parse_qsl(urlsplit(postgres_url).query))
    schema = params["options"].removeprefix("-csearch_path=")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:  # as an older legion left it
        # (from the last migration that takes the tasks table's ACCESS EXCLUSIVE lock, which
        # a dump's ACCESS SHARE holds up: 0023's DROP INDEX; a CREATE INDEX alone does not)
        conn.execute(f'DELETE FROM "{schema}".legion_schema WHERE version >= %s', (LOCKING,))
    read_only = with_params(
        postgres_url, options=f"{params['options']} -cdefault_transaction_read_only=on"
    )
    store = store_from_url(read_only, create=False)
    with pytest.raises(StoreError) as refused:
        await store.open()
    await store.aclose()
    said = str(refused.value)
    assert f"older than this legion's ({latest})" in said and "read-only" in said, said


async def test_an_upgraded_sqlite_store_gives_no_id_a_purged_task_had(tmp_path: Path) -> None:
    # Schema 20 made ids count on from the largest ever given, but the table it rebuilt
    # counted from the largest left: ids an earlier purge had deleted (of the newest
    # tasks, its memory kept under `task-<id>`) were given again, with that memory.
    path = tmp_path / "purged-before.db"
    older_store(path)  # tasks 1 and 2 left
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO memory VALUES ('task-7', 'mine', ?, 1.0)", (b"7",))
        db.execute("INSERT INTO memory VALUES (?, 'mine', ?, 1.0)", ("\x1facme\x1ftask-9", b"9"))
        db.execute("INSERT INTO memory VALUES ('task-notes', 'k', ?, 1.0)", (b"0",))
    store = store_from_url(f"sqlite:///{path}")
    await store.open()
    try:
        (fresh,) = await store.submit([NewTask("a", codec.dumps({"x": 2}))], time.time())
        assert fresh.id == 10
    finally:
        await store.aclose()


LOCKING = 23
"""The last PostgreSQL migration that locks the tasks table against readers."""


async def test_a_postgres_upgrade_behind_a_long_reader_lets_the_workers_go_on(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An upgrade whose migration waited for a table that a pg_dump (a long transaction)
    read held the lock queue: every worker's statements on that table waited behind it,
    leases ran out and steps ran twice. It waits a moment at a time now, and lets go."""
    store = store_from_url(postgres_url)
    await store.open()
    (task,) = await store.submit([NewTask("a", codec.dumps({}))], time.time())
    latest = migrations("postgres")[-1][0]
    await store.aclose()
    schema = dict(parse_qsl(urlsplit(postgres_url).query))["options"].removeprefix("-csearch_path=")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:  # as an older legion left it
        # (from the last migration that takes the tasks table's ACCESS EXCLUSIVE lock, which
        # a dump's ACCESS SHARE holds up: 0023's DROP INDEX; a CREATE INDEX alone does not)
        conn.execute(f'DELETE FROM "{schema}".legion_schema WHERE version >= %s', (LOCKING,))
    with psycopg.connect(POSTGRES_URL) as dump, psycopg.connect(POSTGRES_URL) as worker:
        dump.execute(f'LOCK TABLE "{schema}".tasks IN ACCESS SHARE MODE')  # as pg_dump does
        upgrading = asyncio.ensure_future(store_from_url(postgres_url).open())
        await wait_until(lambda: "waits for a transaction" in caplog.text, 60)
        # An older worker's write meanwhile is not held behind the upgrade for good (on
        # its store's schema, as its URL sets it: the tasks' triggers name their tables
        # plainly, and found them only where another test had left a store in public).
        worker.execute(f'SET search_path = "{schema}"')
        worker.execute("SET statement_timeout = '8s'")
        worker.execute(f'UPDATE "{schema}".tasks SET priority = 1 WHERE id = %s', (task.id,))
        worker.commit()
        assert not upgrading.done()
        dump.commit()  # the dump ends: the upgrade goes through
        async with asyncio.timeout(60):
            await upgrading
    again = store_from_url(postgres_url)
    await again.open()
    try:
        assert await again.schema_version() == latest
    finally:
        await again.aclose()


# A few migrations landed after a later one (0006 after 0007, 0010 after 0012, 0015 after
# 0016): a store made by a build in between has the later one without the earlier one.
SKIPPED_BY_A_BUILD = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12)  # what a build of 0012 without 0010 made


async def _works(url: str) -> None:
    """The store opens and serves: a task submitted, leased (the columns 0010 adds) and
    its autoscaler table read."""
    store = store_from_url(url)
    await store.open()
    try:
        now = time.time()
        (task,) = await store.submit([NewTask("a", codec.dumps({}))], now)
        (lease,) = await store.lease("w", {"a": 1}, 1, now + 30, now)
        assert lease.id == task.id
        assert await store.autoscalers(0.0) == []
        kind = "sqlite" if url.startswith("sqlite") else "postgres"
        assert await store.schema_version() == migrations(kind)[-1][0]
    finally:
        await store.aclose()


async def test_a_sqlite_store_that_skipped_a_migration_gets_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It could not be opened ("no such column: needs").
    path = tmp_path / "skipped.db"
    db = sqlite3.connect(path, isolation_level=None)
    for version, script in migrations("sqlite"):
        if version in SKIPPED_BY_A_BUILD:
            db.executescript(script)
    db.execute("PRAGMA user_version = 12")
    db.close()
    await _works(f"sqlite:///{path}")
    assert "applied migration 10, which the store lacked" in caplog.text


async def test_a_postgres_store_that_skipped_a_migration_gets_it(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # It was "upgraded from version 12 to 24" without 0010: no autoscalers table, no
    # needs column, and workers that failed to lease for ever.
    schema = dict(parse_qsl(urlsplit(postgres_url).query))["options"].removeprefix("-csearch_path=")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'SET search_path = "{schema}"')
        conn.execute(
            "CREATE TABLE legion_schema (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, script in migrations("postgres"):
            if version in SKIPPED_BY_A_BUILD:
                conn.execute(script)
                conn.execute("INSERT INTO legion_schema (version) VALUES (%s)", (version,))
    await _works(postgres_url)
    assert "applied migration 10, which the store lacked" in caplog.text
