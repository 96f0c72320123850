"""A process that stops in the middle of a pipelined transaction (SIGSTOP, a frozen VM, a
proxy that stops forwarding) leaves its PostgreSQL session "active", waiting on it, with
its row locks held; none of the server's timeouts applies before a pipeline's Sync. The
reaper ends such sessions, so the tasks whose rows they lock are taken back rather than
stuck for good."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from legion import codec
from legion.store import PostgresStore
from legion.task import NewTask, TaskStatus
from tests.conftest import with_params
from tests.integration.test_store_postgres import NOW, libpq_url

pytestmark = pytest.mark.slow

BOUND = 0.3  # the store's call bound, and so its idle-in-transaction bound


def stall(url: str, name: str, task_id: int) -> psycopg.Connection:
    """A session that locks ``task_id``'s row in a pipeline and then waits for the rest of
    it, as a client stopped between a pipeline's statements and its Sync leaves it."""
    conn = psycopg.connect(libpq_url(url), autocommit=True, application_name=name)
    pg = conn.pgconn
    pg.enter_pipeline_mode()
    pg.send_query_params(b"SELECT id FROM tasks WHERE id = $1 FOR UPDATE", [str(task_id).encode()])
    pg.send_flush_request()
    assert pg.flush() == 0
    return conn


def sessions(url: str, name: str, *, waiting: bool = True) -> int:
    """How many sessions named ``name`` there are (only those in a transaction waiting on
    their client, with ``waiting``)."""
    stalled = "AND state = 'active' AND wait_event = 'ClientRead' AND xact_start IS NOT NULL"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            + (stalled if waiting else ""),
            (name,),
        ).fetchone()
    return int(row[0]) if row is not None else 0


def until(what: str, check: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        time.sleep(0.02)


@pytest.fixture
def stalled() -> Iterator[list[psycopg.Connection]]:
    conns: list[psycopg.Connection] = []
    yield conns
    for c in conns:
        c.close()


async def test_a_session_stalled_mid_pipeline_is_ended_and_its_task_taken_back(
    postgres_url: str, stalled: list[psycopg.Connection]
) -> None:
    url = postgres_url
    store = PostgresStore(with_params(url, call_timeout=str(BOUND)))
    await store.open()
    try:
        ours, theirs = [
            s.id for s in await store.submit([NewTask("a", codec.dumps(i)) for i in (1, 2)], NOW)
        ]
        # Both leased by a worker whose lease has expired at once (the database's clock).
        assert len(await store.lease("w", {"a": 2}, 2, NOW - 1, NOW)) == 2
        stalled.append(stall(url, "legion-stopped-worker", ours))
        # Another program's session, stalled the same way, is none of legion's business.
        stalled.append(stall(url, "someone-else", theirs))
        until(
            "both sessions to wait on their clients",
            lambda: sessions(url, "legion-stopped-worker") == sessions(url, "someone-else") == 1,
        )
        ended = requeued = 0
        deadline = time.monotonic() + 30
        while requeued == 0:
            assert time.monotonic() < deadline, "the stalled session's task was never taken back"
            r = await store.reclaim(NOW)
            ended += r.sessions_ended
            requeued += r.requeued
            await asyncio.sleep(0.02)
        assert (ended, requeued) == (1, 1)
        info = await store.get(ours)
        assert info is not None and info.status is TaskStatus.QUEUED
        other = await store.get(theirs)
        assert other is not None and other.status is TaskStatus.RUNNING  # still locked
        assert sessions(url, "someone-else") == 1
        # The stopped client's session is gone: nothing it had sent can commit.
        assert sessions(url, "legion-stopped-worker", waiting=False) == 0
    finally:
        await store.aclose()
