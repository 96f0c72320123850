"""Store failures leave the store as legion's own errors, decided by class: a full SQLite
file is StorageFull, a locked one StoreUnavailable, both retryable; the file stays intact."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from legion.errors import StorageFull, StoreError, StoreUnavailable
from legion.store import SQLiteStore
from legion.task import NewTask, TaskStatus


def tasks(n: int, start: int = 0) -> list[NewTask]:
    return [NewTask("work", b'{"n": 1}', f"k{i}-" + "x" * 400) for i in range(start, start + n)]


async def test_a_full_sqlite_file_raises_storage_full_and_keeps_what_it_had(
    tmp_path: Path,
) -> None:
    path = tmp_path / "full.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        # The real engine at a size limit answers SQLITE_FULL, as on a full disk.
        (pages,) = await store._call(lambda: store._db.execute("PRAGMA page_count").fetchone())
        await store._call(lambda: store._db.execute(f"PRAGMA max_page_count = {pages + 8}"))
        kept: list[int] = []
        with pytest.raises(StorageFull, match="is full") as caught:
            for i in range(1000):
                kept += [s.id for s in await store.submit(tasks(1, i), time.time())]
        assert caught.value.retryable and isinstance(caught.value, StoreError)
        assert kept, "the limit left no room at all"
        # The store still answers reads and holds every task it acknowledged.
        assert [t.id for t in await store.get_many(kept)] == kept
    finally:
        await store.aclose()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM tasks").fetchone() == (len(kept),)
    finally:
        db.close()


async def test_a_locked_sqlite_file_raises_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SQLiteStore(path, busy_timeout=0.05)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match="unavailable") as caught:
            await store.submit(tasks(1), time.time())
        assert caught.value.retryable
        other.execute("ROLLBACK")
        [done] = await store.submit(tasks(1), time.time())  # the lock is gone: it works
        assert done.created
    finally:
        other.close()
        await store.aclose()


async def test_a_store_locked_by_another_writer_still_opens_for_its_readers(
    tmp_path: Path,
) -> None:
    # Every open took the write lock (the migrations' transaction, with nothing to
    # migrate): `legion status` waited behind another process's long transaction for the
    # whole busy timeout, then failed, while the file could be read all along.
    path = tmp_path / "busy.db"
    first = SQLiteStore(path)
    await first.open()
    await first.submit(tasks(2), time.time())
    await first.aclose()
    other = sqlite3.connect(path, isolation_level=None)
    reader = SQLiteStore(path, busy_timeout=0.05, create=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another program writing for a long time
        await reader.open()
        assert await reader.counts() == {TaskStatus.QUEUED: 2}
    finally:
        other.execute("ROLLBACK")
        other.close()
        await reader.aclose()


async def test_a_file_that_is_not_a_store_is_a_plain_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database at all" * 100)
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="not a usable legion store") as caught:
        await store.open()
    assert not caught.value.retryable
    await store.aclose()
