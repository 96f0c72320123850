"""``VectorBackend``: where a store keeps its vector collections, and how to find it.

Each store kind has one: SQLite keeps vectors in a file beside the store's (sqlite-vec;
``runs.db`` -> ``runs.vectors.db``), PostgreSQL in pgvector tables of the same database.
`vectors_for` answers the backend of an open store (one per store object).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from legion.errors import ConfigError
from legion.vectors.types import CollectionInfo, Hit, Item, Scalar


class VectorBackend(Protocol):
    async def collection(self, name: str) -> CollectionInfo | None:
        """The collection called ``name``, or ``None``."""
        ...

    async def collections(self) -> list[CollectionInfo]:
        """Every collection, with its item count."""
        ...

    async def write(
        self, info: CollectionInfo, session: str, items: Sequence[Item], *, index: bool = True
    ) -> None:
        """Create the collection if it does not exist (it must then match ``info``) and
        upsert ``items`` by id, in one transaction: all or nothing. ``index=False`` leaves
        building an approximate index to `build_index` (bulk loads)."""
        ...

    async def build_index(self, info: CollectionInfo) -> None:
        """Build the collection's approximate index now, where the store has one."""
        ...

    async def search(
        self,
        info: CollectionInfo,
        session: str,
        vector: Sequence[float],
        k: int,
        where: Mapping[str, Scalar],
    ) -> list[Hit]:
        """The ``k`` items nearest to ``vector`` (cosine) that match ``where``."""
        ...

    async def delete(self, info: CollectionInfo, session: str, ids: Sequence[str]) -> int:
        """Delete items by id; answers how many there were."""
        ...

    async def stored(
        self, info: CollectionInfo, session: str, ids: Sequence[str]
    ) -> dict[str, tuple[str, dict[str, Any]]]:
        """The text and metadata of each of ``ids`` the collection holds (the others are
        not keys)."""
        ...

    async def set_metadata(
        self, info: CollectionInfo, session: str, metadata: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Replace the metadata of items by id (their text and vectors stay), in one
        transaction."""
        ...

    async def count(self, info: CollectionInfo, session: str) -> int: ...

    async def drop_collection(self, name: str) -> int | None:
        """Delete the collection ``name`` and its items (answers how many); ``None`` if
        there is none."""
        ...

    async def drop_sessions(self, sessions: Sequence[str], *, dry_run: bool = False) -> int:
        """Delete every item of ``sessions`` (as stored: within their tenant) from every
        session-scoped collection; answers how many there were (``dry_run``: counts them,
        deletes nothing). Creates nothing: a store that never held vectors answers 0."""
        ...

    async def aclose(self) -> None: ...


_backends: weakref.WeakKeyDictionary[Any, VectorBackend] = weakref.WeakKeyDictionary()


def vectors_for(store: Any) -> VectorBackend:
    """The vector backend of ``store`` (made on first use, kept as long as the store)."""
    backend = _backends.get(store)
    if backend is not None:
        return backend
    from legion.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from legion.vectors.sqlite import SQLiteVectors

        backend = SQLiteVectors(store.path, store.identity)
    else:
        try:
            from legion.store.postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - psycopg missing
            raise ConfigError(
                f"vector collections need a SQLite or PostgreSQL store: {exc}"
            ) from exc
        if not isinstance(store, PostgresStore):
            raise ConfigError(
                f"vector collections need a SQLite or PostgreSQL store, not {type(store).__name__}"
            )
        from legion.vectors.postgres import PostgresVectors

        backend = PostgresVectors(store)
    _backends[store] = backend
    weakref.finalize(store, _close_quietly, backend)
    return backend


async def drop_sessions(store: Any, sessions: Sequence[str], *, dry_run: bool = False) -> int:
    """What `legion purge` does with the own sessions of the tasks it purged: their
    session-scoped vectors go as their memory did. 0 where the store never held vectors
    (nothing is made for it: no vectors file, no pgvector extension). ``dry_run``: how
    many would go."""
    if not sessions:
        return 0
    return await vectors_for(store).drop_sessions(sessions, dry_run=dry_run)


def _close_quietly(backend: VectorBackend) -> None:
    close = getattr(backend, "close_now", None)
    if close is not None:
        close()
