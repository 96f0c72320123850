"""``running_server``: the API, the dashboard's sampler and uvicorn, started and stopped together.

The listening socket is bound here, before uvicorn starts: a port in use is a clear
:class:`~legion.errors.ConfigError`, port 0 picks a free port, and connections made
before uvicorn is ready wait in the backlog instead of failing. Stopping ends the event
streams first (they would hold their connections open), then lets uvicorn finish the
requests in flight for up to ``shutdown_timeout`` seconds.

uvicorn's own signal handling is left out: the command line decides what a signal means
(stop serving, then drain the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass

import uvicorn

from ..agent import Agent
from ..errors import ConfigError
from ..runtime import Runtime
from .app import create_app
from .auth import Authenticator
from .deps import ServerState
from .metrics import Metrics
from .monitor import Monitor
from .settings import ServerSettings


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A server that is listening: ``url`` is its base URL."""

    url: str
    state: ServerState
    _serving: asyncio.Task[None]

    async def wait_stopped(self) -> None:
        """Return if the server stops by itself (it should not); raise what stopped it."""
        await asyncio.shield(self._serving)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are the command line's to handle


@contextlib.asynccontextmanager
async def running_server(
    runtime: Runtime, agents: Sequence[Agent], settings: ServerSettings
) -> AsyncIterator[RunningServer]:
    """Serve ``runtime`` (opened by the caller) with ``agents`` submittable, until exit."""
    by_name: dict[str, Agent] = {}
    for agent in agents:
        if by_name.setdefault(agent.name, agent) is not agent:
            raise ConfigError(f"two different agents are named {agent.name!r}")
        runtime.register(agent)
    sock = _listen(settings.host, settings.port)
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
        closing=asyncio.Event(),
    )
    config = uvicorn.Config(
        create_app(state),
        lifespan="off",
        log_config=None,
        access_log=settings.access_log,
        server_header=False,
        ws="none",
        timeout_graceful_shutdown=int(settings.shutdown_timeout) or 1,
    )
    server = _Server(config)
    await monitor.sample()  # the first snapshot is ready before the first request
    sampling = asyncio.create_task(monitor.run(), name="legion-server-monitor")
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="legion-server-http")
    try:
        yield RunningServer(_url(sock), state, serving)
    finally:
        state.closing.set()
        monitor.close()
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from exc
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
