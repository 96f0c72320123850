"""The change feed of the SQLite store: one `events` row per status change of a task.

Until schema 14 a trigger wrote them. A trigger on `tasks` cost every UPDATE that sets
`status` - the completions above all: ~5 us a completion of ~14 (see
``benchmarks/sql_per_row.py``) - even where it did not fire, as an UPDATE that may fire a
trigger keeps an undo journal of its own. So each statement that changes a status now
returns the ids it changed, and its caller logs them here in the same transaction, right
after it (the feed stays in commit order). Each row reads the status and attempt the task
holds. The caller says which status the tasks left (``was``), and the counts by status
(`legion.store.sqlite_counts`) move with the rows logged.

The completions' write knows what each change it applied left on the task (`log_ended`):
its rows go in as they are, with no read of the tasks, and the counts move from them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from operator import itemgetter

from legion.store.queries import queries
from legion.store.sqlite_counts import count_ended, count_logged, last_logged
from legion.store.sqlite_rows import execute_rows

_LOG = queries("sqlite")["log_event"]
_LOG_MANY = queries("sqlite")["log_events"]
_LOG_ENDED = queries("sqlite")["log_ended"]

Ended = tuple[int, str, int, str | None, str, str]
"""A change the caller knows: ``(task id, status, attempt, worker, tenant, agent)``."""

_TENANT_STATUS_AGENT = itemgetter(4, 1, 5)  # an `Ended`'s group in the counts


def log_changes(
    db: sqlite3.Connection,
    ids: Iterable[int],
    at: float,
    worker: str | None = None,
    *,
    was: str,
) -> None:
    """Log the status each task of ``ids`` holds now, which it took in place of ``was``;
    ``worker``: whose lease the changes ended (``None``: no lease's)."""
    _log(db, [(i, at, worker) for i in ids], was)


def log_changes_by(
    db: sqlite3.Connection, changes: Iterable[tuple[str | None, int]], at: float, *, was: str
) -> None:
    """`log_changes` with a worker per task: ``(worker, task id)`` pairs."""
    _log(db, [(task_id, at, worker) for worker, task_id in changes], was)


def log_ended(db: sqlite3.Connection, ended: Sequence[Ended], at: float, *, was: str) -> None:
    """Log changes whose new status and attempt the caller knows, which each took in place
    of ``was`` (``worker``: whose lease it ended), and move the counts by them."""
    if not ended:
        return
    execute_rows(db, _LOG_ENDED, [(e[0], at, e[1], e[2], e[3]) for e in ended])
    count_ended(db, map(_TENANT_STATUS_AGENT, ended), was)


def _log(db: sqlite3.Connection, rows: list[tuple[int, float, str | None]], was: str) -> None:
    """``(task id, at, worker)`` rows: several in one statement (``log_events``), a single
    one as it is; then the counts."""
    if not rows:
        return
    after = last_logged(db)
    if len(rows) == 1:
        db.execute(_LOG, rows[0])
    else:
        execute_rows(db, _LOG_MANY, rows, pad=True)
    count_logged(db, after, was)
