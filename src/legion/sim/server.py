"""The simulator's HTTP application (an OpenAI-compatible API) and the
`Simulator` that runs it in-process.

Routes:

* ``POST /v1/chat/completions``: chat completions, plain or streamed.
* ``GET /v1/models``: the configured models.
* ``GET /stats``: counters of chat completion requests (`SimStats`).
* ``POST /stats/reset``: zero the counters.

Errors use OpenAI's body, ``{"error": {"message", "type", "param",
"code"}}``, so clients and SDKs react to them as they would in production.
Every admitted or rate-limited answer carries the ``x-ratelimit-*`` headers
of the configured limits (see `legion.sim.limits`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import orjson
from aiohttp import web

from legion.sim.behaviour import (
    Completion,
    Fault,
    FaultInjector,
    FinishReason,
    estimate_prompt_tokens,
    generate_completion,
)
from legion.sim.config import SimConfig
from legion.sim.limits import Admission, Clock, RateLimiter, format_reset

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_MAX_STOP_SEQUENCES = 4
_MAX_BODY_BYTES = 32 * 1024 * 1024
# Streamed tokens falling due less than this apart are written together, so
# fast generation speeds cost a bounded number of wake-ups per stream.
_MIN_PAUSE = 0.01
# Bound on the wait for handlers when stopping; hung and stalled requests
# are released before, so this is only a safety net.
_SHUTDOWN_TIMEOUT = 5.0
_DONE = b"data: [DONE]\n\n"

_ResponseT = TypeVar("_ResponseT", bound=web.StreamResponse)


@dataclass(frozen=True, slots=True)
class SimStats:
    """A snapshot of the simulator's counters of chat completion requests,
    since start or the last reset."""

    requests_total: int
    """Chat completion requests received, whatever their outcome."""
    by_status: dict[int, int]
    """Answers sent, by HTTP status (a hang cut short by the client has none)."""
    succeeded: int
    """Completions fully delivered."""
    rate_limited: int
    errors_injected: int
    hangs: int
    malformed: int
    stalls: int
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

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain data (the ``GET /stats`` body)."""
        return dataclasses.asdict(self)


class _Counters:
    """The live, mutable counters behind `SimStats`."""

    __slots__ = (
        "by_model",
        "by_status",
        "completion_tokens",
        "errors_injected",
        "hangs",
        "in_flight",
        "malformed",
        "max_in_flight",
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
        self.max_in_flight = self.in_flight
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.by_model: dict[str, int] = {}

    def snapshot(self, now: float) -> SimStats:
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
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            by_model=dict(self.by_model),
            elapsed_seconds=elapsed,
            requests_per_second=self.requests_total / elapsed if elapsed > 0 else 0.0,
        )


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _ChatRequest(NamedTuple):
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def _parse_chat_request(raw: bytes) -> _ChatRequest:
    """Validate a chat completions body; raise `_BadRequest` if invalid.

    Parameters the simulator has no use for (temperature, tools, top_p...)
    are accepted and ignored, as long as they are well-formed where checked.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _BadRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON."
        ) from None
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("You must provide a model parameter.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array.", "messages")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _ROLES:
            raise _BadRequest(
                f"'messages[{index}]' must be an object with a valid 'role'.",
                f"messages[{index}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _BadRequest(
                f"'messages[{index}].content' must be a string or an array of parts.",
                f"messages[{index}].content",
            )
    max_tokens = _optional_positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_positive_int(body, "max_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean.", "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(
            options.get("include_usage", False), bool
        ):
            raise _BadRequest(
                "'stream_options' must be an object with a boolean 'include_usage'.",
                "stream_options",
            )
        include_usage = options.get("include_usage", False)
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 2
    ):
        raise _BadRequest("'temperature' must be a number between 0 and 2.", "temperature")
    n = body.get("n")
    if n is not None and n != 1:
        raise _BadRequest("The simulator only supports n=1.", "n")
    return _ChatRequest(
        model, messages, max_tokens, _parse_stop(body.get("stop")), bool(stream), include_usage
    )


def _optional_positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _BadRequest(f"'{name}' must be a positive integer.", name)
    return value


def _parse_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if (
        isinstance(stop, list)
        and len(stop) <= _MAX_STOP_SEQUENCES
        and all(isinstance(item, str) for item in stop)
    ):
        return tuple(stop)
    raise _BadRequest(
        f"'stop' must be a string or an array of at most {_MAX_STOP_SEQUENCES} strings.", "stop"
    )


def _error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _rate_limited_response(
    admission: Admission, charge: int, max_concurrency: int | None
) -> web.Response:
    reason = admission.reason
    retry = format_reset(admission.retry_after or 0.0)
    error_type = "tokens" if reason in ("tokens", "too_large") else "requests"
    if reason == "requests":
        message = (
            f"Rate limit reached for requests per min (RPM): Limit {admission.limit_requests}, "
            f"Requested 1. Please try again in {retry}."
        )
    elif reason == "tokens":
        message = (
            f"Rate limit reached for tokens per min (TPM): Limit {admission.limit_tokens}, "
            f"Requested {charge}. Please try again in {retry}."
        )
    elif reason == "too_large":
        message = (
            f"Request too large for tokens per min (TPM): Limit {admission.limit_tokens}, "
            f"Requested {charge}. The input or output tokens must be reduced in order to run "
            "successfully."
        )
    else:
        message = (
            f"Too many concurrent requests: Limit {max_concurrency}. Please try again in {retry}."
        )
    return _error_response(
        429, message, error_type, code="rate_limit_exceeded", headers=admission.headers()
    )


class _ChunkFrames:
    """Pre-serialised pieces of the ``chat.completion.chunk`` events of one
    stream, so each token costs one small JSON string encoding."""

    __slots__ = ("_head", "_prefix")

    _SUFFIX = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._head = (
            b'data: {"id":'
            + orjson.dumps(completion_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
        )
        self._prefix = self._head + b',"choices":[{"index":0,"delta":'

    def role(self) -> bytes:
        return self._prefix + b'{"role":"assistant","content":""' + self._SUFFIX

    def content(self, token: str) -> bytes:
        return self._prefix + b'{"content":' + orjson.dumps(token) + self._SUFFIX

    def finish(self, reason: FinishReason) -> bytes:
        return (
            self._prefix + b'{},"logprobs":null,"finish_reason":"' + reason.encode() + b'"}]}\n\n'
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return self._head + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"

    def malformed(self) -> bytes:
        """An event whose data stops in the middle of the JSON object."""
        return self._prefix + b'{"content":\n\n'


class _Service:
    """Request handlers and the state they share."""

    def __init__(self, config: SimConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.counters = _Counters(clock())
        self.closing = asyncio.Event()
        self._limiter = RateLimiter.from_config(config, clock)
        self._faults = FaultInjector(config)
        self._models = frozenset(config.models)
        self._expected_auth = (
            f"Bearer {config.api_key}".encode() if config.api_key is not None else None
        )
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "legion-sim"}
                    for model in config.models
                ],
            }
        )
        self._id_prefix = f"chatcmpl-sim{secrets.token_hex(4)}"
        self._ids = itertools.count(1)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/stats", self._get_stats)
        app.router.add_post("/stats/reset", self._reset_stats)
        return app

    # -- handlers ---------------------------------------------------------

    async def _list_models(self, request: web.Request) -> web.Response:
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        return web.Response(body=self._models_body, content_type="application/json")

    async def _get_stats(self, request: web.Request) -> web.Response:
        stats = self.counters.snapshot(self.clock())
        body = orjson.dumps(stats.to_dict(), option=orjson.OPT_NON_STR_KEYS)
        return web.Response(body=body, content_type="application/json")

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.counters.reset(self.clock())
        return web.Response(status=204)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        counters = self.counters
        counters.requests_total += 1
        denied = self._check_auth(request)
        if denied is not None:
            return self._counted(denied)
        try:
            chat = _parse_chat_request(await request.read())
        except _BadRequest as exc:
            return self._counted(
                _error_response(400, exc.message, "invalid_request_error", param=exc.param)
            )
        except web.HTTPRequestEntityTooLarge:
            return self._counted(
                _error_response(413, "The request body is too large.", "invalid_request_error")
            )
        if chat.model not in self._models:
            return self._counted(
                _error_response(
                    404,
                    f"The model `{chat.model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    code="model_not_found",
                )
            )
        counters.by_model[chat.model] = counters.by_model.get(chat.model, 0) + 1

        config = self.config
        completion = generate_completion(
            chat.model,
            chat.messages,
            min_tokens=config.min_output_tokens,
            max_tokens=config.max_output_tokens,
            limit=chat.max_tokens,
            stop=chat.stop,
        )
        prompt_tokens = estimate_prompt_tokens(chat.messages)
        charge = prompt_tokens + (
            chat.max_tokens if chat.max_tokens is not None else len(completion.tokens)
        )
        admission = self._limiter.admit(charge)
        if not admission.allowed:
            counters.rate_limited += 1
            return self._counted(_rate_limited_response(admission, charge, config.max_concurrency))

        counters.in_flight += 1
        if counters.in_flight > counters.max_in_flight:
            counters.max_in_flight = counters.in_flight
        try:
            return await self._serve(request, chat, completion, prompt_tokens, admission)
        finally:
            self._limiter.release()
            counters.in_flight -= 1

    # -- serving an admitted request ------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        chat: _ChatRequest,
        completion: Completion,
        prompt_tokens: int,
        admission: Admission,
    ) -> web.StreamResponse:
        plan = self._faults.plan(chat.stream)
        headers = admission.headers()
        counters = self.counters
        if plan.fault is Fault.HANG:
            counters.hangs += 1
            if await self._closing_within(self.config.hang_seconds):
                return self._counted(
                    _error_response(
                        503, "The simulator is shutting down.", "server_error", headers=headers
                    )
                )
            return self._counted(
                _error_response(
                    504, "The simulator gave up on a hung request.", "server_error", headers=headers
                )
            )
        if plan.fault is Fault.ERROR:
            counters.errors_injected += 1
            if plan.latency > 0:
                await asyncio.sleep(plan.latency)
            return self._counted(
                _error_response(
                    plan.error_status,
                    "The server had an error while processing your request (injected by the "
                    "simulator).",
                    "server_error",
                    headers=headers,
                )
            )
        if chat.stream:
            return await self._stream(
                request, chat, completion, prompt_tokens, plan.fault, plan.latency, headers
            )

        delay = plan.latency + self._faults.generation_time(len(completion.tokens))
        if delay > 0:
            await asyncio.sleep(delay)
        body = orjson.dumps(self._completion_object(chat.model, completion, prompt_tokens))
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
        chat: _ChatRequest,
        completion: Completion,
        prompt_tokens: int,
        fault: Fault,
        latency: float,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """Stream the completion as server-sent events.

        A stall sends the first half of the tokens and then nothing until the
        client leaves or the simulator stops (at most ``hang_seconds``); a
        malformed stream sends half of the tokens, an event whose data is not
        valid JSON, and ``[DONE]``.
        """
        if latency > 0:
            await asyncio.sleep(latency)
        response = web.StreamResponse(headers=headers)
        response.content_type = "text/event-stream"
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        self._counted(response)
        frames = _ChunkFrames(self._new_id(), int(time.time()), chat.model)
        tokens = completion.tokens
        counters = self.counters
        try:
            await response.write(frames.role())
            if fault is Fault.STALL:
                counters.stalls += 1
                await self._send_tokens(response, frames, tokens[: len(tokens) // 2])
                await self._closing_within(self.config.hang_seconds)
                return response
            if fault is Fault.MALFORMED:
                counters.malformed += 1
                await self._send_tokens(response, frames, tokens[: len(tokens) // 2])
                await response.write(frames.malformed() + _DONE)
                return response
            await self._send_tokens(response, frames, tokens)
            tail = frames.finish(completion.finish_reason)
            if chat.include_usage:
                tail += frames.usage(prompt_tokens, len(tokens))
            await response.write(tail + _DONE)
        except ConnectionResetError:
            return response  # the client left; nothing more to send
        self._delivered(prompt_tokens, len(tokens))
        return response

    async def _send_tokens(
        self, response: web.StreamResponse, frames: _ChunkFrames, tokens: tuple[str, ...]
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

    # -- helpers ----------------------------------------------------------------

    def _check_auth(self, request: web.Request) -> web.Response | None:
        """``None`` if the request may proceed, else the 401 to answer."""
        expected = self._expected_auth
        if expected is None:
            return None
        header = request.headers.get("Authorization")
        if header is None:
            return _error_response(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        if hmac.compare_digest(header.encode("utf-8", "surrogateescape"), expected):
            return None
        return _error_response(
            401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"
        )

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

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def _completion_object(
        self, model: str, completion: Completion, prompt_tokens: int
    ) -> dict[str, Any]:
        completion_tokens = len(completion.tokens)
        return {
            "id": self._new_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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
        self._url = f"http://{_url_host(self._host)}:{port}"
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
        return self._started_service().counters.snapshot(self._clock())

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
