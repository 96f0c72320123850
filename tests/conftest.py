"""Shared fixtures: real stores on real files, and on a real PostgreSQL server.

Every PostgreSQL test gets a fresh schema of its own (dropped afterwards), so tests and
test processes can share one server. The server is ``LEGION_TEST_POSTGRES_URL``
(default ``postgresql://postgres@127.0.0.1:5432/test``); when it cannot be reached, the
tests that need it fail with the reason: they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

from legion.store import Store, store_from_url

POSTGRES_URL = os.environ.get(
    "LEGION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def with_params(url: str, **params: str) -> str:
    """``url`` with query parameters added (or replaced)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'legion.db'}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The test server's URL, once it answers."""
    try:
        import psycopg
    except ImportError as exc:
        pytest.fail(f"the PostgreSQL tests need psycopg: pip install -e '.[dev]' ({exc})")
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}\n"
            "Start it (pg_ctlcluster <version> main start) or point "
            "LEGION_TEST_POSTGRES_URL at a server.",
            pytrace=False,
        )
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A store URL on a fresh, empty schema of this test's own, dropped afterwards."""
    import psycopg
    from psycopg import sql

    schema = f"legion_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield with_params(postgres_server, options=f"-csearch_path={schema}", pool_max_size="4")
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for a new, empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = store_from_url(store_url)
    await s.open()
    yield s
    await s.aclose()
