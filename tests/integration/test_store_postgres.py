"""What only the PostgreSQL store has to get right: many stores at once on one database.

Concurrent leasing, a commit-ordered event feed under concurrent transactions,
LISTEN/NOTIFY, migrations raced by several stores, errors at open, and a real server
restart. The shared contract lives in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from legion import codec
from legion.errors import ConfigError, StoreError
from legion.store import PostgresStore, WriteBatch, postgres_waiting, store_from_url
from legion.store import postgres as postgres_store
from legion.store.queries import migrations
from legion.task import Completion, ErrorInfo, NewTask, Outcome, TaskStatus
from tests.conftest import with_params
from tests.feed import at_least
from tests.pg_cluster import PrivateCluster

NOW = 1_000_000.0


def new(value: object, key: str | None = None, agent: str = "a") -> NewTask:
    return NewTask(agent, codec.dumps({"x": value}), key, max_attempts=3)


def done(
    task_id: int, attempt: int, owner: str, outcome: Outcome = Outcome.SUCCEEDED
) -> Completion:
    error = ErrorInfo("E", "m") if outcome is not Outcome.SUCCEEDED else None
    output = codec.dumps(task_id) if outcome is Outcome.SUCCEEDED else None
    return Completion(task_id, attempt, owner, outcome, output, error, 0.0, NOW, NOW + 1)


def libpq_url(url: str) -> str:
    """``url`` without legion's pool options, for a plain psycopg connection."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if not k.startswith("pool_")]
    return urlunsplit(parts._replace(query=urlencode(query)))


@asynccontextmanager
async def opened(url: str, n: int = 1) -> AsyncIterator[list[PostgresStore]]:
    """``n`` independent stores (pools) on one database, as ``n`` workers would have."""
    stores = [PostgresStore(url) for _ in range(n)]
    try:
        for s in stores:
            await s.open()
        yield stores
    finally:
        for s in stores:
            await s.aclose()


# -- urls and opening ------------------------------------------------------------------


def test_postgres_urls_make_a_postgres_store() -> None:
    for url in ("postgresql://u@h:5432/db", "postgres://u@h/db?pool_max_size=3"):
        assert isinstance(store_from_url(url), PostgresStore)
    with pytest.raises(ConfigError, match="pool"):
        PostgresStore("postgresql://u@h/db?pool_min_size=5&pool_max_size=2")
    with pytest.raises(ConfigError, match="pool"):
        PostgresStore("postgresql://u@h/db?pool_max_size=many")
    # A parameter libpq does not know: a clear error that says how to pick a schema.
    with pytest.raises(ConfigError, match=r'"schema".*options=-csearch_path%3Dname'):
        store_from_url("postgresql://u@h/db?schema=mine")


def test_a_sqlite_store_never_imports_the_postgres_driver() -> None:
    code = (
        "import sys, asyncio, legion\n"
        "s = legion.store_from_url('sqlite:///:memory:')\n"
        "asyncio.run(s.open()); asyncio.run(s.aclose())\n"
        "heavy = ('psycopg', 'legion.store.postgres')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_missing_database_is_a_config_error(postgres_server: str) -> None:
    url = urlunsplit(urlsplit(postgres_server)._replace(path="/legion_no_such_database"))
    store = store_from_url(url, create=False)
    with pytest.raises(ConfigError, match="no PostgreSQL database 'legion_no_such_database'"):
        await store.open()
    await store.aclose()


async def test_an_empty_schema_opened_without_create_is_a_config_error(postgres_url: str) -> None:
    store = store_from_url(postgres_url, create=False)
    with pytest.raises(ConfigError, match=r"no store at .*has no legion tables"):
        await store.open()
    await store.aclose()
    async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()"
        )
        assert await cur.fetchone() == (0,)
    made = store_from_url(postgres_url)  # creates the store
    await made.open()
    await made.aclose()
    store = store_from_url(postgres_url, create=False)  # and now opens it
    await store.open()
    assert await store.counts() == {}
    await store.aclose()


async def test_an_unreachable_server_is_a_store_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(StoreError, match="cannot connect"):
        await store.open()
    await store.aclose()


async def test_a_search_path_without_a_schema_is_a_config_error(postgres_server: str) -> None:
    store = PostgresStore(with_params(postgres_server, options="-csearch_path=legion_absent"))
    with pytest.raises(ConfigError, match="search_path"):
        await store.open()
    await store.aclose()


async def test_calls_on_a_closed_store_are_store_errors(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    with pytest.raises(StoreError, match="not open"):
        await store.counts()


# -- migrations ------------------------------------------------------------------------


async def schema_versions(url: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(libpq_url(url)) as conn:
        cur = await conn.execute("SELECT version FROM legion_schema ORDER BY version")
        return [v for (v,) in await cur.fetchall()]


async def test_stores_opening_together_migrate_once(postgres_url: str) -> None:
    latest = [v for v, _ in migrations("postgres")]
    stores = [PostgresStore(postgres_url) for _ in range(6)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert [await s.schema_version() for s in stores] == [latest[-1]] * 6
    finally:
        for s in stores:
            await s.aclose()
    assert await schema_versions(postgres_url) == latest
    async with opened(postgres_url) as (again,):  # and opening once more changes nothing
        assert await again.schema_version() == latest[-1]
    assert await schema_versions(postgres_url) == latest


async def test_migrations_reproduce_the_schema(postgres_url: str, postgres_server: str) -> None:
    """Opening a store gives the schema that running the migration files by hand gives."""
    async with opened(postgres_url):
        pass
    schema = f"legion_by_hand_{uuid.uuid4().hex[:12]}"
    by_hand = with_params(postgres_server, options=f"-csearch_path={schema}")
    describe = """
        SELECT 'column', table_name || '.' || column_name || ' ' || data_type || ' '
               || is_nullable || ' ' || coalesce(column_default, '')
        FROM information_schema.columns WHERE table_schema = current_schema()
        UNION ALL SELECT 'index', replace(indexdef, current_schema() || '.', '')
        FROM pg_indexes WHERE schemaname = current_schema()
        UNION ALL SELECT 'trigger', trigger_name || ' ' || action_timing || ' '
               || event_manipulation || ' ' || action_statement
        FROM information_schema.triggers WHERE trigger_schema = current_schema()
        UNION ALL SELECT 'function', p.proname || ' ' || md5(p.prosrc)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = current_schema()
        ORDER BY 1, 2
    """
    async with await psycopg.AsyncConnection.connect(
        libpq_url(postgres_server), autocommit=True
    ) as admin:
        await admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            async with await psycopg.AsyncConnection.connect(by_hand, autocommit=True) as conn:
                for _, script in migrations("postgres"):
                    await conn.execute(script)
                expected = await (await conn.execute(describe)).fetchall()
            async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as conn:
                got = await (await conn.execute(describe)).fetchall()
        finally:
            await admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    assert [r for r in got if "legion_schema" not in r[1]] == expected


async def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as conn:
        await conn.execute("CREATE TABLE legion_schema (version integer PRIMARY KEY)")
        await conn.execute("INSERT INTO legion_schema VALUES (999)")
        await conn.commit()
    store = PostgresStore(postgres_url)
    with pytest.raises(StoreError, match="newer than this legion"):
        await store.open()
    await store.aclose()


# -- leasing ---------------------------------------------------------------------------


async def test_concurrent_leases_never_hand_out_a_task_twice(postgres_url: str) -> None:
    async with opened(postgres_url, 4) as stores:
        await stores[0].submit(
            [new(i, agent="a") for i in range(1500)] + [new(i, agent="b") for i in range(500)],
            NOW,
        )

        async def drain(store: PostgresStore, owner: str) -> list[int]:
            got: list[int] = []
            while True:
                leases = await store.lease(owner, {"b": 3, "a": 7}, 8, NOW + 60, NOW)
                got.extend(lease.id for lease in leases)
                if not leases and TaskStatus.QUEUED not in await store.counts():
                    return got

        leased = await asyncio.gather(
            *(drain(s, f"w{i}.{j}") for i, s in enumerate(stores) for j in range(3))
        )
        ids = [task_id for batch in leased for task_id in batch]
        assert len(ids) == 2000 and len(set(ids)) == 2000
        assert await stores[0].counts() == {TaskStatus.RUNNING: 2000}
        infos = await stores[0].get_many(ids)
        assert {info.attempt for info in infos} == {1}  # leased once each


async def test_a_write_and_a_heartbeat_of_one_worker_do_not_deadlock(postgres_url: str) -> None:
    async with opened(postgres_url, 2) as (writer, heart):
        await writer.submit([new(i) for i in range(400)], NOW)
        leases = await writer.lease("w", {"a": 400}, 400, NOW + 60, NOW)

        async def beat() -> None:
            for _ in range(20):
                await heart.extend_leases("w", [x.id for x in leases], NOW + 120, NOW)

        async def complete() -> None:
            for chunk in range(0, 400, 20):
                batch = [done(lease.id, 1, "w") for lease in leases[chunk : chunk + 20]]
                assert await writer.write(WriteBatch(completions=batch[::-1]), NOW) == [True] * 20

        await asyncio.gather(beat(), complete(), beat())
        assert await writer.counts() == {TaskStatus.SUCCEEDED: 400}


async def test_requeue_goes_through_every_chunk(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_store, "REQUEUE_CHUNK", 7)
    async with opened(postgres_url) as (store,):
        await store.submit([new(i, agent="a") for i in range(20)] + [new(0, agent="b")], NOW)
        leases = await store.lease("w", {"a": 20, "b": 1}, 21, NOW + 60, NOW)
        dead = WriteBatch(completions=[done(x.id, 1, "w", Outcome.DEAD) for x in leases])
        assert all(await store.write(dead, NOW))
        assert await store.requeue([TaskStatus.DEAD], agent="a") == 20
        assert await store.counts() == {TaskStatus.QUEUED: 20, TaskStatus.DEAD: 1}
        assert await store.requeue([TaskStatus.QUEUED, TaskStatus.DEAD]) == 21


def test_pool_options_are_taken_out_of_the_url_and_the_rest_kept() -> None:
    conninfo, options = postgres_store._split_url(
        "postgresql://u:p%40ss@h/db?application_name=a%20b&pool_max_size=3&options=-cx%3Dy"
    )
    assert options == {"pool_max_size": "3"}
    assert conninfo_to_dict(conninfo) == {
        "user": "u",
        "password": "p@ss",
        "host": "h",
        "dbname": "db",
        "application_name": "a b",
        "options": "-cx=y",
    }
    # A URL without a host, its host in the query (a socket's folder): it lost its "//"
    # and libpq refused it as key=value pairs ("invalid connection option").
    conninfo, _ = postgres_store._split_url("postgresql:///db?host=/run/pg&pool_min_size=1")
    assert conninfo_to_dict(conninfo) == {"dbname": "db", "host": "/run/pg"}


# -- the event feed --------------------------------------------------------------------


async def test_the_feed_holds_back_what_commits_behind_an_open_older_transaction(
    postgres_url: str,
) -> None:
    async with opened(postgres_url) as (store,):
        a, b = await store.submit([new(1), new(2)], NOW)
        start = await store.last_event_id()
        async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as older:
            await older.execute("UPDATE tasks SET status = 'cancelled' WHERE id = %s", (a.id,))
            assert await store.cancel(b.id, NOW) is TaskStatus.CANCELLED  # commits first
            # Handing out b's event now would move a follower past a's, still to commit.
            assert await store.events_after(start) == []
            assert await store.last_event_id() == start
            await older.commit()
        events = await at_least(2, lambda: store.events_after(start))
    assert [(e.task_id, e.status) for e in events] == [
        (a.id, TaskStatus.CANCELLED),
        (b.id, TaskStatus.CANCELLED),
    ]
    assert events[0].id < events[1].id


async def test_the_feed_never_skips_an_event_that_commits_late(postgres_url: str) -> None:
    """A sequence would number x's event below z's, hand z's out first and then skip x's."""
    async with opened(postgres_url) as (store,):
        a, b = await store.submit([new(1), new(2)], NOW)
        start = await store.last_event_id()
        raw = libpq_url(postgres_url)
        async with (
            await psycopg.AsyncConnection.connect(raw) as z,
            await psycopg.AsyncConnection.connect(raw) as x,
        ):
            await z.execute("SELECT pg_current_xact_id()")  # z's transaction is the older
            await x.execute("UPDATE tasks SET status = 'cancelled' WHERE id = %s", (a.id,))
            await z.execute("UPDATE tasks SET status = 'cancelled' WHERE id = %s", (b.id,))
            await z.commit()
            first = await store.events_after(start)  # while x is still open
            cursor = max([start, *(e.id for e in first)])
            await x.commit()
        rest = await at_least(2 - len(first), lambda: store.events_after(cursor))
    assert sorted(e.task_id for e in first + rest) == [a.id, b.id]


async def test_a_follower_sees_every_event_once_under_concurrent_writers(
    postgres_url: str,
) -> None:
    n = 600
    async with opened(postgres_url, 3) as (one, two, follower):
        ids = [s.id for s in await one.submit([new(i) for i in range(n)], NOW)]
        start = await follower.last_event_id()

        async def work(store: PostgresStore, owner: str) -> None:
            while leases := await store.lease(owner, {"a": 5}, 5, NOW + 60, NOW):
                await store.write(
                    WriteBatch(completions=[done(lease.id, 1, owner) for lease in leases]), NOW
                )

        async def follow() -> list[int]:
            seen: list[int] = []
            cursor = start
            while len(seen) < n:
                for e in await follower.events_after(cursor, 37):
                    assert e.id > cursor
                    cursor = e.id
                    seen.append(e.task_id)
                await asyncio.sleep(0)
            assert await follower.events_after(cursor) == []
            return seen

        following = asyncio.create_task(follow())
        await asyncio.gather(
            *(work(s, f"{s_i}.{k}") for s_i, s in enumerate((one, two)) for k in range(3))
        )
        async with asyncio.timeout(60):
            seen = await following
    assert sorted(seen) == sorted(ids)


async def test_skip_worker_leaves_out_a_workers_own_changes(postgres_url: str) -> None:
    async with opened(postgres_url) as (store,):
        a, b = await store.submit([new(1), new(2)], NOW)
        start = await store.last_event_id()
        await store.lease("w1", {"a": 1}, 1, NOW + 60, NOW)
        await store.lease("w2", {"a": 1}, 1, NOW + 60, NOW)
        await store.write(WriteBatch(completions=[done(a.id, 1, "w1"), done(b.id, 1, "w2")]), NOW)
        events = await at_least(1, lambda: store.events_after(start, skip_worker="w1"))
    assert [(e.task_id, e.worker) for e in events] == [(b.id, "w2")]


async def test_each_statement_logs_its_changes_in_task_order_and_numbering_goes_on(
    postgres_url: str,
) -> None:
    """The feed is written once per UPDATE (0018_statement_events.sql): every row whose
    status changed to anything but ``running`` is logged once, with the lease it ended,
    in task order within the statement and after the transaction's earlier statements;
    an update that changes no status logs nothing."""
    async with opened(postgres_url) as (store,):
        ids = [s.id for s in await store.submit([new(i) for i in range(30)], NOW)]
        start = await store.last_event_id()
        leased = await store.lease("w1", {"a": 10}, 10, NOW + 60, NOW)
        leased += await store.lease("w2", {"a": 10}, 10, NOW + 60, NOW)
        assert await store.events_after(start) == []  # entering `running` is not logged
        owners = {lease.id: "w1" if k < 10 else "w2" for k, lease in enumerate(leased)}
        completions = [done(i, 1, owner) for i, owner in reversed(owners.items())]
        await store.write(WriteBatch(completions=completions), NOW)
        queued = ids[20:]
        async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as raw:
            await raw.execute("UPDATE tasks SET priority = 5 WHERE id = ANY(%s)", (queued,))
            await raw.execute(
                "UPDATE tasks SET status = 'cancelled' WHERE id = ANY(%s)", (queued[5:],)
            )
            await raw.execute(
                "UPDATE tasks SET status = 'cancelled' WHERE id = ANY(%s)", (queued[:5],)
            )
            await raw.commit()
        events = await at_least(30, lambda: store.events_after(start))
    completed = sorted(lease.id for lease in leased)
    assert [e.task_id for e in events] == completed + queued[5:] + queued[:5]
    assert [e.id for e in events] == sorted({e.id for e in events})
    assert [e.worker for e in events[:20]] == [owners[i] for i in completed]
    assert {e.worker for e in events[20:]} == {None}
    assert [e.status for e in events] == [TaskStatus.SUCCEEDED] * 20 + [TaskStatus.CANCELLED] * 10


# -- the counts by status -------------------------------------------------------------


async def counts_by_hand(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    cur = await conn.execute("SELECT status, count(*) FROM tasks GROUP BY status")
    return {str(status): int(n) for status, n in await cur.fetchall()}


async def counted(store: PostgresStore) -> dict[str, int]:
    return {status.value: n for status, n in (await store.counts()).items()}


async def test_a_store_made_before_the_counts_table_counts_its_tasks(postgres_url: str) -> None:
    """Schema 20 counts the tasks a store holds already, then keeps counting."""
    async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url), autocommit=True) as c:
        await c.execute("CREATE TABLE legion_schema (version integer PRIMARY KEY)")
        for version, script in migrations("postgres"):
            if version <= 19:
                await c.execute(script)
                await c.execute("INSERT INTO legion_schema VALUES (%s)", (version,))
        await c.execute(
            "INSERT INTO tasks (agent, tenant, status, input, max_attempts, created_at) "
            "SELECT a, t, s, '{}', 3, 1.0 FROM (VALUES ('a', 'acme', 'queued'), "
            "('a', 'acme', 'queued'), ('b', 'acme', 'succeeded'), ('a', 'globex', 'dead')) "
            "AS v(a, t, s)"
        )
    async with opened(postgres_url) as (store,):
        assert await store.schema_version() == migrations("postgres")[-1][0]
        assert await store.counts_by_tenant() == {
            "acme": {TaskStatus.QUEUED: 2, TaskStatus.SUCCEEDED: 1},
            "globex": {TaskStatus.DEAD: 1},
        }
        await store.submit([NewTask("a", b"{}", tenant="acme")], NOW)
        await store.lease("w", {"a": 2}, 2, NOW + 60, NOW)
        assert await store.count_queued("acme") == 1
        assert await store.counts_by_agent() == {
            "a": {TaskStatus.QUEUED: 1, TaskStatus.RUNNING: 2, TaskStatus.DEAD: 1},
            "b": {TaskStatus.SUCCEEDED: 1},
        }


async def test_the_counts_of_ended_sessions_fold_into_one_row_each(postgres_url: str) -> None:
    """Each database session moves counts of its own; the reclaim folds those of ended
    sessions into one row per tenant, status and agent, and the counts stay the tasks'
    own, whoever changed them (an operator's UPDATE and DELETE too)."""
    async with opened(postgres_url) as (store,):
        ids = [s.id for s in await store.submit([new(i) for i in range(6)], NOW)]
        leases = await store.lease("w", {"a": 4}, 4, NOW + 60, NOW)
        await store.write(WriteBatch(completions=[done(x.id, x.attempt, "w") for x in leases]), NOW)
        operator = await psycopg.AsyncConnection.connect(libpq_url(postgres_url), autocommit=True)
        async with await psycopg.AsyncConnection.connect(
            libpq_url(postgres_url), autocommit=True
        ) as conn:
            await operator.execute("UPDATE tasks SET status = 'cancelled' WHERE id = %s", (ids[5],))
            await operator.execute("DELETE FROM tasks WHERE id = %s", (ids[0],))
            pid = operator.info.backend_pid
            cur = await conn.execute("SELECT count(*) FROM task_counts WHERE shard = %s", (pid,))
            assert (await cur.fetchone()) != (0,)  # its moves, in rows of its own
            expected = {"succeeded": 3, "queued": 1, "cancelled": 1}
            assert await counts_by_hand(conn) == expected
            assert await counted(store) == expected
            await store.reclaim(NOW)  # its session is alive: its rows stay
            cur = await conn.execute("SELECT count(*) FROM task_counts WHERE shard = %s", (pid,))
            assert (await cur.fetchone()) != (0,)
            # The operator's session ends (the server answers once its backend has gone).
            cur = await conn.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))
            assert await cur.fetchone() == (True,)
            await operator.close()
            await store.reclaim(NOW)
            cur = await conn.execute("SELECT count(*) FROM task_counts WHERE shard = %s", (pid,))
            assert await cur.fetchone() == (0,)
            cur = await conn.execute(
                "SELECT count(*) FROM task_counts WHERE shard <> 0 "
                "AND shard NOT IN (SELECT pid FROM pg_stat_activity)"
            )
            assert await cur.fetchone() == (0,)
            cur = await conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM task_counts WHERE shard = 0 "
                "GROUP BY tenant, status, agent HAVING count(*) > 1) AS twice"
            )
            assert await cur.fetchone() == (0,)
            assert await counted(store) == expected
            await conn.execute("TRUNCATE tasks CASCADE")
            assert await store.counts() == {}
            await store.submit([new("after")], NOW)
            assert await counted(store) == {"queued": 1}


async def test_the_counts_hold_while_sessions_come_and_go_and_folds_run(
    postgres_url: str,
) -> None:
    """Workers whose sessions end one after another (a store opened, a few batches, closed)
    while another keeps folding the ended sessions' counts: no count is lost or doubled."""
    n = 300
    async with opened(postgres_url) as (reaper,):
        await reaper.submit([new(i) for i in range(n)], NOW)
        finished = asyncio.Event()

        async def work(owner: str) -> None:
            while True:
                async with opened(postgres_url) as (store,):  # sessions of its own, ended after
                    for _ in range(3):
                        leases = await store.lease(owner, {"a": 7}, 7, NOW + 60, NOW)
                        if not leases:
                            return
                        batch = WriteBatch(completions=[done(x.id, 1, owner) for x in leases])
                        await store.write(batch, NOW)

        async def fold() -> None:
            while not finished.is_set():
                await reaper.reclaim(NOW)
                await asyncio.sleep(0)

        folding = asyncio.create_task(fold())
        await asyncio.gather(*(work(f"w{i}") for i in range(3)))
        finished.set()
        await folding
        assert await counted(reaper) == {"succeeded": n}
        async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as conn:
            assert await counts_by_hand(conn) == {"succeeded": n}
            cur = await conn.execute("SELECT count(*) FROM task_counts WHERE shard = 0")
            assert await cur.fetchone() != (0,)  # ended sessions' counts were folded


async def test_folding_the_counts_never_waits_on_a_session_that_holds_them(
    postgres_url: str,
) -> None:
    """A row of an ended session's pid that a live session holds locked (a new session
    that got the same pid, moving its counts) is left for a later fold: the reclaim does
    not wait for that session's transaction."""
    gone = 2**31 - 1  # a pid no backend has
    async with opened(postgres_url) as (store,):
        await store.submit([new(i) for i in range(3)], NOW)
        async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as holder:
            await holder.execute(
                "INSERT INTO task_counts VALUES ('default', 'queued', 'a', %s, 0)", (gone,)
            )
            await holder.commit()
            # Its transaction holds the row, and stays open.
            await holder.execute("SELECT n FROM task_counts WHERE shard = %s FOR UPDATE", (gone,))
            await store.reclaim(NOW)  # (waiting, it would run into the store's call timeout)
            cur = await holder.execute("SELECT count(*) FROM task_counts WHERE shard = %s", (gone,))
            assert await cur.fetchone() == (1,)  # left for later
            await holder.commit()
        await store.reclaim(NOW)
        assert await store.counts() == {TaskStatus.QUEUED: 3}
        async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as conn:
            cur = await conn.execute("SELECT count(*) FROM task_counts WHERE shard = %s", (gone,))
            assert await cur.fetchone() == (0,)


async def test_a_cancel_of_many_waits_for_no_row_while_it_holds_others(
    postgres_url: str,
) -> None:
    """A cancel of many running tasks takes the rows no write holds right now, and commits
    them, before it waits for the one a write batch holds: holding some rows while waiting
    for another, it could deadlock with a batch that holds that one and waits for those."""
    async with opened(postgres_url) as (store,):
        a, b, c = [s.id for s in await store.submit([new(i) for i in range(3)], NOW)]
        await store.lease("w", {"a": 3}, 3, NOW + 60, NOW)
        async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as holder:
            await holder.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE", (b,))
            cancelling = asyncio.ensure_future(store.cancel_many([a, b, c], NOW))
            async with await psycopg.AsyncConnection.connect(
                libpq_url(postgres_url), autocommit=True
            ) as looker:

                async def asked() -> set[int]:
                    cur = await looker.execute(
                        "SELECT id FROM tasks WHERE id = ANY(%s) AND cancel_requested", ([a, b, c],)
                    )
                    return {row[0] for row in await cur.fetchall()}

                async with asyncio.timeout(30):  # (bounds a hung test: not a synchronisation)
                    while await asked() != {a, c}:  # noqa: ASYNC110 - another session's rows
                        await asyncio.sleep(0.01)
            assert not cancelling.done()  # the one held waits for the holder
            await holder.commit()
        assert await cancelling == dict.fromkeys([a, b, c], TaskStatus.RUNNING)
        assert (await store.extend_leases("w", [a, b, c], NOW + 60, NOW)).cancel == {a, b, c}


# -- the parents of ended tasks ---------------------------------------------------------


def rows_of_tasks_read(node: dict[str, Any]) -> int:
    """Rows of ``tasks`` that the nodes of an executed plan (EXPLAIN ANALYZE, JSON) read,
    kept or filtered out."""
    read = 0
    if node.get("Relation Name") == "tasks":
        kept = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        read += kept * node.get("Actual Loops", 1)
    return read + sum(rows_of_tasks_read(child) for child in node.get("Plans", []))


async def test_ended_tasks_without_parents_read_no_task_row_on_a_table_with_no_statistics(
    postgres_url: str,
) -> None:
    """Before its first ANALYZE the planner takes almost every task for a child: looking up
    the parents of a batch of ended tasks read the whole table, at every batch. While no
    task has a parent, the lookups read one index entry at most; once one has, they find it."""
    async with opened(postgres_url) as (store,):
        ids = [s.id for s in await store.submit([new(i) for i in range(2000)], NOW)]
        ended, parent = ids[:100], ids[-1]
        async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as raw:

            async def read(query: str) -> tuple[int, int]:
                """Rows of tasks the query reads, and rows it answers (rolled back)."""
                explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + postgres_waiting.W[query]
                cur = await raw.execute(explain, {"ids": ended})
                ((plan,),) = await cur.fetchall()
                await raw.rollback()
                return rows_of_tasks_read(plan[0]["Plan"]), plan[0]["Plan"]["Actual Rows"]

            # A task waits for one child to be left (so the wake-up has a side to join).
            waits = "UPDATE tasks SET status = 'waiting', wait_children = 1 WHERE id = %s"
            await raw.execute(waits, (parent,))
            await raw.commit()
            assert (await read("lock_parents"))[0] == 0
            assert (await read("wake_parents"))[0] == 0
            link = "UPDATE tasks SET parent_id = %s WHERE id = ANY(%s)"
            await raw.execute(link, (parent, ended[:1]))
            await raw.commit()
            assert (await read("lock_parents"))[1] == 1  # the parent, locked
            assert (await read("wake_parents"))[1] == 1  # and woken: it waits until one is left


# -- LISTEN/NOTIFY ---------------------------------------------------------------------


async def wake_on_submits(waiter: PostgresStore, submitter: PostgresStore) -> bool:
    """Wait for work on ``waiter`` while ``submitter`` submits a task every 0.2 s: the
    waiter's LISTEN connection opens in the background on its first wait."""
    waiting = asyncio.create_task(waiter.wait_for_work(30))
    while not waiting.done():
        await submitter.submit([new(0)], NOW)
        await asyncio.wait([waiting], timeout=0.2)
    return waiting.result()


async def test_a_waiter_wakes_on_a_submit_from_another_store(postgres_url: str) -> None:
    async with opened(postgres_url, 2) as (waiter, submitter):
        assert await wake_on_submits(waiter, submitter) is True


async def test_retries_requeues_and_reclaims_wake_waiters(postgres_url: str) -> None:
    async with opened(postgres_url, 2) as (waiter, other):
        assert await wake_on_submits(waiter, other)
        await other.lease("w", {"a": 100}, 100, NOW + 10, NOW)
        a, b, c = [s.id for s in await other.submit([new(1), new(2), new(3)], NOW)]
        await other.lease("w", {"a": 3}, 3, NOW - 1, NOW)  # expired at once
        await other.write(WriteBatch(completions=[done(c, 1, "w", Outcome.DEAD)]), NOW)

        async def wakes(change: Awaitable[object]) -> bool:
            waiting = asyncio.create_task(waiter.wait_for_work(30))
            await asyncio.sleep(0)  # it is waiting now
            await change
            return await waiting

        retry = WriteBatch(completions=[done(a, 1, "w", Outcome.RETRY)])
        assert await wakes(other.write(retry, NOW))
        assert await wakes(other.requeue_one(c))
        assert await wakes(other.reclaim(NOW + 11))  # b's lease expired
        info = await other.get(b)
        assert info is not None and info.status is TaskStatus.QUEUED
        # Leasing and finishing put nothing back on the queue: no wake.
        (lease,) = await other.lease("w2", {"a": 1}, 1, NOW + 60, NOW + 12, isolated=True)
        await other.write(WriteBatch(completions=[done(lease.id, lease.attempt, "w2")]), NOW)
        assert await waiter.wait_for_work(0.3) is False


# -- server restarts -------------------------------------------------------------------


def wait_until_accepting(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(libpq_url(url), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    """A server of this test's own: restarting the shared one would break every other test
    using it at the time (tests may run in parallel)."""
    cluster = PrivateCluster()
    cluster.init()
    cluster.start()
    yield cluster
    cluster.remove()


@pytest.mark.slow
async def test_the_store_carries_on_after_the_server_restarts(cluster: PrivateCluster) -> None:
    postgres_url = cluster.url
    async with opened(postgres_url) as (store,):
        first = await store.submit([new(i, key=f"before-{i}") for i in range(100)], NOW)
        leases = await store.lease("w", {"a": 40}, 40, NOW + 600, NOW)
        await store.write(WriteBatch(completions=[done(x.id, 1, "w") for x in leases]), NOW)
        waiting = asyncio.create_task(store.wait_for_work(60))

        acknowledged: list[str] = []
        restarted = asyncio.Event()

        async def keep_submitting() -> None:
            n = after_restart = 0
            while after_restart < 5:
                keys = [f"during-{n}-{i}" for i in range(10)]
                n += 1
                try:
                    await store.submit([new(k, key=k) for k in keys], NOW)
                except StoreError:  # the only kind of error a caller sees
                    await asyncio.sleep(0.05)
                else:
                    acknowledged.extend(keys)
                    after_restart += restarted.is_set()
                    await asyncio.sleep(0.01)

        submitting = asyncio.create_task(keep_submitting())
        await asyncio.sleep(0.2)
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(wait_until_accepting, postgres_url)
        restarted.set()
        async with asyncio.timeout(60):
            await submitting  # its submits go through again

        # The next calls work, and nothing acknowledged was lost.
        found = await store.find_keys([s.key or "" for s in first] + acknowledged)
        assert len(found) == 100 + len(acknowledged)
        infos = await store.get_many([x.id for x in leases])
        assert all(i.status is TaskStatus.SUCCEEDED and i.output == i.id for i in infos)
        queued = (await store.counts())[TaskStatus.QUEUED]
        assert queued >= 60 + len(acknowledged)  # a failed submit may have committed too
        rest = await store.lease("w2", {"a": queued}, queued, NOW + 600, NOW)
        assert len(rest) == queued
        done_rest = WriteBatch(completions=[done(x.id, x.attempt, "w2") for x in rest])
        assert all(await store.write(done_rest, NOW))
        assert await store.counts() == {TaskStatus.SUCCEEDED: 40 + queued}
        # A waiter from before the restart was woken: its connection came back.
        async with asyncio.timeout(30):
            assert await waiting is True


async def test_a_store_up_to_date_opens_on_a_read_only_database(postgres_url: str) -> None:
    # `legion status` on a standby (or default_transaction_read_only): "cannot execute
    # CREATE TABLE in a read-only transaction", on a store that needed nothing created.
    made = store_from_url(postgres_url)
    await made.open()
    await made.submit([NewTask("a", codec.dumps(1))], 0.0)
    await made.aclose()
    options = dict(parse_qsl(urlsplit(postgres_url).query))["options"]
    read_only = with_params(postgres_url, options=options + " -cdefault_transaction_read_only=on")
    watched = store_from_url(read_only, create=False)
    await watched.open()
    try:
        counts = await watched.counts()
    finally:
        await watched.aclose()
    assert counts[TaskStatus.QUEUED] == 1


@pytest.mark.parametrize("set_by_application", [None, logging.DEBUG])
async def test_the_pools_reconnection_warnings_are_held_unless_asked_for(
    postgres_url: str, set_by_application: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 12 s outage logged 19 multi-line "error connecting in 'legion'" blocks.
    pool_log = logging.getLogger("psycopg.pool")
    monkeypatch.setattr(pool_log, "level", set_by_application or logging.NOTSET)
    store = PostgresStore(postgres_url)
    await store.open()
    await store.aclose()
    assert pool_log.level == (set_by_application or logging.ERROR)


async def test_stores_opening_together_wait_for_the_migration_past_the_roles_lock_timeout(
    postgres_url: str,
) -> None:
    # A managed service's role with `lock_timeout` (or `statement_timeout`) set: workers
    # started together on a new schema failed to open (exit 2), "canceling statement due
    # to lock timeout", while another's migration held the lock they wait on.
    options = dict(parse_qsl(urlsplit(postgres_url).query))["options"]
    guarded = with_params(postgres_url, options=options + " -clock_timeout=1")
    schema = options.split("search_path=")[1].split()[0]
    holder = await psycopg.AsyncConnection.connect(libpq_url(postgres_url), autocommit=True)
    try:
        await holder.execute("BEGIN")
        await holder.execute(
            "SELECT pg_advisory_xact_lock(hashtext('legion.migrate'), hashtext(%s))", (schema,)
        )
        store = store_from_url(guarded)
        opening = asyncio.create_task(store.open())
        for _ in range(3000):  # until it waits on the lock the "migration" ahead holds
            cur = await holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            row = await cur.fetchone()
            if (row is not None and row[0]) or opening.done():
                break
            await asyncio.sleep(0.01)
        assert not opening.done(), opening.exception()
        await holder.execute("COMMIT")
        await opening
        await store.aclose()
    finally:
        await holder.close()


@pytest.mark.parametrize(
    "password",
    [
        "se/cretA",
        "se@cr/etD",
        "p@ss:w/rd#?&%x y",
        "se%cretF",
        "se cretG",
        "se?cretC",
        # cut at the '?', then at the '%' or the space: "TOP%***@..." showed the piece
        "Hunter2?TOP%SECRET",
        "a/b?c%d SECRETX",
        "se/cr@t?x%y z",
    ],
)
async def test_a_password_written_raw_in_the_url_is_in_no_error(
    postgres_server: str, password: str
) -> None:
    # A password not percent-encoded ('/', '@', '?', '%', a space) was printed, whole or
    # in part: libpq ends the credentials at the first '/' or '@', and quotes what it
    # cannot parse in its own message.
    url = f"postgresql://lowpriv:{password}@127.0.0.1:5432/test"
    with pytest.raises((ConfigError, StoreError)) as refused:
        store = store_from_url(url)
        await store.open()
    said = str(refused.value)
    assert password not in said, said
    for quoted in re.findall(r"\"[^\"]*\"|'[^']*'", said):  # (where libpq echoes a URL)
        runs = {password[i : i + 3] for i in range(len(password) - 2)}
        assert not any(run in quoted for run in runs), said


async def test_children_linked_while_another_worker_ends_them_survive_the_deadlock(
    postgres_url: str,
) -> None:
    """A parent links its children to itself in the order of their ids; another worker's
    completion of some of them (already leased there) locks them in the order they ended.
    PostgreSQL ends such a deadlock by aborting one of the two; the link was the one, and
    the parent failed with the error where it made its children (a fan-out over two
    workers, seen once in a full test run). Here the other worker holds the last child and
    then asks for the first."""
    store = store_from_url(postgres_url)
    await store.open()
    try:
        (parent,) = await store.submit([new("p", key="p")], 1.0)
        children = [new(i, key=f"p.{i}") for i in range(3)]
        first, _, last = await store.submit(children, 1.0)  # (made: linking answers them)
        async with await psycopg.AsyncConnection.connect(libpq_url(postgres_url)) as other:
            await other.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", [last.id])
            linking = asyncio.ensure_future(store.submit_children(parent.id, children, 2.0))
            async with await psycopg.AsyncConnection.connect(
                libpq_url(postgres_url), autocommit=True
            ) as look:
                while not linking.done():  # until the link waits for the other's lock
                    cur = await look.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'UPDATE tasks SET parent_id%%'"
                    )
                    if (await cur.fetchone()) == (1,):
                        break
                    await asyncio.sleep(0.01)
            try:  # the cycle: one of the two is aborted (the link, waiting longer)
                await other.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", [first.id])
                await other.commit()
            except psycopg.errors.DeadlockDetected:
                await other.rollback()
            linked = await asyncio.wait_for(linking, 60)
        assert [c.id for c in linked] == [c.id for c in await store.submit(children, 3.0)]
        assert [c.id for c in await store.children(parent.id)] == [c.id for c in linked]
    finally:
        await store.aclose()
