"""In-process gateways on loopback: each a real aiohttp server with a store of its own (one
database shared by all), an in-process simulator as the provider, the ``openai`` SDK as
the caller."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from legion.gateway.app import Gateway, serve
from legion.llm.anthropic import AnthropicProvider
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.openai import OpenAIProvider
from legion.llm.provider import Provider
from legion.server.keys import new_key
from legion.sim import SimConfig, Simulator
from legion.store import store_from_url
from legion.store.base import Store


@pytest.fixture
def store_file(tmp_path: Path) -> str:
    """A SQLite store for gateway processes."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@dataclass
class Running:
    """A gateway serving on loopback, and its parts."""

    gateway: Gateway
    store: Store
    url: str
    server: asyncio.Task[None]
    """The task that serves it: cancelled, it stops as a signal stops `legion gateway`."""


@dataclass
class Cluster:
    sim: Simulator
    gateways: list[Running]

    async def key(self, name: str, *, admin: bool = False) -> str:
        made = new_key(name, time.time(), admin=admin)
        await self.gateways[0].store.add_api_key(made.record)
        return made.token


@contextlib.asynccontextmanager
async def cluster(
    store_url: str,
    n: int = 1,
    config: SimConfig | None = None,
    *,
    stream_idle_timeout: float = 30.0,
    dialect: str = "openai",
    rpm: int | None = None,
    max_wait: float | None = None,
) -> AsyncIterator[Cluster]:
    """``n`` gateways on ``store_url`` in front of one simulator, spoken to in its OpenAI
    or Anthropic ``dialect``; ``rpm``: the route's limit, ``max_wait``: the gateways'."""
    async with Simulator(config or SimConfig()) as sim, contextlib.AsyncExitStack() as stack:
        running: list[Running] = []
        for i in range(n):
            store = store_from_url(store_url)
            await store.open()
            stack.push_async_callback(store.aclose)
            provider: Provider = (
                OpenAIProvider(
                    base_url=sim.base_url, name="sim", stream_idle_timeout=stream_idle_timeout
                )
                if dialect == "openai"
                else AnthropicProvider(
                    api_key=None, base_url=sim.url, stream_idle_timeout=stream_idle_timeout
                )
            )
            capacity = Capacity("default", rpm=rpm)
            client = LLMClient([Route("default", provider, "sim-model", capacity)])
            stack.push_async_callback(client.aclose)
            gateway = Gateway(client, store, gateway_id=f"gateway-{i}", max_wait=max_wait)
            ready = asyncio.Event()
            server = asyncio.create_task(serve(gateway, "127.0.0.1", 0, ready))
            stack.push_async_callback(_stop, server)
            await ready.wait()
            host, port = gateway.address[:2]
            running.append(Running(gateway, store, f"http://{host}:{port}/v1", server))
        yield Cluster(sim, running)


async def _stop(server: asyncio.Task[None]) -> None:
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"
