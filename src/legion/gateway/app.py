"""The gateway's HTTP server (aiohttp): authentication, the OpenAI wire format, and the
calls themselves made by an `LLMClient` whose limits are shared through the store."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from aiohttp import web

from legion.errors import LegionError, Permanent
from legion.gateway.usage import KeyUsage
from legion.llm.client import LLMClient
from legion.llm.sdk import openai_wire
from legion.llm.sdk.openai_wire import WireError
from legion.llm.sdk.statuses import error_status
from legion.run.shares import SharedCapacity
from legion.server.auth import Authenticator, AuthError
from legion.store.base import Store
from legion.store.types import ApiKey

TASK_HEADER = "X-Legion-Task"
_TASK = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_MAX_BODY = 32 * 1024 * 1024


class Gateway:
    """Serves ``client``'s routes over HTTP to holders of the store's API keys.

    ``run_shares`` keeps this process's share of every limited route up to date
    through ``store`` (once a second), so gateways on one store share one budget.
    """

    def __init__(
        self,
        client: LLMClient,
        store: Store,
        *,
        gateway_id: str,
        key_cache_seconds: float = 10.0,
    ) -> None:
        self._client = client
        self._store = store
        self._auth = Authenticator(store, cache_seconds=key_cache_seconds)
        self._shares = SharedCapacity(client, store, gateway_id)
        self.usage: dict[str, KeyUsage] = {}
        self.address: Any = None
        """Where it listens, once `serve` has started it."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/usage", self._usage)
        app.router.add_get("/healthz", self._health)
        return app

    async def sync_shares(self) -> None:
        """One round of sharing limits through the store (also done by `run_shares`)."""
        await self._shares.sync()

    async def run_shares(self) -> None:
        await self._shares.run()

    async def _key(self, request: web.Request) -> ApiKey:
        return await self._auth.authenticate(request.headers.get("Authorization"))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            key = await self._key(request)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        task = _task(request)
        account = self.usage.setdefault(key.id, KeyUsage())
        try:
            chat = openai_wire.parse_chat(await request.read())
            route = self._route(chat.model)
            response = await self._client.chat(
                chat.messages, route, stream=chat.stream, **chat.params
            )
        except (WireError, LegionError) as exc:
            account.failed += 1
            return _error(error_status(exc), str(exc))
        account.add(response.usage, self._client.cost(response, route), task)
        if not chat.stream:
            body = openai_wire.render_completion(response, chat.model)
            return web.Response(body=body, content_type="application/json")
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        await stream.write(
            b"".join(openai_wire.render_stream(response, chat.model, chat.include_usage))
        )
        await stream.write_eof()
        return stream

    async def _embeddings(self, request: web.Request) -> web.Response:
        try:
            key = await self._key(request)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        task = _task(request)
        account = self.usage.setdefault(key.id, KeyUsage())
        try:
            model, texts, params, encoding = openai_wire.parse_embed(await request.read())
            route = self._client.embed_route(self._route_name(model)).name
            embeddings = await self._client.embed(texts, route, **params)
        except (WireError, LegionError) as exc:
            account.failed += 1
            return _error(error_status(exc), str(exc))
        cost = self._client.cost_of(self._client.routes[route].model, embeddings.usage)
        account.add(embeddings.usage, cost, task)
        body = openai_wire.render_embeddings(embeddings, model, encoding)
        return web.Response(body=body, content_type="application/json")

    async def _usage(self, request: web.Request) -> web.Response:
        try:
            key = await self._key(request)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        usage = self.usage.get(key.id, KeyUsage())
        return web.json_response({"key": key.id, "name": key.name, **usage.to_json()})

    async def _health(self, request: web.Request) -> web.Response:
        routes: dict[str, Any] = {}
        for name, route in self._client.routes.items():
            stats = route.capacity.statistics()
            routes[name] = {
                "model": route.model,
                "share": route.capacity.share,
                "effective_rpm": stats.effective_rpm,
                "effective_tpm": stats.effective_tpm,
                "requests": stats.requests,
                "rate_limited": stats.rate_limited,
            }
        return web.json_response({"ok": True, "routes": routes})

    def _route(self, model: str) -> str:
        return self._client.route_for(self._route_name(model)).name

    def _route_name(self, model: str) -> str | None:
        """The route a request's model names (a route, or a route's model), else the
        default route (``None``)."""
        if not model:
            return None
        with contextlib.suppress(Permanent):
            return self._client.route_for(model).name
        return None


def _task(request: web.Request) -> str | None:
    value = request.headers.get(TASK_HEADER)
    return value if value is not None and _TASK.match(value) else None


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="legion"'} if status == 401 else None
    return web.Response(
        status=status,
        body=openai_wire.render_error(status, message),
        content_type="application/json",
        headers=headers,
    )


async def serve(gateway: Gateway, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled, sharing limits through the store meanwhile."""
    await gateway.sync_shares()
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    shares = asyncio.create_task(gateway.run_shares(), name="legion-gateway-capacity")
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        gateway.address = runner.addresses[0]
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        shares.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shares
        await runner.cleanup()
