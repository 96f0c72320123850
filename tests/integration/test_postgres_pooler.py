"""legion behind PgBouncer (Debian's ``pgbouncer``), in front of the test server.

In transaction mode a pooler hands each transaction to any server connection: one
session's prepared statements then ran in another's ("prepared statement "_pg3_5" does
not exist", "bind message supplies 0 parameters, but prepared statement "_pg3_0" requires
7"), a `legion run` crashed or never ended, and legion's statement bounds, sent at connect
in ``options``, were dropped (``ignore_startup_parameters = options``) or refused, which
surfaced only as a pool that never filled. Both are refused at open now, saying why.
"""

from __future__ import annotations

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


def _bouncer(server: str, ignore: str) -> Iterator[str]:
    """A transaction-mode PgBouncer in front of ``server`` (its database), with one
    server connection for its clients to share; its URL."""
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
        f"pool_mode = transaction\nignore_startup_parameters = {ignore}\n"
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


@pytest.fixture
def bouncer_to_a_guarded_database(postgres_server: str) -> Iterator[str]:
    """A pooler dropping ``options`` in front of a database of its own whose sessions
    have a ``statement_timeout`` of 7 s (a managed service's guardrail)."""
    import psycopg

    name = f"legion_pooler_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        conn.execute(f"ALTER DATABASE {name} SET statement_timeout = '7s'")
    try:
        yield from _bouncer(
            urlunsplit(urlsplit(postgres_server)._replace(path=f"/{name}")),
            "options,extra_float_digits",
        )
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


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
