"""Record a task that froze its worker's event loop: the short path of a frozen worker.

When an agent blocks the event loop past its timeout (CPU-bound code on the default
executor), the worker's own store cannot be used: it runs on that loop. The watchdog's
thread calls `record_freeze` instead, which opens a connection of its own (sqlite3,
or psycopg's blocking one), bounded by ``timeout``, and in one transaction:

- counts the freeze on the task (``tasks.freezes``), fenced by its lease: at
  ``max_freezes`` the task is dead with a clear reason, else it goes back to the queue
  without spending an attempt;
- gives the worker's other tasks back to the queue unfinished, without spending an
  attempt (they did nothing wrong; their recorded steps are kept).

On PostgreSQL it first ends the process's own sessions (found by their
``application_name``): a transaction that the frozen loop left open would otherwise hold
its row locks until the process exits.

The worker then exits, and its supervisor starts another.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from legion.errors import StoreError
from legion.store.queries import queries
from legion.store.sqlite_feed import log_changes
from legion.store.sqlite_waiting import wake_parents
from legion.task import ErrorInfo, TaskStatus


@dataclass(frozen=True, slots=True)
class Freeze:
    """Task ``task_id`` (lease ``attempt`` of worker ``owner``) blocked the event loop past
    its ``limit`` (seconds); ``site`` is where it was stuck."""

    task_id: int
    attempt: int
    owner: str
    limit: float
    max_freezes: int
    now: float
    site: str = ""
    computing: bool = True
    """The loop's thread was computing (the cure: a process), not asleep in a call (the
    cure: an async call, or a thread)."""

    def errors(self) -> tuple[bytes, bytes]:
        """The task's error while it may run again, and once it is dead."""
        hint = (
            "use executor='process'"
            if self.computing
            else "make the blocking call async, or `await asyncio.to_thread(...)` it"
        )
        again = ErrorInfo(
            "EventLoopFrozen",
            f"blocked the event loop for {self.limit:g} s: its worker exited "
            f"(at {self.max_freezes} such freezes the task is dead; {hint})",
            self.site,
        )
        dead = ErrorInfo(
            "EventLoopFrozen",
            f"blocked the event loop for {self.limit:g} s, "
            f"{'once' if self.max_freezes == 1 else f'{self.max_freezes} times'}: {hint}",
            self.site,
        )
        return again.to_json(), dead.to_json()

    def params(self) -> dict[str, object]:
        error, dead_error = self.errors()
        return {
            "id": self.task_id,
            "attempt": self.attempt,
            "owner": self.owner,
            "max_freezes": self.max_freezes,
            "now": float(self.now),
            "error": error,
            "dead_error": dead_error,
        }


def record_freeze(url: str, freeze: Freeze, *, timeout: float = 5.0) -> TaskStatus | None:
    """Record ``freeze`` in the store at ``url`` (blocking; call it off the event loop).
    Answer the task's new status, or None when its lease had moved on already."""
    if url.startswith("sqlite://"):
        return _sqlite(url, freeze, freeze.owner, freeze.now, timeout)
    if url.startswith(("postgresql://", "postgres://")):
        return _postgres(url, freeze, freeze.owner, freeze.now, timeout)
    raise StoreError(f"cannot record a frozen task in {url!r}")


def release_worker(url: str, owner: str, now: float, *, timeout: float = 5.0) -> None:
    """Give every task ``owner`` runs back to the queue unfinished (blocking), for a worker
    that must exit while its loop is frozen (a signal asked it to stop)."""
    record = _sqlite if url.startswith("sqlite://") else _postgres
    if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise StoreError(f"cannot release tasks in {url!r}")
    record(url, None, owner, now, timeout)


def _ended(frozen: Any, released: Sequence[Any]) -> list[int]:
    """The tasks a frozen worker's record ended (dead, or cancelled: asked before), from
    ``freeze_task``'s row (status, id) and ``release_owner``'s (id, status)."""
    ended = [r[0] for r in released if r[1] == "cancelled"]
    if frozen is not None and frozen[0] in ("dead", "cancelled"):
        ended.append(frozen[1])
    return ended


def _sqlite(
    url: str, freeze: Freeze | None, owner: str, now: float, timeout: float
) -> TaskStatus | None:
    path = url.removeprefix("sqlite://")[1:]
    if path == ":memory:":
        raise StoreError("an in-memory store cannot be reached from another connection")
    q = queries("sqlite")
    row = None
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        if freeze is not None:
            row = db.execute(q["freeze_task"], freeze.params()).fetchone()
            log_changes(db, [row[1]] if row else [], now, owner, was=TaskStatus.RUNNING)
        released = db.execute(q["release_owner"], {"owner": owner, "now": now}).fetchall()
        log_changes(db, (r[0] for r in released), now, owner, was=TaskStatus.RUNNING)
        wake_parents(db, _ended(row, released), now)
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"recording a frozen worker's tasks failed: {exc}") from exc
    finally:
        db.close()
    return TaskStatus(row[0]) if row else None


def _postgres(
    url: str, freeze: Freeze | None, owner: str, now: float, timeout: float
) -> TaskStatus | None:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from legion.store.postgres import PROCESS_TAG, _split_url, _with_bounds
    from legion.store.timeouts import StoreTimeouts

    q = queries("postgres")
    conninfo, _ = _split_url(url)
    bounds = StoreTimeouts.for_lease().with_call(timeout)
    bounded = make_conninfo(
        _with_bounds(conninfo, bounds, server=True), application_name="legion-frozen-worker"
    )
    row = None
    try:
        with psycopg.connect(bounded) as conn:
            # This process's own sessions may hold locks in transactions its frozen loop
            # will never finish: end them first (they would end with the process anyway;
            # a role not allowed to end them waits for their timeouts instead).
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(q["end_sessions"], {"tag": PROCESS_TAG})
            if freeze is not None:
                row = conn.execute(q["freeze_task"], freeze.params()).fetchone()
            released = conn.execute(
                q["release_owner"], {"owner": owner, "now": float(now)}
            ).fetchall()
            if ended := _ended(row, released):  # (their waiting parents end their waits)
                waiting = queries("postgres", "waiting")
                conn.execute(waiting["lock_parents"], {"ids": ended})
                conn.execute(waiting["wake_parents"], {"ids": ended})
    except psycopg.Error as exc:
        raise StoreError(f"recording a frozen worker's tasks failed: {exc}") from exc
    return TaskStatus(row[0]) if row else None
