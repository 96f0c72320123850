"""Stores: where tasks, steps, memory, events and workers live.

`store_from_url` picks the implementation from a URL:
``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``
for the embedded store; ``postgresql://user@host:port/database`` (or ``postgres://``) for
the shared one. The PostgreSQL driver is imported only when a PostgreSQL store is made (or
``PostgresStore`` is first named), so a SQLite-only install never needs it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from legion.clock import Clock, system_clock
from legion.errors import ConfigError
from legion.extras import install_hint
from legion.store.base import (
    CapacityBoard,
    KeyStore,
    SessionMemory,
    Store,
    TaskQueue,
    TaskReader,
    WorkerRegistry,
)
from legion.store.types import (
    DiagnosticRecord,
    Event,
    Extended,
    MemoryWrite,
    Reclaimed,
    StepInfo,
    WorkerInfo,
    WriteBatch,
)
from legion.store.urls import redact_url

if TYPE_CHECKING:
    from legion.store.postgres import PostgresStore
    from legion.store.sqlite import SQLiteStore

__all__ = [
    "CapacityBoard",
    "DiagnosticRecord",
    "Event",
    "Extended",
    "KeyStore",
    "MemoryWrite",
    "PostgresStore",
    "Reclaimed",
    "SQLiteStore",
    "SessionMemory",
    "StepInfo",
    "Store",
    "TaskQueue",
    "TaskReader",
    "WorkerInfo",
    "WorkerRegistry",
    "WriteBatch",
    "redact_url",
    "store_from_url",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        return _postgres_store()
    if name == "SQLiteStore":
        # Loaded when first named or made: `import legion` and the `legion` command's
        # start do not pay for the SQLite store's queries.
        from legion.store.sqlite import SQLiteStore

        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _postgres_store() -> type[PostgresStore]:
    try:
        from legion.store.postgres import PostgresStore
    except ImportError as exc:
        raise ConfigError(
            f"the PostgreSQL store needs psycopg ({exc}): {install_hint('postgres')}"
        ) from exc
    return PostgresStore


def store_from_url(
    url: str,
    *,
    create: bool = True,
    lease_seconds: float | None = None,
    clock: Clock = system_clock,
) -> Store:
    """A store for ``url`` (not yet opened); ``create=False`` refuses a missing store: a
    SQLite file that does not exist, or a PostgreSQL schema without legion's tables
    (opening it raises `legion.errors.ConfigError` and creates nothing).

    A PostgreSQL database is never created: opening a store on a missing one raises
    `legion.errors.ConfigError`. ``lease_seconds`` (the
    workers' lease, 30 s if not given) sets a PostgreSQL store's timeouts below it.
    ``clock``: a SQLite store's time (a PostgreSQL store keeps the database's, unless
    ``clock`` is another than the system's: a test's fake clock).
    """
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise ConfigError(
                f"bad SQLite URL {url!r}: use sqlite:///path.db or sqlite:///:memory:"
            )
        if "?" in path:
            raise ConfigError(
                f"bad SQLite URL {url!r}: a SQLite store takes no parameters (the file "
                "would be named with them): use sqlite:///path.db"
            )
        from legion.store.sqlite import SQLiteStore

        return SQLiteStore(path[1:], create=create, clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        _names_a_database(url)
        # (The system clock: the database's, which every worker shares.)
        own = None if clock is system_clock else clock
        if lease_seconds is None:
            return _postgres_store()(url, create=create, clock=own)
        return _postgres_store()(url, lease_seconds=lease_seconds, create=create, clock=own)
    raise ConfigError(
        f"unknown store URL {redact_url(url)!r}: expected sqlite:///path.db or "
        "postgresql://host/database"
    )


def _names_a_database(url: str) -> None:
    """Refuse a PostgreSQL URL that names no database (``postgresql://user@host``): the
    server would take the user's name for it, and legion's tables went into the
    ``postgres`` maintenance database. ``?dbname=`` and ``PGDATABASE`` name one too."""
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return  # (malformed: the driver says how)
    if parts.path.strip("/") or "dbname" in parse_qs(parts.query) or os.environ.get("PGDATABASE"):
        return
    raise ConfigError(
        f"the PostgreSQL URL {redact_url(url)!r} names no database: add one, "
        "postgresql://user@host/DATABASE (the server would take the user's name for it, "
        "and legion's tables would go into a database you did not choose)"
    )
