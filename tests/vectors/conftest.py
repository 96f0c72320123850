"""Stores that can hold vectors: SQLite with sqlite-vec, PostgreSQL with pgvector.

PostgreSQL: the test server (``LEGION_TEST_POSTGRES_URL``) when it has pgvector, else a
private server from the ``pgserver`` wheels (PostgreSQL with pgvector) on a Unix socket in
a temporary folder. When neither can be had the tests fail with the reason: never skip.
"""

from __future__ import annotations

import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from legion.llm import Capacity, LLMClient, Route, SimulatedProvider
from legion.sim import SimConfig
from legion.store import Store, store_from_url
from tests.conftest import POSTGRES_URL, with_params


def _has_pgvector(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')"
            ).fetchone()
            if not (row and row[0]):
                return False
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    """A PostgreSQL URL whose database has pgvector (in schema public)."""
    if _has_pgvector(POSTGRES_URL):
        yield POSTGRES_URL
        return
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        pytest.fail(
            f"the PostgreSQL vector tests need a server with pgvector: {POSTGRES_URL} has none "
            f"and pgserver is not installed (pip install -e '.[dev]'): {exc}",
            pytrace=False,
        )
    # A folder of its own under /tmp: run as root, pgserver runs PostgreSQL as another
    # user, who cannot enter pytest's (private) temporary folders.
    folder = Path(tempfile.gettempdir()) / f"legion-pgvector-{uuid.uuid4().hex[:12]}"
    server: Any = pgserver.get_server(  # type: ignore[attr-defined]  # re-exported, untyped
        str(folder), cleanup_mode="delete"
    )
    url = str(server.get_uri())
    if not _has_pgvector(url):
        server.cleanup()
        pytest.fail("the pgserver PostgreSQL has no pgvector extension", pytrace=False)
    yield url
    server.cleanup()


@pytest.fixture
def pgvector_url(pgvector_server: str) -> Iterator[str]:
    """A store URL on a fresh schema (public, holding pgvector, after it on the path)."""
    import psycopg
    from psycopg import sql

    schema = f"legion_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pgvector_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield with_params(pgvector_server, options=f"-csearch_path={schema},public", pool_max_size="4")
    with psycopg.connect(pgvector_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", "postgres"])
def vec_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pgvector_url")
    return url


@pytest.fixture
async def vec_store(vec_url: str) -> AsyncIterator[Store]:
    store = store_from_url(vec_url)
    await store.open()
    yield store
    await store.aclose()


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedProvider]:
    provider = SimulatedProvider(SimConfig(models=("sim-model", "other-model")))
    await provider.start()
    yield provider
    await provider.aclose()


def sim_client(provider: SimulatedProvider) -> LLMClient:
    return LLMClient(
        [
            Route("default", provider, "sim-model", Capacity("default")),
            Route("other", provider, "other-model", Capacity("other")),
        ]
    )
