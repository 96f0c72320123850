"""HTTP for the providers: one aiohttp session per provider, timeouts, and the
one place where HTTP statuses and transport failures become legion errors.

Timeouts (each past its bound: `ProviderUnavailable`, which the client retries):

* ``timeout`` (per call) bounds everything: connecting, waiting, reading the
  whole answer or stream.
* ``ttfb_timeout`` bounds the wait for the answer's headers (time to first
  byte), shorter than the whole: a call that hangs before answering frees
  its slot after that long, not after the call's whole timeout. Unset, it
  is 30 s for streamed calls (a stream's headers come before the first
  token) and none for plain ones, whose headers come only with the whole
  completion: there a hang looks like a long answer, and only a route that
  knows its answers are quick should set it.
* ``stream_idle_timeout`` bounds each silence on a stream, counted from the
  headers and from each line that carries data. Keep-alive comments
  (``: ping``) do not count: a stream that only pings fails after that long.

Sizes: ``max_response_bytes`` bounds an answer's body (a stream's too) and
``max_event_bytes`` one event of a stream, both checked while reading: the
read stops at the limit with `ResponseTooLarge`, a permanent error (the same
request would bring the same answer back; retrying would pay for it again).

Statuses: 429 is `RateLimited` (unless the provider says a retry cannot help,
``x-should-retry: false``, or the account is out of quota); 408, 409 and 5xx
are `ProviderUnavailable`; 401 and 403 `ProviderAuthError`; other answers
that are not a success are `ProviderRejected`. Nothing here retries.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from legion.errors import (
    ConnectionRefused,
    EndpointNotFound,
    HostNotFound,
    LegionError,
    MalformedResponse,
    ProviderAuthError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    ResponseTooLarge,
)
from legion.llm.headers import parse_rate_limit_headers
from legion.llm.provider import ChatResult
from legion.llm.sse import EventTooLarge, ServerSentEvent, SSEDecoder
from legion.llm.types import ChatResponse, RateLimitInfo

if TYPE_CHECKING:
    # aiohttp is imported where a session is opened or its errors caught: importing it
    # costs a CLI command or `import legion.llm` some 0.1 s, and most never make a call.
    import aiohttp
    from multidict import CIMultiDictProxy

R = TypeVar("R")

_MAX_DETAIL_CHARS = 500
_MAX_ERROR_BODY = 64 * 1024  # what is read of an error answer: enough for its message
DEFAULT_TTFB_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024
_RETRYABLE_CLIENT_STATUSES = frozenset({408, 409})


class StreamAssembler(Protocol):
    """Builds a `ChatResponse` from the events of one stream."""

    @property
    def done(self) -> bool:
        """Whether the event that ends a complete stream has been seen."""
        ...

    @property
    def finished(self) -> bool:
        """Whether the answer is whole without its final event: a stream that ends
        cleanly after its finish reason (a server that sends no ``[DONE]``)."""
        ...

    def add(self, event: ServerSentEvent) -> None:
        """Take the next event; raise `MalformedResponse` if it cannot be read,
        or a provider error if the event reports one."""
        ...

    def response(self) -> ChatResponse:
        """The assembled completion (once `done`)."""
        ...


class HttpTransport:
    """POSTs JSON to one provider over a shared, sized connection pool.

    The session is opened on first use (inside the event loop) and closed by
    `aclose`.
    """

    def __init__(
        self,
        *,
        provider: str,
        headers: Mapping[str, str],
        max_connections: int,
        stream_idle_timeout: float,
        auth_hint: str,
        ttfb_timeout: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if max_connections < 0:
            raise ValueError("max_connections must be >= 0 (0: unlimited)")
        if stream_idle_timeout <= 0 or (ttfb_timeout is not None and ttfb_timeout <= 0):
            raise ValueError("stream_idle_timeout and ttfb_timeout must be > 0")
        if max_response_bytes < 1 or max_event_bytes < 1:
            raise ValueError("max_response_bytes and max_event_bytes must be >= 1")
        # aiohttp loads now, as the client is built, not in the first call: there, its
        # ~0.2 s blocked the loop inside that call's agent (and was reported as its own).
        import aiohttp  # noqa: F401

        self.provider = provider
        self._headers = {"Content-Type": "application/json", **headers}
        self._max_connections = max_connections
        self._idle_timeout = stream_idle_timeout
        self._stream_ttfb = DEFAULT_TTFB_TIMEOUT if ttfb_timeout is None else ttfb_timeout
        self._plain_ttfb = ttfb_timeout
        self._max_response = max_response_bytes
        self._max_event = max_event_bytes
        self._auth_hint = auth_hint
        self._secrets = secrets_of(headers)
        self._session: aiohttp.ClientSession | None = None

    async def complete(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        total: float,
        parse: Callable[[bytes], ChatResponse],
    ) -> ChatResult:
        """POST ``payload`` and ``parse`` the JSON answer, in at most ``total`` seconds."""

        async def read(response: aiohttp.ClientResponse) -> ChatResponse:
            return parse(await self._read_body(response, self._max_response, error=False))

        return ChatResult(*await self._post(url, payload, total, self._plain_ttfb, read))

    async def post_json(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        total: float,
        parse: Callable[[bytes], R],
    ) -> tuple[R, RateLimitInfo]:
        """POST ``payload`` and ``parse`` the answer (any endpoint, e.g. embeddings)."""

        async def read(response: aiohttp.ClientResponse) -> R:
            return parse(await self._read_body(response, self._max_response, error=False))

        return await self._post(url, payload, total, self._plain_ttfb, read)

    async def stream(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        total: float,
        assembler: StreamAssembler,
        whole: Callable[[bytes], ChatResponse] | None = None,
    ) -> ChatResult:
        """POST ``payload`` and feed the answer's events to ``assembler``, in at
        most ``total`` seconds; an answer in JSON rather than a stream (a server that
        ignores ``stream``) is read by ``whole``, as a plain call's is.

        The stream is read to its end so the connection can be reused; a
        failure after the final event no longer matters.
        """

        import aiohttp

        async def read(response: aiohttp.ClientResponse) -> ChatResponse:
            if whole is not None and response.content_type == "application/json":
                return whole(await self._read_body(response, self._max_response, error=False))
            decoder = SSEDecoder(max_event_bytes=self._max_event)
            loop = asyncio.get_running_loop()
            idle = self._idle_timeout
            received = seen = 0
            try:
                async with asyncio.timeout(idle) as silence:
                    async for chunk in response.content.iter_any():
                        received += len(chunk)
                        if received > self._max_response:
                            raise self._too_large(f"a stream of over {self._max_response:,} bytes")
                        for event in decoder.feed(chunk):
                            if not assembler.done:
                                assembler.add(event)
                        if decoder.data_bytes != seen:  # data, not only keep-alive comments
                            seen = decoder.data_bytes
                            silence.reschedule(loop.time() + idle)
            except EventTooLarge as exc:
                raise self._too_large(str(exc)) from exc
            except TimeoutError as exc:
                if assembler.done:
                    return assembler.response()
                raise ProviderUnavailable(
                    f"{self.provider} sent nothing for {idle:g} s (stream idle timeout; "
                    "keep-alive comments do not count)",
                    provider=self.provider,
                ) from exc
            except (aiohttp.ClientError, OSError):
                if not assembler.done:
                    raise
            if not assembler.done and not assembler.finished:
                raise ProviderUnavailable(
                    f"{self.provider} ended the stream before its final event",
                    provider=self.provider,
                )
            return assembler.response()

        return ChatResult(*await self._post(url, payload, total, self._stream_ttfb, read))

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=aiohttp.ClientTimeout()
        )
        return self._session

    async def _post(
        self,
        url: str,
        payload: Mapping[str, Any],
        total: float,
        ttfb: float | None,
        read: Callable[[aiohttp.ClientResponse], Awaitable[R]],
    ) -> tuple[R, RateLimitInfo]:
        import aiohttp

        session = self._session or self._open()
        body = orjson.dumps(payload)
        provider = self.provider
        waiting_headers = True
        try:
            async with asyncio.timeout(total):
                async with asyncio.timeout(ttfb):
                    response = await session.post(url, data=body, allow_redirects=False)
                waiting_headers = False
                async with response:
                    rate_limits = parse_rate_limit_headers(response.headers)
                    if response.status >= 300:
                        raise error_for_status(
                            provider,
                            response.status,
                            await self._read_body(response, _MAX_ERROR_BODY, error=True),
                            response.headers,
                            rate_limits,
                            auth_hint=self._auth_hint,
                            url=url,
                        )
                    return await read(response), rate_limits
        except TimeoutError as exc:
            if waiting_headers and ttfb is not None and ttfb < total:
                raise ProviderUnavailable(
                    f"{provider} sent no answer within {ttfb:g} s (time-to-first-byte timeout)",
                    provider=provider,
                ) from exc
            raise ProviderUnavailable(
                f"{provider} did not answer within {total:g} s", provider=provider
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise ProviderRejected(
                f"{provider}: invalid URL {url!r}; check the base URL", provider=provider
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            cause = getattr(exc, "os_error", None) or exc
            failed = (
                HostNotFound  # (aiohttp's aiodns resolver raises a plain OSError in it)
                if isinstance(cause, socket.gaierror)
                or isinstance(exc, aiohttp.ClientConnectorDNSError)
                else ConnectionRefused
                if isinstance(cause, ConnectionRefusedError)
                else ProviderUnavailable
            )
            raise failed(
                f"{provider} connection failed: {type(exc).__name__}: {exc}", provider=provider
            ) from exc

    async def _read_body(
        self, response: aiohttp.ClientResponse, limit: int, *, error: bool
    ) -> bytes:
        """The body of ``response``, read as it comes and refused past ``limit``
        bytes (an error answer is cut at ``limit`` instead: its start says enough), the
        keys this transport sends scrubbed from it (`scrub`: an error in a 200's body
        too)."""
        return scrub(await self._read_whole(response, limit, error=error), self._secrets)

    async def _read_whole(
        self, response: aiohttp.ClientResponse, limit: int, *, error: bool
    ) -> bytes:
        length = response.content_length
        if length is not None and length <= limit:
            return await response.read()  # the common case: its length said up front
        if length is not None and not error:
            raise self._too_large(f"an answer of {length:,} bytes")
        parts: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                if error:
                    parts.append(chunk[: len(chunk) - (size - limit)])
                    break
                raise self._too_large(f"an answer of over {limit:,} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def _too_large(self, what: str) -> ResponseTooLarge:
        return ResponseTooLarge(
            f"{self.provider} sent {what}, over the route's limit "
            f"(max_response_bytes {self._max_response:,}, max_event_bytes "
            f"{self._max_event:,}); reading stopped there. Raise the limit on the route if "
            "such answers are expected",
            provider=self.provider,
            status=200,
        )


_AUTH_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})
"""Headers that carry a provider's key."""


def secrets_of(headers: Mapping[str, str]) -> tuple[bytes, ...]:
    """The keys in ``headers`` (``Bearer KEY``: the header's value and KEY alone), longest
    first, to be scrubbed from what a provider answers."""
    found: set[str] = set()
    for name, value in headers.items():
        if name.lower() in _AUTH_HEADERS and value:
            found.add(value)
            found.add(value.partition(" ")[2])
    return tuple(sorted((k.encode() for k in found if len(k) >= 8), key=len, reverse=True))


def scrub(body: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """``body`` with each of ``secrets`` replaced by ``***``: a provider (or a proxy) that
    quotes the key it was sent in its error ("Incorrect API key provided: sk-...") put it
    in the task's error, the output, the store, a tenant's API answers, the gateway's
    answers to its callers and the spans."""
    for secret in secrets:
        body = body.replace(secret, b"***")
    return body


def error_for_status(
    provider: str,
    status: int,
    body: bytes,
    headers: CIMultiDictProxy[str] | Mapping[str, str],
    rate_limits: RateLimitInfo,
    *,
    auth_hint: str,
    url: str = "",
) -> LegionError:
    """The legion error for an answer with HTTP ``status`` that is not a
    success, its message quoting what the provider said in ``body``; ``url``: where the
    request went (named when nothing serves it)."""
    detail, code = error_detail(body)
    said = error_fields(body)  # (what an OpenAI client reads: passed on by the gateway)
    if status in (404, 405) and url and not _is_json(body):
        return EndpointNotFound(
            f"{provider}: nothing serves POST {url} ({status}: {detail}); check the route's "
            "base URL (its path comes before /chat/completions, or /v1/messages on "
            "anthropic routes)",
            provider=provider,
            status=status,
            **said,
        )
    if status == 429:
        if code == "insufficient_quota":
            return ProviderAuthError(
                f"{provider} says the account is out of quota (429): {detail.rstrip('.')}. "
                "Check the plan and billing of this API key.",
                provider=provider,
                status=status,
                **said,
            )
        if headers.get("x-should-retry", "").lower() == "false":
            return ProviderRejected(
                f"{provider} rejected the request and says retrying cannot help (429): {detail}",
                provider=provider,
                status=status,
                **said,
            )
        return RateLimited(
            f"{provider} rate limit hit (429): {detail}",
            provider=provider,
            status=status,
            retry_after=rate_limits.retry_after,
            **said,
        )
    if status >= 500 or status in _RETRYABLE_CLIENT_STATUSES:
        return ProviderUnavailable(
            f"{provider} failed ({status}): {detail}",
            provider=provider,
            status=status,
            retry_after=rate_limits.retry_after,
            **said,
        )
    if status == 401:
        return ProviderAuthError(
            f"{provider} rejected the API key (401): {detail.rstrip('.')}. {auth_hint}",
            provider=provider,
            status=status,
            **said,
        )
    if status == 403:
        return ProviderAuthError(
            f"{provider} denied access (403): {detail.rstrip('.')}. {auth_hint}",
            provider=provider,
            status=status,
            **said,
        )
    if status < 400:
        return ProviderRejected(
            f"{provider} answered with a redirect ({status}) to "
            f"{headers.get('location', '?')}; check the base URL",
            provider=provider,
            status=status,
            **said,
        )
    return ProviderRejected(
        f"{provider} rejected the request ({status}): {detail}",
        provider=provider,
        status=status,
        **said,
    )


def error_body(error: Any, provider: str) -> ProviderUnavailable:
    """The error of a ``200`` whose body is an error, not an answer: a gateway in front of
    the provider (OpenRouter among them) says a passing upstream failure this way.
    Retried as a failing provider's; what it said is kept."""
    message = error.get("message") if isinstance(error, Mapping) else error
    return ProviderUnavailable(
        f"{provider} answered 200 with an error: {str(message)[:500]}", provider=provider
    )


def decode_json(data: bytes | str, provider: str) -> Any:
    """Parse a JSON body or event; `MalformedResponse` if it is not a JSON object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse(
            f"{provider} sent invalid JSON: {exc}", provider=provider, status=200
        ) from exc
    if not isinstance(value, dict):
        raise MalformedResponse(
            f"{provider} sent JSON that is not an object: {type(value).__name__}",
            provider=provider,
            status=200,
        )
    return value


def error_detail(body: bytes) -> tuple[str, str | None]:
    """What an error body says, and its error code if it gives one.

    The message is ``error.message`` (OpenAI, Anthropic), an ``error`` or
    ``message`` string (vLLM, Ollama...), else the body's text; the code is
    ``error.code`` or ``error.type``.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code = error.get("code") or error.get("type")
            return _clip(error["message"]), code if isinstance(code, str) else None
        if isinstance(error, str):
            return _clip(error), None
        if isinstance(data.get("message"), str):
            return _clip(data["message"]), None
    text = body.decode("utf-8", "replace").strip()
    return (_clip(text) if text else "(empty body)"), None


def error_fields(body: bytes) -> dict[str, str]:
    """OpenAI's ``error.code`` and ``error.param`` in an error body, those that are
    strings (``{"code": "context_length_exceeded", "param": "messages"}``): what a
    client decides on (trim the history, fix a field), kept with legion's error."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return {}
    return {
        name: value[:_MAX_DETAIL_CHARS]
        for name in ("code", "param")
        if isinstance(value := error.get(name), str) and value
    }


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_CHARS else text[:_MAX_DETAIL_CHARS] + "..."
