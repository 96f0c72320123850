"""Shared fixtures: real stores on real files, and on a real PostgreSQL server.

Every PostgreSQL test gets a fresh schema of its own (dropped afterwards), so tests and
test processes can share one server. The server is ``LEGION_TEST_POSTGRES_URL``
(default ``postgresql://postgres@127.0.0.1:5432/test``); when it cannot be reached, the
tests that need it fail with the reason: they never skip.
"""

from __future__ import annotations

import os
import sqlite3
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


@pytest.fixture(autouse=True)
def _sqlite_counts_hold(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test with a folder of its own, every SQLite store in that folder (made by
    the test or by a process it ran, killed ones included) holds counts by status that
    match its tasks: the store moves them at each status change, statement by statement
    (see `legion.store.sqlite_counts`), and one it missed would show here."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    folder: Path = request.getfixturevalue("tmp_path")
    yield
    for path in folder.rglob("*"):
        if path.is_file() and _is_sqlite(path):
            assert _count_drift(path) == {}, f"the counts of {path} drifted from its tasks"


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def _count_drift(path: Path) -> dict[tuple[str, str, str], tuple[int, int]]:
    """``(tenant, status, agent)``: (kept, counted) where they differ; nothing for a file
    without `task_counts`."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"tasks", "task_counts"} <= tables:
            return {}
        kept = {
            (t, s, a): n
            for t, s, a, n in db.execute("SELECT tenant, status, agent, n FROM task_counts")
            if n
        }
        counted = {
            (t, s, a): n
            for t, s, a, n in db.execute(
                "SELECT tenant, status, agent, count(*) FROM tasks GROUP BY 1, 2, 3"
            )
        }
    finally:
        db.close()
    return {
        g: (kept.get(g, 0), counted.get(g, 0))
        for g in kept.keys() | counted.keys()
        if kept.get(g, 0) != counted.get(g, 0)
    }
