"""What the dashboard, the progress stream and ``/metrics`` show: frozen snapshots.

`legion.server.monitor.Monitor` makes one `Snapshot` per sample and keeps
the latest `Point`\\ s as the charts' history. Rates and latencies cover the run as
a whole (every worker's tasks, read from the store's event feed) since the server
started; ``statuses`` counts every task in the store; ``routes`` is this process's LLM
client (present when it runs a worker). A tenant's view of a snapshot
(`legion.server.monitor.Monitor.for_tenant`) counts its own tasks alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Point:
    """One sample of the time series."""

    at: float
    throughput: float  # tasks finished per second (any outcome)
    failures: float  # tasks failed or dead per second
    retries: float  # attempts sent back to the queue per second
    p50: float | None  # latency percentiles (seconds) of the tasks finished in this sample
    p95: float | None
    p99: float | None
    in_flight: int  # tasks running, in every worker
    queued: int  # tasks waiting in the queue
    tokens: float  # LLM tokens per second, of the tasks finished in this sample


@dataclass(frozen=True, slots=True)
class Totals:
    """Counts since the server started, of every worker's tasks."""

    finished: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    cancelled: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class RouteLoad:
    """One LLM route of this process: its use against its limits."""

    route: str
    provider: str
    model: str
    requests: int
    failed: int
    rate_limited: int  # 429 answers
    in_flight: int
    max_in_flight: int | None
    waiting: int  # calls queued for their turn
    rpm: float  # requests per minute, over the last 10 seconds
    rpm_limit: float | None  # the provider's limit (learned from its headers, else configured)
    rpm_allowed: float | None  # what the adaptive limiter allows now
    tpm: float
    tpm_limit: float | None
    tpm_allowed: float | None
    utilization: float | None  # the larger of rpm/rpm_limit and tpm/tpm_limit
    input_tokens: int
    output_tokens: int
    cost_usd: float
    paused_for: float  # seconds until a 429 pause ends
    breaker: str = "closed"  # the route's circuit breaker: closed, open or half_open
    breaker_state: int = 0  # the same as a number: 0 closed, 1 open, 2 half-open


@dataclass(frozen=True, slots=True)
class WorkerState:
    """A worker registered in the store, as of its last heartbeat."""

    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_age: float  # seconds since its last heartbeat
    healthy: bool  # heartbeat recent enough
    local: bool  # the worker inside this server
    in_flight: int | None
    succeeded: int | None
    agents: list[str]


@dataclass(frozen=True, slots=True)
class Failure:
    """A recent failure: a task failed, dead, or waiting to retry after an error."""

    id: int
    agent: str
    status: str
    attempts: int
    type: str
    message: str
    at: float
    tenant: str = "default"


@dataclass(frozen=True, slots=True)
class Health:
    """How the server itself is doing."""

    store_ok: bool  # the last sample could read the store
    worker_error: str | None  # what stopped the local worker, if something did
    loop_lag: float  # seconds the last sample woke up late: the event loop's load
    sample_seconds: float  # what the last sample took


@dataclass(frozen=True, slots=True)
class Scaling:
    """How many workers the work asks for (the scaling policy, see
    `legion.provision.policy`), how many run, and why; with each ``legion worker
    --autoscale`` supervisor's own decision."""

    desired: int
    running: int
    reason: str
    autoscalers: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the dashboard shows, as of ``at``."""

    at: float
    started_at: float
    statuses: dict[str, int]  # every task in the store, by status
    point: Point | None  # the latest sample (None before the first)
    totals: Totals
    workers: list[WorkerState]
    routes: list[RouteLoad]
    failures: list[Failure]
    health: Health
    scaling: Scaling | None = None  # None before the first sample
