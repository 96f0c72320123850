"""The counts of a SQLite store's tasks by tenant, status and agent, in `task_counts`.

Until schema 18 an index on (tenant, status, agent) answered them, and each status change
rewrote the task's entry in it: a delete and an insert, ~2.8 us of a no-op task's ~13 us
of SQL (``benchmarks/sql_per_row.py``). Now every statement that adds a task or changes
its status moves the counts in the same transaction, a statement per batch: a submit and
a lease from the rows they hold (`count_new`, `count_leased`), the others from the change
feed's rows they log (`count_logged`, called by `legion.store.sqlite_feed`). A row may hold
zero; the readers leave those out. (The completions' write knows its changes and moves
the counts from them, `count_ended`.)
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from typing import Any

from legion.store.queries import queries
from legion.store.sqlite_rows import execute_rows
from legion.task import TaskStatus

_Q = queries("sqlite")
_MOVE = _Q["count_tasks"]
_LOGGED = _Q["logged_counts"]
_LAST_EVENT = _Q["last_event"]


def count_new(db: sqlite3.Connection, tasks: Iterable[tuple[str, str]], status: str) -> None:
    """New tasks, as ``(tenant, agent)`` pairs, all in ``status``."""
    _move(db, {(tenant, status, agent): n for (tenant, agent), n in Counter(tasks).items()})


def count_leased(db: sqlite3.Connection, tasks: Iterable[tuple[str, str]]) -> None:
    """Leased tasks, as ``(tenant, agent)`` pairs: each went from queued to running."""
    running = TaskStatus.RUNNING.value
    groups = Counter(tasks)  # (the pairs counted first: a batch has few of them)
    moved = ((tenant, running, agent, n) for (tenant, agent), n in groups.items())
    _move(db, _left(TaskStatus.QUEUED, moved))


def last_logged(db: sqlite3.Connection) -> int:
    """The change feed's last row (what `count_logged` counts after)."""
    (last,) = db.execute(_LAST_EVENT).fetchone()
    return int(last)


def count_logged(db: sqlite3.Connection, after: int, was: str) -> None:
    """The tasks of the feed's rows after ``after``, which each left ``was`` for the status
    its row logged."""
    _move(db, _left(was, db.execute(_LOGGED, {"after": after})))


def count_ended(db: sqlite3.Connection, ended: Iterable[tuple[str, str, str]], was: str) -> None:
    """Tasks, as ``(tenant, status, agent)``, that each left ``was`` for that status."""
    _move(db, _left(was, ((*group, n) for group, n in Counter(ended).items())))


def count_removed(db: sqlite3.Connection, removed: Iterable[tuple[str, str, str]]) -> None:
    """Deleted tasks, as ``(tenant, status, agent)``."""
    _move(db, {group: -n for group, n in Counter(removed).items()})


def _left(was: str, groups: Iterable[tuple[str, str, str, int]]) -> dict[tuple[str, str, str], int]:
    """The moves of ``(tenant, status, agent, n)`` groups of tasks that each left ``was``."""
    moves: dict[tuple[str, str, str], int] = {}
    for tenant, status, agent, n in groups:
        moves[tenant, status, agent] = moves.get((tenant, status, agent), 0) + n
        moves[tenant, was, agent] = moves.get((tenant, was, agent), 0) - n
    return moves


def _move(db: sqlite3.Connection, moves: dict[tuple[str, str, str], int]) -> None:
    rows: list[Any] = [(*group, n) for group, n in moves.items() if n]
    execute_rows(db, _MOVE, rows)
