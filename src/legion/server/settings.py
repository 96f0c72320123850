"""``ServerSettings``: how ``legion serve`` listens and what it allows, read once."""

from __future__ import annotations

from dataclasses import dataclass

from legion.addresses import is_loopback
from legion.errors import ConfigError
from legion.inputs import PRIORITY_MAX, PRIORITY_MIN


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Options of the HTTP server.

    - ``host``, ``port``: where to listen (port 0: any free port). Anything but a loopback
      address needs ``allow_remote``: the API runs agents, so exposing it is a decision.
    - ``max_body_bytes``: larger request bodies are refused (413).
    - ``body_seconds``: a request's headers must arrive within this long of its first
      byte (or of the connection), and its body whole within this long of its first
      read, or the request is answered 408 (a body left half-sent held its request's
      place among those in progress for good, and half-sent headers their connection).
    - ``max_batch``: most tasks in one ``POST /v1/tasks:batch``.
    - ``key_cache_seconds``: how long a checked API key is trusted without asking the
      store again; a key revoked from another process is refused after at most this long.
    - ``sample_interval``: seconds between the samples behind the dashboard and metrics
      (stretched when sampling itself gets slow, so it never takes over the store).
    - ``history``: samples kept for the dashboard's charts.
    - ``task_poll_interval``: how often a task's event stream looks for changes.
    - ``stale_after``: a worker whose heartbeat is older than this is shown unhealthy.
    - ``shutdown_timeout``: how long open requests get to finish when the server stops.
    - ``max_in_progress``: most requests handled at once; more are answered 503 with
      ``Retry-After`` at once (event streams and ``/healthz`` are not counted).
    - ``target_latency``: seconds an admitted request should take on average; the bound on
      requests in progress is lowered below ``max_in_progress`` while they take longer
      (see `legion.server.admission.AdaptiveLimit`). ``None``: a fixed bound.
    - ``tenant_max_queued``: most queued tasks per tenant (``None``: no limit); a submission
      past it is answered 429 with ``Retry-After``.
    - ``tenant_rate``, ``tenant_burst``: tasks per second each tenant may submit, in bursts
      of up to ``tenant_burst`` (default: one second's worth); past it, 429.
    - ``tenant_max_priority``: the highest priority a tenant's API key may give a task (an
      admin key: any); a task above it is refused (422). ``None``: no cap, and a tenant's
      key may put its tasks ahead of every other tenant's (a higher priority runs first,
      whatever its tenant).
    - ``metrics_port``: also serve ``/metrics`` without an API key on this port (0: any
      free one) of ``metrics_host`` (loopback unless ``allow_remote``); ``None``: not.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    allow_remote: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    body_seconds: float = 30.0
    max_batch: int = 10_000
    key_cache_seconds: float = 5.0
    sample_interval: float = 1.0
    history: int = 600
    task_poll_interval: float = 0.5
    stale_after: float = 60.0
    shutdown_timeout: float = 5.0
    access_log: bool = False
    max_in_progress: int = 128
    target_latency: float | None = 0.1
    tenant_max_queued: int | None = None
    tenant_rate: float | None = None
    tenant_burst: float | None = None
    tenant_max_priority: int | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not self.allow_remote and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host}: it is not a loopback address, and the API "
                "can run agents for whoever reaches it. Pass --allow-remote to do it anyway "
                "(and keep the API keys secret)."
            )
        if not self.allow_remote and not is_loopback(self.metrics_host):
            raise ConfigError(
                f"refusing to serve metrics on {self.metrics_host}: it is not a loopback "
                "address. Pass --allow-remote to do it anyway."
            )
        for port in (self.port, self.metrics_port):
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"port {port} is not between 0 and 65535")
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError(
                f"--metrics-port {self.metrics_port} is the API's --port: give the metrics "
                "another port (or leave it out: the API serves /metrics too, to an API key)"
            )
        if self.max_in_progress < 1:
            raise ConfigError("max_in_progress must be >= 1")
        if self.target_latency is not None and not self.target_latency > 0:
            raise ConfigError("target_latency must be > 0 seconds (or None: a fixed bound)")
        if self.tenant_max_queued is not None and self.tenant_max_queued < 1:
            raise ConfigError("tenant_max_queued must be >= 1")
        if self.tenant_rate is not None and self.tenant_rate <= 0:
            raise ConfigError("tenant_rate must be > 0 tasks per second")
        if self.tenant_burst is not None and self.tenant_burst < 1:
            raise ConfigError("tenant_burst must be >= 1")
        if self.tenant_max_priority is not None and not (
            PRIORITY_MIN <= self.tenant_max_priority <= PRIORITY_MAX
        ):
            raise ConfigError(
                f"tenant_max_priority must be from {PRIORITY_MIN:,} to {PRIORITY_MAX:,}"
            )
        if self.max_body_bytes < 1024 or self.max_batch < 1:
            raise ConfigError("max_body_bytes must be >= 1024 and max_batch >= 1")
        if min(self.sample_interval, self.task_poll_interval, self.stale_after) <= 0 or not (
            self.body_seconds > 0
        ):
            raise ConfigError("intervals must be > 0")
        if self.key_cache_seconds < 0 or self.history < 1:
            raise ConfigError("key_cache_seconds must be >= 0 and history >= 1")
