"""Fixtures: the API served by uvicorn on a loopback port (in this event loop), over a real
store, and a small HTTP client for it (aiohttp, real sockets)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from legion import Runtime
from legion.server import RunningServer, ServerSettings, running_server
from legion.server.keys import new_key
from tests.server import apps

if TYPE_CHECKING:
    from legion.llm.client import LLMClient

FAST = ServerSettings(
    port=0, key_cache_seconds=0, sample_interval=0.05, task_poll_interval=0.02, history=50
)


@dataclass
class Api:
    """A running server and a client that sends its API key unless told otherwise."""

    url: str
    key: str
    runtime: Runtime
    server: RunningServer
    http: aiohttp.ClientSession
    opened: list[aiohttp.ClientResponse] = field(default_factory=list)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | list[tuple[str, Any]] | None = None,
    ) -> tuple[int, Any]:
        """Send a request (with the key unless ``headers`` are given); answer the status
        and the JSON body (text if it is not JSON)."""
        async with self.http.request(
            method,
            self.url + path,
            json=body,
            headers=self.auth() if headers is None else headers,
            params=params,
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def stream(self, path: str) -> aiohttp.ClientResponse:
        """Open an event stream (closed at teardown)."""
        resp = await self.http.get(self.url + path, headers=self.auth())
        self.opened.append(resp)
        return resp

    async def finished(self, task_id: int) -> dict[str, Any]:
        """The task once it has finished (waited for through the runtime, not by polling)."""
        await self.runtime.result(task_id)
        status, body = await self.call("GET", f"/v1/tasks/{task_id}")
        assert status == 200, body
        return dict(body)


async def admin_key(api: Api) -> dict[str, str]:
    """The headers of a new admin key (it sees every tenant's work: the LLM routes, the
    scaling decision, the tasks' tracebacks)."""
    key = new_key("ops", time.time(), admin=True)
    await api.runtime.store.add_api_key(key.record)
    return api.auth(key.token)


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """Parse a server-sent event stream: ``(event, data)`` pairs, data JSON-decoded."""
    async for name, data, _ in events_with_ids(resp):
        yield name, data


async def events_with_ids(
    resp: aiohttp.ClientResponse,
) -> AsyncIterator[tuple[str, Any, str | None]]:
    """``(event, data, id)`` of each event of a stream (``id`` None where it has none)."""
    name, data, event_id = "message", list[str](), None
    async for raw in resp.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield name, json.loads("\n".join(data)), event_id
            name, data, event_id = "message", list[str](), None
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                event_id = value


async def next_event(
    resp: aiohttp.ClientResponse, wanted: Callable[[str, Any], bool]
) -> tuple[str, Any]:
    """The first event of the stream for which ``wanted`` holds."""
    async for name, data in events(resp):
        if wanted(name, data):
            return name, data
    raise AssertionError("the stream ended first")


@pytest.fixture
def gate() -> Iterator[asyncio.Event]:
    """Held tasks wait until this event is set."""
    apps.GATE["open"] = event = asyncio.Event()
    apps.GATE["child"] = asyncio.Event()  # (`orphaning` fails once it is set)
    yield event
    event.set()
    apps.GATE.clear()


StartApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start_api() -> AsyncIterator[StartApi]:
    """Start servers (``start_api(store_url, llm=None, clock=None, **settings)``; ``clock``
    paces the tenants' submit rates); all stop at teardown."""
    stack: list[Callable[[], Awaitable[None]]] = []

    async def start(
        store_url: str,
        *,
        llm: LLMClient | None = None,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> Api:
        exits = AsyncExitStack()
        rt = await exits.enter_async_context(
            Runtime(store_url, concurrency=200, lease_seconds=5, llm=llm)
        )
        key = new_key("test", time.time())
        await rt.store.add_api_key(key.record)
        opts = {**{f: getattr(FAST, f) for f in FAST.__dataclass_fields__}, **settings}
        server = await exits.enter_async_context(
            running_server(
                rt, apps.AGENTS, ServerSettings(**opts), **({"clock": clock} if clock else {})
            )
        )
        http = await exits.enter_async_context(aiohttp.ClientSession())
        api = Api(server.url, key.token, rt, server, http)

        async def close() -> None:
            for resp in api.opened:
                resp.close()
            await exits.aclose()

        stack.append(close)
        return api

    yield start
    for close in reversed(stack):
        await close()


@pytest.fixture
async def api(start_api: StartApi, tmp_path: Path) -> Api:
    """A server on a SQLite file."""
    return await start_api(f"sqlite:///{tmp_path / 'api.db'}")


@pytest.fixture
async def any_api(store_url: str, start_api: StartApi) -> Api:
    """A server on each kind of store (SQLite file, PostgreSQL schema). The store comes
    first, so that it is dropped only after the server has stopped."""
    return await start_api(store_url)
