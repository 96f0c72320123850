"""``SQLiteStore``: the embedded store: one file (WAL), zero set-up.

Every call runs on one dedicated thread that owns the connection, so the event loop
never blocks on disk and SQLite sees a single writer per process. Write transactions
start with ``BEGIN IMMEDIATE``: they take the write lock up front, so several processes
sharing one file queue on ``busy_timeout`` instead of failing with ``SQLITE_BUSY_SNAPSHOT``
(which a deferred read-then-write transaction can get and which no timeout retries).

``sqlite3`` errors leave the store translated, once, in `SQLiteStore._call`: a full
disk (``SQLITE_FULL``) as `legion.errors.StorageFull`; a file that is busy,
locked, cannot be opened or fails to read or write as
`legion.errors.StoreUnavailable`; anything else as
`legion.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

from legion import codec, identity
from legion.clock import Clock, system_clock
from legion.errors import (
    ConfigError,
    LeaseLost,
    StorageFull,
    StoreError,
    StoreGone,
    StoreUnavailable,
)
from legion.store.queries import migrations, queries
from legion.store.rows import attempt_record, event_detail, leases, task_info
from legion.store.sqlite_batches import SQLiteBatches
from legion.store.sqlite_counts import count_leased, count_new, count_removed
from legion.store.sqlite_feed import Ended, log_changes, log_changes_by, log_ended
from legion.store.sqlite_ledger import SQLiteLedger
from legion.store.sqlite_rows import CACHED_STATEMENTS, execute_rows
from legion.store.sqlite_submit import SQLiteSubmissions
from legion.store.sqlite_waiting import SQLiteWaiting, after_completions, wake_parents
from legion.store.tenancy import KeyedTasks, scoped_key
from legion.store.turns import Turns, share_of
from legion.store.types import (
    CRASHED_ITS_WORKER,
    LEASE_LOST,
    ApiKey,
    AttemptRecord,
    AutoscalerInfo,
    Backlog,
    CapacityClaims,
    DiagnosticRecord,
    Event,
    EventDetail,
    Extended,
    MemoryWrite,
    Purged,
    Reclaimed,
    StepInfo,
    TaskQuery,
    WorkerInfo,
    WriteBatch,
    terminal_statuses,
)
from legion.store.waits import QueueWaits
from legion.task import (
    Completion,
    Lease,
    NewTask,
    Outcome,
    Submitted,
    TaskInfo,
    TaskStatus,
)

T = TypeVar("T")
Q = queries("sqlite")

# Ends of an attempt that do not count it: given back, or suspended at a wait.
_UNCOUNTED = (Outcome.RELEASED, Outcome.WAITING)


_RETRIABLE = ("dead", "failed", "cancelled")  # what a retry queues again (`requeue_many`)
_REQUEUE_CHUNK = 5000  # ids a transaction of `requeue_many`
_LOWEST_PRIORITY = -(2**63)  # `lease` without a `min_priority`: every priority
_TENANT_AGENT = itemgetter(8, 1)  # a leased row's group in the counts (see `_lease_agent`)


log = logging.getLogger("legion.store.sqlite")

_PURGED_WITH_TASKS = (
    "purge_steps",
    "purge_attempts",
    "purge_diagnostics",
    "purge_signals",
    "purge_batch_calls",
)
"""What hangs off a task, deleted with it (`SQLiteStore.purge`)."""


def purged_spend(rows: Sequence[Sequence[Any]]) -> list[tuple[str, str, int, int, float]]:
    """What purged tasks (rows of ``id, tenant, status, agent, session, usage``) had spent
    on LLM calls, per agent and per tenant: ``(scope, name, calls, tokens, cost)``, as
    ``add_purged_spend`` adds it to what budgets count (`legion.run.spending`)."""
    totals: dict[tuple[str, str], tuple[int, int, float]] = {}
    for row in rows:
        if row[5] is None:
            continue
        usage = codec.loads(row[5])
        calls = int(usage.get("llm_calls", 0))
        tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        cost = float(usage.get("cost_usd", 0.0))
        if not (calls or tokens or cost):
            continue
        for key in (("agent", str(row[3])), ("tenant", str(row[1]))):
            c, t, d = totals.get(key, (0, 0, 0.0))
            totals[key] = (c + calls, t + tokens, d + cost)
    return [(scope, name, *spent) for (scope, name), spent in totals.items()]


def _terminal_statuses(statuses: Sequence[TaskStatus]) -> str:
    """``statuses`` as the JSON array the purge queries read (`terminal_statuses`)."""
    return codec.dumps(terminal_statuses(statuses)).decode()


def _tables(db: sqlite3.Connection) -> list[str]:
    """The tables a SQLite file holds (SQLite's own left out)."""
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    )
    return [name for (name,) in rows]


def _read_only(path: str) -> bool:
    """Whether the store's file, or the folder its journal files go to, cannot be written
    (``access`` says so for a read-only file system whoever asks, root included)."""
    file = Path(path)
    return (file.exists() and not os.access(file, os.W_OK)) or not os.access(file.parent, os.W_OK)


def _identity(db: sqlite3.Connection, give: bool = False) -> int:
    """The store's own number, kept in its file's header (``application_id``); with
    ``give`` (in a write transaction) a random one if it has none yet (made by an older
    legion). A store deleted and made again at the same path has another: a file left
    beside it by the one before (its vectors) is known as not its own."""
    (found,) = db.execute("PRAGMA application_id").fetchone()
    if found or not give:
        return int(found)
    made = secrets.randbelow(2**31 - 1) + 1
    db.execute(f"PRAGMA application_id = {made}")
    return made


SKIPPABLE = ((6, "tasks", "crashes"), (10, "tasks", "needs"), (15, "llm_batch_calls", None))
"""Migrations that landed after a later one on the way to this release (a store made in
between has the later one's version without the earlier one's objects; a SQLite store
keeps its version alone), each known by a table or column it makes."""


def _skipped(db: sqlite3.Connection, current: int) -> set[int]:
    """The `SKIPPABLE` migrations below the store's version whose objects it lacks."""
    out = set()
    for version, table, column in SKIPPABLE:
        if version >= current:
            continue
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not columns or (column is not None and column not in columns):
            out.add(version)
    return out


def _schema_version(db: sqlite3.Connection) -> int:
    """The store's schema version (its last migration): 0 for a file legion never set up."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)


LIVE_WORKER = 60.0
"""Seconds since its last heartbeat that a registered worker counts as running (twice
the default lease: one that died without leaving is forgotten after it)."""


def _refuse_live_workers(
    db: sqlite3.Connection, current: int, latest: int, skipped: Collection[int] = ()
) -> None:
    """Refuse to upgrade a store that running workers use: they are of an older legion
    (one of this version would have upgraded it) and would go on writing the old schema's
    way (from version 18 the counts by status are kept by legion's own statements, which
    an older worker does not make: the counts went wrong for good)."""
    since = time.time() - LIVE_WORKER
    if current < 6 or 6 in skipped:  # (before workers said who they are: 0006)
        live = db.execute(
            "SELECT host, pid FROM workers WHERE heartbeat_at > ? ORDER BY heartbeat_at DESC",
            (since,),
        ).fetchall()
    else:  # a worker whose process is certainly gone (killed, on this host) is none
        me = identity.current()
        live = [
            (host, pid)
            for host, pid, boot, ns, start in db.execute(
                "SELECT host, pid, boot_id, pid_ns, proc_start FROM workers "
                "WHERE heartbeat_at > ? ORDER BY heartbeat_at DESC",
                (since,),
            )
            if not identity.is_gone(identity.ProcessIdentity(boot, ns, pid, start), me)
        ]
    if live:
        shown = ", ".join(f"pid {pid} on {host}" for host, pid in live[:5])
        more = f" and {len(live) - 5} more" if len(live) > 5 else ""
        older = (
            f"the store's schema is version {current}, older than this legion's ({latest})"
            if current < latest
            else f"the store lacks migration {', '.join(map(str, sorted(skipped)))}"
        )
        raise ConfigError(
            f"{older}, and {len(live)} worker(s) of an older legion run on it "
            f"({shown}{more}): stop "
            f"them, then start this version (a worker that died on another host is "
            f"forgotten {LIVE_WORKER:.0f} s after its last heartbeat); nothing was changed"
        )


class SQLiteStore(SQLiteSubmissions, SQLiteWaiting, SQLiteLedger, SQLiteBatches):
    """A `legion.store.base.Store` in one SQLite file (or ``:memory:``).

    ``clock``: the store's time (`now`), the wall clock of its one host by default; a
    test gives the `legion.testing.FakeClock` its workers run on."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 30.0,
        create: bool = True,
        clock: Clock = system_clock,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._create = create
        self.url = f"sqlite:///{self.path}"
        self._busy_ms = int(busy_timeout * 1000)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="legion-sqlite")
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (the file opened: see `_still_there`)
        self._where = ""
        self.identity: int | None = None
        """This store's own number (`_identity`), set when it opens: what ties the files
        beside it (its vectors) to it. ``None`` for ``:memory:``."""
        self._waits = QueueWaits()
        self._init_submissions()

    def queue_delay(self) -> float | None:
        """The mean seconds the calls since the last read waited for the store's thread
        (``None``: none began)."""
        return self._waits.take()

    # -- plumbing ----------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        queued = time.monotonic()
        waits = self._waits

        def begun(*args: Any) -> T:
            waits.add(time.monotonic() - queued)
            return fn(*args)

        try:
            return await loop.run_in_executor(self._thread, begun, *args)
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from exc
        except RuntimeError as exc:
            if self._closed:  # (its thread takes no more calls)
                raise StoreError("the store is closed") from exc
            raise

    def _store_error(self, exc: sqlite3.Error) -> StoreError:
        return _translate(exc, self.path)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is not open (use `async with` or call open())")
        return self._conn

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            # Some errors (SQLITE_FULL, SQLITE_IOERR...) roll the transaction back already.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise ConfigError(f"cannot create the store {self.path}: {parent} is not a folder")
            if not self._create and not Path(self.path).is_file():
                raise ConfigError(
                    f"no store at {self.path} (`legion worker`, `legion run` or `legion "
                    "schedule add` with this --store creates it)"
                )
        try:
            db = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=CACHED_STATEMENTS,
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the store {self.path}: {exc}") from exc
        self._conn = db
        try:
            db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            version = _schema_version(db)
            if version == 0 and self.path != ":memory:":
                # A SQLite file of something else (or empty): left as it was, as a
                # PostgreSQL schema without legion's tables is.
                if foreign := _tables(db):
                    shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                    raise ConfigError(
                        f"no store at {self.path}: the file holds another program's tables "
                        f"({shown}), and legion keeps its store in a file of its own: give "
                        "--store a new file"
                    )
                if not self._create:
                    raise ConfigError(
                        f"no store at {self.path}: the file has no legion tables (`legion "
                        "worker`, `legion run` or `legion schedule add` with this --store "
                        "creates them)"
                    )
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA temp_store = MEMORY")
            db.execute("PRAGMA cache_size = -65536")
            if version != migrations("sqlite")[-1][0]:
                # (Only then the write lock: a store in use by another process's long
                # transaction still opens for `legion status` and the other readers.)
                self._transaction(self._migrate)
            if self.path != ":memory:":
                self.identity = _identity(db) or self._transaction(
                    lambda db: _identity(db, give=True)
                )
                # (its absolute path: an agent's os.chdir moves a relative one elsewhere)
                self._where = os.path.abspath(self.path)
                self._file = _file_of(self._where)
        except ConfigError:  # (refused to upgrade: nothing was changed)
            db.close()
            self._conn = None
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            self._conn = None
            if self.path != ":memory:" and _read_only(self.path):
                raise ConfigError(
                    f"cannot write the store {self.path}: its file or folder is read-only "
                    "(a read-only file system, or permissions); SQLite writes the store and "
                    "its -wal and -shm files beside it, even to read it"
                ) from exc
            found = _translate(exc, self.path)
            if found.retryable:  # full, busy or locked: not the file's fault
                raise found from exc
            raise StoreError(f"{self.path} is not a usable legion store: {exc}") from exc

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        current = _schema_version(db)
        known = migrations("sqlite")
        if current > known[-1][0]:
            raise StoreError(
                f"the store's schema is version {current}, newer than this legion "
                f"understands ({known[-1][0]}); upgrade legion"
            )
        latest = known[-1][0]
        skipped = _skipped(db, current)
        if 0 < current < latest or skipped:
            _refuse_live_workers(db, current, latest, skipped)
        for version, script in known:
            if version <= current and version not in skipped:
                continue
            for statement in _statements(script):
                db.execute(statement)
            if version > current:
                db.execute(f"PRAGMA user_version = {version}")
            else:
                log.warning(
                    "applied migration %d, which the store lacked (it was made by a build "
                    "that skipped it)",
                    version,
                )
        if 0 < current < latest:
            log.warning("upgraded the store's schema from version %d to %d", current, latest)

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._call(self._close)
        self._closed = True
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def schema_version(self) -> int:
        return await self._call(lambda: int(self._db.execute("PRAGMA user_version").fetchone()[0]))

    # -- tasks -------------------------------------------------------------------------

    @staticmethod
    def _submit(db: sqlite3.Connection, tasks: Sequence[NewTask], now: float) -> list[Submitted]:
        # Keys that exist answer their task (or, sent with another input, refuse the whole
        # submission); the rest are inserted in one executemany. This runs under BEGIN
        # IMMEDIATE, so no other writer can slip in between, and rows inserted together get
        # consecutive ids.
        if all(t.key is None for t in tasks):  # nothing to look up: insert them all
            return _insert_unkeyed(db, tasks, now)
        keyed = KeyedTasks(tasks)
        keys = [k for k in keyed.keys if k is not None]
        existing: dict[str, tuple[int, str]] = {}
        hashes: dict[str, bytes | None] = {}
        if keys:
            for chunk in _chunks(keys, 5000):
                rows = db.execute(Q["tasks_by_keys"], {"keys": codec.dumps(chunk).decode()})
                for k, i, st, h in rows:
                    existing[k] = (i, st)
                    hashes[k] = h
            keyed.check(hashes)
        fresh: list[tuple[NewTask, str | None, bytes | None]] = []
        seen: set[str] = set()
        for t, k, h in zip(tasks, keyed.keys, keyed.hashes, strict=True):
            if k is None or (k not in existing and k not in seen):
                fresh.append((t, k, h))
                if k is not None:
                    seen.add(k)
        first_id = 0
        if fresh:
            _insert_each(db, fresh, now)
            (last_id,) = db.execute("SELECT last_insert_rowid()").fetchone()
            count_new(db, [(t.tenant, t.agent) for t, _, _ in fresh], TaskStatus.QUEUED)
            first_id = last_id - len(fresh) + 1
        out: list[Submitted] = []
        new_ids: dict[str, int] = {}
        n = 0
        for t, k in zip(tasks, keyed.keys, strict=True):
            if k is not None and k in existing:
                task_id, status = existing[k]
                out.append(Submitted(task_id, t.key, TaskStatus(status), False))
            elif k is not None and k in new_ids:  # the same key twice in one call
                out.append(Submitted(new_ids[k], t.key, TaskStatus.QUEUED, False))
            else:
                task_id = first_id + n
                n += 1
                if k is not None:
                    new_ids[k] = task_id
                out.append(Submitted(task_id, t.key, TaskStatus.QUEUED, True))
        return out

    async def lease(
        self,
        owner: str,
        wants: Mapping[str, int],
        total: int,
        until: float,
        now: float,
        *,
        isolated: bool = False,
        offer: Mapping[str, float] | None = None,
        min_priority: int | None = None,
        tenant_cap: int | None = None,
    ) -> list[Lease]:
        if total <= 0 or not any(n > 0 for n in wants.values()):
            return []
        lowest = _LOWEST_PRIORITY if min_priority is None else min_priority
        offered = codec.dumps(dict(offer or {})).decode()
        if isolated:
            return await self._call(
                self._transaction,
                lambda db: self._lease_isolated(db, owner, wants, total, until, now, offered),
            )
        return await self._call(
            self._transaction,
            lambda db: self._lease(
                db, owner, wants, total, until, now, offered, lowest, tenant_cap
            ),
        )

    @staticmethod
    def _lease_isolated(
        db: sqlite3.Connection,
        owner: str,
        wants: Mapping[str, int],
        total: int,
        until: float,
        now: float,
        offer: str,
    ) -> list[Lease]:
        agents = codec.dumps([a for a, n in wants.items() if n > 0]).decode()
        params = {
            "owner": owner,
            "until": until,
            "now": now,
            "agents": agents,
            "offer": offer,
            "limit": total,
        }
        return _with_steps(db, db.execute(Q["lease_isolated"], params).fetchall())

    @staticmethod
    def _lease(
        db: sqlite3.Connection,
        owner: str,
        wants: Mapping[str, int],
        total: int,
        until: float,
        now: float,
        offer: str,
        lowest: int,
        cap: int | None,
    ) -> list[Lease]:
        rows: list[Any] = []
        for agent, want in wants.items():
            limit = min(want, total - len(rows))
            if limit <= 0:
                continue
            params = {
                "owner": owner,
                "until": until,
                "now": now,
                "agent": agent,
                "limit": limit,
                "offer": offer,
                "min_priority": lowest,
            }
            rows.extend(_lease_agent(db, params, cap))
        return _with_steps(db, rows)

    async def write(self, batch: WriteBatch, now: float) -> list[bool]:
        return await self._call(self._transaction, lambda db: self._write(db, batch, now))

    @staticmethod
    def _write(db: sqlite3.Connection, batch: WriteBatch, now: float) -> list[bool]:
        live = _fence(db, batch)
        if batch.steps:
            steps = [
                (s.task_id, s.key, s.attempt, s.output, s.started_at, s.finished_at)
                for s in batch.steps
                if (s.task_id, s.attempt, s.owner) in live
            ]
            execute_rows(db, Q["insert_steps"], steps)
        for m in batch.memory:
            if m.task_id is not None and (m.task_id, m.attempt, m.owner) not in live:
                continue
            if m.value is None:
                db.execute(Q["delete_memory"], {"session": m.session, "key": m.key})
            else:
                row = {"session": m.session, "key": m.key, "value": m.value, "now": now}
                db.execute(Q["set_memory"], row)
        if batch.diagnostics:
            db.executemany(
                Q["insert_diagnostic"],
                [
                    {
                        "task_id": d.task_id,
                        "attempt": d.attempt,
                        "agent": d.agent,
                        "kind": d.kind,
                        "data": d.data,
                    }
                    for d in batch.diagnostics
                    if (d.task_id, d.attempt, d.owner) in live
                ],
            )
        if not batch.completions:
            return []
        completions = batch.completions
        errors = [c.error.to_json() if c.error is not None else None for c in completions]
        params = [_completion_params(c, e) for c, e in zip(completions, errors, strict=True)]
        db.execute("SAVEPOINT completions")
        if execute_rows(db, Q["complete_many"], params, pad=True) == len(params):
            db.execute("RELEASE completions")
            applied = [True] * len(params)
        else:
            # Some lease was lost (rare): undo and apply row by row to learn which.
            db.execute("ROLLBACK TO completions")
            applied = [db.execute(Q["complete"], p).rowcount == 1 for p in params]
            db.execute("RELEASE completions")
        done = [(c, e) for c, e, ok in zip(completions, errors, applied, strict=True) if ok]
        known = _ended(c for c, _ in done)
        if known is not None:
            log_ended(db, known, now, was=TaskStatus.RUNNING)
        else:
            log_changes_by(db, [(c.owner, c.id) for c, _ in done], now, was=TaskStatus.RUNNING)
        # A succeeded attempt is recorded on its task's row, by the completion itself.
        ended = [_attempt_params(c, e) for c, e in done if c.outcome is not Outcome.SUCCEEDED]
        execute_rows(db, Q["insert_attempts"], ended)
        after_completions(db, batch, applied, now)
        return applied

    async def extend_leases(
        self, owner: str, task_ids: Sequence[int], until: float, now: float
    ) -> Extended:
        params = {"owner": owner, "until": until, "ids": codec.dumps(list(task_ids)).decode()}

        def run(db: sqlite3.Connection) -> Extended:
            self._still_there()  # (every heartbeat)
            rows = db.execute(Q["extend_leases"], params).fetchall()
            return Extended(frozenset(r[0] for r in rows), frozenset(r[0] for r in rows if r[1]))

        return await self._call(self._transaction, run)

    def _still_there(self) -> None:
        """Raise `StoreGone` if the file this store opened is no longer at its path
        (deleted, or replaced by another): its writes would go where no one sees them."""
        if self._file is not None and _file_of(self._where) != self._file:
            raise StoreGone(
                f"the store's file {self.path} was deleted or replaced while this process "
                "used it: what it wrote since is lost with the deleted file, and the same "
                "command would start afresh and run every task again"
            )

    async def release_unheld(self, owner: str, keep: Sequence[int]) -> int:
        params = {"owner": owner, "keep": codec.dumps(list(keep)).decode()}

        def run(db: sqlite3.Connection) -> int:
            ids = [r[0] for r in db.execute(Q["release_unheld"], params).fetchall()]
            log_changes(db, ids, self._clock.wall(), owner, was=TaskStatus.RUNNING)
            return len(ids)

        return await self._call(self._transaction, run)

    async def now(self) -> float:
        """The wall clock: a SQLite store lives on one host, and its workers share it."""
        return self._clock.wall()

    async def cancels_asked(self, owner: str) -> list[int]:
        def run() -> list[int]:
            return [r[0] for r in self._db.execute(Q["cancels_asked"], {"owner": owner})]

        return await self._call(run)

    async def absolve(self, owner: str) -> int:
        def run(db: sqlite3.Connection) -> int:
            return len(db.execute(Q["absolve"], {"owner": owner}).fetchall())

        return await self._call(self._transaction, run)

    async def reclaim(
        self, now: float, dead_owners: Sequence[str] = (), *, keep: str | None = None
    ) -> Reclaimed:
        def run(db: sqlite3.Connection) -> Reclaimed:
            params = {
                "now": now,
                "error": LEASE_LOST.to_json(),
                "crash_error": CRASHED_ITS_WORKER.to_json(),
                "dead_owners": codec.dumps(list(dead_owners)).decode(),
                "keep": keep,
            }
            owners = dict(db.execute(Q["reclaimable"], params).fetchall())
            db.execute(Q["insert_lost_attempts"], params)
            rows = db.execute(Q["reclaim"], params).fetchall()
            log_changes_by(
                db, ((owners.get(r[0]), r[0]) for r in rows), now, was=TaskStatus.RUNNING
            )
            statuses = [r[1] for r in rows]
            wake_parents(db, [r[0] for r in rows if r[1] in ("dead", "cancelled")], now)
            return Reclaimed(
                requeued=statuses.count("queued"),
                dead=statuses.count("dead"),
                cancelled=statuses.count("cancelled"),
            )

        return await self._call(self._transaction, run)

    async def cancel(self, task_id: int, now: float) -> TaskStatus | None:
        def run(db: sqlite3.Connection) -> TaskStatus | None:
            was = db.execute(Q["status_of"], {"id": task_id}).fetchone()
            if was is None:
                return None
            cancelled = db.execute(Q["cancel_queued"], {"id": task_id, "now": now}).fetchall()
            if cancelled:  # it was queued or waiting
                log_changes(db, [task_id], now, was=was[0])
                wake_parents(db, [task_id], now)  # (a parent waiting for it ends its wait)
                return TaskStatus.CANCELLED
            db.execute(Q["cancel_running"], {"id": task_id})  # asked: ends when it stops
            return TaskStatus(was[0])

        return await self._call(self._transaction, run)

    async def cancel_many(self, task_ids: Sequence[int], now: float) -> dict[int, TaskStatus]:
        ids = codec.dumps(list(dict.fromkeys(task_ids))).decode()

        def run(db: sqlite3.Connection) -> dict[int, TaskStatus]:
            was = dict(db.execute(Q["statuses"], {"ids": ids}).fetchall())
            params = {"ids": ids, "now": now}
            cancelled = [r[0] for r in db.execute(Q["cancel_queued_many"], params)]
            for status in ("queued", "waiting"):  # (the feed and the counts, by what was)
                log_changes(db, [i for i in cancelled if was[i] == status], now, was=status)
            wake_parents(db, cancelled, now)  # (a parent waiting for them ends its wait)
            db.execute(Q["cancel_running_many"], {"ids": ids})  # asked: ends when it stops
            after = {i: TaskStatus(status) for i, status in was.items()}
            after.update(dict.fromkeys(cancelled, TaskStatus.CANCELLED))
            return after

        return await self._call(self._transaction, run)

    async def requeue(
        self,
        statuses: Sequence[TaskStatus],
        *,
        agent: str | None = None,
        tenant: str | None = None,
    ) -> int:
        def run(db: sqlite3.Connection) -> int:
            now = self._clock.wall()
            requeued = 0
            for status in dict.fromkeys(str(s) for s in statuses):  # one status at a time,
                params = {"statuses": codec.dumps([status]).decode(), "agent": agent}
                params["tenant"] = tenant
                requeued += _requeue(db, "requeue", params, now, status)  # for the counts
            return requeued

        return await self._call(self._transaction, run)

    async def requeue_one(self, task_id: int) -> bool:
        return bool(await self.requeue_many([task_id]))

    async def requeue_many(self, task_ids: Sequence[int]) -> list[int]:
        queued: list[int] = []
        for chunk in _chunks(list(dict.fromkeys(task_ids)), _REQUEUE_CHUNK):
            ids = codec.dumps(chunk).decode()
            queued += await self._call(self._transaction, partial(self._requeue_ids, ids=ids))
        return queued

    def _requeue_ids(self, db: sqlite3.Connection, *, ids: str) -> list[int]:
        """One chunk of `requeue_many` (``ids``: a JSON list), in its transaction."""
        was = dict(db.execute(Q["statuses"], {"ids": ids}).fetchall())
        queued = [r[0] for r in db.execute(Q["requeue_many"], {"ids": ids})]
        now = self._clock.wall()
        for status in _RETRIABLE:  # (the feed and the counts, by what each was)
            log_changes(db, [i for i in queued if was[i] == status], now, was=status)
        return queued

    async def purge(
        self,
        before: float,
        statuses: Sequence[TaskStatus],
        *,
        agent: str | None = None,
        tenant: str | None = None,
        limit: int = 1000,
        after: int = 0,
        feed: bool = True,
    ) -> Purged:
        terminal = _terminal_statuses(statuses)

        def run(db: sqlite3.Connection) -> Purged:
            params = {"before": before, "statuses": terminal, "agent": agent, "tenant": tenant}
            params.update(limit=limit, after=after, feed_after=0)
            rows = db.execute(Q["purge_tasks"], params).fetchall()
            own = [str(scoped_key(r[1], f"task-{r[0]}")) for r in rows if r[4] is None]
            if rows:
                ids = {"ids": codec.dumps([r[0] for r in rows]).decode()}
                for name in _PURGED_WITH_TASKS:
                    db.execute(Q[name], ids)
                if own:
                    db.execute(Q["purge_memory"], {"sessions": codec.dumps(own).decode()})
                spent = purged_spend(rows)
                if spent:
                    db.executemany(Q["add_purged_spend"], spent)
                count_removed(db, ((r[1], r[2], r[3]) for r in rows))
            events = len(db.execute(Q["purge_events"], params).fetchall()) if feed else 0
            last = max((r[0] for r in rows), default=0)
            return Purged(tasks=len(rows), events=events, sessions=tuple(own), last=last)

        return await self._call(self._transaction, run)

    async def purge_feed(self, before: float, *, after: int = 0, limit: int = 1000) -> Purged:
        params = {"before": before, "feed_after": after, "limit": limit}

        def run(db: sqlite3.Connection) -> Purged:
            ids = [r[0] for r in db.execute(Q["purge_events"], params)]
            return Purged(tasks=0, events=len(ids), last=max(ids, default=0))

        return await self._call(self._transaction, run)

    async def purged_spend(self, scope: str, name: str) -> tuple[int, int, float]:
        def run() -> tuple[int, int, float]:
            row = self._db.execute(Q["purged_spend"], {"scope": scope, "name": name}).fetchone()
            return (0, 0, 0.0) if row is None else (int(row[0]), int(row[1]), float(row[2]))

        return await self._call(run)

    async def purgeable(
        self,
        before: float,
        statuses: Sequence[TaskStatus],
        *,
        agent: str | None = None,
        tenant: str | None = None,
    ) -> int:
        terminal = _terminal_statuses(statuses)
        params = {"before": before, "statuses": terminal, "agent": agent, "tenant": tenant}
        return await self._call(lambda: int(self._db.execute(Q["purgeable"], params).fetchone()[0]))

    # -- reads -------------------------------------------------------------------------

    async def get(self, task_id: int) -> TaskInfo | None:
        def run() -> TaskInfo | None:
            row = self._db.execute(Q["get_task"], {"id": task_id}).fetchone()
            return task_info(row) if row else None

        return await self._call(run)

    async def get_many(self, ids: Sequence[int]) -> list[TaskInfo]:
        sql = Q["get_task"].replace("id = :id", "id IN (SELECT value FROM json_each(:ids))")

        def run() -> list[TaskInfo]:
            out: list[TaskInfo] = []
            for chunk in _chunks(list(ids), 5000):
                rows = self._db.execute(sql, {"ids": codec.dumps(chunk).decode()})
                out.extend(task_info(r) for r in rows)
            return out

        return await self._call(run)

    async def statuses(self, ids: Sequence[int]) -> dict[int, TaskStatus]:
        def run() -> dict[int, TaskStatus]:
            found: dict[int, TaskStatus] = {}
            for chunk in _chunks(list(ids), 5000):
                rows = self._db.execute(Q["statuses"], {"ids": codec.dumps(chunk).decode()})
                found.update((i, TaskStatus(st)) for i, st in rows)
            return found

        return await self._call(run)

    async def find_keys(self, keys: Sequence[str]) -> dict[str, TaskInfo]:
        sql = Q["get_task"].replace("id = :id", "key IN (SELECT value FROM json_each(:keys))")

        def run() -> dict[str, TaskInfo]:
            found: dict[str, TaskInfo] = {}
            for chunk in _chunks(list(keys), 5000):
                for r in self._db.execute(sql, {"keys": codec.dumps(chunk).decode()}):
                    info = task_info(r)
                    found[info.key or ""] = info
            return found

        return await self._call(run)

    async def counts(self) -> dict[TaskStatus, int]:
        def run() -> dict[TaskStatus, int]:
            return {TaskStatus(s): n for s, n in self._db.execute(Q["counts"])}

        return await self._call(run)

    async def counts_by_tenant(self) -> dict[str, dict[TaskStatus, int]]:
        def run() -> dict[str, dict[TaskStatus, int]]:
            out: dict[str, dict[TaskStatus, int]] = {}
            for tenant, status, n in self._db.execute(Q["counts_by_tenant"]):
                out.setdefault(tenant, {})[TaskStatus(status)] = n
            return out

        return await self._call(run)

    async def count_queued(self, tenant: str) -> int:
        def run() -> int:
            (n,) = self._db.execute(Q["count_queued"], {"tenant": tenant}).fetchone()
            return int(n)

        return await self._call(run)

    async def counts_by_agent(self) -> dict[str, dict[TaskStatus, int]]:
        def run() -> dict[str, dict[TaskStatus, int]]:
            out: dict[str, dict[TaskStatus, int]] = {}
            for agent, status, n in self._db.execute(Q["counts_by_agent"]):
                out.setdefault(agent, {})[TaskStatus(status)] = n
            return out

        return await self._call(run)

    async def recent_errors(self, limit: int = 10, tenant: str | None = None) -> list[TaskInfo]:
        def run() -> list[TaskInfo]:
            found = self._db.execute(Q["recent_errors"], {"limit": limit, "tenant": tenant})
            return [task_info(r) for r in found]

        return await self._call(run)

    async def steps(self, task_id: int) -> list[StepInfo]:
        def run() -> list[StepInfo]:
            rows = self._db.execute(Q["steps_of"], {"task_id": task_id})
            return [StepInfo(k, a, codec.loads(o), s, f) for k, a, o, s, f in rows]

        return await self._call(run)

    async def step_count(self, task_id: int) -> int:
        def run() -> int:
            (n,) = self._db.execute(Q["step_count"], {"task_id": task_id}).fetchone()
            return int(n)

        return await self._call(run)

    async def attempts(self, task_id: int) -> list[AttemptRecord]:
        def run() -> list[AttemptRecord]:
            rows = self._db.execute(Q["attempts_of"], {"task_id": task_id})
            return [attempt_record(task_id, r) for r in rows]

        return await self._call(run)

    async def events_after(
        self, after: int, limit: int = 10_000, *, skip_worker: str | None = None
    ) -> list[Event]:
        def run() -> list[Event]:
            params = {"after": after, "limit": limit, "skip_worker": skip_worker}
            rows = self._db.execute(Q["events_after"], params)
            return [Event(i, t, at, TaskStatus(s), a, w) for i, t, at, s, a, w in rows]

        return await self._call(run)

    async def last_event_id(self) -> int:
        return await self._call(lambda: int(self._db.execute(Q["last_event"]).fetchone()[0]))

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109 - bounds the wait
        """SQLite cannot notify: sleep ``timeout`` seconds and answer False."""
        await asyncio.sleep(timeout)
        return False

    # -- memory ------------------------------------------------------------------------

    async def memory_get(self, session: str, key: str) -> bytes | None:
        def run() -> bytes | None:
            row = self._db.execute(Q["get_memory"], {"session": session, "key": key}).fetchone()
            return row[0] if row else None

        return await self._call(run)

    async def memory_swap(self, write: MemoryWrite, expected: bytes | None, now: float) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            if _held_memory(db, write) != expected:
                return False
            _write_memory(db, write, write.value, now)
            return True

        return await self._call(self._transaction, run)

    async def memory_change(
        self, write: MemoryWrite, change: Callable[[bytes | None], bytes | None], now: float
    ) -> bytes | None:
        def run(db: sqlite3.Connection) -> bytes | None:
            value = change(_held_memory(db, write))
            _write_memory(db, write, value, now)
            return value

        return await self._call(self._transaction, run)

    async def memory_items(self, session: str) -> dict[str, bytes]:
        def run() -> dict[str, bytes]:
            return dict(self._db.execute(Q["memory_items"], {"session": session}).fetchall())

        return await self._call(run)

    async def live_sessions(self) -> set[str]:
        return await self._call(lambda: {r[0] for r in self._db.execute(Q["live_sessions"])})

    async def idle_sessions(self, before: float, after: str, limit: int) -> list[str]:
        params = {"before": before, "after": after, "limit": limit}
        return await self._call(
            lambda: [r[0] for r in self._db.execute(Q["idle_sessions"], params)]
        )

    async def drop_memory(self, sessions: Sequence[str], before: float) -> int:
        params = {"sessions": codec.dumps(list(sessions)).decode(), "before": before}
        return await self._call(
            self._transaction, lambda db: db.execute(Q["drop_memory"], params).rowcount
        )

    async def diagnostics(
        self,
        *,
        task_id: int | None = None,
        agent: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[DiagnosticRecord]:
        params = {"task_id": task_id, "agent": agent, "kind": kind, "limit": limit}

        def run() -> list[DiagnosticRecord]:
            rows = self._db.execute(Q["diagnostics"], params).fetchall()
            return [DiagnosticRecord(t, a, ag, codec.loads(d)["kind"], d) for t, a, ag, d in rows]

        return await self._call(run)

    # -- shared LLM capacity -------------------------------------------------------------

    async def claim_capacity(
        self, route: str, worker: str, demand: float, now: float, *, horizon: float
    ) -> CapacityClaims:
        def run(db: sqlite3.Connection) -> CapacityClaims:
            params = {"route": route, "worker": worker, "demand": demand, "now": now}
            db.execute(Q["claim_capacity"], params)
            db.execute(Q["forget_capacity_claims"], {"before": now - 10 * horizon})
            n, total, until = db.execute(
                Q["capacity_claims"], {"route": route, "since": now - horizon}
            ).fetchone()
            return CapacityClaims(int(n), float(total), float(until))

        return await self._call(self._transaction, run)

    async def signal_backoff(self, route: str, until: float) -> None:
        params = {"route": route, "until": until}
        await self._call(self._transaction, lambda db: db.execute(Q["signal_backoff"], params))

    # -- workers -----------------------------------------------------------------------

    async def register_worker(self, worker: WorkerInfo) -> None:
        params = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "now": worker.heartbeat_at,
            "info": codec.dumps(dict(worker.load)),
            "boot_id": worker.boot_id,
            "pid_ns": worker.pid_ns,
            "proc_start": worker.proc_start,
        }
        await self._call(self._transaction, lambda db: db.execute(Q["upsert_worker"], params))

    async def remove_worker(self, worker_id: str) -> None:
        await self._call(
            self._transaction, lambda db: db.execute(Q["delete_worker"], {"id": worker_id})
        )

    async def workers(self) -> list[WorkerInfo]:
        def run() -> list[WorkerInfo]:
            return [
                WorkerInfo(i, h, p, s, hb, codec.loads(info), boot, ns, start)
                for i, h, p, s, hb, info, boot, ns, start in self._db.execute(Q["workers"])
            ]

        return await self._call(run)

    # -- provisioning ------------------------------------------------------------------

    async def backlog(self, now: float, agents: Collection[str] | None = None) -> Backlog:
        named = None if agents is None else codec.dumps(sorted(agents)).decode()

        def run() -> Backlog:
            n, oldest = self._db.execute(Q["backlog"], {"now": now, "agents": named}).fetchone()
            return Backlog(int(n), oldest)

        return await self._call(run)

    async def publish_autoscaler(self, info: AutoscalerInfo) -> None:
        params = dataclasses.asdict(info)
        await self._call(self._transaction, lambda db: db.execute(Q["upsert_autoscaler"], params))

    async def remove_autoscaler(self, autoscaler_id: str) -> None:
        params = {"id": autoscaler_id}
        await self._call(self._transaction, lambda db: db.execute(Q["delete_autoscaler"], params))

    async def autoscalers(self, since: float) -> list[AutoscalerInfo]:
        def run() -> list[AutoscalerInfo]:
            rows = self._db.execute(Q["autoscalers"], {"since": since})
            return [AutoscalerInfo(*row) for row in rows]

        return await self._call(run)

    # -- HTTP API (legion serve) -------------------------------------------------------

    async def list_tasks(self, query: TaskQuery) -> list[TaskInfo]:
        statuses = [str(st) for st in query.statuses]
        params = {
            "statuses": codec.dumps(statuses).decode() if statuses else None,
            "agent": query.agent,
            "created_from": query.created_from,
            "created_to": query.created_to,
            "before": query.before,
            "limit": query.limit,
            "tenant": query.tenant,
            "parent": query.parent,
        }
        sql = Q["list_tasks"]
        if query.parent is not None:  # (the children's index, not a walk down every id)
            sql = sql.replace("(:parent IS NULL OR parent_id = :parent)", "parent_id = :parent")

        def run() -> list[TaskInfo]:
            return [task_info(r) for r in self._db.execute(sql, params)]

        return await self._call(run)

    async def event_details_after(self, after: int, limit: int = 10_000) -> list[EventDetail]:
        def run() -> list[EventDetail]:
            rows = self._db.execute(Q["event_details_after"], {"after": after, "limit": limit})
            return [event_detail(r) for r in rows]

        return await self._call(run)

    async def add_api_key(self, key: ApiKey) -> None:
        params = {
            "id": key.id,
            "name": key.name,
            "salt": key.salt,
            "digest": key.digest,
            "created_at": key.created_at,
            "tenant": key.tenant,
            "scope": key.scope,
        }

        def run(db: sqlite3.Connection) -> None:
            try:
                db.execute(Q["insert_api_key"], params)
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"an API key with id {key.id!r} exists already") from exc

        await self._call(self._transaction, run)

    async def api_key(self, key_id: str) -> ApiKey | None:
        def run() -> ApiKey | None:
            row = self._db.execute(Q["get_api_key"], {"id": key_id}).fetchone()
            return ApiKey(*row) if row else None

        return await self._call(run)

    async def api_keys(self) -> list[ApiKey]:
        return await self._call(lambda: [ApiKey(*row) for row in self._db.execute(Q["api_keys"])])

    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        params = {"id": key_id, "now": now}
        return await self._call(
            self._transaction,
            lambda db: db.execute(Q["revoke_api_key"], params).rowcount == 1,
        )


_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def _translate(exc: sqlite3.Error, path: str) -> StoreError:
    """The store error for an ``sqlite3`` error, by its (primary) result code."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == sqlite3.SQLITE_FULL:
        return StorageFull(
            f"the store {path} is full ({exc}): free space on its disk, then try again"
        )
    if primary in _UNAVAILABLE:
        return StoreUnavailable(f"the store {path} is unavailable ({exc}); try again later")
    return StoreError(f"the store {path} failed: {exc}")


def _insert_each(
    db: sqlite3.Connection,
    tasks: Sequence[tuple[NewTask, str | None, bytes | None]],
    now: float,
) -> None:
    """Insert each task, with its idempotency key and input hash (or none), a row at a
    time; the ids are consecutive."""
    db.executemany(
        Q["insert_task"],
        [
            (
                t.agent,
                t.input,
                k,
                t.session,
                t.priority,
                t.max_attempts,
                t.not_before,
                now,
                t.tenant,
                h,
                t.needs,
            )
            for t, k, h in tasks
        ],
    )


def _insert_unkeyed(
    db: sqlite3.Connection, tasks: Sequence[NewTask], now: float
) -> list[Submitted]:
    """Tasks without idempotency keys, inserted in one statement: consecutive ids."""
    if not tasks:
        return []
    queued = TaskStatus.QUEUED.value
    rows = [
        (
            t.agent,
            t.input,
            t.session,
            t.priority,
            queued,
            t.max_attempts,
            t.not_before,
            now,
            t.tenant,
            t.needs,
        )
        for t in tasks
    ]
    execute_rows(db, Q["insert_tasks"], rows)
    (last_id,) = db.execute("SELECT last_insert_rowid()").fetchone()
    count_new(db, [(t.tenant, t.agent) for t in tasks], queued)
    first = last_id - len(tasks) + 1
    return [Submitted(first + n, None, TaskStatus.QUEUED, True) for n in range(len(tasks))]


def _requeue(
    db: sqlite3.Connection, query: str, params: dict[str, Any], now: float, was: str
) -> int:
    """Queue finished tasks again (each was ``was``); answers how many."""
    ids = [r[0] for r in db.execute(Q[query], params).fetchall()]
    log_changes(db, ids, now, was=was)
    return len(ids)


def _lease_agent(db: sqlite3.Connection, params: dict[str, Any], cap: int | None) -> list[Any]:
    """Lease tasks of one agent: rows in the order of `lease`'s RETURNING (input as
    bytes). Tenants take turns (`legion.store.turns`) when more than one has tasks
    queued; one tenant's are leased in its queue's order. ``cap``: the most of a
    tenant's tasks of the agent running at once."""
    queued = db.execute(Q["queued_tenants"], params).fetchall()
    if len(queued) == 1:
        (tenant, running), limit = queued[0], params["limit"]
        if cap is not None:
            limit = min(limit, cap - int(running))
        return _lease_tenant(db, {**params, "tenant": tenant, "limit": limit}) if limit > 0 else []
    if not queued:
        return []
    turns: Turns[Any] = Turns({t: int(n) for t, n in queued}, params["limit"], cap)
    share = share_of(turns.need, len(queued))
    try:
        for tenant, _ in queued:
            first = _pick(db, {**params, "tenant": tenant, "limit": share})
            turns.read(tenant, _reads(first), share)
        while (tenant := turns.merge()) is not None:
            more = turns.more(tenant)
            after = turns.last(tenant)
            assert after is not None  # (it had tasks read: they ran out)
            keyset = {"after_priority": after[0], "after_id": after[1]}
            rows = _pick(db, {**params, "tenant": tenant, "limit": more, **keyset}, after=True)
            turns.read(tenant, _reads(rows), more)
    except (sqlite3.OperationalError, sqlite3.DataError):  # as in `_lease_tenant`: one
        return _lease_tenant(db, {**params, "tenant": queued[0][0]})  # tenant's
    return _take(db, params, turns.taken)


def _reads(rows: list[Any]) -> list[tuple[int, int, Any]]:
    """`_pick`'s rows as `Turns.read` takes them."""
    return [(r[7], r[0], r) for r in rows]


def _lease_tenant(db: sqlite3.Connection, params: dict[str, Any]) -> list[Any]:
    """Lease the first tasks of one agent and tenant in their queue's order."""
    try:
        picked = _pick(db, params)
    except (sqlite3.OperationalError, sqlite3.DataError):
        # By row: an input that is not UTF-8 text (not seen), or inputs that add up past
        # the longest value SQLite makes (1 GB: 100 of 10 MB, packed in one to be read,
        # failed every lease for ever).
        return db.execute(Q["lease"], params).fetchall()
    return _take(db, params, picked)


def _file_of(path: str) -> tuple[int, int] | None:
    """The device and inode of the file at ``path`` (``None``: there is none)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def _pick(db: sqlite3.Connection, params: dict[str, Any], *, after: bool = False) -> list[Any]:
    """`lease_pick`'s rows: the tasks `lease` would take, as lists (input as text);
    ``after``: those after a task (`lease_pick_after`)."""
    (picked,) = db.execute(Q["lease_pick_after" if after else "lease_pick"], params).fetchone()
    rows: list[Any] = codec.loads(picked)
    return rows


def _take(db: sqlite3.Connection, params: dict[str, Any], rows: list[Any]) -> list[Any]:
    """Lease the tasks `_pick` read (`lease_take`): the rows, input as bytes."""
    if rows:
        taken = codec.dumps([r[0] for r in rows]).decode()
        changed = db.execute(Q["lease_take"], {**params, "ids": taken}).rowcount
        if changed != len(rows):  # (one transaction holds the write lock: not seen)
            raise StoreError(f"leased {changed} of the {len(rows)} tasks picked")
        for r in rows:
            r[2] = r[2].encode()
    return rows


def _with_steps(db: sqlite3.Connection, rows: Sequence[Any]) -> list[Lease]:
    """Leases for leased rows (counted here), each with every step recorded for its task
    so far."""
    steps: dict[int, dict[str, bytes]] = {}
    if rows:
        count_leased(db, map(_TENANT_AGENT, rows))
        ids = codec.dumps([r[0] for r in rows]).decode()
        for task_id, key, output in db.execute(Q["replayed_steps"], {"ids": ids}):
            steps.setdefault(task_id, {})[key] = output
    return leases(rows, steps)


def _fence(db: sqlite3.Connection, batch: WriteBatch) -> set[tuple[int, int, str | None]]:
    """The leases behind the batch's steps, memory writes and diagnostics that still hold,
    as ``(task_id, attempt, owner)``; the others' task ids go into ``batch.lost``, and those
    whose cancellation was asked into ``batch.cancelled``. (One
    query for the whole batch; the write lock is held from here to the commit.)"""
    wanted: set[tuple[int, int, str | None]] = {
        (s.task_id, s.attempt, s.owner) for s in batch.steps
    }
    wanted.update((m.task_id, m.attempt, m.owner) for m in batch.memory if m.task_id is not None)
    wanted.update((d.task_id, d.attempt, d.owner) for d in batch.diagnostics)
    if not wanted:
        return wanted
    ids = codec.dumps(sorted({w[0] for w in wanted})).decode()
    live: set[tuple[int, int, str | None]] = set()
    for task_id, attempt, owner, cancel in db.execute(Q["live_leases"], {"ids": ids}):
        live.add((task_id, attempt, owner))
        if cancel:
            batch.cancelled.add(task_id)
    held = wanted & live
    batch.lost.update(w[0] for w in wanted - held)
    return held


# Per outcome: the status it writes, whether its attempt is not counted, whether it
# leaves the task unfinished (no finished_at), and its name in the attempts table.
_OUTCOME_ROW = {
    o: (o.status.value, 1 if o in _UNCOUNTED else 0, o in (Outcome.RETRY, *_UNCOUNTED), o.value)
    for o in Outcome
}


_MAY_BE_CANCELLED = (TaskStatus.QUEUED.value, TaskStatus.WAITING.value)
"""What an attempt's end may turn into ``cancelled`` when its task's cancellation was asked
(back to the queue, or suspended): only the task's row tells."""


def _completion_params(c: Completion, error: bytes | None) -> tuple[Any, ...]:
    status, uncount, unfinished, _ = _OUTCOME_ROW[c.outcome]
    if c.outcome is Outcome.SUCCEEDED:  # the attempt, recorded on the row
        return (
            status, c.output, error, c.not_before, uncount, c.finished_at, c.id, c.attempt,
            c.owner, c.usage, c.owner, c.started_at, c.running, c.waited,
        )  # fmt: skip
    return (
        status,
        c.output,
        error,
        c.not_before,
        uncount,
        None if unfinished else c.finished_at,
        c.id,
        c.attempt,
        c.owner,
        c.usage,
        None,
        None,
        None,
        None,
    )


def _ended(done: Iterable[Completion]) -> list[Ended] | None:
    """What the applied completions ``done`` left on their tasks, for the change feed: each
    one's status and attempt are its own, as it was applied on its lease. ``None`` if one
    does not say its tenant and agent, or goes back to the queue or waits (a task whose
    cancellation was asked is cancelled then, which only the task's row tells)."""
    ended: list[Ended] = []
    for c in done:
        status, uncount, _, _ = _OUTCOME_ROW[c.outcome]
        if c.tenant is None or c.agent is None or status in _MAY_BE_CANCELLED:
            return None
        ended.append((c.id, status, c.attempt - uncount, c.owner, c.tenant, c.agent))
    return ended


def _attempt_params(c: Completion, error: bytes | None) -> tuple[Any, ...]:
    return (
        c.id,
        c.attempt,
        c.owner,
        _OUTCOME_ROW[c.outcome][3],
        c.started_at,
        c.finished_at,
        c.running,
        c.waited,
        error,
    )


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (trigger bodies stay whole)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                out.append(current.strip())
            current = ""
    if current.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in current.splitlines()
    ):
        raise StoreError("a migration ends with an incomplete statement")
    return out


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _held_memory(db: sqlite3.Connection, write: MemoryWrite) -> bytes | None:
    """What ``write``'s key holds, read in its transaction once its lease is checked
    (`LeaseLost` when it no longer holds)."""
    if write.task_id is not None and not _fence(db, WriteBatch(memory=[write])):
        raise LeaseLost(write.task_id, write.attempt)
    row = db.execute(Q["get_memory"], {"session": write.session, "key": write.key}).fetchone()
    return None if row is None else bytes(row[0])


def _write_memory(
    db: sqlite3.Connection, write: MemoryWrite, value: bytes | None, now: float
) -> None:
    params = {"session": write.session, "key": write.key}
    if value is None:
        db.execute(Q["delete_memory"], params)
    else:
        db.execute(Q["set_memory"], {**params, "value": value, "now": now})
