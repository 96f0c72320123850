"""``/metrics``: the run in Prometheus' text format.

Counters and the latency histogram are fed by the `legion.server.monitor.Monitor`
as it reads the event feed (every worker's tasks, since this server started; kept apart
for each tenant too, for what a tenant's key reads); gauges come
from its latest snapshot, so a scrape reads nothing from the store. Every metric lives in
this server's own registry, never in prometheus_client's global one.

===================================  =========  =============================================
metric                               type       meaning
===================================  =========  =============================================
legion_tasks{status}                 gauge      tasks in the store, by status
legion_queue_depth                   gauge      tasks queued
legion_tasks_in_flight               gauge      tasks running, in every worker
legion_tasks_finished_total          counter    tasks finished, by agent and status
legion_task_duration_seconds         histogram  latency of the last attempt, by agent, status
legion_task_retries_total            counter    charged attempts queued again, by agent
legion_tokens_total{type}            counter    LLM tokens of finished tasks (input, output)
legion_cost_usd_total                counter    LLM cost of finished tasks
legion_workers{health}               gauge      registered workers, healthy or stale
legion_workers_desired               gauge      workers the work asks for (scaling policy)
legion_llm_requests_total            counter    LLM calls started, per route
legion_llm_rate_limited_total        counter    429 answers, per route
legion_llm_failed_total              counter    calls that failed, their retries spent, per route
legion_llm_tokens_total{type}        counter    tokens used, per route
legion_llm_cost_usd_total            counter    cost, per route
legion_llm_in_flight                 gauge      calls in flight, per route
legion_llm_waiting                   gauge      calls queued for the route's capacity, per route
legion_llm_requests_per_minute       gauge      request rate, per route
legion_llm_limit_requests_per_minute gauge      the provider's request limit, per route
legion_llm_utilization               gauge      use of the tightest limit (0-1), per route
legion_llm_breaker_open              gauge      1 while the route's breaker is open or half-open
legion_llm_breaker_state             gauge      the breaker: 0 closed, 1 open, 2 half-open
legion_store_up                      gauge      1 if the last sample could read the store
legion_event_loop_lag_seconds        gauge      how late the server's last sample woke up
===================================  =========  =============================================
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from legion.server.snapshot import RouteLoad, Snapshot
from legion.task import TaskStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_ROUTE_LABELS = ("route", "provider", "model")


class Metrics:
    """The server's metrics; a `legion.server.monitor.FeedSink`. The counters are kept for
    every tenant's tasks together and, apart, for each tenant's (what a tenant's key reads:
    never another tenant's agents, counts or latencies)."""

    def __init__(self) -> None:
        self._gauges = _SnapshotCollector()
        self._all = _Counters(self._gauges)
        self.registry = self._all.registry
        self._tenants: dict[str, _Counters] = {}

    def finished(
        self, agent: str, status: TaskStatus, latency: float | None, tenant: str | None = None
    ) -> None:
        self._all.finished(agent, status, latency)
        if tenant is not None:
            self._of(tenant).finished(agent, status, latency)

    def retried(self, agent: str, tenant: str | None = None) -> None:
        self._all.retried(agent)
        if tenant is not None:
            self._of(tenant).retried(agent)

    def render(self, snapshot: Snapshot, tenant: str | None = None) -> bytes:
        """The exposition text, with gauges as of ``snapshot``; counters of every tenant's
        tasks, or of ``tenant``'s alone."""
        self._gauges.snapshot = snapshot
        counters = self._all if tenant is None else self._of(tenant)
        return generate_latest(counters.registry)

    def _of(self, tenant: str) -> _Counters:
        counters = self._tenants.get(tenant)
        if counters is None:
            counters = self._tenants[tenant] = _Counters(self._gauges)
        return counters


class _Counters:
    """The feed's counters and latency histogram, in a registry of their own beside the
    snapshot's gauges."""

    def __init__(self, gauges: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._finished = Counter(
            "legion_tasks_finished",
            "Tasks finished, by agent and status.",
            ("agent", "status"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "legion_task_duration_seconds",
            "Seconds from the start of a task's last attempt to its end.",
            ("agent", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._retries = Counter(
            "legion_task_retries",
            "Charged attempts sent back to the queue (errors, a lost lease after the first),"
            " by agent; a task given back or its first lost lease is not charged.",
            ("agent",),
            registry=self.registry,
        )
        self.registry.register(gauges)

    def finished(self, agent: str, status: TaskStatus, latency: float | None) -> None:
        self._finished.labels(agent, str(status)).inc()
        if latency is not None:
            self._latency.labels(agent, str(status)).observe(latency)

    def retried(self, agent: str) -> None:
        self._retries.labels(agent).inc()


class _SnapshotCollector(Collector):
    """Gauges (and the LLM client's own counters) read from the latest snapshot."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot
        if s is None:
            return []
        return [*self._tasks(s), *self._workers(s), *self._routes(s.routes), *self._server(s)]

    @staticmethod
    def _tasks(s: Snapshot) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "legion_tasks", "Tasks in the store, by status.", labels=["status"]
        )
        for status, n in s.statuses.items():
            tasks.add_metric([status], n)
        yield tasks
        yield GaugeMetricFamily(
            "legion_queue_depth", "Tasks queued.", value=s.statuses.get("queued", 0)
        )
        yield GaugeMetricFamily(
            "legion_tasks_in_flight",
            "Tasks running, in every worker.",
            value=s.statuses.get("running", 0),
        )
        tokens = CounterMetricFamily(
            "legion_tokens", "LLM tokens of the tasks finished.", labels=["type"]
        )
        tokens.add_metric(["input"], s.totals.input_tokens)
        tokens.add_metric(["output"], s.totals.output_tokens)
        yield tokens
        yield CounterMetricFamily(
            "legion_cost_usd", "LLM cost of the tasks finished (USD).", value=s.totals.cost_usd
        )

    @staticmethod
    def _workers(s: Snapshot) -> Iterator[Metric]:
        workers = GaugeMetricFamily(
            "legion_workers", "Registered workers, by heartbeat health.", labels=["health"]
        )
        if s.scaling is not None:
            desired = GaugeMetricFamily(
                "legion_workers_desired",
                "Workers the work asks for (the scaling policy; see docs/provisioning.md).",
            )
            desired.add_metric([], s.scaling.desired)
            yield desired
        healthy = sum(1 for w in s.workers if w.healthy)
        workers.add_metric(["healthy"], healthy)
        workers.add_metric(["stale"], len(s.workers) - healthy)
        yield workers

    @staticmethod
    def _routes(routes: list[RouteLoad]) -> Iterator[Metric]:
        requests = _counter("legion_llm_requests", "LLM calls started.")
        limited = _counter("legion_llm_rate_limited", "429 answers.")
        failed = _counter("legion_llm_failed", "LLM calls that failed, their retries spent.")
        tokens = _counter("legion_llm_tokens", "Tokens used.", "type")
        cost = _counter("legion_llm_cost_usd", "Cost (USD).")
        in_flight = _gauge("legion_llm_in_flight", "LLM calls in flight.")
        waiting = _gauge("legion_llm_waiting", "LLM calls queued for the route's capacity.")
        rpm = _gauge("legion_llm_requests_per_minute", "Request rate (recent).")
        limit = _gauge(
            "legion_llm_limit_requests_per_minute",
            "The provider's request limit (learned, else configured).",
        )
        utilization = _gauge("legion_llm_utilization", "Use of the tightest limit (0-1).")
        breaker_open = _gauge(
            "legion_llm_breaker_open", "1 while the route's circuit breaker is open or half-open."
        )
        breaker = _gauge(
            "legion_llm_breaker_state", "The circuit breaker: 0 closed, 1 open, 2 half-open."
        )
        for r in routes:
            labels = [r.route, r.provider, r.model]
            requests.add_metric(labels, r.requests)
            limited.add_metric(labels, r.rate_limited)
            failed.add_metric(labels, r.failed)
            tokens.add_metric([*labels, "input"], r.input_tokens)
            tokens.add_metric([*labels, "output"], r.output_tokens)
            cost.add_metric(labels, r.cost_usd)
            in_flight.add_metric(labels, r.in_flight)
            waiting.add_metric(labels, r.waiting)
            rpm.add_metric(labels, r.rpm)
            if r.rpm_limit is not None:
                limit.add_metric(labels, r.rpm_limit)
            if r.utilization is not None:
                utilization.add_metric(labels, r.utilization)
            breaker_open.add_metric(labels, 1 if r.breaker_state else 0)
            breaker.add_metric(labels, r.breaker_state)
        yield from (requests, limited, failed, tokens, cost, in_flight, waiting, rpm, limit)
        yield utilization
        yield from (breaker_open, breaker)

    @staticmethod
    def _server(s: Snapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "legion_store_up",
            "1 if the last sample could read the store.",
            value=1 if s.health.store_ok else 0,
        )
        yield GaugeMetricFamily(
            "legion_event_loop_lag_seconds",
            "How late the server's last sample woke up.",
            value=s.health.loop_lag,
        )


def _counter(name: str, doc: str, *extra: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=[*_ROUTE_LABELS, *extra])


def _gauge(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(_ROUTE_LABELS))
