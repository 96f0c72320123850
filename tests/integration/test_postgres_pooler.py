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
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from legion.errors import ConfigError, StoreError
from legion.store import store_from_url
from tests.pg_cluster import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _bouncer(server: str, ignore: str) -> Iterator[str]:
    """A transaction-mode PgBouncer in front of ``server``; its URL."""
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
