"""A PostgreSQL store on a server without pgvector: a clear error naming the fix."""

from __future__ import annotations

import psycopg

from legion.errors import VectorError
from legion.store import store_from_url
from legion.vectors import CollectionInfo, Item
from legion.vectors.backend import vectors_for


async def test_a_server_without_pgvector_is_a_clear_error_and_nothing_is_written(
    postgres_url: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url.split("&pool_")[0]) as conn:
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')"
        )
        row = await cur.fetchone()
    available = bool(row and row[0])
    store = store_from_url(postgres_url)
    await store.open()
    try:
        backend = vectors_for(store)
        info = CollectionInfo("kb", "shared", "m", 2)
        items = [Item("a", "text", {}, (1.0, 0.0))]
        if available:  # this server has it: the extension is made on first use
            await backend.write(info, "", items)
            assert await backend.count(info, "") == 1
        else:
            try:
                await backend.write(info, "", items)
            except VectorError as exc:
                message = str(exc)
            else:
                raise AssertionError("a write without pgvector should fail")
            assert "pgvector" in message and "CREATE EXTENSION vector" in message
            # Asked for first by a load, before it embeds (and pays for) a batch: said then.
            try:
                await backend.collection("kb")
            except VectorError as exc:
                assert "pgvector" in str(exc)
            else:
                raise AssertionError("a load's first question should say pgvector is missing")
            assert await backend.collections() == []
    finally:
        await store.aclose()
