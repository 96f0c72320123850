"""SQLite writes the submissions that arrive while one is being written together, in one
transaction; each submission still stands or falls alone, on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from legion.errors import StorageFull
from legion.store import SQLiteStore
from legion.task import NewTask


def tasks(n: int, tag: str, size: int = 10) -> list[NewTask]:
    return [NewTask("work", b'{"n": 1}', f"{tag}-{i}-" + "x" * size) for i in range(n)]


async def held(store: SQLiteStore) -> threading.Event:
    """Keep the store's thread busy until the event returned is set: what is submitted
    meanwhile waits for it."""
    gate = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        gate.wait()

    asyncio.get_running_loop().run_in_executor(store._thread, hold)
    await asyncio.to_thread(started.wait)
    return gate


async def test_submissions_that_arrive_together_are_one_transaction(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    began: list[str] = []
    try:
        await store._call(lambda: store._db.set_trace_callback(began.append))
        gate = await held(store)
        # Ten submissions while the thread is busy: it takes them all when it is free.
        first = asyncio.ensure_future(store.submit(tasks(1, "first"), time.time()))
        rest = [
            asyncio.ensure_future(store.submit(tasks(2, f"r{i}"), time.time())) for i in range(9)
        ]
        await asyncio.sleep(0)  # every submission has started and waits for the store
        gate.set()
        answers = [await first] + [await r for r in rest]
    finally:
        await store._call(lambda: store._db.set_trace_callback(None))
        await store.aclose()
    assert [len(a) for a in answers] == [1] + [2] * 9
    ids = [s.id for a in answers for s in a]
    assert len(set(ids)) == 19 and all(s.created for a in answers for s in a)
    assert sum(1 for sql in began if sql == "BEGIN IMMEDIATE") == 1
    db = sqlite3.connect(tmp_path / "s.db")
    try:
        assert db.execute("SELECT count(*) FROM tasks").fetchone() == (19,)
    finally:
        db.close()


async def test_a_transaction_that_fails_as_a_whole_is_written_one_submission_at_a_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "full.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        # The real engine at a size limit answers SQLITE_FULL, as on a full disk: room for
        # the small submissions, not for the large one written with them.
        (pages,) = await store._call(lambda: store._db.execute("PRAGMA page_count").fetchone())
        await store._call(lambda: store._db.execute(f"PRAGMA max_page_count = {pages + 8}"))
        gate = await held(store)
        first = asyncio.ensure_future(store.submit(tasks(1, "first"), time.time()))
        large = asyncio.ensure_future(store.submit(tasks(200, "large", 400), time.time()))
        small = [
            asyncio.ensure_future(store.submit(tasks(1, f"s{i}"), time.time())) for i in range(3)
        ]
        await asyncio.sleep(0)
        gate.set()
        assert len(await first) == 1
        with pytest.raises(StorageFull):
            await large
        kept = [s.id for task in small for s in await task]
        assert len(kept) == 3
        assert [t.id for t in await store.get_many(kept)] == kept
    finally:
        await store.aclose()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM tasks").fetchone() == (4,)
    finally:
        db.close()


async def test_the_store_says_how_long_submissions_waited_for_its_thread(tmp_path: Path) -> None:
    # What the HTTP server's load shedding follows (legion.server.admission): time spent
    # queueing for the store's writer, from when a submission is queued to when its
    # writing begins.
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        store.queue_delay()  # (what opening it waited)
        assert store.queue_delay() is None  # nothing since
        gate = await held(store)
        waiting = [
            asyncio.ensure_future(store.submit(tasks(1, f"w{i}"), time.time())) for i in range(3)
        ]
        await asyncio.sleep(0)  # queued, waiting for the thread
        queued_by = time.monotonic()
        await asyncio.to_thread(time.sleep, 0)  # (the thread is held past this point)
        released = time.monotonic()
        gate.set()
        await asyncio.gather(*waiting)
        waited = store.queue_delay()
        assert store.queue_delay() is None  # read once
    finally:
        await store.aclose()
    assert waited is not None and waited >= released - queued_by
