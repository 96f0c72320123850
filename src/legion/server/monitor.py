"""``Monitor``: one sampler behind the dashboard, the progress stream and ``/metrics``.

Every ``interval`` seconds it reads, once for every client:

- the store's event feed since the last sample, with each task's agent, times, usage and
  tenant: throughput, latency percentiles, failures, retries, tokens and cost of the whole
  run, and of each tenant;
- task counts by status (queue depth, tasks in flight) and the worker registry;
- the local LLM client's statistics per route (capacity, 429s, usage);
- the latest failures, when new ones came in.

Clients read `Monitor.snapshot` or wait for `Monitor.next_snapshot`, so a
hundred open dashboards cost the store what one does. When samples take more than 5 %
of the interval, the interval stretches (to 30 s at most): watching never takes the store
over. What a sample costs is the least of the last few: one sample that waited (on a
SQLite lock, on a reconnection) says nothing of what watching costs, and stretched by it
the numbers stood still for 30 s after the store was free again. A sample that failed is
tried again after the interval: a store that came back shows healthy within one, however
long the failure took to come.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from legion.llm.breaker import BreakerState
from legion.llm.fleet_routes import FleetRoutes
from legion.llm.route_report import route_report
from legion.server.scaling import ScalingGauge
from legion.server.snapshot import Failure, Health, Point, RouteLoad, Snapshot, Totals, WorkerState
from legion.store.types import EventDetail, WorkerInfo
from legion.task import TaskInfo, TaskStatus

if TYPE_CHECKING:
    from legion.run.runtime import Runtime

log = logging.getLogger("legion.server.monitor")

FEED_BATCH = 10_000
FEED_BATCHES = 5  # most feed reads per sample (a sample falling behind catches up later)
FAILURES_SHOWN = 10
_ERRED = (TaskStatus.FAILED, TaskStatus.DEAD)  # (a tenant's failures read at the start)
ROUTE_WINDOW = 10.0  # seconds over which route rates are measured
_BUDGET = 20  # the interval is at least this many times what a sample costs
_LONGEST_PAUSE = 30.0  # seconds between two samples at most, however long one took
_COSTS = 5  # samples whose least cost is what watching costs
_STUCK_AT_LEAST = 2.0  # seconds a sample may wait on the store before it counts as down...
_STUCK_SAMPLES = 5  # ...or this many intervals, when longer


def next_pause(interval: float, cost: float, ok: bool) -> float:
    """Seconds from the end of a sample that took ``cost`` seconds to the next one: the
    rest of the interval, or ``_BUDGET`` times the sample's cost, at most
    ``_LONGEST_PAUSE``; after a failed sample, the interval (a failure that took a call's
    whole timeout to come says nothing of what watching costs the store, and stretched
    by it the health stayed "down" minutes after the store came back)."""
    if not ok:
        return interval
    return max(interval - cost, min(_BUDGET * cost - cost, _LONGEST_PAUSE), 0.0)


class Pacing:
    """The pause after each sample: `next_pause` of the least cost of the last `_COSTS`
    samples that succeeded."""

    __slots__ = ("_costs", "_interval")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._costs: deque[float] = deque(maxlen=_COSTS)

    def after(self, took: float, ok: bool) -> float:
        """The pause after a sample that took ``took`` seconds and succeeded or not."""
        if ok:
            self._costs.append(took)
        return next_pause(self._interval, min(self._costs, default=took), ok)


class FeedSink(Protocol):
    """Told of every task that finished or went back to the queue (``/metrics``)."""

    def finished(
        self, agent: str, status: TaskStatus, latency: float | None, tenant: str | None
    ) -> None: ...

    def retried(self, agent: str, tenant: str | None) -> None: ...


_Usage = tuple[int, int, float]  # input tokens, output tokens, cost
USAGE_REMEMBERED = 20_000


class _CountedUsage:
    """What the ends of the last ``USAGE_REMEMBERED`` tasks with a usage counted: a task
    that ends again (retried by an operator, its recorded calls replayed) counts only what
    it used since. The feed gives a task's usage as it is now, whichever of its ends it
    is read for."""

    def __init__(self) -> None:
        self._counted: OrderedDict[int, _Usage] = OrderedDict()

    def since(self, d: EventDetail) -> _Usage | None:
        if not d.usage:
            return None
        u = d.usage
        now = (int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)),
               float(u.get("cost_usd", 0.0)))  # fmt: skip
        before = self._counted.pop(d.event.task_id, None)
        self._counted[d.event.task_id] = now
        if len(self._counted) > USAGE_REMEMBERED:
            self._counted.popitem(last=False)
        if before is None:
            return now
        return (max(0, now[0] - before[0]), max(0, now[1] - before[1]),
                max(0.0, now[2] - before[2]))  # fmt: skip


@dataclass(slots=True)
class _Tick:
    """What one sample read from the feed (of every tenant's tasks, or of one tenant's)."""

    finished: int = 0
    failures: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    by_status: dict[TaskStatus, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, d: EventDetail, latency: float | None, usage: _Usage | None) -> None:
        """Count one task that finished, and ``usage``: what its calls used that no
        earlier end of it counted."""
        status = d.event.status
        self.finished += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status in (TaskStatus.FAILED, TaskStatus.DEAD):
            self.failures += 1
        if latency is not None and status is not TaskStatus.CANCELLED:
            self.latencies.append(latency)
        if usage is not None:
            self.input_tokens += usage[0]
            self.output_tokens += usage[1]
            self.cost += usage[2]

    def totals(self, t: Totals) -> Totals:
        """``t`` with this sample added."""
        n = self.by_status
        return Totals(
            finished=t.finished + self.finished,
            succeeded=t.succeeded + n.get(TaskStatus.SUCCEEDED, 0),
            failed=t.failed + n.get(TaskStatus.FAILED, 0),
            dead=t.dead + n.get(TaskStatus.DEAD, 0),
            cancelled=t.cancelled + n.get(TaskStatus.CANCELLED, 0),
            retries=t.retries + self.retries,
            input_tokens=t.input_tokens + self.input_tokens,
            output_tokens=t.output_tokens + self.output_tokens,
            cost_usd=t.cost_usd + self.cost,
        )


@dataclass(slots=True)
class _TenantRun:
    """One tenant's share of the run: its totals and its samples. A tenant idle for a
    whole history keeps no samples (all would be zeros) until it has work again: many
    tenants, most of them idle, cost the memory of the active ones."""

    series: deque[Point]
    totals: Totals = field(default_factory=Totals)
    statuses: dict[str, int] = field(default_factory=dict)
    idle_samples: int = 0  # samples in a row with nothing queued, running or finished


class Monitor:
    """Samples the run every ``interval`` seconds; see the module's docstring."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval: float = 1.0,
        history: int = 600,
        stale_after: float = 60.0,
        sink: FeedSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rt = runtime
        self._interval = interval
        self._stale_after = stale_after
        self._sink = sink
        self._clock = clock
        self._cursor: int | None = None
        self._series: deque[Point] = deque(maxlen=history)
        self._routes: dict[str, deque[tuple[float, int, int]]] = {}
        self._totals = Totals()
        self._usage = _CountedUsage()
        self._failures: list[Failure] = []
        # Each tenant's own latest failures, read apart (another tenant's many failures
        # must not push its own out of the list): re-read for the tenants whose tasks
        # failed, retried or moved on since (None: every tenant's, at the first read).
        self._tenant_failures: dict[str, list[Failure]] = {}
        self._failed_tenants: set[str] | None = None
        self._tenants: dict[str, _TenantRun] = {}
        self._history = history
        self._failures_read_at: float | None = None
        self._new_failures = True
        self._last_at = clock()
        self._lag = 0.0
        # One sample at a time: a sample reads on from the last one's cursor, and one
        # that began earlier must not publish over a later one (a store that failed after
        # it began would show healthy).
        self._sampling = asyncio.Lock()
        self._sample_began: float | None = None  # (monotonic) of the sample under way
        self._tick = asyncio.Event()
        self._scaling = ScalingGauge()
        self._fleet = FleetRoutes()
        self.closed = False
        self._snapshot = Snapshot(
            at=self._last_at,
            started_at=self._last_at,
            statuses={},
            point=None,
            totals=self._totals,
            workers=[],
            routes=[],
            failures=[],
            health=Health(store_ok=True, worker_error=None, loop_lag=0.0, sample_seconds=0.0),
        )

    @property
    def snapshot(self) -> Snapshot:
        """The latest snapshot."""
        return self._snapshot

    def answers(self) -> bool:
        """Whether the store answers: the last sample succeeded, and the one under way has
        not waited past `stuck_after` (a store that hangs, locked or unreachable, fails
        no sample until a timeout ends it: its health was "ok" meanwhile)."""
        began = self._sample_began
        stuck = began is not None and time.monotonic() - began > self.stuck_after
        return self._snapshot.health.store_ok and not stuck

    @property
    def stuck_after(self) -> float:
        """Seconds a sample may take before the store counts as not answering."""
        return max(_STUCK_AT_LEAST, _STUCK_SAMPLES * self._interval)

    def for_tenant(self, snapshot: Snapshot, tenant: str) -> Snapshot:
        """``snapshot`` as one tenant sees it: its own tasks by status, totals, latest
        sample and failures. What cannot be told apart by tenant is left out: the LLM
        routes (their calls, tokens and cost are every tenant's), the workers' task
        counts and the scaling decision (made from every tenant's queue). The workers
        themselves and the server's health stay: every tenant shares them."""
        run = self._tenants.get(tenant)
        statuses = run.statuses if run is not None else {}
        point = run.series[-1] if run is not None and run.series else None
        if point is None and snapshot.point is not None:
            point = _idle(snapshot.point.at)
        return replace(
            snapshot,
            statuses={str(s): statuses.get(str(s), 0) for s in TaskStatus},
            point=point,
            totals=run.totals if run is not None else Totals(),
            workers=[replace(w, in_flight=None, succeeded=None) for w in snapshot.workers],
            routes=[],
            failures=self._tenant_failures.get(tenant, []),
            scaling=None,
        )

    def history(self, tenant: str | None = None) -> list[Point]:
        """The kept samples, oldest first: of the whole run, or of one tenant's tasks."""
        if tenant is None:
            return list(self._series)
        run = self._tenants.get(tenant)
        return list(run.series) if run is not None else []

    async def next_snapshot(self) -> Snapshot:
        """Wait for the next sample (or `close`) and answer the latest snapshot."""
        await self._tick.wait()
        return self._snapshot

    def close(self) -> None:
        """Wake every waiter; they see `closed` and stop."""
        self.closed = True
        self._tick.set()

    async def run(self) -> None:
        """Sample until cancelled; a failing store is reported, not fatal."""
        loop = asyncio.get_running_loop()
        pacing = Pacing(self._interval)
        while True:
            began = loop.time()
            snapshot = await self.sample()
            pause = pacing.after(loop.time() - began, snapshot.health.store_ok)
            wake = loop.time() + pause
            await asyncio.sleep(pause)
            self._lag = max(0.0, loop.time() - wake)

    async def sample(self) -> Snapshot:
        """Take one sample now and publish it (after the one under way, if any)."""
        async with self._sampling:
            began = time.perf_counter()
            self._sample_began = time.monotonic()
            try:
                snapshot = await self._read()
            except Exception as exc:  # reported on the dashboard and /healthz; retried
                log.warning("sampling the store failed: %s", exc)
                snapshot = replace(self._snapshot, health=self._health(False, 0.0))
            else:
                took = time.perf_counter() - began
                snapshot = replace(snapshot, health=self._health(True, took))
            finally:
                self._sample_began = None
            self._publish(snapshot)
            return snapshot

    def _publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _health(self, store_ok: bool, seconds: float) -> Health:
        fatal = self._rt.fatal_error
        return Health(
            store_ok=store_ok,
            worker_error=str(fatal) if fatal is not None else None,
            loop_lag=self._lag,
            sample_seconds=seconds,
        )

    async def _read(self) -> Snapshot:
        store = self._rt.store
        if self._cursor is None:
            self._cursor = await store.last_event_id()
        tick, tenant_ticks = self._count(await self._read_feed())
        by_tenant = await store.counts_by_tenant()
        counts: dict[TaskStatus, int] = {}
        for tenant_counts in by_tenant.values():
            for status, n in tenant_counts.items():
                counts[status] = counts.get(status, 0) + n
        workers = await store.workers()
        now = self._clock()
        if self._new_failures and (
            self._failures_read_at is None or now - self._failures_read_at >= 2 * self._interval
        ):
            self._failures = [_failure(t) for t in await store.recent_errors(FAILURES_SHOWN)]
            stale = self._failed_tenants
            if stale is None:  # (the first read: every tenant with a task that failed)
                stale = {t for t, c in by_tenant.items() if any(c.get(s) for s in _ERRED)}
            for tenant in stale:
                own = await store.recent_errors(FAILURES_SHOWN, tenant)
                self._tenant_failures[tenant] = [_failure(t) for t in own]
            self._failed_tenants = set()
            self._failures_read_at = now
            self._new_failures = False
        scaling = await self._scaling.read(store, counts, workers, self._rt.agent_names)
        point = self._point(now, tick, counts)
        self._series.append(point)
        self._sample_tenants(now, tenant_ticks, by_tenant)
        self._last_at = now
        return Snapshot(
            at=now,
            started_at=self._snapshot.started_at,
            statuses={str(s): counts.get(s, 0) for s in TaskStatus},
            point=point,
            totals=self._totals,
            workers=[self._worker(w, now) for w in workers],
            routes=self._route_loads(now, workers),
            failures=self._failures,
            health=self._snapshot.health,
            scaling=scaling,
        )

    async def _read_feed(self) -> list[EventDetail]:
        out: list[EventDetail] = []
        for _ in range(FEED_BATCHES):
            batch = await self._rt.store.event_details_after(self._cursor or 0, FEED_BATCH)
            out.extend(batch)
            if batch:
                self._cursor = batch[-1].event.id
            if len(batch) < FEED_BATCH:
                break
        return out

    def _count(self, details: Sequence[EventDetail]) -> tuple[_Tick, dict[str, _Tick]]:
        """The sample's counts: of every task, and of each tenant's (a task gone from the
        store counts in the first alone)."""
        tick = _Tick()
        tenants: dict[str, _Tick] = {}
        shown = {f.id for f in self._failures}
        shown.update(f.id for failures in self._tenant_failures.values() for f in failures)
        moved_on: set[str] = set()  # (tenants whose failures shown changed)
        for d in details:
            status, agent = d.event.status, d.agent or "?"
            if d.event.task_id in shown:  # a failure shown has moved on (e.g. succeeded)
                self._new_failures = True
                if d.tenant is not None:
                    moved_on.add(d.tenant)
            own = tenants.setdefault(d.tenant, _Tick()) if d.tenant is not None else None
            if status is TaskStatus.QUEUED:
                if d.event.attempt > 0:  # back in the queue after an attempt: a retry
                    tick.retries += 1
                    if own is not None:
                        own.retries += 1
                    if d.tenant is not None:
                        moved_on.add(d.tenant)
                    self._new_failures = True
                    if self._sink is not None:
                        self._sink.retried(agent, d.tenant)
                continue
            if not status.terminal:
                continue
            latency = None
            if d.started_at is not None and d.finished_at is not None:
                latency = max(0.0, d.finished_at - d.started_at)
            usage = self._usage.since(d)
            tick.add(d, latency, usage)
            if own is not None:
                own.add(d, latency, usage)
            if self._sink is not None:
                self._sink.finished(agent, status, latency, d.tenant)
        if tick.failures:
            self._new_failures = True
        if self._failed_tenants is not None:
            self._failed_tenants.update(t for t, own in tenants.items() if own.failures)
            self._failed_tenants.update(moved_on)
        self._totals = tick.totals(self._totals)
        return tick, tenants

    def _sample_tenants(
        self,
        now: float,
        ticks: Mapping[str, _Tick],
        by_tenant: Mapping[str, Mapping[TaskStatus, int]],
    ) -> None:
        """Each tenant's sample: of every tenant with tasks in the store or in the feed."""
        for tenant in {*by_tenant, *ticks, *self._tenants}:
            run = self._tenants.get(tenant)
            if run is None:
                run = self._tenants[tenant] = _TenantRun(deque(maxlen=self._history))
            tick = ticks.get(tenant) or _Tick()
            counts = by_tenant.get(tenant, {})
            run.totals = tick.totals(run.totals)
            run.statuses = {str(s): counts.get(s, 0) for s in TaskStatus}
            point = self._point(now, tick, counts)
            idle = tick.finished == tick.retries == point.in_flight == point.queued == 0
            run.idle_samples = run.idle_samples + 1 if idle else 0
            if run.idle_samples <= self._history:
                run.series.append(point)
            elif run.series:
                run.series.clear()

    def _point(self, now: float, tick: _Tick, counts: Mapping[TaskStatus, int]) -> Point:
        elapsed = max(now - self._last_at, 1e-6)
        p50, p95, p99 = quantiles(tick.latencies, (0.50, 0.95, 0.99))
        return Point(
            at=now,
            throughput=tick.finished / elapsed,
            failures=tick.failures / elapsed,
            retries=tick.retries / elapsed,
            p50=p50,
            p95=p95,
            p99=p99,
            in_flight=counts.get(TaskStatus.RUNNING, 0),
            queued=counts.get(TaskStatus.QUEUED, 0),
            tokens=tick.tokens / elapsed,
        )

    def _worker(self, w: WorkerInfo, now: float) -> WorkerState:
        worker = self._rt.worker
        local = worker is not None and w.id == worker.id
        stats = self._rt.statistics() if local else None
        in_flight = stats.in_flight if stats is not None else _int(w.load.get("in_flight"))
        agents = sorted(worker.agents) if worker is not None and local else w.load.get("agents")
        age = max(0.0, now - w.heartbeat_at)
        healthy = local or not w.silent(now, self._stale_after)
        return WorkerState(
            id=w.id,
            host=w.host,
            pid=w.pid,
            started_at=w.started_at,
            heartbeat_age=age,
            healthy=healthy,
            local=local,
            in_flight=in_flight if healthy else 0,  # (silent past its lease: taken back)
            succeeded=stats.succeeded if stats is not None else _int(w.load.get("succeeded")),
            agents=[str(a) for a in agents] if isinstance(agents, list) else [],
        )

    def _route_loads(self, now: float, workers: Sequence[WorkerInfo]) -> list[RouteLoad]:
        """Each LLM route's use: of this process's client, or, without one (a server with
        no worker of its own), added up over the workers' heartbeats."""
        llm = self._rt.llm
        if llm is not None:
            reports = {n: route_report(r) for n, r in llm.statistics().routes.items()}
        else:
            reports = self._fleet.reports(workers, now - self._stale_after)
        return [self._route_load(name, r, now) for name, r in sorted(reports.items())]

    def _route_load(self, name: str, r: Mapping[str, Any], now: float) -> RouteLoad:
        window = self._routes.setdefault(name, deque())
        window.append((now, r["requests"], r["tokens"]))
        while len(window) > 2 and now - window[1][0] >= ROUTE_WINDOW:
            window.popleft()
        rpm = tpm = 0.0
        (t0, req0, tok0), (t1, req1, tok1) = window[0], window[-1]
        if t1 > t0:
            rpm = max(0.0, (req1 - req0) * 60 / (t1 - t0))
            tpm = max(0.0, (tok1 - tok0) * 60 / (t1 - t0))
        rpm_limit, tpm_limit = r["rpm_limit"], r["tpm_limit"]
        shares = [used / limit for used, limit in ((rpm, rpm_limit), (tpm, tpm_limit)) if limit]
        return RouteLoad(
            route=name,
            provider=r["provider"],
            model=r["model"],
            requests=r["requests"],
            failed=r["failed"],
            rate_limited=r["rate_limited"],
            in_flight=r["in_flight"],
            max_in_flight=r["max_in_flight"],
            waiting=r["waiting"],
            rpm=rpm,
            rpm_limit=rpm_limit,
            rpm_allowed=r["rpm_allowed"],
            tpm=tpm,
            tpm_limit=tpm_limit,
            tpm_allowed=r["tpm_allowed"],
            utilization=max(shares) if shares else None,
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cost_usd=r["cost_usd"],
            paused_for=r["paused_for"],
            breaker=BreakerState(r["breaker"]).name.lower(),
            breaker_state=r["breaker"],
        )


def quantiles(values: Sequence[float], qs: Sequence[float]) -> list[float | None]:
    """Nearest-rank quantiles of ``values`` (``None`` for each when there are none)."""
    if not values:
        return [None] * len(qs)
    ordered = sorted(values)
    top = len(ordered) - 1
    return [ordered[min(top, max(0, round(q * top)))] for q in qs]


def _idle(at: float) -> Point:
    """A sample of a tenant with no task yet."""
    return Point(at, 0.0, 0.0, 0.0, None, None, None, 0, 0, 0.0)


def _failure(t: TaskInfo) -> Failure:
    error = t.error
    return Failure(
        id=t.id,
        agent=t.agent,
        status=str(t.status),
        attempts=t.attempt,
        type=error.type if error else "",
        message=(error.message if error else "")[:500],
        at=t.finished_at or t.started_at or t.created_at,
        tenant=t.tenant,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None
