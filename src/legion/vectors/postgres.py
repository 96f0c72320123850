"""Vector collections in the PostgreSQL store's database, with pgvector.

Each collection has a table of its own (``vector_items_<id>``: a ``vector(dims)`` column
and, once it holds `INDEX_AT` rows, an HNSW index for cosine distance), made with the
collection; the catalog is the
store's ``vector_collections`` table. The pgvector extension is created on first use
(``CREATE EXTENSION IF NOT EXISTS vector``) when the server has it; when it does not, the
error says how to get it.

Search: an unfiltered search of a shared collection walks the HNSW index (approximate,
``hnsw.ef_search`` = max(100, k)); a search filtered by session or metadata is exact (no
index scan), so it always finds the k nearest rows that pass the filter, which an HNSW scan
that filters after the fact does not.
"""

from __future__ import annotations

import math
import os
import struct
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types import TypeInfo

from legion import codec
from legion.errors import StoreError, StoreUnavailable, VectorError
from legion.store.postgres import PostgresStore
from legion.store.queries import queries
from legion.vectors.types import CollectionInfo, Hit, Item, Scalar, check_dims, check_same

Q = queries("postgres", "vectors")
INDEX_AT = 1000
"""Rows a collection holds before its HNSW index is built (below that, search is exact)."""
INDEX_BUILD_MEMORY = "512MB"
"""``maintenance_work_mem`` of a bulk load's index build (see `PostgresVectors.build_index`)."""
_FIX = (
    "install pgvector on the server (Debian/Ubuntu with the PGDG repository: apt-get install "
    "postgresql-<version>-pgvector; or see https://github.com/pgvector/pgvector#installation) "
    "and run CREATE EXTENSION vector in the database, or use a SQLite store"
)

EF_SEARCH = 100
"""How many candidates an unfiltered search of a shared collection follows in the HNSW
graph (pgvector's ``hnsw.ef_search``; at least k, at most 1,000): more finds more of the
true nearest neighbours, slower. ``LEGION_VECTORS_EF_SEARCH`` sets it per process."""


def ef_search(k: int) -> int:
    """The ``hnsw.ef_search`` of a search for ``k`` hits."""
    given = os.environ.get("LEGION_VECTORS_EF_SEARCH", "").strip()
    try:
        ef = int(given) if given else EF_SEARCH
    except ValueError:
        raise VectorError(
            f"LEGION_VECTORS_EF_SEARCH={given!r} is not a whole number (1 to 1000)"
        ) from None
    return max(k, min(max(ef, 1), 1000))


class Vector:
    """A vector sent to PostgreSQL in pgvector's binary form (dimensions, then float32s,
    big-endian): about 3x faster to send than its text form, which Python must format."""

    __slots__ = ("values",)

    def __init__(self, values: Sequence[float]) -> None:
        self.values = values


def _dumper(oid: int) -> type[Dumper]:
    class VectorDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Any) -> bytes:
            values = obj.values
            return struct.pack(f">HH{len(values)}f", len(values), 0, *values)

    VectorDumper.oid = oid
    return VectorDumper


class PostgresVectors:
    """A `~legion.vectors.backend.VectorBackend` in a PostgreSQL store's database."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = weakref.ref(store)
        self._ready = False
        self._dumper: type[Dumper] | None = None
        self._indexed: set[str] = set()

    def _pg(self) -> PostgresStore:
        store = self._store()
        if store is None:
            raise StoreError("the store of these vectors is gone")
        return store

    async def _ensure(self, conn: Any) -> None:
        """pgvector's type, visible on the store's search_path, or a VectorError."""
        if self._ready:
            return
        cur = await conn.execute(Q["vector_type"])
        if not _first(await cur.fetchone()):
            cur = await conn.execute(Q["vector_available"])
            if not _first(await cur.fetchone()):
                raise VectorError(
                    "vector collections on PostgreSQL need the pgvector extension, which this "
                    f"server does not have: {_FIX}"
                )
            try:
                await conn.execute(Q["create_extension"])
            except psycopg.Error as exc:
                raise VectorError(
                    f"cannot create the pgvector extension ({exc}); a superuser can run "
                    "CREATE EXTENSION vector in this database"
                ) from exc
            cur = await conn.execute(Q["vector_type"])
            if not _first(await cur.fetchone()):
                raise VectorError(
                    "the pgvector extension is installed in a schema that is not on the "
                    "store's search_path: add that schema (often public) to search_path"
                )
        info = await TypeInfo.fetch(conn, "vector")
        if info is None:  # pragma: no cover - checked just above
            raise VectorError("the pgvector type is not visible on the store's search_path")
        self._dumper = _dumper(info.oid)
        self._ready = True

    def _adapt(self, conn: Any) -> None:
        if self._dumper is None:
            raise StoreError("the vector store is not ready (no pgvector type found)")
        conn.adapters.register_dumper(Vector, self._dumper)

    async def _info(self, conn: Any, name: str) -> tuple[CollectionInfo, int] | None:
        cur = await conn.execute(Q["collection_get"], {"name": name})
        row = await cur.fetchone()
        if row is None:
            return None
        return CollectionInfo(row[0], row[1], row[2], int(row[3])), int(row[4])

    async def _table(self, conn: Any, name: str) -> sql.Identifier | None:
        """The collection's table now: read each time, never kept (a collection dropped
        and loaded again has a new table, and every worker that had kept the old one
        failed each search of it until restarted)."""
        found = await self._info(conn, name)
        return None if found is None else sql.Identifier(f"vector_items_{found[1]}")

    # -- the backend -----------------------------------------------------------------

    async def collection(self, name: str) -> CollectionInfo | None:
        async with self._pg()._connection() as conn:
            # (first: a load asks for its collection before it embeds anything, and a
            # server without pgvector is said before a batch is paid for, not after)
            await self._ensure(conn)
            found = await self._info(conn, name)
        return None if found is None else found[0]

    async def collections(self) -> list[CollectionInfo]:
        out = []
        async with self._pg()._connection() as conn:
            cur = await conn.execute(Q["collections"])
            for name, scope, model, dims, cid in await cur.fetchall():
                table = sql.Identifier(f"vector_items_{cid}")
                cur = await conn.execute(sql.SQL(Q["count_all"]).format(table=table))
                items = int(_first(await cur.fetchone()))
                out.append(CollectionInfo(name, scope, model, int(dims), items))
        return out

    async def write(
        self, info: CollectionInfo, session: str, items: Sequence[Item], *, index: bool = True
    ) -> None:
        rows = [
            (
                session,
                it.id,
                it.text,
                codec.dumps(dict(it.metadata)).decode(),
                Vector(it.embedding),
            )
            for it in items
        ]
        async with self._pg()._connection() as conn:
            await self._ensure(conn)
            self._adapt(conn)
            async with conn.transaction():
                table = await self._create(conn, info)
                async with conn.cursor() as cur:
                    await cur.executemany(sql.SQL(Q["upsert"]).format(table=table), rows)
                due = index and await self._index_due(conn, table)
        if due:  # after the commit, on a connection of its own (see build_index)
            await self.build_index(info)

    async def _create(self, conn: Any, info: CollectionInfo) -> sql.Identifier:
        """The collection's table, made (with the catalog row) if it does not exist."""
        found = await self._info(conn, info.name)
        if found is None:
            await conn.execute(Q["lock_collection"], {"name": info.name})
            found = await self._info(conn, info.name)
        if found is not None:
            check_same(found[0], info)
            table = sql.Identifier(f"vector_items_{found[1]}")
        else:
            params = {"name": info.name, "scope": info.scope, "model": info.model}
            cur = await conn.execute(
                Q["collection_insert"], {**params, "dims": info.dims, "now": time.time()}
            )
            cid = int(_first(await cur.fetchone()))
            table = sql.Identifier(f"vector_items_{cid}")
            await conn.execute(
                sql.SQL(Q["create_items"]).format(dims=sql.Literal(info.dims), table=table)
            )
        return table

    async def _index_due(self, conn: Any, table: sql.Identifier) -> bool:
        """Whether the HNSW index should be built now: the table holds `INDEX_AT` rows and
        has none yet.

        Built after the rows rather than kept up row by row: pgvector builds an index over
        10,000 rows in a fraction of the time 10,000 indexed inserts take (measured here:
        6 s against 47 s). Until then every search is an exact scan.
        """
        name = table.as_string().strip('"')
        if name in self._indexed:
            return False
        cur = await conn.execute(Q["index_exists"], {"index": f"{name}_hnsw"})
        if _first(await cur.fetchone()):
            self._indexed.add(name)
            return False
        cur = await conn.execute(sql.SQL(Q["count_all"]).format(table=table))
        return int(_first(await cur.fetchone())) >= INDEX_AT

    async def build_index(self, info: CollectionInfo) -> None:
        """Build the collection's HNSW index now, however few rows it holds.

        After a bulk load the build takes long (100,000 vectors of 384 dimensions: minutes),
        so it runs like a migration: on a connection of its own, without the per-call
        deadline and ``statement_timeout`` of the store's other calls, and with
        ``maintenance_work_mem`` raised to ``INDEX_BUILD_MEMORY`` for its session, so that
        pgvector keeps the graph in memory while it builds it (64 MB, PostgreSQL's default,
        holds about 30,000 such vectors' graph; past that the build slows down severalfold).
        """
        async with self._pg()._connection() as conn:
            table = await self._table(conn, info.name)
        if table is None:
            return
        name = table.as_string().strip('"')
        if name in self._indexed:
            return
        index = sql.Identifier(f"{name}_hnsw")
        store = self._pg()
        try:
            async with await psycopg.AsyncConnection.connect(
                store._migration_conninfo, autocommit=True
            ) as conn:
                await conn.execute(
                    sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(INDEX_BUILD_MEMORY))
                )
                await conn.execute(sql.SQL(Q["create_index"]).format(table=table, index=index))
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"building the index of {info.name!r} failed: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"building the index of {info.name!r} failed: {exc}") from exc
        self._indexed.add(name)

    async def search(
        self,
        info: CollectionInfo,
        session: str,
        vector: Sequence[float],
        k: int,
        where: Mapping[str, Scalar],
    ) -> list[Hit]:
        check_dims(info, len(vector))
        params = {
            "q": Vector(vector),
            "session": session,
            "where": codec.dumps(dict(where)).decode(),
            "k": k,
        }
        exact = info.scope == "session" or bool(where)
        async with self._pg()._connection() as conn:
            table = await self._table(conn, info.name)
            if table is None:
                return []
            await self._ensure(conn)
            self._adapt(conn)
            async with conn.transaction():
                if exact:
                    await conn.execute(Q["exact_search"])
                    query = Q["search"]
                else:
                    await conn.execute(Q["ef_search"], {"ef": str(ef_search(k))})
                    query = Q["search_index"]
                cur = await conn.execute(sql.SQL(query).format(table=table), params)
                rows = await cur.fetchall()
        # An item stored with no direction (all zeros, before legion refused them) is at
        # NaN from everything, which PostgreSQL sorts last: no one's neighbour.
        return [
            Hit(r[0], r[1], dict(r[2]), 1.0 - float(r[3])) for r in rows if not math.isnan(r[3])
        ]

    async def delete(self, info: CollectionInfo, session: str, ids: Sequence[str]) -> int:
        async with self._pg()._connection() as conn:
            table = await self._table(conn, info.name)
            if table is None:
                return 0
            cur = await conn.execute(
                sql.SQL(Q["delete"]).format(table=table), {"session": session, "ids": list(ids)}
            )
            return int(cur.rowcount)

    async def drop_collection(self, name: str) -> int | None:
        async with self._pg()._connection() as conn, conn.transaction():
            await conn.execute(Q["lock_collection"], {"name": name})
            found = await self._info(conn, name)
            if found is None:
                return None
            table = sql.Identifier(f"vector_items_{found[1]}")
            cur = await conn.execute(sql.SQL(Q["count_all"]).format(table=table))
            dropped = int(_first(await cur.fetchone()))
            await conn.execute(sql.SQL(Q["drop_items"]).format(table=table))
            await conn.execute(Q["drop_collection"], {"id": found[1]})
        self._indexed.discard(table.as_string().strip('"'))
        return dropped

    async def drop_sessions(self, sessions: Sequence[str], *, dry_run: bool = False) -> int:
        dropped = 0
        query = Q["count_sessions" if dry_run else "drop_sessions"]
        async with self._pg()._connection() as conn:
            cur = await conn.execute(Q["collections_table"])
            if not _first(await cur.fetchone()):
                return 0  # (never held vectors: the extension is not asked for)
            cur = await conn.execute(Q["session_collections"])
            for (cid,) in await cur.fetchall():
                table = sql.Identifier(f"vector_items_{cid}")
                cur = await conn.execute(
                    sql.SQL(query).format(table=table), {"sessions": list(sessions)}
                )
                dropped += int(_first(await cur.fetchone())) if dry_run else int(cur.rowcount)
        return dropped

    async def stored(
        self, info: CollectionInfo, session: str, ids: Sequence[str]
    ) -> dict[str, tuple[str, dict[str, Any]]]:
        async with self._pg()._connection() as conn:
            table = await self._table(conn, info.name)
            if table is None:
                return {}
            cur = await conn.execute(
                sql.SQL(Q["stored"]).format(table=table),
                {"session": session, "ids": list(ids)},
            )
            return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}

    async def set_metadata(
        self, info: CollectionInfo, session: str, metadata: Mapping[str, Mapping[str, Any]]
    ) -> None:
        rows = [
            {"metadata": codec.dumps(dict(meta)).decode(), "session": session, "id": item}
            for item, meta in metadata.items()
        ]
        async with self._pg()._connection() as conn, conn.transaction():
            table = await self._table(conn, info.name)
            if table is None:
                return
            async with conn.cursor() as cur:
                await cur.executemany(sql.SQL(Q["set_metadata"]).format(table=table), rows)

    async def count(self, info: CollectionInfo, session: str) -> int:
        async with self._pg()._connection() as conn:
            table = await self._table(conn, info.name)
            if table is None:
                return 0
            query = sql.SQL(Q["count"]).format(table=table)
            cur = await conn.execute(query, {"session": session})
            return int(_first(await cur.fetchone()))

    async def aclose(self) -> None:
        return None


def _first(row: Any) -> Any:
    if row is None:
        raise StoreError("the vector store answered no row")
    return row[0]
