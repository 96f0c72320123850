"""``PostgresStore``: the shared store for many workers on many machines.

Calls borrow connections from a ``psycopg_pool.AsyncConnectionPool``; batches travel as one
array per column (``unnest``), so a lease, a submit or a group commit of N tasks is one
statement. Concurrent workers lease with ``FOR UPDATE SKIP LOCKED`` and never wait on each
other's rows; a heartbeat or a reclaim skips rows that are locked right now, so neither can
deadlock with a write batch.

The event feed is commit-ordered although transactions commit in any order: an event's id
is its writing transaction's id shifted left 20 bits plus its number within that
transaction, and the feed hands out only events of transactions older than every one still
running (``legion_feed_horizon()``, see ``0001_initial.sql``). A long-open write transaction
anywhere on the server holds the feed back until it ends.

Idle workers can `PostgresStore.wait_for_work`: triggers ``NOTIFY`` a per-schema
channel whenever a task is inserted or becomes queued again, and the store ``LISTEN``\\s on
one dedicated connection, opened by the first wait and closed by `PostgresStore.aclose`.

psycopg errors are translated into store errors here, once: a server that cannot be
reached, goes away or does not answer in time raises
`legion.errors.StoreUnavailable` (retryable: workers keep their work and try
again), anything else `legion.errors.StoreError`. When the server restarts, the
calls in flight fail; the pool then drops its broken connections and later calls succeed
on new ones (a call waits for a connection up to the pool timeout or its own deadline,
so a short outage is often not seen at all).

Every call is bounded (see `legion.store.timeouts`; the bounds derive from the lease
duration): libpq's connect timeout, TCP keepalives and ``tcp_user_timeout``, the server's
``statement_timeout`` and ``idle_in_transaction_session_timeout``, and a deadline for the
whole call. At the deadline the call's socket is shut down, so that psycopg fails at once
instead of waiting on a server that does not answer, the connection is dropped, and the
call raises `legion.errors.StoreUnavailable`. The server ends a cut off client's
open transaction on its own (idle in transaction), releasing its row locks.

The URL is a libpq URL (``postgresql://user:password@host:port/database?options=...``);
``pool_min_size``, ``pool_max_size`` and ``pool_timeout`` in its query size the pool;
``call_timeout`` bounds each call (seconds; default: a third of the lease).
Tables live in the connection's current schema, so ``options=-csearch_path%3Dname`` keeps
several legion stores in one database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from legion import codec
from legion.clock import Clock
from legion.errors import ConfigError, LeaseLost, StoreError, StoreUnavailable
from legion.store.postgres_arrays import byteas, float8s, int4s, int8s, texts
from legion.store.postgres_batches import PostgresBatches
from legion.store.postgres_ledger import PostgresLedger
from legion.store.postgres_params import submit_params
from legion.store.postgres_pool import Pool
from legion.store.postgres_waiting import PostgresWaiting, after_completions, wake_parents
from legion.store.queries import migrations, queries
from legion.store.rows import attempt_record, event_detail, leases, task_info
from legion.store.tenancy import KeyedTasks
from legion.store.timeouts import DEFAULT_LEASE_SECONDS, StoreTimeouts
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
from legion.store.urls import redact_url, scrub, url_secrets
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

log = logging.getLogger("legion.store.postgres")

_POOL_LOG = logging.getLogger("psycopg.pool")
"""psycopg's pool says each failed reconnection at WARNING, with libpq's message over
several lines: a 12 s outage was 19 such blocks beside legion's own account of it
(`StoreUnavailable`, the workers' waits). Held to ERROR unless the application set a
level of its own."""
Q = queries("postgres")

Connection = psycopg.AsyncConnection[TupleRow]
Cursor = psycopg.AsyncCursor[TupleRow]

# How long events_after waits for events that committed behind a still-open older
# transaction before it answers without them (they come with a later call).
FEED_SETTLE = 0.5
# Rows requeued per transaction (a transaction records at most 2**20 status changes).
REQUEUE_CHUNK = 50_000

NO_JIT = "SET LOCAL jit = off"
"""The first statement of a purge's transactions: with many tasks queued the planner
costs a purge's scan above `jit_above_cost` and compiles it at every batch of 1,000
(0.5 s each, where the batch ran in 70 ms), for a statement that ends early (its LIMIT)."""

# Ends of an attempt that do not count it: given back, or suspended at a wait.
_UNCOUNTED = (Outcome.RELEASED, Outcome.WAITING)

POOL_MAX_IDLE = 60.0
"""Seconds a pooled connection beyond ``pool_min_size`` may sit idle before it is closed."""
SESSION_MARK = "legion.session"
"""A setting of legion's own, sent at connect with the statement bounds: a session that
has it took them."""
_POOL_PARAMS = ("pool_min_size", "pool_max_size", "pool_timeout", "call_timeout")
# After a call's deadline has cut its socket, how long before the call is abandoned
# outright (a backstop: the cut makes psycopg fail at once).
_CUT_GRACE = 2.0
PROCESS_TAG = f"legion-{uuid.uuid4().hex[:16]}"
"""The ``application_name`` of this process's store sessions (unless the URL names one):
a worker that must exit while its event loop is frozen ends them by it, so that their
open transactions release their locks at once (see `legion.store.freeze`)."""
# Connection failures in which the server answered but cannot serve yet.
_NOT_YET = (
    "starting up",
    "shutting down",
    "in recovery",
    "too many",
    "not yet accepting",
    "remaining connection slots are reserved",  # the server is full (max_connections)
)


class PostgresStore(PostgresWaiting, PostgresLedger, PostgresBatches):
    """A `legion.store.base.Store` in a PostgreSQL database, shared by many workers."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        timeout: float | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        create: bool = True,
        clock: Clock | None = None,
    ) -> None:
        """``min_size``/``max_size`` bound the pool (default 1 and 10) and ``timeout`` is
        how long a call waits for a connection (default 30 s, and never past the call's
        deadline); each overrides the URL's ``pool_*`` query parameter of the same
        meaning. ``lease_seconds`` (the workers' lease) sets every timeout below it (see
        `legion.store.timeouts`); a ``call_timeout`` in the URL overrides it.
        ``create=False`` refuses a schema without legion's tables (`open` raises
        `legion.errors.ConfigError` and creates nothing); a store there is brought up
        to date as always. ``clock``: what `now` answers instead of the database's
        clock (a test's fake clock; leases stay on the database's)."""
        self.url = url
        self._create = create
        self._clock = clock
        try:
            conninfo, options = _split_url(url)
        except ValueError as exc:  # urllib's: a malformed host ("[::1"), a bad port
            raise ConfigError(f"bad PostgreSQL URL: {exc}") from exc
        self._where = redact_url(url)
        self._secrets = url_secrets(url)  # what of its password a message may echo
        try:
            self._min_size = int(options.get("pool_min_size", 1)) if min_size is None else min_size
            self._max_size = int(options.get("pool_max_size", 10)) if max_size is None else max_size
            self._timeout = float(options.get("pool_timeout", 30.0)) if timeout is None else timeout
            bounds = StoreTimeouts.for_lease(lease_seconds)
            if "call_timeout" in options:
                bounds = bounds.with_call(float(options["call_timeout"]))
        except ValueError as exc:
            raise ConfigError(f"bad pool option in {self._where}: {exc}") from exc
        self.timeouts = bounds
        # Migrations run without the statement bounds (they may take long on big tables);
        # every other connection has them.
        try:
            self._migration_conninfo = _with_bounds(conninfo, bounds, server=False)
            self._conninfo = _with_bounds(conninfo, bounds, server=True)
        except psycopg.ProgrammingError as exc:  # libpq refuses the URL (a parameter, a port)
            raise ConfigError(
                f"bad PostgreSQL URL {self._where}: {self._said(exc)} (besides legion's "
                f"{', '.join(sorted(_POOL_PARAMS))}, the URL takes libpq's parameters; a "
                "schema of its own: options=-csearch_path%3Dname)"
            ) from exc
        if not 1 <= self._min_size <= self._max_size:
            raise ConfigError(
                f"bad pool size in {self._where}: need 1 <= pool_min_size <= pool_max_size"
            )
        if not self._timeout > 0:  # (NaN too)
            raise ConfigError(f"bad pool_timeout in {self._where}: need seconds > 0")
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._channel = ""
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._waits = QueueWaits()

    def queue_delay(self) -> float | None:
        """The mean seconds the calls since the last read waited for a connection
        (``None``: none began)."""
        return self._waits.take()

    # -- plumbing ----------------------------------------------------------------------

    async def open(self) -> None:
        if _POOL_LOG.level == logging.NOTSET:
            _POOL_LOG.setLevel(logging.ERROR)
        # The session is checked first: through a pooler that drops or mixes sessions, the
        # migration's lifted bounds stayed on a server connection that other clients of
        # the pool were handed next, and legion's tables were made before it was refused.
        await self._check_session()
        conn = await self._connect(self._migration_conninfo)
        try:
            async with conn:
                self._channel = await self._migrate(conn)
        except psycopg.Error as exc:
            said = self._said(exc)
            if isinstance(exc, psycopg.errors.InsufficientPrivilege):
                said += (
                    " (the role may not create legion's tables there: give it a schema of its "
                    "own, which it owns, named in the URL: options=-csearch_path%3Dname; or "
                    "let the schema's owner GRANT CREATE ON SCHEMA to it)"
                )
            raise StoreError(f"{self._where} is not a usable legion store: {said}") from exc
        pool: AsyncConnectionPool[Connection] = Pool(
            self._conninfo,
            kwargs={"autocommit": True},
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=min(self._timeout, self.timeouts.call),
            # A pool that grew (connections killed and made again under load) gives its
            # idle ones back within a minute, not psycopg's ten: its neighbours on a
            # server near max_connections starved meanwhile, and lost their leases.
            max_idle=POOL_MAX_IDLE,
            open=False,
            name="legion",
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreUnavailable(f"cannot connect to {self._where}: {self._said(exc)}") from exc
        except BaseException:
            # Cancelled as it connects (a Ctrl-C as a run starts): the pool's workers, left
            # running, took the loop's cancellation at its shutdown for a failed connect
            # and waited on for ever (psycopg_pool catches CancelledError in them).
            await pool.close()
            raise
        self._pool = pool

    async def _check_session(self) -> None:
        """Connect once as the pool will (its errors said as they are, rather than as a
        pool that never filled), and refuse a connection that did not take the session
        settings legion sends at connect: a pooler between that drops them (PgBouncer's
        ``ignore_startup_parameters = options``) and, handing out server connections per
        transaction, runs one session's prepared statements in another's."""
        conn = await self._connect(self._conninfo)
        try:
            async with conn, asyncio.timeout(self.timeouts.call):
                cur = await conn.execute(Q["session_mark"])
                marked = _one(await cur.fetchone()) == "1"
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to {self._where}: {self._said(exc)}") from exc
        except TimeoutError:
            # Connected, but no answer: a pooler that queues its clients for a server
            # connection (its pool smaller than the fleet), a server that stopped. The
            # command waited in silence, printing nothing; now it says so and tries again.
            raise StoreUnavailable(
                f"{self._where} took the connection but did not answer within "
                f"{self.timeouts.call:g}s"
            ) from None
        if not marked:
            raise ConfigError(
                f"the connections to {self._where} do not keep the session settings legion "
                "sends at connect (`options`: its statement bounds): a connection pooler "
                "between, that drops them? legion needs a direct connection, or a "
                "session-mode pool that passes them (docs/provisioning.md)"
            )

    async def _connect(self, conninfo: str) -> Connection:
        """A connection on ``conninfo``, or the error `_connect_error` makes of its failure."""
        try:
            return await Connection.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise await self._connect_error(exc) from exc

    def _said(self, exc: BaseException) -> str:
        """``exc``'s message on one line, with nothing of the URL's password in it."""
        return scrub(_said(exc), self._secrets)

    async def _connect_error(self, exc: psycopg.Error) -> ConfigError | StoreError:
        """A ConfigError if the server is up but the database is missing; a
        StoreUnavailable if the server cannot be reached or cannot serve yet (starting up,
        shutting down, too many clients); else (refused credentials...) a StoreError."""
        dbname = conninfo_to_dict(self._conninfo).get("dbname")
        if dbname:
            try:
                maintenance = make_conninfo(self._conninfo, dbname="postgres", options="")
                async with await Connection.connect(maintenance, autocommit=True) as conn:
                    cur = await conn.execute(Q["database_exists"], {"name": dbname})
                    if not _one(await cur.fetchone()):
                        return ConfigError(
                            f"no PostgreSQL database {dbname!r} at {self._where}: create it "
                            f"first (createdb {dbname})"
                        )
            except psycopg.Error:
                pass  # no way to tell: report the first error
        if _transient(exc):
            return StoreUnavailable(f"cannot connect to {self._where}: {self._said(exc)}")
        said = self._said(exc)
        if "unsupported startup parameter" in said:
            said += (
                " (a connection pooler between? legion sends its sessions' statement bounds "
                "in `options` at connect: it needs a direct connection, or a session-mode "
                "pool that passes them; docs/provisioning.md)"
            )
        return StoreError(f"{self._where} refused the connection: {said}")

    async def _migrate(self, conn: Connection) -> str:
        """Bring the schema up to date; answer the work channel. Workers starting together
        take turns on an advisory lock, so each migration runs once.

        The role's or the database's own ``statement_timeout`` and ``lock_timeout`` (a
        managed service's guardrails) are lifted on this connection: the wait for the lock
        lasts as long as the migration ahead of it, and a migration that rewrites a large
        table takes what it takes; cut short, every worker but the first failed to open."""
        for setting in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"):
            await conn.execute(f"SET {setting} = 0")
        cur = await conn.execute(Q["current_schema"])
        schema = _one(await cur.fetchone())
        if schema is None:
            raise ConfigError(f"the search_path of {self._where} names no existing schema")
        if not self._create:
            cur = await conn.execute(Q["store_exists"])
            if not _one(await cur.fetchone()):
                raise ConfigError(
                    f"no store at {self._where}: schema {schema!r} has no legion tables "
                    "(`legion worker`, `legion run` or `legion schedule add` with this "
                    "--store creates them)"
                )
        known = migrations("postgres")
        # Up to date already (most starts): nothing to write, so nothing to lock, and a
        # read-only database (a standby, default_transaction_read_only) can be watched.
        cur = await conn.execute(Q["store_exists"])
        if _one(await cur.fetchone()):
            cur = await conn.execute(Q["schema_version"])
            if int(_one(await cur.fetchone())) == known[-1][0]:
                cur = await conn.execute(Q["work_channel"])
                return str(_one(await cur.fetchone()))
            cur = await conn.execute("SHOW transaction_read_only")
            if _one(await cur.fetchone()) == "on":
                raise StoreError(
                    f"the store's schema at {self._where} is older than this legion's "
                    f"({known[-1][0]}) and the database is read-only (a standby?): let this "
                    "legion open it once through a writable connection (the primary), "
                    "which upgrades it"
                )
        tries = 0
        while True:
            try:
                current = await self._upgrade(conn, known)
                break
            except psycopg.errors.LockNotAvailable:
                tries += 1
                if tries == 1:
                    log.warning(
                        "upgrading the store's schema waits for a transaction that holds "
                        "its tables (a pg_dump, a long query or an open transaction) to "
                        "end; the running workers go on meanwhile"
                    )
                await asyncio.sleep(min(MIGRATION_RETRY_MAX, MIGRATION_LOCK_WAIT * tries))
        if 0 < current < known[-1][0]:
            log.warning("upgraded the store's schema from version %d to %d", current, known[-1][0])
        cur = await conn.execute(Q["work_channel"])
        return str(_one(await cur.fetchone()))

    async def _upgrade(self, conn: Connection, known: Sequence[tuple[int, str]]) -> int:
        """Run the migrations the schema lacks, in one transaction; answer the version it
        had. An upgrade waits for a table's lock `MIGRATION_LOCK_WAIT` seconds at most
        (then `LockNotAvailable`, everything rolled back): while a migration waits for a
        table that another transaction holds (a pg_dump reads them all), every statement
        of every worker on that table queues behind it, and the fleet stops."""
        async with conn.transaction():
            await conn.execute(Q["lock_migrations"])
            await conn.execute(Q["create_version_table"])
            cur = await conn.execute(Q["schema_version"])
            current = int(_one(await cur.fetchone()))
            if current > known[-1][0]:
                raise StoreError(
                    f"the store's schema is version {current}, newer than this legion "
                    f"understands ({known[-1][0]}); upgrade legion"
                )
            cur = await conn.execute(Q["recorded_versions"])
            recorded = {int(row[0]) for row in await cur.fetchall()}
            # Every known migration the store has not recorded, in order: those past its
            # version, and any it skipped (a few migrations landed after a later one, and
            # a store made in between recorded the later one alone).
            missing = [(version, script) for version, script in known if version not in recorded]
            if current and missing:
                wait = int(MIGRATION_LOCK_WAIT * 1000)
                await conn.execute(f"SET LOCAL lock_timeout = '{wait}ms'")
            for version, script in missing:
                await conn.execute(script)
                await conn.execute(Q["record_version"], {"version": version})
                if version < current:
                    log.warning(
                        "applied migration %d, which the store lacked (it was made by a "
                        "build that skipped it)",
                        version,
                    )
        return current

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.wait([listener])
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def schema_version(self) -> int:
        async with self._cursor() as cur:
            await cur.execute(Q["schema_version"])
            return int(_one(await cur.fetchone()))

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for one call, bounded by the call's deadline; psycopg
        errors leave as store errors."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is not open (use `async with` or call open())")
        loop = asyncio.get_running_loop()
        limit = self.timeouts.call
        deadline = loop.time() + limit
        lost = False
        cut: list[bool] = []
        queued = time.monotonic()
        try:
            async with asyncio.timeout_at(deadline + _CUT_GRACE):
                async with pool.connection(timeout=limit) as conn:
                    self._waits.add(time.monotonic() - queued)
                    timer = loop.call_at(deadline, _cut, conn, cut)
                    try:
                        yield conn
                    finally:
                        timer.cancel()
                        lost = conn.broken and not cut
        except psycopg.errors.QueryCanceled as exc:  # statement_timeout
            raise StoreUnavailable(
                f"the store at {self._where} did not answer within {limit:g}s: {self._said(exc)}"
            ) from exc
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout, TimeoutError) as exc:
            if _past_a_limit(exc):  # a row or statement the server will never take
                raise StoreError(
                    f"the store at {self._where} cannot hold it: {self._said(exc)}"
                ) from exc
            if lost:  # the server went away: drop the other idle connections too
                await _check(pool, limit)
            if cut or isinstance(exc, TimeoutError):
                raise StoreUnavailable(
                    f"the store at {self._where} did not answer within {limit:g}s"
                ) from exc
            raise StoreUnavailable(
                f"the store at {self._where} is unavailable: {self._said(exc)}"
            ) from exc
        except psycopg.Error as exc:
            if lost:
                await _check(pool, limit)
            raise StoreError(f"the store at {self._where} failed: {self._said(exc)}") from exc

    @asynccontextmanager
    async def _cursor(self, *, transaction: bool = False) -> AsyncIterator[Cursor]:
        """A binary cursor (bytea travels unescaped), in a transaction if asked."""
        async with self._connection() as conn:
            if transaction:
                async with conn.transaction():
                    yield conn.cursor(binary=True)
            else:
                yield conn.cursor(binary=True)

    # -- tasks -------------------------------------------------------------------------

    async def submit(self, tasks: Sequence[NewTask], now: float) -> list[Submitted]:
        """Insert tasks in one statement; a key that exists (or that a concurrent submit
        inserts first) answers the existing task, and the same key twice makes one task. A
        key stored with another agent or input refuses the whole submission (the
        transaction is rolled back)."""
        keyed = KeyedTasks(tasks)
        fresh: list[tuple[NewTask, str | None, bytes | None]] = []
        seen: set[str] = set()
        for t, k, h in zip(tasks, keyed.keys, keyed.hashes, strict=True):
            if k is None or k not in seen:
                fresh.append((t, k, h))
                if k is not None:
                    seen.add(k)
        if not fresh:
            return []
        async with self._cursor(transaction=bool(seen)) as cur:
            await cur.execute(Q["insert_tasks"], submit_params(fresh, now))
            created = _match_inserted([k for _, k, _ in fresh], await cur.fetchall())
            pairs = [(k, i) for (_, k, _), i in zip(fresh, created, strict=True) if k is not None]
            new_ids = {k: i for k, i in pairs if i is not None}
            skipped = [k for k, i in pairs if i is None]
            existing: dict[str, tuple[int, str]] = {}
            if skipped:
                await cur.execute(Q["tasks_by_keys"], {"keys": skipped})
                rows = await cur.fetchall()
                existing = {k: (i, st) for k, i, st, _ in rows}
                keyed.check({k: bytes(h) if h is not None else None for k, _, _, h in rows})
        unkeyed = iter(i for (_, k, _), i in zip(fresh, created, strict=True) if k is None)
        out: list[Submitted] = []
        answered: set[str] = set()
        for t, k in zip(tasks, keyed.keys, strict=True):
            if k is None:
                out.append(Submitted(_known(next(unkeyed, None)), None, TaskStatus.QUEUED, True))
            elif k in new_ids:
                first = k not in answered
                answered.add(k)
                out.append(Submitted(new_ids[k], t.key, TaskStatus.QUEUED, first))
            elif k in existing:
                task_id, status = existing[k]
                out.append(Submitted(task_id, t.key, TaskStatus(status), False))
            else:
                raise StoreError(f"task key {t.key!r} was neither inserted nor found")
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
        """Lease per agent, in the mapping's order, with ``FOR UPDATE SKIP LOCKED``: several
        workers leasing at once take disjoint tasks without waiting for each other. The
        lease runs ``until - now`` seconds on the database's clock."""
        asks = [(agent, want) for agent, want in wants.items() if want > 0]
        if total <= 0 or not asks:
            return []
        seconds = float(until - now)
        offered = codec.dumps(dict(offer or {})).decode()
        rows: list[TupleRow] = []
        # One transaction only for several agents' statements (the steps are read after
        # the lease committed: no step of these leases can be recorded before they are).
        async with self._cursor(transaction=len(asks) > 1 and not isolated) as cur:
            if isolated:
                params: dict[str, Any] = {
                    "owner": owner,
                    "seconds": seconds,
                    "now": float(now),
                    "agents": [agent for agent, _ in asks],
                    "offer": offered,
                    "limit": total,
                }
                await cur.execute(Q["lease_isolated"], params)
                rows.extend(await cur.fetchall())
            for agent, want in asks if not isolated else ():
                limit = min(want, total - len(rows))
                if limit <= 0:
                    break
                params = {
                    "owner": owner,
                    "seconds": seconds,
                    "now": float(now),
                    "agent": agent,
                    "limit": limit,
                    "offer": offered,
                    "min_priority": -(2**31) if min_priority is None else min_priority,
                }
                await cur.execute(Q["queued_tenants"], params)
                queued = await cur.fetchall()
                if len(queued) == 1:
                    (tenant, running) = queued[0]
                    one = {**params, "tenant": tenant}
                    if tenant_cap is not None:
                        one["limit"] = min(limit, tenant_cap - int(running))
                    if one["limit"] > 0:
                        await cur.execute(Q["lease"], one)
                        rows.extend(await cur.fetchall())
                elif queued:
                    rows.extend(await _lease_in_turns(cur, params, queued, tenant_cap))
            steps: dict[int, dict[str, bytes]] = {}
            if rows:
                await cur.execute(Q["replayed_steps"], {"ids": int8s([r[0] for r in rows])})
                for task_id, key, output in await cur.fetchall():
                    steps.setdefault(task_id, {})[key] = output
        return leases(rows, steps)

    async def write(self, batch: WriteBatch, now: float) -> list[bool]:
        """One transaction, pipelined: one statement each for steps, memory sets, memory
        deletes, diagnostics and the fenced completions (``UPDATE ... FROM unnest``, see
        benchmarks/store_batch.py for why). Each write statement carries its own fence (the
        leases it comes from, share-locked until the commit) and answers the tasks it
        refused."""
        if not len(batch):
            return []
        fenced: list[Cursor] = []
        async with self._connection() as conn, conn.pipeline(), conn.transaction():
            if batch.steps:
                steps = sorted(batch.steps, key=lambda s: (s.task_id, s.key))
                cur = conn.cursor(binary=True)
                await cur.execute(
                    Q["insert_steps"],
                    {
                        "task_id": int8s([s.task_id for s in steps]),
                        "key": texts([s.key for s in steps]),
                        "attempt": int4s([s.attempt for s in steps]),
                        "owner": texts([s.owner for s in steps]),
                        "output": byteas([s.output for s in steps]),
                        "started_at": float8s([float(s.started_at) for s in steps]),
                        "finished_at": float8s([float(s.finished_at) for s in steps]),
                    },
                )
                fenced.append(cur)
            sets, deletes = _memory_changes(batch.memory)
            if sets:
                cur = conn.cursor(binary=True)
                await cur.execute(Q["set_memory"], {**_memory_params(sets), "now": float(now)})
                fenced.append(cur)
            if deletes:
                params = _memory_params(deletes)
                del params["value"]
                cur = conn.cursor(binary=True)
                await cur.execute(Q["delete_memory"], params)
                fenced.append(cur)
            if batch.diagnostics:
                found = batch.diagnostics
                cur = conn.cursor(binary=True)
                await cur.execute(
                    Q["insert_diagnostics"],
                    {
                        "task_id": [d.task_id for d in found],
                        "attempt": [d.attempt for d in found],
                        "owner": [d.owner for d in found],
                        "agent": [d.agent for d in found],
                        "kind": [d.kind for d in found],
                        "data": [d.data for d in found],
                    },
                )
                fenced.append(cur)
            applied: set[int] = set()
            if batch.completions:
                cur = conn.cursor(binary=True)
                await cur.execute(Q["complete"], _completion_params(batch.completions))
                await after_completions(conn, batch, now)
                applied = {r[0] for r in await cur.fetchall()}
            for cur in fenced:
                for task_id, cancel in await cur.fetchall():
                    (batch.cancelled if cancel else batch.lost).add(task_id)
        return [i in applied for i in range(1, len(batch.completions) + 1)]

    async def extend_leases(
        self, owner: str, task_ids: Sequence[int], until: float, now: float
    ) -> Extended:
        """Extend ``owner``'s leases on ``task_ids``, skipping rows locked right now (being
        written, completed, reclaimed or cancelled); a skipped row still leased to ``owner``
        counts as held, and is extended at the next heartbeat."""
        ids = list(task_ids)
        if not ids:
            return Extended(frozenset(), frozenset())
        params = {"owner": owner, "ids": ids, "seconds": float(until - now)}
        async with self._cursor() as cur:
            await cur.execute(Q["extend_leases"], params)
            rows = list(await cur.fetchall())
            skipped = set(ids) - {r[0] for r in rows}
            if skipped:
                await cur.execute(Q["held_leases"], {"owner": owner, "ids": list(skipped)})
                rows.extend(await cur.fetchall())
        return Extended(frozenset(r[0] for r in rows), frozenset(r[0] for r in rows if r[1]))

    async def release_unheld(self, owner: str, keep: Sequence[int]) -> int:
        async with self._cursor() as cur:
            await cur.execute(Q["release_unheld"], {"owner": owner, "keep": list(keep)})
            return len(await cur.fetchall())

    async def now(self) -> float:
        if self._clock is not None:
            return self._clock.wall()
        async with self._cursor() as cur:
            await cur.execute(Q["now"])
            return float(_one(await cur.fetchone()))

    async def cancels_asked(self, owner: str) -> list[int]:
        async with self._cursor() as cur:
            await cur.execute(Q["cancels_asked"], {"owner": owner})
            return [r[0] for r in await cur.fetchall()]

    async def absolve(self, owner: str) -> int:
        async with self._cursor() as cur:
            await cur.execute(Q["absolve"], {"owner": owner})
            return len(await cur.fetchall())

    async def reclaim(
        self, now: float, dead_owners: Sequence[str] = (), *, keep: str | None = None
    ) -> Reclaimed:
        """Take back expired and dead owners' leases, skipping rows locked right now (a
        completion in flight decides those).

        First it ends the sessions that have waited on their client in the middle of a
        pipelined transaction for longer than the idle-in-transaction bound (a paused or
        cut-off process: PostgreSQL's own timeout does not apply before a pipeline's
        Sync), so that the rows they lock are reclaimed at the next call rather than
        never; and it folds the counts moved by sessions that have ended into one row
        each (0020_counts_table.sql), so that the counts' rows stay as few as the
        sessions alive."""
        async with self._cursor() as cur:
            await cur.execute(Q["end_stalled_sessions"], {"after": self.timeouts.call})
            ended = int(_one(await cur.fetchone()))
            await cur.execute(Q["fold_counts"])
        params = {
            "now": float(now),
            "error": LEASE_LOST.to_json(),
            "crash_error": CRASHED_ITS_WORKER.to_json(),
            "dead_owners": list(dead_owners),
            "keep": keep,
        }
        async with self._cursor(transaction=True) as cur:
            await cur.execute(Q["reclaim"], params)
            rows = await cur.fetchall()
            statuses = [r[1] for r in rows]
            # (a parent waiting for one that ended here ends its wait)
            await wake_parents(cur, [r[0] for r in rows if r[1] in ("dead", "cancelled")])
        return Reclaimed(
            requeued=statuses.count("queued"),
            dead=statuses.count("dead"),
            cancelled=statuses.count("cancelled"),
            sessions_ended=ended,
        )

    async def cancel(self, task_id: int, now: float) -> TaskStatus | None:
        async with self._cursor(transaction=True) as cur:
            await cur.execute(Q["cancel"], {"id": task_id, "now": float(now)})
            row = await cur.fetchone()
            if row is not None and row[0] == "cancelled":  # (a parent waiting for it)
                await wake_parents(cur, [task_id])
            if row is None:  # finished already, or no such task
                await cur.execute(Q["status_of"], {"id": task_id})
                row = await cur.fetchone()
        return TaskStatus(row[0]) if row is not None else None

    async def cancel_many(self, task_ids: Sequence[int], now: float) -> dict[int, TaskStatus]:
        ids = list(dict.fromkeys(task_ids))
        rest: dict[int, str] = {}
        async with self._cursor(transaction=True) as cur:
            await cur.execute(Q["cancel_many"], {"ids": ids, "now": float(now)})
            found: dict[int, str] = dict(await cur.fetchall())
            cancelled = [i for i, status in found.items() if status == "cancelled"]
            if cancelled:  # (a parent waiting for them)
                await wake_parents(cur, cancelled)
            if left := [i for i in ids if i not in found]:  # ended already, gone, or locked
                await cur.execute(Q["statuses"], {"ids": left})
                rest = dict(await cur.fetchall())
        after = {i: TaskStatus(status) for i, status in found.items()}
        for i, status in rest.items():
            was = TaskStatus(status)
            if was.terminal:
                after[i] = was
            elif (one := await self.cancel(i, now)) is not None:  # skipped: a write held it
                after[i] = one
        return after

    async def requeue(
        self,
        statuses: Sequence[TaskStatus],
        *,
        agent: str | None = None,
        tenant: str | None = None,
    ) -> int:
        """Requeue in chunks of REQUEUE_CHUNK tasks, one transaction each, going up the ids:
        a transaction records at most 2**20 status changes."""
        if not statuses:
            return 0
        params: dict[str, Any] = {
            "statuses": [str(s) for s in statuses],
            "agent": agent,
            "tenant": tenant,
            "after": 0,
            "limit": REQUEUE_CHUNK,
        }
        done = 0
        while True:
            async with self._cursor() as cur:  # a call (and a deadline) per chunk
                await cur.execute(Q["requeue"], params)
                ids = [r[0] for r in await cur.fetchall()]
            done += len(ids)
            if len(ids) < REQUEUE_CHUNK:
                break
            params["after"] = max(ids)
        return done

    async def requeue_one(self, task_id: int) -> bool:
        return bool(await self.requeue_many([task_id]))

    async def requeue_many(self, task_ids: Sequence[int]) -> list[int]:
        ids, queued = list(dict.fromkeys(task_ids)), []
        for at in range(0, len(ids), REQUEUE_CHUNK):
            async with self._cursor() as cur:  # a call (and a deadline) per chunk
                await cur.execute(Q["requeue_many"], {"ids": ids[at : at + REQUEUE_CHUNK]})
                queued += [r[0] for r in await cur.fetchall()]
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
        params = {
            "before": float(before),
            "statuses": terminal_statuses(statuses),
            "agent": agent,
            "tenant": tenant,
            "limit": limit,
            "after": after,
            "feed_after": 0,
        }
        async with self._cursor(transaction=True) as cur:
            await cur.execute(NO_JIT)
            await cur.execute(Q["purge_tasks"], params)
            row = await cur.fetchone()
            assert row is not None
            tasks, own, last = int(row[0]), tuple(row[1]), int(row[2])
            events = 0
            if feed:
                await cur.execute(Q["purge_events"], params)
                events = len(await cur.fetchall())
        return Purged(tasks=tasks, events=events, sessions=own, last=last)

    async def purge_feed(self, before: float, *, after: int = 0, limit: int = 1000) -> Purged:
        params = {"before": float(before), "feed_after": after, "limit": limit}
        async with self._cursor(transaction=True) as cur:
            await cur.execute(NO_JIT)
            await cur.execute(Q["purge_events"], params)
            ids = [int(r[0]) for r in await cur.fetchall()]
        return Purged(tasks=0, events=len(ids), last=max(ids, default=0))

    async def purged_spend(self, scope: str, name: str) -> tuple[int, int, float]:
        async with self._cursor() as cur:
            await cur.execute(Q["purged_spend"], {"scope": scope, "name": name})
            row = await cur.fetchone()
        return (0, 0, 0.0) if row is None else (int(row[0]), int(row[1]), float(row[2]))

    async def purgeable(
        self,
        before: float,
        statuses: Sequence[TaskStatus],
        *,
        agent: str | None = None,
        tenant: str | None = None,
    ) -> int:
        params = {
            "before": float(before),
            "statuses": terminal_statuses(statuses),
            "agent": agent,
            "tenant": tenant,
        }
        async with self._cursor(transaction=True) as cur:
            await cur.execute(NO_JIT)
            await cur.execute(Q["purgeable"], params)
            return int(_one(await cur.fetchone()))

    # -- reads -------------------------------------------------------------------------

    async def get(self, task_id: int) -> TaskInfo | None:
        async with self._cursor() as cur:
            await cur.execute(Q["get_task"], {"id": task_id})
            row = await cur.fetchone()
        return task_info(row) if row is not None else None

    async def get_many(self, ids: Sequence[int]) -> list[TaskInfo]:
        if not ids:
            return []
        async with self._cursor() as cur:
            await cur.execute(Q["get_tasks"], {"ids": list(ids)})
            return [task_info(r) for r in await cur.fetchall()]

    async def statuses(self, ids: Sequence[int]) -> dict[int, TaskStatus]:
        if not ids:
            return {}
        async with self._cursor() as cur:
            await cur.execute(Q["statuses"], {"ids": list(ids)})
            return {i: TaskStatus(st) for i, st in await cur.fetchall()}

    async def find_keys(self, keys: Sequence[str]) -> dict[str, TaskInfo]:
        if not keys:
            return {}
        async with self._cursor() as cur:
            await cur.execute(Q["find_keys"], {"keys": list(keys)})
            return {info.key or "": info for info in map(task_info, await cur.fetchall())}

    async def counts(self) -> dict[TaskStatus, int]:
        async with self._cursor() as cur:
            await cur.execute(Q["counts"])
            return {TaskStatus(s): n for s, n in await cur.fetchall()}

    async def counts_by_tenant(self) -> dict[str, dict[TaskStatus, int]]:
        out: dict[str, dict[TaskStatus, int]] = {}
        async with self._cursor() as cur:
            await cur.execute(Q["counts_by_tenant"])
            for tenant, status, n in await cur.fetchall():
                out.setdefault(tenant, {})[TaskStatus(status)] = n
        return out

    async def count_queued(self, tenant: str) -> int:
        async with self._cursor() as cur:
            await cur.execute(Q["count_queued"], {"tenant": tenant})
            return int(_one(await cur.fetchone()))

    async def counts_by_agent(self) -> dict[str, dict[TaskStatus, int]]:
        out: dict[str, dict[TaskStatus, int]] = {}
        async with self._cursor() as cur:
            await cur.execute(Q["counts_by_agent"])
            for agent, status, n in await cur.fetchall():
                out.setdefault(agent, {})[TaskStatus(status)] = n
        return out

    async def recent_errors(self, limit: int = 10, tenant: str | None = None) -> list[TaskInfo]:
        async with self._cursor() as cur:
            await cur.execute(Q["recent_errors"], {"limit": limit, "tenant": tenant})
            return [task_info(r) for r in await cur.fetchall()]

    async def steps(self, task_id: int) -> list[StepInfo]:
        async with self._cursor() as cur:
            await cur.execute(Q["steps_of"], {"task_id": task_id})
            return [StepInfo(k, a, codec.loads(o), s, f) for k, a, o, s, f in await cur.fetchall()]

    async def step_count(self, task_id: int) -> int:
        async with self._cursor() as cur:
            await cur.execute(Q["step_count"], {"task_id": task_id})
            return int(_one(await cur.fetchone()))

    async def attempts(self, task_id: int) -> list[AttemptRecord]:
        async with self._cursor() as cur:
            await cur.execute(Q["attempts_of"], {"task_id": task_id})
            return [attempt_record(task_id, r) for r in await cur.fetchall()]

    async def events_after(
        self, after: int, limit: int = 10_000, *, skip_worker: str | None = None
    ) -> list[Event]:
        """Events with ids above ``after``, oldest first, once they are final. Events that
        committed behind an older transaction still open wait for it (up to FEED_SETTLE
        seconds, or for a later call)."""
        async with self._cursor() as cur:
            params = {
                "after": after,
                "horizon": await _final_horizon(cur),
                "limit": limit,
                "skip_worker": skip_worker,
            }
            await cur.execute(Q["events_after"], params)
            rows = await cur.fetchall()
        return [Event(i, t, at, TaskStatus(s), a, w) for i, t, at, s, a, w in rows]

    async def last_event_id(self) -> int:
        async with self._cursor() as cur:
            await cur.execute(Q["last_event"])
            return int(_one(await cur.fetchone()))

    # -- memory ------------------------------------------------------------------------

    async def memory_get(self, session: str, key: str) -> bytes | None:
        async with self._cursor() as cur:
            await cur.execute(Q["get_memory"], {"session": session, "key": key})
            row = await cur.fetchone()
        return row[0] if row is not None else None

    async def memory_swap(self, write: MemoryWrite, expected: bytes | None, now: float) -> bool:
        """Swaps of one key wait for each other (a lock on the key for the transaction);
        the row, where there is one, is locked against the journal's plain writes too."""
        async with self._cursor(transaction=True) as cur:
            if await _held_memory(cur, write) != expected:
                return False
            await _write_memory(cur, write, now)
        return True

    async def memory_change(
        self, write: MemoryWrite, change: Callable[[bytes | None], bytes | None], now: float
    ) -> bytes | None:
        async with self._cursor(transaction=True) as cur:
            value = change(await _held_memory(cur, write))
            await _write_memory(cur, dataclasses.replace(write, value=value), now)
        return value

    async def memory_items(self, session: str) -> dict[str, bytes]:
        async with self._cursor() as cur:
            await cur.execute(Q["memory_items"], {"session": session})
            return dict(await cur.fetchall())

    async def live_sessions(self) -> set[str]:
        async with self._cursor() as cur:
            await cur.execute(Q["live_sessions"])
            return {r[0] for r in await cur.fetchall()}

    async def idle_sessions(self, before: float, after: str, limit: int) -> list[str]:
        params = {"before": float(before), "after": after, "limit": limit}
        async with self._cursor() as cur:
            await cur.execute(Q["idle_sessions"], params)
            return [r[0] for r in await cur.fetchall()]

    async def drop_memory(self, sessions: Sequence[str], before: float) -> int:
        async with self._cursor() as cur:
            await cur.execute(Q["drop_memory"], {"sessions": list(sessions), "before": before})
            return cur.rowcount

    # -- workers -----------------------------------------------------------------------

    async def diagnostics(
        self,
        *,
        task_id: int | None = None,
        agent: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[DiagnosticRecord]:
        params = {"task_id": task_id, "agent": agent, "kind": kind, "limit": limit}
        async with self._cursor() as cur:
            await cur.execute(Q["diagnostics"], params)
            rows = await cur.fetchall()
        return [DiagnosticRecord(t, a, ag, codec.loads(d)["kind"], d) for t, a, ag, d in rows]

    # -- shared LLM capacity -------------------------------------------------------------

    async def claim_capacity(
        self, route: str, worker: str, demand: float, now: float, *, horizon: float
    ) -> CapacityClaims:
        params = {"route": route, "worker": worker, "demand": float(demand), "now": float(now)}
        async with self._cursor(transaction=True) as cur:
            await cur.execute(Q["claim_capacity"], params)
            await cur.execute(Q["forget_capacity_claims"], {"before": float(now - 10 * horizon)})
            await cur.execute(Q["capacity_claims"], {"route": route, "since": float(now - horizon)})
            row = await cur.fetchone()
        assert row is not None
        return CapacityClaims(int(row[0]), float(row[1]), float(row[2]))

    async def signal_backoff(self, route: str, until: float) -> None:
        async with self._cursor() as cur:
            await cur.execute(Q["signal_backoff"], {"route": route, "until": float(until)})

    # -- workers -----------------------------------------------------------------------

    async def register_worker(self, worker: WorkerInfo) -> None:
        params = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "info": codec.dumps(dict(worker.load)),
            "boot_id": worker.boot_id,
            "pid_ns": worker.pid_ns,
            "proc_start": worker.proc_start,
        }
        async with self._cursor() as cur:
            await cur.execute(Q["upsert_worker"], params)

    async def remove_worker(self, worker_id: str) -> None:
        async with self._cursor() as cur:
            await cur.execute(Q["delete_worker"], {"id": worker_id})

    async def workers(self) -> list[WorkerInfo]:
        async with self._cursor() as cur:
            await cur.execute(Q["workers"])
            rows = await cur.fetchall()
        return [
            WorkerInfo(i, h, p, s, hb, codec.loads(info), boot, ns, start)
            for i, h, p, s, hb, info, boot, ns, start in rows
        ]

    # -- provisioning ------------------------------------------------------------------

    async def backlog(self, now: float, agents: Collection[str] | None = None) -> Backlog:
        named = None if agents is None else sorted(agents)
        async with self._cursor() as cur:
            await cur.execute(Q["backlog"], {"now": now, "agents": named})
            row = await cur.fetchone()
        assert row is not None
        return Backlog(int(row[0]), row[1])

    async def publish_autoscaler(self, info: AutoscalerInfo) -> None:
        async with self._cursor() as cur:
            await cur.execute(Q["upsert_autoscaler"], dataclasses.asdict(info))

    async def remove_autoscaler(self, autoscaler_id: str) -> None:
        async with self._cursor() as cur:
            await cur.execute(Q["delete_autoscaler"], {"id": autoscaler_id})

    async def autoscalers(self, since: float) -> list[AutoscalerInfo]:
        async with self._cursor() as cur:
            await cur.execute(Q["autoscalers"], {"since": since})
            rows = await cur.fetchall()
        return [AutoscalerInfo(*row) for row in rows]

    # -- waiting for work --------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109 - bounds the wait
        """Return when a task may have become ready (a NOTIFY from any store on this
        schema, or the listening connection coming back after an outage in which
        notifications may have been missed): True; or after ``timeout`` seconds: False."""
        if self._pool is None:
            raise StoreError("the store is not open (use `async with` or call open())")
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="legion-store-listen")
        wake = self._wake
        try:
            async with asyncio.timeout(timeout):
                await wake.wait()
        except TimeoutError:
            return False
        return True

    async def _listen(self) -> None:
        """Keep one connection LISTENing on the work channel; wake waiters on each NOTIFY."""
        delay = 0.1
        missed = False  # notifications may have been lost since the last connection
        while True:
            try:
                async with await Connection.connect(self._conninfo, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    delay = 0.1
                    if missed:
                        self._wake_waiters()
                    async for _ in conn.notifies():
                        self._wake_waiters()
            except psycopg.Error as exc:
                log.warning("listening for new work on %s failed: %s", self._where, self._said(exc))
            missed = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _wake_waiters(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    # -- HTTP API (legion serve) -------------------------------------------------------

    async def list_tasks(self, query: TaskQuery) -> list[TaskInfo]:
        params = {
            "statuses": [str(st) for st in query.statuses] or None,
            "agent": query.agent,
            "created_from": query.created_from,
            "created_to": query.created_to,
            "before": query.before,
            "limit": query.limit,
            "tenant": query.tenant,
            "parent": query.parent,
        }
        async with self._cursor() as cur:
            await cur.execute(Q["list_tasks"], params)
            return [task_info(r) for r in await cur.fetchall()]

    async def event_details_after(self, after: int, limit: int = 10_000) -> list[EventDetail]:
        """Like `events_after`, final events only: those that committed behind an older
        transaction still open wait for it (up to FEED_SETTLE seconds, or for a later call)."""
        async with self._cursor() as cur:
            params = {"after": after, "horizon": await _final_horizon(cur), "limit": limit}
            await cur.execute(Q["event_details_after"], params)
            return [event_detail(r) for r in await cur.fetchall()]

    async def add_api_key(self, key: ApiKey) -> None:
        params = {
            "id": key.id,
            "name": key.name,
            "salt": key.salt,
            "digest": key.digest,
            "created_at": float(key.created_at),
            "tenant": key.tenant,
            "scope": key.scope,
        }
        async with self._cursor() as cur:
            try:
                await cur.execute(Q["insert_api_key"], params)
            except psycopg.errors.UniqueViolation as exc:
                raise StoreError(f"an API key with id {key.id!r} exists already") from exc

    async def api_key(self, key_id: str) -> ApiKey | None:
        async with self._cursor() as cur:
            await cur.execute(Q["get_api_key"], {"id": key_id})
            row = await cur.fetchone()
        return _api_key(row) if row is not None else None

    async def api_keys(self) -> list[ApiKey]:
        async with self._cursor() as cur:
            await cur.execute(Q["api_keys"])
            return [_api_key(r) for r in await cur.fetchall()]

    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        async with self._cursor() as cur:
            await cur.execute(Q["revoke_api_key"], {"id": key_id, "now": float(now)})
            return cur.rowcount == 1


# -- helpers ---------------------------------------------------------------------------


MIGRATION_LOCK_WAIT = 0.5
"""Seconds an upgrade of the schema waits for a table's lock before it lets go (the
workers' statements queued behind it go on) and tries again."""
MIGRATION_RETRY_MAX = 10.0


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The libpq URL without legion's pool options, and those options."""
    if url.partition("://")[2].split("/", 1)[0].count("@") > 1:
        # libpq takes the first '@' for the end of the credentials: the rest of the
        # password would be sent as the host name (and printed in its error)
        raise ValueError("more than one '@' before the database: write a '@' of a password as %40")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _POOL_PARAMS}
    rest = urlencode([(k, v) for k, v in query if k not in _POOL_PARAMS], quote_via=quote)
    # (by hand: urlunsplit writes a URL without a host, postgresql:///db?host=/run/pg,
    # as postgresql:/db, which libpq then read as key=value pairs and refused)
    url = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
    return url + (f"#{parts.fragment}" if parts.fragment else ""), ours


def _with_bounds(conninfo: str, bounds: StoreTimeouts, *, server: bool) -> str:
    """``conninfo`` with the timeouts' libpq settings it does not set itself; with
    ``server``, the session's statement bounds too, ahead of its own ``options``."""
    given = conninfo_to_dict(conninfo)
    extra: dict[str, Any] = {k: v for k, v in bounds.libpq().items() if k not in given}
    if server:
        mark = f"-c {SESSION_MARK}=1"  # (what `_check_session` looks for)
        extra["options"] = f"{bounds.server_options()} {mark} {given.get('options') or ''}".strip()
        if "application_name" not in given:
            extra["application_name"] = PROCESS_TAG
    return make_conninfo(conninfo, **extra)


def _past_a_limit(exc: BaseException) -> bool:
    """Whether the server refused a statement for a limit of its own (SQLSTATE class 54,
    "program limit exceeded": an index row past its page's third, too many columns...).
    psycopg counts those operational errors, but the same write fails the same way
    again: it is not the server being away."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith("54")


def _transient(exc: psycopg.Error) -> bool:
    """Whether a failure to connect may pass on its own. libpq gives no SQLSTATE for
    these: a failure without a server's FATAL answer is the network's (refused, timed
    out); a FATAL answer is permanent (credentials, permissions) unless the server says
    it cannot serve yet."""
    message = str(exc)
    if "password" in message or "authentication" in message:
        return False
    return "FATAL:" not in message or any(m in message for m in _NOT_YET)


def _cut(conn: Connection, cut: list[bool]) -> None:
    """A call's deadline passed: shut its socket down, so that whatever psycopg waits for
    fails at once (the connection is then broken and leaves the pool)."""
    cut.append(True)
    try:
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error) as exc:
        log.debug("could not cut a late store call's connection: %s", exc)


async def _check(pool: AsyncConnectionPool[Connection], limit: float) -> None:
    """Drop the pool's broken idle connections, within ``limit`` seconds."""
    try:
        async with asyncio.timeout(limit):
            await pool.check()
    except (TimeoutError, psycopg.Error) as exc:
        log.warning("checking the store's idle connections failed: %s", exc)


async def _lease_in_turns(
    cur: Cursor, params: dict[str, Any], queued: Sequence[TupleRow], cap: int | None
) -> list[TupleRow]:
    """Lease one agent's tasks of several tenants, in turns (`legion.store.turns`). A
    worker leasing at the same moment may have locked some of the tasks the turns gave a
    tenant, and that tenant had no others: then the turns run again for the rest (twice
    more at most), over the tenants as they are then."""
    rows: list[TupleRow] = []
    for _ in range(3):
        need = params["limit"] - len(rows)
        got, planned = await _lease_turns(cur, {**params, "limit": need}, queued, cap)
        rows.extend(got)
        if len(got) >= planned or len(rows) >= params["limit"]:
            break
        await cur.execute(Q["queued_tenants"], params)
        queued = await cur.fetchall()
        if not queued:
            break
    return rows


async def _lease_turns(
    cur: Cursor, params: dict[str, Any], queued: Sequence[TupleRow], cap: int | None
) -> tuple[list[TupleRow], int]:
    """One pass of `_lease_in_turns`: each tenant's first tasks in one read
    (`lease_read`) and more of a tenant whose turns used them up (`lease_read_after`),
    without a lock; then what the turns gave each tenant, locked and leased in one
    statement (`lease_turns`: SKIP LOCKED, another's next where one is being leased), in
    the turns' order. Answers the rows leased and how many the turns took."""
    turns: Turns[int] = Turns({str(t): int(n) for t, n in queued}, params["limit"], cap)
    share = share_of(turns.need, len(queued))
    tenants = [str(t) for t, _ in queued]
    await cur.execute(Q["lease_read"], {**params, "tenants": tenants, "share": share})
    read: dict[str, list[tuple[int, int, int]]] = {t: [] for t in tenants}
    of: dict[int, str] = {}
    for tenant, priority, task_id in await cur.fetchall():
        read[tenant].append((priority, task_id, task_id))
        of[task_id] = tenant
    for tenant, rows in read.items():
        turns.read(tenant, sorted(rows, key=lambda r: (-r[0], r[1])), share)
    while (tenant := turns.merge()) is not None:
        more, after = turns.more(tenant), turns.last(tenant)
        assert after is not None  # (it had tasks read: they ran out)
        keyset = {"after_priority": after[0], "after_id": after[1]}
        await cur.execute(
            Q["lease_read_after"], {**params, "tenant": tenant, "share": more, **keyset}
        )
        rows = [(p, i, i) for _, p, i in await cur.fetchall()]
        of.update((i, tenant) for _, i, _ in rows)
        turns.read(tenant, rows, more)
    if not turns.taken:
        return [], 0
    counts: dict[str, int] = {}
    for task_id in turns.taken:
        counts[of[task_id]] = counts.get(of[task_id], 0) + 1
    take = {"tenants": list(counts), "counts": list(counts.values())}
    await cur.execute(Q["lease_turns"], {**params, **take})
    leased = await cur.fetchall()
    order = {task_id: n for n, task_id in enumerate(turns.taken)}
    return sorted(leased, key=lambda r: order.get(r[0], len(order))), len(turns.taken)


def _one(row: TupleRow | None) -> Any:
    if row is None:
        raise StoreError("the store answered no row where one was expected")
    return row[0]


def _known(task_id: int | None) -> int:
    if task_id is None:
        raise StoreError("an inserted task came back without an id")
    return task_id


def _match_inserted(keys: Sequence[str | None], rows: Iterable[TupleRow]) -> list[int | None]:
    """Per task (by stored key), its new id, or None where its key existed. RETURNING
    answers the inserted rows in input order, so the answer is walked alongside the input."""
    answer = iter(rows)
    row = next(answer, None)
    out: list[int | None] = []
    for key in keys:
        if row is not None and row[1] == key:
            out.append(row[0])
            row = next(answer, None)
        elif key is None:
            raise StoreError("inserted tasks came back out of order")
        else:
            out.append(None)
    if row is not None:
        raise StoreError("inserted tasks came back out of order")
    return out


def _memory_changes(writes: Sequence[MemoryWrite]) -> tuple[list[MemoryWrite], list[MemoryWrite]]:
    """The last write of each (session, key), split into sets and deletes, sorted so that
    concurrent batches lock rows in one order."""
    last = {(m.session, m.key): m for m in writes}
    ordered = [last[k] for k in sorted(last)]
    return [m for m in ordered if m.value is not None], [m for m in ordered if m.value is None]


def _memory_params(writes: Sequence[MemoryWrite]) -> dict[str, Any]:
    return {
        "session": [m.session for m in writes],
        "key": [m.key for m in writes],
        "value": [m.value for m in writes],
        "task_id": [m.task_id for m in writes],
        "attempt": [m.attempt for m in writes],
        "owner": [m.owner for m in writes],
    }


def _completion_params(completions: Sequence[Completion]) -> dict[str, Any]:
    return {
        "status": texts([c.outcome.status.value for c in completions]),
        "output": byteas([c.output for c in completions]),
        "error": byteas([c.error.to_json() if c.error is not None else None for c in completions]),
        "not_before": float8s([float(c.not_before) for c in completions]),
        "uncount": int4s([1 if c.outcome in _UNCOUNTED else 0 for c in completions]),
        "finished_at": float8s(
            [
                None if c.outcome in (Outcome.RETRY, *_UNCOUNTED) else float(c.finished_at)
                for c in completions
            ]
        ),
        "id": int8s([c.id for c in completions]),
        "attempt": int4s([c.attempt for c in completions]),
        "owner": texts([c.owner for c in completions]),
        "usage": byteas([c.usage for c in completions]),
        "outcome": texts([c.outcome.value for c in completions]),
        "started": float8s([float(c.started_at) for c in completions]),
        "ended": float8s([float(c.finished_at) for c in completions]),
        "running": float8s([float(c.running) for c in completions]),
        "waited": float8s([float(c.waited) for c in completions]),
    }


async def _feed_state(cur: Cursor) -> tuple[int, int]:
    await cur.execute(Q["feed_state"])
    row = await cur.fetchone()
    if row is None:
        raise StoreError("the store answered no feed state")
    return int(row[0]), int(row[1])


async def _final_horizon(cur: Cursor) -> int:
    """The feed's horizon once every event this snapshot sees is final, or FEED_SETTLE
    seconds on, whichever comes first: a transaction that began before an event's and is
    still open, anywhere on the server, holds the event back."""
    horizon, newest = await _feed_state(cur)
    if newest < horizon:
        return horizon
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FEED_SETTLE
    delay = 0.001
    while horizon <= newest and loop.time() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
        horizon, _ = await _feed_state(cur)
    return horizon


def _api_key(row: Sequence[Any]) -> ApiKey:
    key_id, name, salt, digest, created_at, revoked_at, tenant, scope = row
    return ApiKey(key_id, name, bytes(salt), bytes(digest), created_at, revoked_at, tenant, scope)


def _said(exc: BaseException) -> str:
    """``exc``'s message on one line: libpq's run over several ("Connection refused" then
    "Is the server running on that host...?"), and every store error is printed as one."""
    return " ".join(str(exc).split())


async def _held_memory(cur: Cursor, write: MemoryWrite) -> bytes | None:
    """What ``write``'s key holds, read in the cursor's transaction once the key is locked
    for it: writes of one key wait for each other, and the row, where there is one, is
    locked against the journal's plain writes too."""
    params = {"session": write.session, "key": write.key}
    await cur.execute(Q["lock_memory_key"], params)
    await cur.execute(Q["get_memory_for_update"], params)
    row = await cur.fetchone()
    return None if row is None else bytes(row[0])


async def _write_memory(cur: Cursor, write: MemoryWrite, now: float) -> None:
    """``write`` in the cursor's transaction; `LeaseLost` (the transaction undone) when it
    is fenced by a lease that no longer holds."""
    if write.value is None:
        changes = _memory_params([write])
        del changes["value"]
        await cur.execute(Q["delete_memory"], changes)
    else:
        await cur.execute(Q["set_memory"], {**_memory_params([write]), "now": now})
    if any(not cancel for _, cancel in await cur.fetchall()):
        assert write.task_id is not None
        raise LeaseLost(write.task_id, write.attempt)
