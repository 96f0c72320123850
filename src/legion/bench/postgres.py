"""A fresh PostgreSQL schema per benchmark run, dropped afterwards, so benchmarks can
share a server (and a database) with tests and with each other."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from legion.errors import ConfigError
from legion.extras import install_hint
from legion.store.urls import redact_url


def with_params(url: str, **params: str) -> str:
    """``url`` with query parameters added (or replaced)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


SKIP_HINT = "--sqlite-only skips the PostgreSQL runs"
"""What a command that can leave its PostgreSQL runs out tells a user whose server is away."""


@asynccontextmanager
async def fresh_schema(
    url: str, *, pool_max_size: int = 10, hint: str = SKIP_HINT
) -> AsyncIterator[str]:
    """A store URL on a new, empty schema of ``url``'s database, dropped on exit; a
    server that cannot be reached is a `ConfigError` that ends with ``hint``."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError as exc:  # pragma: no cover - the postgres extra is missing
        raise ConfigError(
            f"PostgreSQL benchmarks need psycopg ({exc}): {install_hint('postgres')}"
        ) from exc
    schema = f"legion_bench_{uuid.uuid4().hex[:12]}"
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise ConfigError(f"cannot reach PostgreSQL at {redact_url(url)}: {exc} ({hint})") from exc
    async with conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_params(url, options=f"-csearch_path={schema}", pool_max_size=str(pool_max_size))
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SET lock_timeout = '30s'")
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
