"""The gateway's HTTP server (aiohttp): authentication, the OpenAI wire format, and the
calls themselves made by an `LLMClient` whose limits are shared through the store.

Recording (``X-Legion-Task``). A call that names its task is a step of that task,
recorded in the store for the calling key (`legion.store.ledger`); the same step asked
again, through any gateway on the store, gets the recorded answer back (the same
bytes for a plain answer; a stream comes whole) and buys nothing. The step is named
by ``X-Legion-Step`` when the caller sends one (the step of its task this call is:
``"3"``, ``"plan"``...; the same step asked with another request is refused, 409),
else by the request itself (``chat.<digest>`` of the route's model, the messages and
the parameters; ``embed.<digest>`` for embeddings): the same request within one task
is then one step with one answer, however often it is asked. A caller that asks the
same thing twice in one task and wants two answers names its steps. A gateway cannot
count occurrences for the caller: it cannot tell a task run again from a second
question, and N gateways would each count their own.

Streams (``stream: true``) are passed on as the provider sends them (see
`legion.llm.deltas`, `legion.llm.sdk.live`); the whole completion is recorded and
counted once the stream ends. Nothing is sent before the first piece, so a call that
fails before it gets its HTTP error status; one that fails after ends its stream with
an error event (``data: {"error": ...}``), which the ``openai`` SDK raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from legion import codec
from legion.clock import Clock, StoreTime, system_clock
from legion.errors import (
    LegionError,
    Permanent,
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    StoreError,
    cannot_listen,
    is_retryable,
)
from legion.gateway.usage import UsageBook, totals_json
from legion.llm.client import EMBED_ROUTE, LLMClient, Route
from legion.llm.deltas import StreamInterrupted
from legion.llm.embeddings import Embeddings
from legion.llm.sdk import openai_wire
from legion.llm.sdk.live import LiveCall
from legion.llm.sdk.openai_wire import ChunkStream, WireChat, WireError
from legion.llm.sdk.statuses import error_status
from legion.llm.types import ChatResponse
from legion.run.shares import SharedCapacity
from legion.server.auth import Authenticator, AuthError, one_header
from legion.store.base import Store
from legion.store.ledger import RecordedCall
from legion.store.types import ApiKey

IDLE_SECONDS = 30.0
"""How long a connection may go without a whole request before it is closed, and how long
a request's body may take to come once its key is taken (a client that stalled mid-body
held its handler and socket for good)."""

DRAIN_SECONDS = 60.0
"""How long a stopping gateway answers the calls in flight before it cuts them."""

TASK_HEADER = "X-Legion-Task"
STEP_HEADER = "X-Legion-Step"
_NAME = re.compile(r"^[A-Za-z0-9_.:#-]{1,128}$")
_MAX_BODY = 32 * 1024 * 1024
_EVENTS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
CLOCK_EVERY = 10.0
"""Seconds between two reads of the store's clock, which the gateway's claims follow."""
SAY_EVERY = 10.0
"""Seconds between two log lines of one kind of failed call (see `Gateway._failed`)."""
_RETRY = {"Retry-After": "5"}  # (every 503 says when to try again)
_HEALTH_TIMEOUT = 5.0
_SERVED = (
    "POST /v1/chat/completions (the Chat Completions API; not the Responses API: the "
    "OpenAI Agents SDK takes OpenAIChatCompletionsModel), POST /v1/embeddings, "
    "GET /v1/models, GET /v1/models/{model}, GET /v1/usage and GET /healthz"
)

log = logging.getLogger(__name__)


class _Conflict(Exception):
    """A step asked again with another request than the one its answer was recorded for."""


@dataclass(frozen=True, slots=True)
class _Step:
    """Where a call is recorded: the calling key's ``task``, step ``step``, for the request
    whose digest is ``request``."""

    key: str
    task: str
    step: str
    request: str


class _OneAtATime:
    """A lock per recorded step, while some request of it is under way: identical requests
    of one step sent at once (a task's retry racing its first try) wait for the first,
    then replay its record, rather than each buy the call. (A lock is kept as long as a
    request holds or waits for it.)"""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @contextlib.asynccontextmanager
    async def step(self, step: _Step | None) -> AsyncIterator[None]:
        if step is None:
            yield
            return
        name = (step.key, step.task, step.step)
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        async with lock:
            yield


class Gateway:
    """Serves ``client``'s routes over HTTP to holders of the store's API keys.

    ``run_shares`` keeps this process's share of every limited route up to date
    through ``store`` (once a second), so gateways on one store share one budget;
    ``run_usage`` adds the keys' usage to the store's totals (once a second too).
    ``max_wait``: a chat call that would wait longer than this for its route's capacity
    is answered 429 at once, with a Retry-After (``None``: every call waits its turn).
    """

    def __init__(
        self,
        client: LLMClient,
        store: Store,
        *,
        gateway_id: str,
        key_cache_seconds: float = 10.0,
        max_wait: float | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self._client = client
        self._max_wait = max_wait
        self._said: dict[str, tuple[float, int]] = {}  # (see _failed)
        self._told: dict[str, float] = {}  # (see _too_long_a_wait)
        self._store = store
        self._auth = Authenticator(store, cache_seconds=key_cache_seconds)
        # Claims and 429 pauses are stamped on the store's clock, as the workers' are: on
        # its host's own, a gateway 40 s ahead held the whole fleet back for 40 s once it
        # stopped (its claims looked live), and one behind was not counted at all.
        self._clock = StoreTime(clock)
        self._shares = SharedCapacity(client, store, gateway_id, clock=self._clock)
        self._steps = _OneAtATime()
        self.book = UsageBook(store, clock=time.time)
        """Each key's usage, on its way to the store's totals."""
        self.address: Any = None
        """Where it listens, once `serve` has started it."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY, middlewares=[_errors])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)  # ("org/model" too)
        app.router.add_get("/v1/usage", self._usage)
        app.router.add_get("/healthz", self._health)
        return app

    async def sync_shares(self) -> None:
        """One round of sharing limits through the store (also done by `run_shares`), on
        the store's clock read now."""
        await self._follow_store_clock()
        await self._shares.sync()

    async def run_shares(self) -> None:
        await asyncio.gather(self._shares.run(), self._follow_store_clock_every(CLOCK_EVERY))

    async def _follow_store_clock(self) -> None:
        """Set this gateway's clock to the store's (`legion.clock.StoreTime`)."""
        before = self._clock.local_wall()
        store_now = await self._store.now()
        self._clock.follow(store_now, (before + self._clock.local_wall()) / 2)

    async def _follow_store_clock_every(self, seconds: float) -> None:
        while True:
            await self._clock.sleep(seconds)
            with contextlib.suppress(StoreError):  # (down: the last offset holds)
                await self._follow_store_clock()

    async def run_usage(self) -> None:
        await self.book.run()

    async def _key(self, request: web.Request) -> ApiKey:
        return await self._auth.authenticate(
            one_header(request.headers.getall("Authorization", []))
        )

    # -- chat completions ----------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            key = await self._key(request)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        try:
            body = await _body(request)
            chat = openai_wire.parse_chat(body)
            route = self._client.route_for(self._route_name(chat.model))
            step = _step(request, key, "chat", [route.model, chat.messages, chat.params])
            model = route.model  # (what the provider is asked for, plain or streamed)
            async with self._steps.step(step):
                if step is not None:
                    found = await self._recorded(step)
                    if found is not None:
                        self.book.account(key.id).replayed += 1
                        return _answer(ChatResponse.from_json(found), chat, body, model, step)
                busy = self._too_long_a_wait(route.name, chat)
                if busy is not None:
                    self.book.account(key.id).failed += 1
                    return busy
                if chat.stream:
                    return await self._stream(request, chat, body, model, route, key.id, step)
                response = await self._client.chat(
                    chat.messages, route.name, stream=False, **chat.params
                )
                cost = self._client.cost(response, route.name)
                self.book.account(key.id).add(response.usage, cost)
                if step is not None:
                    kept = await self._record(step, {**response.to_json(), "cost_usd": cost})
                    response = ChatResponse.from_json(kept)
                return _answer(response, chat, body, model, step)
        except (_Conflict, WireError, LegionError) as exc:
            self._failed(key.id, exc)
            return _failure(exc)
        except asyncio.CancelledError:
            # The caller left (a dropped connection cancels its handler, and the call):
            # counted as failed, the only trace it leaves (its tokens are not known; a
            # provider may bill what it had generated).
            self.book.account(key.id).failed += 1
            raise

    def _failed(self, key_id: str, exc: _Conflict | WireError | LegionError) -> None:
        """A call that ended in an error: counted for its key, and, when the provider or
        the route failed it, said in the log (once per kind of error every `SAY_EVERY`
        seconds, with how many more there were: an outage fails every call)."""
        self.book.account(key_id).failed += 1
        if not isinstance(exc, (ProviderError, ProviderRejected, StreamInterrupted)):
            return  # (the caller's own: a bad request, a conflict)
        kind = type(exc).__name__
        now = time.monotonic()
        said = self._said.get(kind)
        if said is not None and now - said[0] < SAY_EVERY:
            self._said[kind] = (said[0], said[1] + 1)
            return
        more = (
            f" ({said[1]} more like it in the last {now - said[0]:.0f} s)"
            if said and said[1]
            else ""
        )
        log.warning("legion gateway: a call failed: %s: %s%s", kind, exc, more)
        self._said[kind] = (now, 0)

    def _too_long_a_wait(self, route: str, chat: WireChat) -> web.Response | None:
        """A 429 with Retry-After for a call that would wait past ``max_wait`` for its
        turn at the route: the callers queued longer than their own timeouts leave before
        their turn, and the provider's capacity goes on calls whose callers have gone."""
        if self._max_wait is None:
            return None
        wait, spacing = self._client.expected_turn(route, chat.messages, chat.params)
        if wait <= self._max_wait:
            return None
        # Each caller turned away is told a later turn than the one before it, as if it
        # had queued: told the same wait, they all came back at once, and all but one
        # were turned away again.
        now = time.monotonic()
        turn = max(now + wait, self._told.get(route, 0.0) + spacing)
        self._told[route] = turn
        wait = turn - now
        retry_after = max(1, math.ceil(wait))
        response = _error(
            429,
            f"route {route!r} is at its limit: a call now would wait about {wait:.0f} s for "
            f"its turn, past this gateway's --max-wait of {self._max_wait:g} s; try again in "
            f"{retry_after} s",
        )
        response.headers["Retry-After"] = str(retry_after)
        return response

    async def _stream(
        self,
        request: web.Request,
        chat: WireChat,
        body: bytes,
        model: str,
        route: Route,
        key_id: str,
        step: _Step | None,
    ) -> web.StreamResponse:
        """A streamed call passed on piece by piece (see the module's text)."""
        chunks = _chunks(chat, body, model, step)
        live = LiveCall(
            lambda: self._client.chat(chat.messages, route.name, stream=True, **chat.params)
        )
        try:
            piece = await live.next()
            if piece is None:  # from a provider that does not stream: whole, or its error
                response = await self._settle(await live.result(), route, key_id, step)
                return _answer(response, chat, body, model, step)
            stream = web.StreamResponse(headers=_EVENTS)
            await stream.prepare(request)
            await stream.write(chunks.start())
            while piece is not None:
                await stream.write(chunks.delta(piece))
                piece = await live.next()
            try:
                response = await live.result()
                await self._settle(response, route, key_id, step)
            except (_Conflict, LegionError) as exc:
                self._failed(key_id, exc)
                await stream.write(openai_wire.render_stream_error(_status(exc), str(exc), exc))
            else:
                await stream.write(b"".join(chunks.end(response)))
            await stream.write_eof()
            return stream
        finally:
            await live.aclose()

    async def _settle(
        self, response: ChatResponse, route: Route, key_id: str, step: _Step | None
    ) -> ChatResponse:
        """Count a streamed completion and record it; the completion that stays."""
        cost = self._client.cost(response, route.name)
        self.book.account(key_id).add(response.usage, cost)
        if step is None:
            return response
        return ChatResponse.from_json(
            await self._record(step, {**response.to_json(), "cost_usd": cost})
        )

    # -- embeddings ----------------------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.Response:
        try:
            key = await self._key(request)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        try:
            model, texts, params, encoding = openai_wire.parse_embed(await _body(request))
            route = self._client.embed_route(self._embed_route_name(model))
            step = _step(request, key, "embed", [route.model, texts, params])
            async with self._steps.step(step):
                found = await self._recorded(step) if step is not None else None
                if found is not None:
                    self.book.account(key.id).replayed += 1
                    embeddings = Embeddings.from_json(found)
                else:
                    embeddings = await self._client.embed(texts, route.name, **params)
                    cost = self._client.cost_of(route, embeddings.usage)
                    self.book.account(key.id).add(embeddings.usage, cost)
                    if step is not None:
                        data = {**embeddings.to_json(), "cost_usd": cost}
                        embeddings = Embeddings.from_json(await self._record(step, data))
        except (_Conflict, WireError, LegionError) as exc:
            self._failed(key.id, exc)
            return _failure(exc)
        body = openai_wire.render_embeddings(embeddings, model, encoding)
        return web.Response(body=body, content_type="application/json")

    # -- recording -----------------------------------------------------------------------

    async def _recorded(self, step: _Step) -> dict[str, Any] | None:
        """The answer recorded for ``step``, if any; `_Conflict` if it answered another
        request."""
        found = await self._store.gateway_call(step.key, step.task, step.step)
        if found is None:
            return None
        _check(step, found)
        data: dict[str, Any] = codec.loads(found.output)
        return data

    async def _record(self, step: _Step, data: dict[str, Any]) -> dict[str, Any]:
        """Record ``data`` as ``step``'s answer; the answer that stays (another, if a
        concurrent call of the same step recorded first)."""
        call = RecordedCall(step.request, codec.dumps(data))
        try:
            kept = await self._store.record_gateway_call(
                step.key, step.task, step.step, call, time.time()
            )
        except StoreError as exc:
            # The caller has its answer (bought): a replay will buy it again.
            log.warning("legion gateway: step %s of task %s not recorded: %s",
                        step.step, step.task, exc)  # fmt: skip
            return data
        if kept.output == call.output:
            return data
        _check(step, kept)
        stayed: dict[str, Any] = codec.loads(kept.output)
        return stayed

    # -- models, usage and health --------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        """The models a caller may name: each route's name and its model (OpenAI's list,
        which SDKs and tools read at their start)."""
        try:
            await self._key(request)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        data = [_model_json(name) for name in self._model_names()]
        return web.json_response({"object": "list", "data": data})

    async def _model(self, request: web.Request) -> web.Response:
        """One model of `_models` (OpenAI's ``GET /v1/models/{model}``, which clients ask
        to check a model before they use it); 404 ``model_not_found`` for another."""
        try:
            await self._key(request)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        name = request.match_info["model"]
        if name not in self._model_names():
            return _error(
                404,
                f"the model {name!r} is not one of this gateway's routes or their models "
                f"({', '.join(sorted(self._model_names()))}); a call naming it goes to the "
                "default route",
                code="model_not_found",
            )
        return web.json_response(_model_json(name))

    def _model_names(self) -> list[str]:
        """Each route's name and its model, in the routes' order."""
        names: dict[str, None] = {}
        for name, route in self._client.routes.items():
            names.setdefault(route.model)
            names.setdefault(name)
        return list(names)

    async def _usage(self, request: web.Request) -> web.Response:
        try:
            key = await self._key(request)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        try:
            if request.query.get("all") not in (None, "", "0", "false"):
                if not key.admin:
                    return _error(403, "only an admin key (legion keys create --admin) sees "
                                  "every key's usage")  # fmt: skip
                await self.book.flush()
                keys = [
                    {"key": totals.key_id, **totals_json(totals)}
                    for totals in await self._store.key_usages()
                ]
                return web.json_response({"keys": keys})
            totals = await self.book.totals(key.id)
            tasks = await self._store.gateway_tasks(key.id)
        except StoreError as exc:
            return _error(503, f"the store is unavailable: {exc}")
        return web.json_response(
            {"key": key.id, "name": key.name, **totals_json(totals), "tasks": tasks}
        )

    async def _health(self, request: web.Request) -> web.Response:
        """Each route's pace now; 503 while the store does not answer (every call would:
        the keys are checked there)."""
        try:
            async with asyncio.timeout(_HEALTH_TIMEOUT):
                await self._store.last_event_id()
        except (StoreError, TimeoutError) as exc:
            why = str(exc) or f"no answer within {_HEALTH_TIMEOUT:g} s"
            body = {"ok": False, "store": f"unavailable: {why}"}
            return web.json_response(body, status=503, headers=_RETRY)
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

    def _embed_route_name(self, model: str) -> str | None:
        """The route an embedding request's model names, else the ``embed`` route, else
        the default route for a request that names no model; `WireError` for a model no
        route serves where there is no ``embed`` route (the default route is a chat
        model's: the call would go to a model its caller did not name)."""
        name = self._route_name(model)
        if name is None and model and EMBED_ROUTE not in self._client.routes:
            raise WireError(
                f"no route of this gateway serves embeddings of {model!r}: start it with an "
                f"embedding route (--llm embed=openai:{model}), or name one of its routes"
            )
        return name

    def _route_name(self, model: str) -> str | None:
        """The route a request's model names (a route, or a route's model), else the
        default route (``None``)."""
        if not model:
            return None
        with contextlib.suppress(Permanent):
            return self._client.route_for(model).name
        return None


def _model_json(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "legion"}


def _step(request: web.Request, key: ApiKey, kind: str, inputs: Sequence[Any]) -> _Step | None:
    """Where the call is recorded, if its caller named a task (see the module's text);
    `WireError` for a malformed header."""
    task = request.headers.get(TASK_HEADER)
    named = request.headers.get(STEP_HEADER)
    if task is None:
        if named is not None:
            raise WireError(f"{STEP_HEADER} names a step of the task in {TASK_HEADER}: send both")
        return None
    for header, value in ((TASK_HEADER, task), (STEP_HEADER, named)):
        if value is not None and not _NAME.match(value):
            raise WireError(f"{header} must be 1 to 128 letters, digits or '_.:#-'")
    digest = hashlib.blake2b(codec.dumps(list(inputs)), digest_size=8).hexdigest()
    return _Step(key.id, task, named or f"{kind}.{digest}", f"{kind}.{digest}")


def _status(exc: _Conflict | WireError | LegionError) -> int:
    if isinstance(exc, _Conflict):
        return 409
    if isinstance(exc, StoreError):
        return 503  # the record could not be read: try again
    if isinstance(exc, ProviderAuthError):
        # The provider refused the gateway's own key, not the caller's: a 401 here would
        # send its operator to look at the legion key (an SDK raises AuthenticationError).
        return 502
    return error_status(exc)


def _check(step: _Step, found: RecordedCall) -> None:
    if found.request != step.request:
        raise _Conflict(
            f"step {step.step!r} of task {step.task!r} was recorded for another request; "
            f"a step answers one request (name another step in {STEP_HEADER})"
        )


def _answer(
    response: ChatResponse, chat: WireChat, body: bytes, model: str, step: _Step | None
) -> web.Response:
    """A whole completion: a ``chat.completion`` body, or every event of its stream. A
    call recorded under a task is rendered from its completion alone (a replay gives
    the same bytes); any other gets an id of its own and the time it was made."""
    if not chat.stream:
        fresh = openai_wire.fresh_id() if step is None else None
        completion = openai_wire.render_completion(response, model, fresh=fresh)
        return web.Response(body=completion, content_type="application/json")
    chunks = _chunks(chat, body, model, step)
    return web.Response(body=b"".join(chunks.whole(response)), headers=_EVENTS)


def _chunks(chat: WireChat, body: bytes, model: str, step: _Step | None) -> ChunkStream:
    if step is not None:
        return ChunkStream(openai_wire.stream_id(body), model, chat.include_usage)
    answer_id, created = openai_wire.fresh_id()
    return ChunkStream(answer_id, model, chat.include_usage, created)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error an OpenAI client can read: a store that fails under a request (its key
    is checked there) answers 503 with Retry-After, aiohttp's own refusals (a body past
    the limit, an unknown path) and anything unforeseen answer OpenAI's JSON error, not
    a text page."""
    try:
        return await handler(request)
    except StoreError as exc:
        return _error(503, f"the store is unavailable: {exc}")
    except BodyTimeout as exc:
        response = _error(408, str(exc))
        response.force_close()  # (what is left of the body would be read as a request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason
        if exc.status == 404:
            path = request.path if len(request.path) <= 200 else request.path[:200] + "..."
            reason = f"legion gateway serves no {request.method} {path}: it serves {_SERVED}"
        elif exc.status == 413:
            reason = f"the request body is past the {_MAX_BODY // 2**20} MiB a call may send"
        response = _error(exc.status, reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("legion gateway: %s %s failed", request.method, request.path)
        return _error(500, "internal error (logged by the gateway)")


def _failure(exc: _Conflict | WireError | LegionError) -> web.Response:
    """The error of a call as an OpenAI client reads it. One that no retry can help says
    so (``x-should-retry: false``): the SDKs retry a 429 or a 5xx otherwise, each try
    refused again (a request too large for the route's limit, sent three times). One the
    provider said when to try again passes its ``Retry-After`` on."""
    cause: BaseException | None = exc
    if isinstance(exc, ProviderAuthError) and exc.code != "insufficient_quota":
        cause = None  # (the gateway's key was refused, not the caller's: no invalid_api_key)
    response = _error(_status(exc), str(exc), cause)
    if not isinstance(exc, LegionError) or not is_retryable(exc):
        response.headers["x-should-retry"] = "false"
    elif (wait := getattr(exc, "retry_after", None)) is not None and response.status != 503:
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return response


def _error(
    status: int, message: str, cause: BaseException | None = None, *, code: str | None = None
) -> web.Response:
    """OpenAI's error body, its ``code`` (unless given) and ``param`` the provider's for
    ``cause`` (see `openai_wire.render_error`)."""
    headers: dict[str, str] | None = None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="legion"'}
    elif status == 503:
        headers = _RETRY
    return web.Response(
        status=status,
        body=openai_wire.render_error(status, message, cause, code=code),
        content_type="application/json",
        headers=headers,
    )


class BodyTimeout(Exception):
    """A request's body did not come within `IDLE_SECONDS` (answered 408)."""


async def _body(request: web.Request) -> bytes:
    try:
        async with asyncio.timeout(IDLE_SECONDS):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout(f"the request's body did not come within {IDLE_SECONDS:g} s") from None


async def serve(gateway: Gateway, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled, sharing limits and adding up usage through the store
    meanwhile (the last counts are added on the way out)."""
    await gateway.sync_shares()
    # A caller that leaves cancels its handler, and with it the provider call it made. A
    # connection that sends no whole request for `IDLE_SECONDS` (a request's headers
    # still coming, or nothing since the last answer) is closed: the runner's default
    # held them for an hour, a slow client's file descriptor with them.
    runner = web.AppRunner(
        gateway.app(),
        access_log=None,
        handler_cancellation=True,
        keepalive_timeout=IDLE_SECONDS,
        shutdown_timeout=DRAIN_SECONDS,
    )
    await runner.setup()
    loops = [
        asyncio.create_task(gateway.run_shares(), name="legion-gateway-capacity"),
        asyncio.create_task(gateway.run_usage(), name="legion-gateway-usage"),
    ]
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise cannot_listen(host, port, exc) from exc
        gateway.address = runner.addresses[0]
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()
    finally:
        # The calls in flight are answered first, while this gateway still shares its
        # routes' limits and adds its usage up once a second: with both stopped first,
        # its claim lapsed and its peers took the whole limit (429s from the provider),
        # and a second signal or a SIGKILL lost every count since the first.
        calls = len(runner.server.connections) if runner.server is not None else 0
        if calls:
            log.warning(
                "legion gateway: stopping: answering what %d connection(s) asked (up to "
                "%g s); a second signal stops at once",
                calls,
                DRAIN_SECONDS,
            )
        try:
            await runner.cleanup()
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.wait(loops)
            try:
                await gateway.book.flush()
            except StoreError as exc:
                log.warning("legion gateway: the last usage counts were not added: %s", exc)
