"""The ``Store`` interface, as the roles its callers play: everything legion keeps lives
behind it.

A store holds tasks, step results, session memory, the event feed, the worker registry,
shared LLM capacity and API keys. Each caller depends on the role it uses:

- `TaskQueue`: submit, lease, commit (the journal), extend and reclaim leases;
- `TaskReader`: tasks, counts, steps, events and findings, read back;
- `SessionMemory`: ``ctx.memory`` reads (writes go through the journal);
- `WorkerRegistry`: the live workers and their heartbeats;
- `CapacityBoard`: LLM capacity shared by the workers of one API key;
- `KeyStore`: the API keys of ``legion serve``;
- `GatewayLedger` (`legion.store.ledger`): usage per key and recorded calls of
  ``legion gateway``.

`Store` is their union, with the connection's lifecycle; every implementation
passes the same contract test suite. The hot path is batched: `TaskQueue.submit`
takes many tasks, `TaskQueue.lease` hands out many, and `TaskQueue.write`
commits the steps, memory writes and completions of many instances in one transaction
(group commit). The values they exchange are in `legion.store.types`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

from legion.store.batches import BatchStore
from legion.store.ledger import GatewayLedger
from legion.store.types import (
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
)
from legion.store.waiting import WaitingStore
from legion.task import Lease, NewTask, Submitted, TaskInfo, TaskStatus


class TaskQueue(Protocol):
    """The queue of tasks: what submitters and workers change. All methods are safe to call
    concurrently."""

    async def submit(self, tasks: Sequence[NewTask], now: float) -> list[Submitted]:
        """Insert tasks; a task whose key exists already (in its tenant) answers the
        existing one. A key submitted before with another agent or input raises
        `legion.errors.IdempotencyConflict` and nothing is inserted."""

    def queue_delay(self) -> float | None:
        """The mean seconds the store's calls since the last read waited before the store
        began them (for its writer, or for a connection); ``None``: no call began. The
        HTTP server's load shedding follows it (`legion.server.admission.AdaptiveLimit`)."""

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
        """Lease to ``owner`` up to ``wants[agent]`` ready tasks of each agent (in the
        mapping's order) and at most ``total`` in all, each with every step recorded for
        it so far. The lease lasts ``until - now`` seconds (on PostgreSQL, counted on the
        database's clock). ``isolated``: a group of tasks of those agents that must run
        apart from all others (taken back from a worker that stopped while running them
        among others), at most ``total`` and at most the first one's ``isolate_group``
        (half of those it was lost with: a task that stops its worker each time ends up
        alone); the ordinary call never leases those. ``offer``: the resources the worker offers; a
        task whose ``needs`` it does not cover (every amount) is not leased to it.
        ``min_priority``: only tasks of at least that priority (a worker whose LLM routes
        are busy still takes raised-priority work, whose calls go first there).
        ``tenant_cap``: no task of a tenant that has that many of the agent's tasks
        running (on every worker, as the store counts them) is leased. Tenants take
        turns (`legion.store.turns`)."""

    async def write(self, batch: WriteBatch, now: float) -> list[bool]:
        """Commit a batch in one transaction; per completion, whether its lease still held.
        Steps, fenced memory writes and diagnostics of a lease that no longer holds are
        not written: their tasks' ids go into ``batch.lost``."""

    async def extend_leases(
        self, owner: str, task_ids: Sequence[int], until: float, now: float
    ) -> Extended:
        """Extend the leases on ``task_ids`` that ``owner`` still holds, for ``until - now``
        seconds (on PostgreSQL, on the database's clock)."""

    async def release_unheld(self, owner: str, keep: Sequence[int]) -> int:
        """Give back every lease ``owner`` holds on a task not in ``keep`` (after a lease
        call whose answer was lost), attempt not counted; answer how many."""

    async def cancels_asked(self, owner: str) -> list[int]:
        """The tasks ``owner`` runs whose cancellation was asked (looked at twice a second:
        an index holds only them)."""

    async def absolve(self, owner: str) -> int:
        """Tasks taken back from ``owner`` while it lived (its leases expired while it was
        cut off from the store, or paused) run with others again: it did not stop, so
        none of them stopped it. Clears the mark that makes a queued task run alone when
        its last attempt was lost on ``owner``; answers how many."""

    async def reclaim(
        self, now: float, dead_owners: Sequence[str] = (), *, keep: str | None = None
    ) -> Reclaimed:
        """Take back expired leases (on PostgreSQL: expired by the database's clock; ``now``
        is the SQLite store's) and those of ``dead_owners``. A task is charged the stop
        only if its worker ran it alone; the others run apart next, in halving groups.
        ``keep``: the worker asking, whose own leases it holds alive (they expire only by
        its clock's step: taken back, every task it runs would run again)."""

    async def now(self) -> float:
        """The store's time, in seconds since the epoch: the database's clock on PostgreSQL
        (workers' clocks may disagree), the wall clock on SQLite (one host)."""

    async def cancel(self, task_id: int, now: float) -> TaskStatus | None:
        """Cancel a queued task at once, or ask a running one's worker to stop it."""

    async def cancel_many(self, task_ids: Sequence[int], now: float) -> dict[int, TaskStatus]:
        """`cancel` for each of ``task_ids``, in one transaction: the status of each task
        found, after (a task not found is left out)."""

    async def requeue(
        self,
        statuses: Sequence[TaskStatus],
        *,
        agent: str | None = None,
        tenant: str | None = None,
    ) -> int:
        """Queue again every task in ``statuses`` (of ``agent``, of ``tenant``) with a fresh
        attempt budget."""

    async def requeue_one(self, task_id: int) -> bool:
        """Queue again one dead, failed or cancelled task."""

    async def requeue_many(self, task_ids: Sequence[int]) -> list[int]:
        """Queue again those of ``task_ids`` that ended dead, failed or cancelled, with a
        fresh attempt budget, a transaction per chunk of ids; answer the ids queued."""

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
        """Delete up to ``limit`` tasks in ``statuses`` (ended ones) that ended before
        ``before`` (of ``agent``, of ``tenant``: any if ``None``), oldest first, with their
        steps, attempts, diagnostics, signals and batch calls, except a child whose parent
        is kept and has not succeeded (it reads its children's ends; a failed one may be
        retried); and (``feed``) up to ``limit`` change-feed rows older than ``before`` of
        tasks that are gone. Call it again until it deletes nothing. A deleted task's
        idempotency key is free again.

        ``after``: only tasks whose id is above it. A purge goes on from the last task it
        deleted (`Purged.last`), so the tasks it keeps (live, or of another status) are
        read once, not again at every call. A purge that does so purges the feed after the
        tasks (``feed=False``, then `purge_feed`): a task deleted later may have feed rows
        below any point the feed's purge reached."""

    async def purge_feed(self, before: float, *, after: int = 0, limit: int = 1000) -> Purged:
        """Delete up to ``limit`` change-feed rows older than ``before`` of tasks that are
        gone, of those whose id is above ``after``, oldest first (``events``; ``last``: the
        last row deleted, where the next call goes on from)."""

    async def purgeable(
        self,
        before: float,
        statuses: Sequence[TaskStatus],
        *,
        agent: str | None = None,
        tenant: str | None = None,
    ) -> int:
        """How many tasks `purge` would delete, in all."""

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109 - bounds the wait
        """Return when new work may be ready, or after ``timeout`` seconds; True if woken
        by a notification (a submit, requeue, retry or reclaim, from any process), False on
        timeout. Optional to use: a worker that polls instead misses nothing. Stores that
        cannot notify just sleep and answer False."""


class TaskReader(Protocol):
    """Tasks and their history, read back: results, counts, steps, the event feed, findings."""

    async def get(self, task_id: int) -> TaskInfo | None: ...

    async def get_many(self, ids: Sequence[int]) -> list[TaskInfo]: ...

    async def statuses(self, ids: Sequence[int]) -> dict[int, TaskStatus]:
        """The status of each of these tasks that exists (a purged one is absent)."""

    async def find_keys(self, keys: Sequence[str]) -> dict[str, TaskInfo]:
        """The tasks with these idempotency keys, by key."""

    async def counts(self) -> dict[TaskStatus, int]: ...

    async def schema_version(self) -> int:
        """The version of the store's schema (its last migration)."""

    async def counts_by_tenant(self) -> dict[str, dict[TaskStatus, int]]:
        """Tasks per tenant and status (tenants without tasks are absent)."""

    async def count_queued(self, tenant: str) -> int:
        """How many of ``tenant``'s tasks are queued."""

    async def counts_by_agent(self) -> dict[str, dict[TaskStatus, int]]: ...

    async def purged_spend(self, scope: str, name: str) -> tuple[int, int, float]:
        """The LLM calls, tokens and cost (USD) that purged tasks of agent ``name``
        (``scope`` ``"agent"``) or of tenant ``name`` (``"tenant"``) had recorded."""
        ...

    async def recent_errors(self, limit: int = 10, tenant: str | None = None) -> list[TaskInfo]:
        """The ``limit`` tasks that failed last (or wait for a retry after an error), of
        every tenant or of ``tenant``'s alone."""
        ...

    async def steps(self, task_id: int) -> list[StepInfo]: ...

    async def step_count(self, task_id: int) -> int:
        """How many steps a task has recorded: whether `steps` would answer a new one, at
        the cost of an index's count (a follower of a long task polls it)."""
        ...

    async def attempts(self, task_id: int) -> list[AttemptRecord]:
        """The ended attempts of a task, oldest first (one per completion its workers
        wrote; an attempt whose lease was lost wrote none)."""

    async def events_after(
        self, after: int, limit: int = 10_000, *, skip_worker: str | None = None
    ) -> list[Event]:
        """Events with ids above ``after``, oldest first; ``skip_worker`` leaves out the
        changes that worker made itself."""

    async def last_event_id(self) -> int: ...

    async def diagnostics(
        self,
        *,
        task_id: int | None = None,
        agent: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[DiagnosticRecord]:
        """The latest findings, newest first, of one task, agent or kind (or all)."""

    async def list_tasks(self, query: TaskQuery) -> list[TaskInfo]:
        """Tasks matching ``query``, newest (highest id) first, at most ``query.limit``;
        without their inputs and outputs (``None``: a page shows neither)."""

    async def event_details_after(self, after: int, limit: int = 10_000) -> list[EventDetail]:
        """Like `events_after` (every worker's changes), each with its task's details."""


class SessionMemory(Protocol):
    """Session memory as ``ctx.memory`` reads it (its writes go through the journal)."""

    async def memory_get(self, session: str, key: str) -> bytes | None: ...

    async def memory_items(self, session: str) -> dict[str, bytes]: ...

    async def memory_swap(self, write: MemoryWrite, expected: bytes | None, now: float) -> bool:
        """Apply ``write`` only if the key holds ``expected`` now (``None``: no value), in
        one transaction, fenced by its lease as a journal write is (`LeaseLost` once the
        lease is gone); whether it was applied. A compare-and-set: what
        ``ctx.memory.update`` builds an atomic read-modify-write on, from an executor's
        process."""

    async def memory_change(
        self, write: MemoryWrite, change: Callable[[bytes | None], bytes | None], now: float
    ) -> bytes | None:
        """Write ``change(what the key holds)`` (``None``: no value; a delete) under
        ``write``'s key, the read and the write in one transaction that holds the key
        against every other writer (``write.value`` is not read), fenced as
        `memory_swap` is; the value written. ``change`` runs in that transaction (on
        SQLite, on the store's thread): an error it raises undoes it and passes on.
        ``ctx.memory.update``'s read-modify-write: no other writer comes between, so it
        never loses a race (compare-and-set lost ~48 tries per update of a key 1,000
        tasks of one session updated at once, on PostgreSQL)."""

    async def live_sessions(self) -> set[str]:
        """The sessions (as stored: scoped by tenant) of the queued, running and waiting
        tasks, their own sessions included."""

    async def idle_sessions(self, before: float, after: str, limit: int) -> list[str]:
        """Up to ``limit`` sessions (as stored) none of whose memory was written since
        ``before``, in name order after ``after``."""

    async def drop_memory(self, sessions: Sequence[str], before: float) -> int:
        """Delete the memory of ``sessions`` (as stored), but of those written since
        ``before``; answer how many keys went."""


class WorkerRegistry(Protocol):
    """The live workers: each refreshes its row (its heartbeat and load)."""

    async def register_worker(self, worker: WorkerInfo) -> None:
        """Insert or refresh a worker's row (its heartbeat and load)."""

    async def remove_worker(self, worker_id: str) -> None: ...

    async def workers(self) -> list[WorkerInfo]: ...

    # -- provisioning ------------------------------------------------------------------

    async def backlog(self, now: float, agents: Collection[str] | None = None) -> Backlog:
        """The queued tasks ready at ``now`` (not waiting out a backoff) and the oldest
        one's submission time: of every agent, or of ``agents`` alone."""

    async def publish_autoscaler(self, info: AutoscalerInfo) -> None:
        """Insert or refresh an autoscaling supervisor's decision."""

    async def remove_autoscaler(self, autoscaler_id: str) -> None: ...

    async def autoscalers(self, since: float) -> list[AutoscalerInfo]:
        """The supervisors that published at or after ``since``."""


class CapacityBoard(Protocol):
    """LLM capacity shared through the store by the workers that use one API key."""

    async def claim_capacity(
        self, route: str, worker: str, demand: float, now: float, *, horizon: float
    ) -> CapacityClaims:
        """Record ``worker``'s demand on ``route`` and answer all claims made since
        ``now - horizon`` (older ones belong to workers that stopped claiming)."""

    async def signal_backoff(self, route: str, until: float) -> None:
        """Ask every worker sharing ``route`` to pause until ``until`` (after a 429)."""


class KeyStore(Protocol):
    """The API keys of ``legion serve``."""

    async def add_api_key(self, key: ApiKey) -> None:
        """Store a new API key; its id must be new."""

    async def api_key(self, key_id: str) -> ApiKey | None: ...

    async def api_keys(self) -> list[ApiKey]:
        """Every API key, revoked ones included, oldest first."""

    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        """Revoke a key (a revoked one keeps its first revocation time); False if unknown."""


class ContextStore(SessionMemory, TaskReader, WaitingStore, BatchStore, Protocol):
    """What an agent's context uses of the store: its session's memory, its own task, and
    its durable waits (signals, child tasks, calls waiting for a batch)."""


class Store(
    TaskQueue,
    TaskReader,
    SessionMemory,
    WorkerRegistry,
    CapacityBoard,
    KeyStore,
    WaitingStore,
    GatewayLedger,
    BatchStore,
    Protocol,
):
    """Where legion keeps all state: every role, and the connection's lifecycle. All
    methods are safe to call concurrently."""

    url: str

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def aclose(self) -> None:
        """Release connections and threads; pending calls finish first."""
