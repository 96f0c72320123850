"""legion behind PgBouncer (Debian's ``pgbouncer``), in front of the test server.

In transaction mode a pooler hands each transaction to any server connection: one
session's prepared statements then ran in another's ("prepared statement "_pg3_5" does
not exist", "bind message supplies 0 parameters, but prepared statement "_pg3_0" requires
7"), a `legion run` crashed or never ended, and legion's statement bounds, sent at connect
in ``options``, were dropped (``ignore_startup_parameters = options``) or refused, which
surfaced only as a pool that never filled. Both are refused at open now, saying why.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from legion.errors import ConfigError, StoreError
from legion.store import store_from_url
from tests.pg_cluster import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _bouncer(server: str, ignore: str, mode: str = "transaction") -> Iterator[str]:
    """A PgBouncer (transaction mode unless ``mode``) in front of ``server`` (its
    database), with one server connection for its clients to share; its URL."""
    if not os.path.exists(PGBOUNCER):
        pytest.fail("these tests need PgBouncer: apt-get install pgbouncer", pytrace=False)
    target = urlsplit(server)
    folder = Path(tempfile.mkdtemp(prefix="legion-pgbouncer-"))
    folder.chmod(0o777)  # (run as root, PgBouncer runs as postgres: it writes its pid here)
    port = free_port()
    user = target.username or "postgres"
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\nlegion = host={target.hostname} port={target.port or 5432} "
        f"dbname={target.path.lstrip('/')} user={user}\n"
        "[pgbouncer]\nlisten_addr = 127.0.0.1\n"
        f"listen_port = {port}\nauth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {mode}\nignore_startup_parameters = {ignore}\n"
        "default_pool_size = 1\n"
        f"pidfile = {folder / 'pgbouncer.pid'}\nunix_socket_dir =\n"
    )
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # (it refuses to run as root)
        command = ["runuser", "-u", "postgres", "--", *command]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (folder / "pgbouncer.pid").exists():  # (written once it listens)
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"PgBouncer did not start: {proc.communicate()[1]}")
            time.sleep(0.05)
        yield f"postgresql://{user}@127.0.0.1:{port}/legion"
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def bouncer_dropping_options(postgres_server: str) -> Iterator[str]:
    yield from _bouncer(postgres_server, "options,extra_float_digits")


def _database(postgres_server: str, *settings: str) -> Iterator[str]:
    """A database of its own on the test server, with ``settings`` (``name = value``) for
    its sessions; its URL."""
    import psycopg

    name = f"legion_pooler_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        for setting in settings:
            conn.execute(f"ALTER DATABASE {name} SET {setting}")
    try:
        yield urlunsplit(urlsplit(postgres_server)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def bouncer_to_a_guarded_database(postgres_server: str) -> Iterator[str]:
    """A pooler dropping ``options`` in front of a database of its own whose sessions
    have a ``statement_timeout`` of 7 s (a managed service's guardrail)."""
    for database in _database(postgres_server, "statement_timeout = '7s'"):
        yield from _bouncer(database, "options,extra_float_digits")


@pytest.fixture
def bouncer_in_session_mode_marked(postgres_server: str) -> Iterator[str]:
    """A session-mode pooler with one server connection, in front of a database that
    marks every session as legion's check wants (so the check is passed: the pooler's
    queue is what is met)."""
    for database in _database(postgres_server, "legion.session = '1'"):
        yield from _bouncer(database, "options,extra_float_digits", mode="session")


@pytest.fixture
def bouncer_refusing_options(postgres_server: str) -> Iterator[str]:
    yield from _bouncer(postgres_server, "extra_float_digits")


async def test_a_pooler_that_drops_the_session_settings_is_refused_at_open(
    bouncer_dropping_options: str,
) -> None:
    store = store_from_url(bouncer_dropping_options)
    with pytest.raises(ConfigError, match="do not keep the session settings legion sends"):
        await store.open()


async def test_a_pooler_that_refuses_the_session_settings_is_said_so(
    bouncer_refusing_options: str,
) -> None:
    store = store_from_url(bouncer_refusing_options)
    with pytest.raises(StoreError) as refused:
        await store.open()
    said = str(refused.value)
    assert "unsupported startup parameter: options" in said, said
    assert "a connection pooler between?" in said, said


async def test_a_pooler_is_refused_before_anything_is_written_through_it(
    bouncer_to_a_guarded_database: str,
) -> None:
    """The schema's migration lifts its session's statement bounds and made legion's
    tables before the pooler was refused: the lifted bounds stayed on the pool's server
    connection, which the pooler's next client (another application) was handed, without
    its database's guardrail."""
    import psycopg

    store = store_from_url(bouncer_to_a_guarded_database)
    with pytest.raises(ConfigError, match="do not keep the session settings legion sends"):
        await store.open()
    await store.aclose()
    async with await psycopg.AsyncConnection.connect(
        bouncer_to_a_guarded_database, autocommit=True
    ) as conn:
        cur = await conn.execute("SHOW statement_timeout")
        assert await cur.fetchone() == ("7s",)
        cur = await conn.execute("SELECT to_regclass('tasks') IS NULL")
        assert await cur.fetchone() == (True,)


async def test_a_pooler_that_queues_the_check_is_said_to_be_unavailable(
    bouncer_in_session_mode_marked: str,
) -> None:
    """A session pool smaller than the fleet: the check's connection was taken and queued
    for a server connection, and the worker waited there in silence, printing nothing
    (not even its "store unavailable" lines). It is now a store that does not answer:
    said, and tried again as one that is down."""
    import psycopg

    from legion.errors import StoreUnavailable

    async with await psycopg.AsyncConnection.connect(bouncer_in_session_mode_marked) as held:
        await held.execute("SELECT 1")  # (holds the pool's one server connection)
        store = store_from_url(bouncer_in_session_mode_marked, lease_seconds=3)  # (1 s a call)
        with pytest.raises(StoreUnavailable, match="did not answer within 1s") as unavailable:
            async with asyncio.timeout(30):  # (a bound on a broken test: it waited for ever)
                await store.open()
        assert unavailable.value.retryable
        await store.aclose()
