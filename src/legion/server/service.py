"""``running_server``: the API, the dashboard's sampler and uvicorn, started and stopped together.

The listening socket is bound here, before uvicorn starts: a port in use is a clear
`legion.errors.ConfigError`, port 0 picks a free port, and connections made
before uvicorn is ready wait in the backlog instead of failing. Stopping ends the event
streams first (they would hold their connections open), then lets uvicorn finish the
requests in flight for up to ``shutdown_timeout`` seconds.

uvicorn's own signal handling is left out: the command line decides what a signal means
(stop serving, then drain the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from legion import heap
from legion.addresses import http_url
from legion.agent import Agent
from legion.errors import ConfigError, cannot_listen
from legion.run.runtime import Runtime
from legion.server.admission import InProgressLimit, TenantLimits
from legion.server.app import admission_of, create_app, create_metrics_app
from legion.server.auth import Authenticator
from legion.server.deps import ServerState
from legion.server.malloc import return_large_buffers
from legion.server.metrics import Metrics
from legion.server.monitor import Monitor
from legion.server.protocol import Openings, SheddingProtocol
from legion.server.settings import ServerSettings


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A server that is listening: ``url`` is its base URL."""

    url: str
    state: ServerState
    _serving: asyncio.Task[None]
    metrics_url: str | None = None  # where /metrics is served without a key, if it is

    async def wait_stopped(self) -> None:
        """Return if the server stops by itself (it should not); raise what stopped it."""
        await asyncio.shield(self._serving)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are the command line's to handle


@contextlib.asynccontextmanager
async def running_server(
    runtime: Runtime,
    agents: Sequence[Agent],
    settings: ServerSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[RunningServer]:
    """Serve ``runtime`` (opened by the caller) with ``agents`` submittable, until exit.
    ``clock`` (monotonic seconds) paces the tenants' submit rates."""
    by_name: dict[str, Agent] = {}
    for agent in agents:
        if by_name.setdefault(agent.name, agent) is not agent:
            raise ConfigError(f"two different agents are named {agent.name!r}")
        runtime.register(agent)
    sock = _listen(settings.host, settings.port)
    return_large_buffers()  # request bodies do not stay in the process once answered
    metrics = Metrics()
    monitor = Monitor(
        runtime,
        interval=settings.sample_interval,
        history=settings.history,
        stale_after=settings.stale_after,
        sink=metrics,
    )
    state = ServerState(
        runtime=runtime,
        agents=by_name,
        settings=settings,
        monitor=monitor,
        metrics=metrics,
        auth=Authenticator(runtime.store, cache_seconds=settings.key_cache_seconds),
        limits=TenantLimits(
            rate=settings.tenant_rate,
            burst=settings.tenant_burst,
            max_queued=settings.tenant_max_queued,
            count_queued=runtime.store.count_queued,
            clock=clock,
        ),
        closing=asyncio.Event(),
    )
    metrics_sock = None
    if settings.metrics_port is not None:
        try:
            metrics_sock = _listen(settings.metrics_host, settings.metrics_port)
        except BaseException:
            sock.close()
            raise
    app = create_app(state)
    server = _Server(_config(app, settings, admission_of(app)))
    await monitor.sample()  # the first snapshot is ready before the first request
    sampling = asyncio.create_task(monitor.run(), name="legion-server-monitor")
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="legion-server-http")
    servers = [(server, serving)]
    if metrics_sock is not None:
        metrics_server = _Server(_config(create_metrics_app(state), settings))
        servers.append(
            (
                metrics_server,
                asyncio.create_task(
                    metrics_server.serve(sockets=[metrics_sock]), name="legion-server-metrics"
                ),
            )
        )
    # Full collections skip what start-up made (see legion.heap): without it, each one
    # scanned the whole of FastAPI, pydantic and the routes again, 60-100 ms during which
    # no request moved.
    heap.settle()
    try:
        yield RunningServer(
            _url(sock), state, serving, _url(metrics_sock) if metrics_sock else None
        )
    finally:
        heap.unsettle()
        state.closing.set()
        monitor.close()
        for s, _ in servers:
            s.should_exit = True
        await asyncio.gather(*(task for _, task in servers), return_exceptions=True)
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        sock.close()
        if metrics_sock is not None:
            metrics_sock.close()


def _config(
    app: object, settings: ServerSettings, admission: InProgressLimit | None = None
) -> uvicorn.Config:
    """uvicorn's configuration: what one client may hold bounded (`legion.server.protocol`);
    with ``admission``, requests over its bound are refused as soon as their headers are
    read."""
    # (one `Openings` a server: its connections share it)
    http: Any = functools.partial(
        SheddingProtocol,
        admission=admission,
        openings=Openings(),
        header_seconds=settings.body_seconds,
    )
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=http,
        lifespan="off",
        log_config=None,
        access_log=settings.access_log,
        server_header=False,
        ws="none",
        timeout_graceful_shutdown=int(settings.shutdown_timeout) or 1,
    )


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise cannot_listen(host, port, exc) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise cannot_listen(host, port, exc) from exc
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return http_url(host, port)
