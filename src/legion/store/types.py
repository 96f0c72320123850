"""The values that go in and out of a store: frozen dataclasses (a write batch is built up
and then handed over whole)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from legion import identity
from legion.record import record
from legion.task import Completion, ErrorInfo, StepRecord, TaskStatus


@record
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


@record
class DiagnosticRecord:
    """One finding about one attempt (``data``: the diagnostic as JSON)."""

    task_id: int
    attempt: int
    agent: str
    kind: str
    data: bytes
    owner: str | None = None  # whose lease wrote it (fenced like a step when given)


@record
class AttemptRecord:
    """One ended attempt of a task, written with its completion: when it started and
    ended, on which worker, how it ended (an `legion.task.Outcome` value, or ``lost``: its
    worker stopped or its lease expired, written when the reaper takes the task back), its
    error, and its time split into running and waiting for capacity (see
    `legion.attempt`)."""

    task_id: int
    attempt: int
    worker: str
    outcome: str
    started_at: float
    finished_at: float
    running: float
    waited: float
    error: ErrorInfo | None


@dataclass(slots=True)
class WriteBatch:
    """What one group commit writes, in this order: steps, memory, diagnostics,
    completions.

    Steps, fenced memory writes and diagnostics are accepted only from the current lease
    of their task (its attempt number, its owner, the task running), like completions;
    `Store.write` puts the ids of the tasks whose writes it refused in ``lost``, and
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


SILENT_AFTER = 60.0
"""Seconds without a heartbeat after which a worker that does not say its lease is taken
for stopped or cut off."""


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

    def silent_after(self, most: float = SILENT_AFTER) -> float:
        """Seconds without a heartbeat after which this worker is taken for stopped or cut
        off (at most ``most``): its lease, as its heartbeat says (its leases are taken
        back then; it heartbeats three times a lease, every 5 s at most)."""
        lease = self.load.get("lease_seconds")
        if isinstance(lease, int | float) and not isinstance(lease, bool) and lease > 0:
            return min(float(lease), most)
        return most

    def silent(self, now: float, most: float = SILENT_AFTER) -> bool:
        """Whether its last heartbeat (on the store's clock) is older than `silent_after`."""
        return now - self.heartbeat_at >= self.silent_after(most)

    def live(self, now: float, most: float = SILENT_AFTER) -> bool:
        """Neither `silent` nor `gone`: a worker that runs, as far as the store and this
        machine can tell."""
        return not self.silent(now, most) and not self.gone()

    def gone(self, me: identity.ProcessIdentity | None = None) -> bool:
        """Whether its process certainly no longer runs, as process ``me`` (this one by
        default) can tell: one of its machine (same kernel boot and PID namespace) whose
        PID is free or another process's (`legion.identity.is_gone`). A `legion run` that
        ended, or was killed, stays in the registry until a reaper removes it."""
        theirs = identity.ProcessIdentity(self.boot_id, self.pid_ns, self.pid, self.proc_start)
        return identity.is_gone(theirs, identity.current() if me is None else me)


def served_agents(workers: Sequence[WorkerInfo], now: float) -> set[str]:
    """The agents the live workers among ``workers`` serve: those each one imports (its
    heartbeat's ``agents``), less those whose ``resources=`` its ``--offer`` does not
    cover (``uncovered``: it leases none of their tasks)."""
    return {
        agent
        for w in workers
        if w.live(now)
        for agent in set(w.load.get("agents", ())) - set(w.load.get("uncovered", ()))
    }


@dataclass(frozen=True, slots=True)
class Backlog:
    """The tasks ready to run now, and when the oldest of them was submitted."""

    ready: int
    oldest_created_at: float | None


@dataclass(frozen=True, slots=True)
class AutoscalerInfo:
    """An autoscaling supervisor's latest decision (see `legion.provision`)."""

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
    # PostgreSQL: sessions ended because they held a transaction open while their process
    # stopped answering mid-call (their row locks kept leases from being reclaimed).
    sessions_ended: int = 0


@dataclass(frozen=True, slots=True)
class Purged:
    """What one `Store.purge` call deleted: ended tasks (with what hangs off them) and
    change-feed rows. ``sessions``: the own sessions (`task-<id>`, as stored: within their
    tenant) of the purged tasks that ran without one, whose memory went with them; what
    else is kept per session (vectors, in a backend of their own) goes by them too."""

    tasks: int
    events: int
    sessions: tuple[str, ...] = ()
    last: int = 0
    """The id of the last task deleted (of `Store.purge_feed`: of the last feed row),
    where the next call goes on from (``after``); 0 when none was."""


def terminal_statuses(statuses: Sequence[TaskStatus]) -> list[str]:
    """``statuses`` for a purge: ended ones only (a task that may still run is kept)."""
    refused = [str(s) for s in statuses if not TaskStatus(s).terminal]
    if refused:
        raise ValueError(f"only ended tasks can be purged, not {', '.join(refused)} ones")
    return sorted({str(s) for s in statuses})


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """A page of `Store.list_tasks`: filters (``None`` or empty: any) and a cursor."""

    statuses: tuple[TaskStatus, ...] = ()
    agent: str | None = None
    created_from: float | None = None  # created at or after
    created_to: float | None = None  # created before
    before: int | None = None  # only ids below this one (the previous page's last id)
    limit: int = 100
    tenant: str | None = None  # only this tenant's tasks
    parent: int | None = None  # only the children of this task


@dataclass(frozen=True, slots=True)
class EventDetail:
    """An `Event` with its task's agent, latest attempt's times, usage and tenant
    (``agent`` and ``tenant`` are ``None`` if the task is gone)."""

    event: Event
    agent: str | None
    started_at: float | None
    finished_at: float | None
    usage: Mapping[str, Any] | None
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key of the HTTP API as stored: its public id and a salted digest of its
    secret, never the secret itself (see `legion.server.keys`)."""

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


LEASE_LOST = ErrorInfo(
    type="LeaseExpired",
    message="the worker running this task stopped (its lease expired or it exited)",
)
"""What `reclaim` writes on a task taken back from its worker, not charged to it."""

CRASHED_ITS_WORKER = ErrorInfo(
    type="LeaseExpired",
    message=(
        "its worker stopped (crashed, was killed, or its lease expired) while running it "
        "alone, and a worker it ran on had stopped before: the task is taken to stop its "
        "workers"
    ),
)
"""What `reclaim` writes on a task charged its worker's stop: it ran alone, a suspect of
an earlier stop already."""
