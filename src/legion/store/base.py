"""The ``Store`` interface: everything legion keeps lives behind it.

A store holds tasks, step results, session memory, the event feed and the worker
registry. Every implementation passes the same contract test suite. The hot path is
batched: :meth:`Store.submit` takes many tasks, :meth:`Store.lease` hands out many, and
:meth:`Store.write` commits the steps, memory writes and completions of many instances
in one transaction (group commit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..task import Completion, Lease, NewTask, StepRecord, Submitted, TaskInfo, TaskStatus


@dataclass(frozen=True, slots=True)
class MemoryWrite:
    """Set (or, with ``value=None``, delete) one key of a session's memory.

    A write made by a task names its lease (``task_id``, ``attempt``, ``owner``) and is
    accepted only while that lease holds; one without ``task_id`` is not fenced."""

    session: str
    key: str
    value: bytes | None
    task_id: int | None = None
    attempt: int = 0
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class DiagnosticRecord:
    """One finding about one attempt (``data``: the diagnostic as JSON)."""

    task_id: int
    attempt: int
    agent: str
    kind: str
    data: bytes
    owner: str | None = None  # whose lease wrote it (fenced like a step when given)


@dataclass(slots=True)
class WriteBatch:
    """What one group commit writes, in this order: steps, memory, diagnostics,
    completions.

    Steps, fenced memory writes and diagnostics are accepted only from the current lease
    of their task (its attempt number, its owner, the task running), like completions;
    :meth:`Store.write` puts the ids of the tasks whose writes it refused in ``lost``, and
    of those whose writes it accepted but whose cancellation was asked in ``cancelled``."""

    steps: list[StepRecord] = field(default_factory=list)
    memory: list[MemoryWrite] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    diagnostics: list[DiagnosticRecord] = field(default_factory=list)
    lost: set[int] = field(default_factory=set)
    cancelled: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.steps) + len(self.memory) + len(self.completions) + len(self.diagnostics)


@dataclass(frozen=True, slots=True)
class StepInfo:
    key: str
    attempt: int
    output: Any
    started_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class Event:
    """One status change of one task; ``id`` orders the feed."""

    id: int
    task_id: int
    at: float
    status: TaskStatus
    attempt: int
    worker: str | None = None  # whose lease the change ended


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    load: Mapping[str, Any]
    # Who the process is beyond its host name (see legion.identity): the kernel's boot
    # id, the PID namespace and the process's start time in clock ticks after boot.
    boot_id: str = ""
    pid_ns: str = ""
    proc_start: int = 0


@dataclass(frozen=True, slots=True)
class Backlog:
    """The tasks ready to run now, and when the oldest of them was submitted."""

    ready: int
    oldest_created_at: float | None


@dataclass(frozen=True, slots=True)
class AutoscalerInfo:
    """An autoscaling supervisor's latest decision (see :mod:`legion.provision`)."""

    id: str
    host: str
    pid: int
    at: float
    desired: int
    running: int
    minimum: int
    maximum: int
    reason: str


@dataclass(frozen=True, slots=True)
class Extended:
    """A heartbeat's answer: of the leases a worker runs, those it still holds (now
    extended, or locked by a write in flight) and those whose cancellation was asked."""

    held: frozenset[int]
    cancel: frozenset[int]


@dataclass(frozen=True, slots=True)
class CapacityClaims:
    """The live claims on one route's capacity, with this worker's own included."""

    claimants: int
    total_demand: float
    backoff_until: float  # a 429 somewhere asked every worker to pause until then


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """Tasks whose lease expired or whose worker died, and where they went."""

    requeued: int
    dead: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """A page of :meth:`Store.list_tasks`: filters (``None`` or empty: any) and a cursor."""

    statuses: tuple[TaskStatus, ...] = ()
    agent: str | None = None
    created_from: float | None = None  # created at or after
    created_to: float | None = None  # created before
    before: int | None = None  # only ids below this one (the previous page's last id)
    limit: int = 100
    tenant: str | None = None  # only this tenant's tasks


@dataclass(frozen=True, slots=True)
class EventDetail:
    """An :class:`Event` with its task's agent, latest attempt's times and usage (``agent``
    is ``None`` if the task is gone)."""

    event: Event
    agent: str | None
    started_at: float | None
    finished_at: float | None
    usage: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key of the HTTP API as stored: its public id and a salted digest of its
    secret, never the secret itself (see :mod:`legion.server.keys`)."""

    id: str
    name: str
    salt: bytes
    digest: bytes
    created_at: float
    revoked_at: float | None = None
    tenant: str = "default"  # whose tasks the key submits and sees
    scope: str = "tenant"  # "tenant": its tenant's tasks; "admin": every tenant's

    @property
    def admin(self) -> bool:
        return self.scope == "admin"


class Store(Protocol):
    """Where legion keeps all state. All methods are safe to call concurrently."""

    url: str

    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def aclose(self) -> None:
        """Release connections and threads; pending calls finish first."""

    # -- tasks -------------------------------------------------------------------------

    async def submit(self, tasks: Sequence[NewTask], now: float) -> list[Submitted]:
        """Insert tasks; a task whose key exists already (in its tenant) answers the
        existing one. A key submitted before with another agent or input raises
        :class:`~legion.errors.IdempotencyConflict` and nothing is inserted."""

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
    ) -> list[Lease]:
        """Lease to ``owner`` up to ``wants[agent]`` ready tasks of each agent (in the
        mapping's order) and at most ``total`` in all, each with every step recorded for
        it so far. The lease lasts ``until - now`` seconds (on PostgreSQL, counted on the
        database's clock). ``isolated``: one task of those agents that must run alone
        (taken back from a worker that stopped while running it among others); the
        ordinary call never leases those. ``offer``: the resources the worker offers; a
        task whose ``needs`` it does not cover (every amount) is not leased to it."""

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

    async def reclaim(self, now: float, dead_owners: Sequence[str] = ()) -> Reclaimed:
        """Take back expired leases (on PostgreSQL: expired by the database's clock; ``now``
        is the SQLite store's) and those of ``dead_owners``. A task is charged the stop
        only if its worker ran it alone; the others run alone next."""

    async def now(self) -> float:
        """The store's time, in seconds since the epoch: the database's clock on PostgreSQL
        (workers' clocks may disagree), the wall clock on SQLite (one host)."""

    async def cancel(self, task_id: int, now: float) -> TaskStatus | None:
        """Cancel a queued task at once, or ask a running one's worker to stop it."""

    async def requeue(self, statuses: Sequence[TaskStatus], *, agent: str | None = None) -> int:
        """Queue again every task in ``statuses`` with a fresh attempt budget."""

    async def requeue_one(self, task_id: int) -> bool:
        """Queue again one dead, failed or cancelled task."""

    async def get(self, task_id: int) -> TaskInfo | None: ...

    async def get_many(self, ids: Sequence[int]) -> list[TaskInfo]: ...

    async def find_keys(self, keys: Sequence[str]) -> dict[str, TaskInfo]:
        """The tasks with these idempotency keys, by key."""

    async def counts(self) -> dict[TaskStatus, int]: ...

    async def counts_by_tenant(self) -> dict[str, dict[TaskStatus, int]]:
        """Tasks per tenant and status (tenants without tasks are absent)."""

    async def count_queued(self, tenant: str) -> int:
        """How many of ``tenant``'s tasks are queued."""

    async def counts_by_agent(self) -> dict[str, dict[TaskStatus, int]]: ...

    async def recent_errors(self, limit: int = 10) -> list[TaskInfo]: ...

    async def steps(self, task_id: int) -> list[StepInfo]: ...

    async def events_after(
        self, after: int, limit: int = 10_000, *, skip_worker: str | None = None
    ) -> list[Event]:
        """Events with ids above ``after``, oldest first; ``skip_worker`` leaves out the
        changes that worker made itself."""

    async def last_event_id(self) -> int: ...

    async def wait_for_work(self, timeout: float) -> bool:  # noqa: ASYNC109 - bounds the wait
        """Return when new work may be ready, or after ``timeout`` seconds; True if woken
        by a notification (a submit, requeue, retry or reclaim, from any process), False on
        timeout. Optional to use: a worker that polls instead misses nothing. Stores that
        cannot notify just sleep and answer False."""

    # -- session memory ----------------------------------------------------------------

    async def memory_get(self, session: str, key: str) -> bytes | None: ...

    async def memory_items(self, session: str) -> dict[str, bytes]: ...

    async def diagnostics(
        self,
        *,
        task_id: int | None = None,
        agent: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[DiagnosticRecord]:
        """The latest findings, newest first, of one task, agent or kind (or all)."""

    # -- shared LLM capacity -------------------------------------------------------------

    async def claim_capacity(
        self, route: str, worker: str, demand: float, now: float, *, horizon: float
    ) -> CapacityClaims:
        """Record ``worker``'s demand on ``route`` and answer all claims made since
        ``now - horizon`` (older ones belong to workers that stopped claiming)."""

    async def signal_backoff(self, route: str, until: float) -> None:
        """Ask every worker sharing ``route`` to pause until ``until`` (after a 429)."""

    # -- workers -----------------------------------------------------------------------

    async def register_worker(self, worker: WorkerInfo) -> None:
        """Insert or refresh a worker's row (its heartbeat and load)."""

    async def remove_worker(self, worker_id: str) -> None: ...

    async def workers(self) -> list[WorkerInfo]: ...

    # -- provisioning ------------------------------------------------------------------

    async def backlog(self, now: float) -> Backlog:
        """The queued tasks ready at ``now`` (not waiting out a backoff) and the oldest
        one's submission time."""

    async def publish_autoscaler(self, info: AutoscalerInfo) -> None:
        """Insert or refresh an autoscaling supervisor's decision."""

    async def remove_autoscaler(self, autoscaler_id: str) -> None: ...

    async def autoscalers(self, since: float) -> list[AutoscalerInfo]:
        """The supervisors that published at or after ``since``."""

    # -- HTTP API (legion serve) -------------------------------------------------------

    async def list_tasks(self, query: TaskQuery) -> list[TaskInfo]:
        """Tasks matching ``query``, newest (highest id) first, at most ``query.limit``;
        without their inputs and outputs (``None``: a page shows neither)."""

    async def event_details_after(self, after: int, limit: int = 10_000) -> list[EventDetail]:
        """Like :meth:`events_after` (every worker's changes), each with its task's details."""

    async def add_api_key(self, key: ApiKey) -> None:
        """Store a new API key; its id must be new."""

    async def api_key(self, key_id: str) -> ApiKey | None: ...

    async def api_keys(self) -> list[ApiKey]:
        """Every API key, revoked ones included, oldest first."""

    async def revoke_api_key(self, key_id: str, now: float) -> bool:
        """Revoke a key (a revoked one keeps its first revocation time); False if unknown."""
