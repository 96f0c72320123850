"""The simulator's HTTP application and the `Simulator` that runs it in-process.

Routes:

* ``POST /v1/chat/completions``: OpenAI chat completions, plain or streamed
  (`legion.sim.openai_api`).
* ``POST /v1/messages``: Anthropic messages, plain or streamed
  (`legion.sim.anthropic_api`).
* ``GET /v1/models``: the configured models (OpenAI's format).
* OpenAI's Batch API (``/v1/files``, ``/v1/batches``) and Anthropic's Message Batches
  (``/v1/messages/batches``), with a configurable turnaround (`legion.sim.batches`).
* ``GET /stats``: counters of chat requests on both APIs (`SimStats`).
* ``POST /stats/reset``: zero the counters.

Both chat routes share one pipeline, one rate limiter, one fault injector and
one set of counters; each answers in its own API's format (errors, headers,
bodies, events), so clients and SDKs react as they would in production.
Every admitted or rate-limited answer carries the rate-limit headers of the
configured limits (see `legion.sim.limits`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web

from legion.addresses import http_url
from legion.sim.anthropic_api import AnthropicDialect
from legion.sim.batches import BatchBook
from legion.sim.behaviour import (
    Completion,
    Fault,
    FaultInjector,
    estimate_prompt_tokens,
)
from legion.sim.config import SimConfig, scheduled_fault
from legion.sim.dialect import BadRequest, Dialect, ParsedChat, StreamFrames, rate_limit_message
from legion.sim.embeddings import (
    EmbedBadRequest,
    embeddings_body,
    parse_embed_request,
)
from legion.sim.limits import Admission, Clock, RateLimiter
from legion.sim.openai_api import OpenAIDialect
from legion.sim.tools import answer

_MAX_BODY_BYTES = 32 * 1024 * 1024
# Streamed tokens falling due less than this apart are written together, so
# fast generation speeds cost a bounded number of wake-ups per stream.
_MIN_PAUSE = 0.01
# Bound on the wait for handlers when stopping; hung and stalled requests
# are released before, so this is only a safety net.
_SHUTDOWN_TIMEOUT = 5.0

_ResponseT = TypeVar("_ResponseT", bound=web.StreamResponse)


@dataclass(frozen=True, slots=True)
class SimStats:
    """A snapshot of the simulator's counters of chat requests (both APIs),
    since start or the last reset."""

    requests_total: int
    """Chat requests received, whatever their outcome."""
    by_status: dict[int, int]
    """Answers sent, by HTTP status (a hang cut short by the client has none)."""
    succeeded: int
    """Completions fully delivered."""
    rate_limited: int
    errors_injected: int
    hangs: int
    malformed: int
    stalls: int
    pings_only: int
    """Streams that sent only keep-alive comments."""
    in_flight: int
    """Admitted requests being served now."""
    max_in_flight: int
    prompt_tokens: int
    """Prompt tokens of the completions delivered."""
    completion_tokens: int
    """Completion tokens delivered."""
    by_model: dict[str, int]
    """Valid requests by model."""
    elapsed_seconds: float
    requests_per_second: float
    """``requests_total`` over ``elapsed_seconds``."""
    requests_by_second: dict[int, int] = dataclasses.field(default_factory=dict)
    """Chat requests received in each whole second since the start or the last reset."""
    by_key: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    """With ``limits_per_key``: chat requests ``admitted`` and ``rate_limited`` by API key
    (named by the key's last four characters)."""
    batches: int = 0
    """Batches created (both batch APIs; not reset by ``/stats/reset``)."""
    batch_requests: int = 0
    """Requests answered by batches (not counted in ``requests_total``)."""
    batches_cancelled: int = 0
    """Batches cancelled before they ended."""

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain data (the ``GET /stats`` body)."""
        return dataclasses.asdict(self)


class _Counters:
    """The live, mutable counters behind `SimStats`."""

    __slots__ = (
        "by_key",
        "by_model",
        "by_second",
        "by_status",
        "completion_tokens",
        "errors_injected",
        "hangs",
        "in_flight",
        "malformed",
        "max_in_flight",
        "pings_only",
        "prompt_tokens",
        "rate_limited",
        "requests_total",
        "stalls",
        "started",
        "succeeded",
    )

    def __init__(self, now: float) -> None:
        self.in_flight = 0
        self.reset(now)

    def reset(self, now: float) -> None:
        """Zero the counters; requests in flight stay counted as such."""
        self.started = now
        self.requests_total = 0
        self.by_status: dict[int, int] = {}
        self.succeeded = 0
        self.rate_limited = 0
        self.errors_injected = 0
        self.hangs = 0
        self.malformed = 0
        self.stalls = 0
        self.pings_only = 0
        self.max_in_flight = self.in_flight
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.by_model: dict[str, int] = {}
        self.by_second: dict[int, int] = {}
        self.by_key: dict[str, dict[str, int]] = {}

    def snapshot(self, now: float, batches: tuple[int, int, int] = (0, 0, 0)) -> SimStats:
        elapsed = max(0.0, now - self.started)
        return SimStats(
            requests_total=self.requests_total,
            by_status=dict(self.by_status),
            succeeded=self.succeeded,
            rate_limited=self.rate_limited,
            errors_injected=self.errors_injected,
            hangs=self.hangs,
            malformed=self.malformed,
            stalls=self.stalls,
            pings_only=self.pings_only,
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            by_model=dict(self.by_model),
            elapsed_seconds=elapsed,
            requests_per_second=self.requests_total / elapsed if elapsed > 0 else 0.0,
            requests_by_second=dict(self.by_second),
            by_key={key: dict(counts) for key, counts in self.by_key.items()},
            batches=batches[0],
            batch_requests=batches[1],
            batches_cancelled=batches[2],
        )


class _Service:
    """Request handlers and the state they share."""

    def __init__(self, config: SimConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.counters = _Counters(clock())
        self._origin = clock()
        self.closing = asyncio.Event()
        self._limiter = RateLimiter.from_config(config, clock)
        self._limiters: dict[str, RateLimiter] = {}  # by API key, with limits_per_key
        self._faults = FaultInjector(config)
        self._models = frozenset(config.models)
        self._openai = OpenAIDialect(config.api_key, tool_calls=config.tool_calls)
        anthropic = AnthropicDialect(config.api_key, tool_calls=config.tool_calls)
        self._dialects: tuple[Dialect, ...] = (self._openai, anthropic)
        self.batches = BatchBook(config, clock, self._openai, anthropic)
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "legion-sim"}
                    for model in config.models
                ],
            }
        )

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        for dialect in self._dialects:
            app.router.add_post(dialect.path, self._chat_handler(dialect))
        app.router.add_post("/v1/embeddings", self._embeddings)
        self.batches.add_routes(app)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/stats", self._get_stats)
        app.router.add_post("/stats/reset", self._reset_stats)
        return app

    # -- handlers ---------------------------------------------------------

    async def _list_models(self, request: web.Request) -> web.Response:
        denied = self._openai.authorize(request)
        if denied is not None:
            return denied
        return web.Response(body=self._models_body, content_type="application/json")

    async def _embeddings(self, request: web.Request) -> web.Response:
        """Deterministic embeddings (`legion.sim.embeddings`), admitted by the same limits."""
        counters = self.counters
        counters.requests_total += 1
        dialect = self._openai
        denied = dialect.authorize(request)
        if denied is not None:
            return self._counted(denied)
        try:
            ask = parse_embed_request(await request.read())
        except EmbedBadRequest as exc:
            return self._counted(dialect.error(400, exc.message, param=exc.param))
        except web.HTTPRequestEntityTooLarge:
            return self._counted(dialect.error(413, "The request body is too large."))
        model = ask.model
        if model not in self._models:
            return self._counted(
                dialect.error(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    code="model_not_found",
                )
            )
        counters.by_model[model] = counters.by_model.get(model, 0) + 1
        charge = ask.tokens
        limiter = self._limiter_for(request)
        admission = limiter.admit(charge)
        if not admission.allowed:
            counters.rate_limited += 1
            return self._counted(self._rejected(dialect, admission, charge))
        try:
            body = embeddings_body(ask)
        finally:
            limiter.release()
        self._delivered(charge, 0)
        return self._counted(
            web.Response(
                body=body, content_type="application/json", headers=dialect.headers(admission)
            )
        )

    async def _get_stats(self, request: web.Request) -> web.Response:
        stats = self.snapshot()
        body = orjson.dumps(stats.to_dict(), option=orjson.OPT_NON_STR_KEYS)
        return web.Response(body=body, content_type="application/json")

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.counters.reset(self.clock())
        return web.Response(status=204)

    def snapshot(self) -> SimStats:
        book = self.batches
        return self.counters.snapshot(self.clock(), (book.created, book.requests, book.cancelled))

    def _chat_handler(
        self, dialect: Dialect
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._chat(dialect, request)

        return handle

    async def _chat(self, dialect: Dialect, request: web.Request) -> web.StreamResponse:
        counters = self.counters
        counters.requests_total += 1
        second = int(self.clock() - counters.started)
        counters.by_second[second] = counters.by_second.get(second, 0) + 1
        denied = dialect.authorize(request)
        if denied is not None:
            return self._counted(denied)
        try:
            chat = dialect.parse(await request.read())
        except BadRequest as exc:
            return self._counted(dialect.error(400, exc.message, param=exc.param))
        except web.HTTPRequestEntityTooLarge:
            return self._counted(dialect.error(413, "The request body is too large."))
        if chat.model not in self._models:
            return self._counted(
                dialect.error(
                    404,
                    f"The model `{chat.model}` does not exist or you do not have access to it.",
                    code="model_not_found",
                )
            )
        counters.by_model[chat.model] = counters.by_model.get(chat.model, 0) + 1

        config = self.config
        completion = answer(
            config,
            chat.model,
            chat.messages,
            limit=chat.max_tokens,
            stop=chat.stop,
            script=chat.script,
        )
        prompt_tokens = estimate_prompt_tokens(chat.messages)
        charge = prompt_tokens + (
            chat.max_tokens if chat.max_tokens is not None else len(completion.tokens)
        )
        scheduled = scheduled_fault(config.fault_schedule, self.clock() - self._origin)
        if scheduled is not None:
            return self._counted(self._scheduled(dialect, scheduled, charge))
        limiter = self._limiter_for(request)
        cached = 0 if chat.stream else int(prompt_tokens * config.cached_prompt_share)
        admission = limiter.admit(charge, prompt_tokens - cached, len(completion.tokens))
        if not admission.allowed:
            counters.rate_limited += 1
            self._by_key(request, "rate_limited")
            return self._counted(self._rejected(dialect, admission, charge))
        if not config.rate_limit_headers:
            admission = _without_headers(admission)
        self._by_key(request, "admitted")

        counters.in_flight += 1
        if counters.in_flight > counters.max_in_flight:
            counters.max_in_flight = counters.in_flight
        try:
            return await self._serve(dialect, request, chat, completion, prompt_tokens, admission)
        finally:
            limiter.release()
            counters.in_flight -= 1

    def _limiter_for(self, request: web.Request) -> RateLimiter:
        """The limits this request counts against: its API key's own with
        ``limits_per_key``, else the one shared by every caller."""
        if not self.config.limits_per_key:
            return self._limiter
        key = _api_key(request)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = RateLimiter.from_config(self.config, self.clock)
        return limiter

    def _by_key(self, request: web.Request, what: str) -> None:
        if self.config.limits_per_key:
            counts = self.counters.by_key.setdefault(_key_label(_api_key(request)), {})
            counts[what] = counts.get(what, 0) + 1

    def _rejected(self, dialect: Dialect, admission: Admission, charge: int) -> web.Response:
        """The 429 of a request not admitted: its message says why and when to retry,
        with or without the rate-limit headers."""
        config = self.config
        message = rate_limit_message(admission, charge, config.max_concurrency)
        if not config.rate_limit_headers:
            admission = _without_headers(admission)
        return dialect.rate_limited(admission, message)

    def _scheduled(self, dialect: Dialect, status: int, charge: int) -> web.Response:
        """The answer of the fault schedule: a 429 or a server error, not admitted."""
        counters = self.counters
        if status == 429:
            counters.rate_limited += 1
            admission = Admission(False, "requests", None, None, 0.0, None, None, 0.0, 1.0)
            return self._rejected(dialect, admission, charge)
        counters.errors_injected += 1
        return dialect.error(status, "The server is unavailable (scheduled by the simulator).")

    # -- serving an admitted request ------------------------------------------

    async def _serve(
        self,
        dialect: Dialect,
        request: web.Request,
        chat: ParsedChat,
        completion: Completion,
        prompt_tokens: int,
        admission: Admission,
    ) -> web.StreamResponse:
        plan = self._faults.plan(chat.stream)
        headers = dialect.headers(admission)
        counters = self.counters
        if plan.fault is Fault.HANG:
            counters.hangs += 1
            if await self._closing_within(self.config.hang_seconds):
                return self._counted(
                    dialect.error(503, "The simulator is shutting down.", headers=headers)
                )
            return self._counted(
                dialect.error(504, "The simulator gave up on a hung request.", headers=headers)
            )
        if plan.fault is Fault.ERROR:
            counters.errors_injected += 1
            if plan.latency > 0:
                await asyncio.sleep(plan.latency)
            return self._counted(
                dialect.error(
                    plan.error_status,
                    "The server had an error while processing your request (injected by the "
                    "simulator).",
                    headers=headers,
                )
            )
        if chat.stream:
            frames = dialect.frames(chat.model, prompt_tokens, completion.tool_call)
            return await self._stream(
                request, chat, completion, prompt_tokens, frames, plan.fault, plan.latency, headers
            )

        delay = plan.latency + self._faults.generation_time(len(completion.tokens))
        if delay > 0:
            await asyncio.sleep(delay)
        cached = int(prompt_tokens * self.config.cached_prompt_share)
        body = dialect.completion(chat.model, completion, prompt_tokens, cached)
        padding = self.config.padding_bytes
        if padding:
            body = b'{"padding":"' + b"x" * padding + b'",' + body[1:]
        if plan.fault is Fault.MALFORMED:
            counters.malformed += 1
            body = body[: len(body) // 2]
        else:
            self._delivered(prompt_tokens, len(completion.tokens))
        return self._counted(
            web.Response(body=body, content_type="application/json", headers=headers)
        )

    async def _stream(
        self,
        request: web.Request,
        chat: ParsedChat,
        completion: Completion,
        prompt_tokens: int,
        frames: StreamFrames,
        fault: Fault,
        latency: float,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """Stream the completion as server-sent events.

        A stall sends the first half of the tokens and then nothing until the
        client leaves or the simulator stops (at most ``hang_seconds``); a
        ping-only stream sends keep-alive comments and nothing else as long; a
        malformed stream sends half of the tokens, then an event whose data
        is not valid JSON and whatever ends a stream in the dialect.
        """
        if latency > 0:
            await asyncio.sleep(latency)
        response = web.StreamResponse(headers=headers)
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        self._counted(response)
        tokens = completion.tokens
        counters = self.counters
        try:
            if fault is Fault.PING:
                counters.pings_only += 1
                await self._ping(response)
                return response
            await response.write(frames.start())
            padding = self.config.padding_bytes
            if padding:
                await response.write(frames.padding(padding))
            if fault is Fault.STALL:
                counters.stalls += 1
                await self._send_tokens(response, frames, tokens[: len(tokens) // 2])
                await self._closing_within(self.config.hang_seconds)
                return response
            if fault is Fault.MALFORMED:
                counters.malformed += 1
                await self._send_tokens(response, frames, tokens[: len(tokens) // 2])
                await response.write(frames.malformed_end())
                return response
            await self._send_tokens(response, frames, tokens)
            await response.write(
                frames.end(completion.finish_reason, len(tokens), chat.include_usage)
            )
        except ConnectionResetError:
            return response  # the client left; nothing more to send
        self._delivered(prompt_tokens, len(tokens))
        return response

    async def _send_tokens(
        self, response: web.StreamResponse, frames: StreamFrames, tokens: tuple[str, ...]
    ) -> None:
        """Write one event per token, paced at the configured generation
        speed: token ``i`` (from 0) goes out ``(i + 1) / tokens_per_second``
        after the first event, or up to 10 ms later when tokens come faster
        than that and are batched."""
        interval = self._faults.token_interval
        if not interval:
            if tokens:
                await response.write(b"".join([frames.content(token) for token in tokens]))
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        total = len(tokens)
        while sent < total:
            elapsed = loop.time() - start
            # The tolerance absorbs timers firing a hair before their deadline.
            due = min(total, int(elapsed / interval + 1e-6))
            if due > sent:
                await response.write(
                    b"".join([frames.content(token) for token in tokens[sent:due]])
                )
                sent = due
            if sent < total:
                await asyncio.sleep(max((sent + 1) * interval - elapsed, _MIN_PAUSE))

    async def _ping(self, response: web.StreamResponse) -> None:
        """Send only keep-alive comments until the client leaves or the simulator
        stops (at most ``hang_seconds``)."""
        config = self.config
        deadline = asyncio.get_running_loop().time() + config.hang_seconds
        while not await self._closing_within(config.ping_interval):
            await response.write(b": ping\n\n")
            if asyncio.get_running_loop().time() >= deadline:
                return

    # -- helpers ----------------------------------------------------------------

    async def _closing_within(self, seconds: float) -> bool:
        """Wait until the simulator stops (``True``) or ``seconds`` pass."""
        try:
            async with asyncio.timeout(seconds):
                await self.closing.wait()
        except TimeoutError:
            return False
        return True

    def _counted(self, response: _ResponseT) -> _ResponseT:
        by_status = self.counters.by_status
        by_status[response.status] = by_status.get(response.status, 0) + 1
        return response

    def _delivered(self, prompt_tokens: int, completion_tokens: int) -> None:
        counters = self.counters
        counters.succeeded += 1
        counters.prompt_tokens += prompt_tokens
        counters.completion_tokens += completion_tokens


def _without_headers(admission: Admission) -> Admission:
    """``admission`` as a provider that sends no rate-limit headers reports it."""
    return admission._replace(limit_requests=None, limit_tokens=None, retry_after=None)


class Simulator:
    """An in-process simulator listening on ``host:port`` (an ephemeral
    loopback port by default).

    Use it as an async context manager::

        async with Simulator(SimConfig(rpm=60)) as sim:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x")

    Stopping releases hung and stalled requests (hung ones get a 503) before
    closing connections.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config if config is not None else SimConfig()
        self._host = host
        self._port = port
        self._clock = clock
        self._service: _Service | None = None
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    async def start(self) -> None:
        """Start listening; the port is known once this returns."""
        if self._service is not None:
            raise RuntimeError("a Simulator can only be started once")
        service = _Service(self.config, self._clock)
        runner = web.AppRunner(
            service.build_app(),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        port = runner.addresses[0][1]
        self._url = http_url(self._host, port)
        self._service = service
        self._runner = runner

    async def stop(self) -> None:
        """Release hung requests and stop serving. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None or self._service is None:
            return
        self._service.closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:8000``."""
        if self._url is None:
            raise RuntimeError("the simulator is not started")
        return self._url

    @property
    def base_url(self) -> str:
        """The OpenAI base URL to give clients, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"{self.url}/v1"

    def stats(self) -> SimStats:
        """A snapshot of the counters (also valid after `stop`)."""
        return self._started_service().snapshot()

    def reset_stats(self) -> None:
        """Zero the counters and restart the requests-per-second clock."""
        self._started_service().counters.reset(self._clock())

    def _started_service(self) -> _Service:
        if self._service is None:
            raise RuntimeError("the simulator is not started")
        return self._service


async def serve_simulator(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    on_ready: Callable[[Simulator], None] | None = None,
) -> None:
    """Serve until cancelled, then stop cleanly. ``on_ready`` is called with
    the started `Simulator` (to print its URL, for instance)."""
    async with Simulator(config, host=host, port=port) as simulator:
        if on_ready is not None:
            on_ready(simulator)
        await asyncio.get_running_loop().create_future()


def _api_key(request: web.Request) -> str:
    """The key a request presents (OpenAI's bearer token or Anthropic's x-api-key)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:]
    return request.headers.get("x-api-key", "")


def _key_label(key: str) -> str:
    return f"...{key[-4:]}" if key else "(none)"
