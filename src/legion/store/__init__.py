"""Stores: where tasks, steps, memory, events and workers live.

:func:`open_store` picks the implementation from a URL:
``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Event, MemoryWrite, Reclaimed, StepInfo, Store, WorkerInfo, WriteBatch
from .sqlite import SQLiteStore

__all__ = [
    "Event",
    "MemoryWrite",
    "Reclaimed",
    "SQLiteStore",
    "StepInfo",
    "Store",
    "WorkerInfo",
    "WriteBatch",
    "store_from_url",
]


def store_from_url(url: str, *, create: bool = True) -> Store:
    """A store for ``url`` (not yet opened); ``create=False`` refuses a missing database."""
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise ConfigError(
                f"bad SQLite URL {url!r}: use sqlite:///path.db or sqlite:///:memory:"
            )
        return SQLiteStore(path[1:], create=create)
    if url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("the PostgreSQL store is not available in this version of legion")
    raise ConfigError(f"unknown store URL {url!r}: expected sqlite:///path.db")
