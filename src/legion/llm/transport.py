"""HTTP for the providers: one aiohttp session per provider, timeouts, and the
one place where HTTP statuses and transport failures become legion errors.

Timeouts:

* ``timeout`` (per call) bounds everything: connecting, waiting, reading the
  whole answer or stream. Past it, `ProviderUnavailable`.
* ``stream_idle_timeout`` bounds each silence on a stream: before its first
  byte and between two chunks. A provider that stops sending mid-stream
  fails after that long, not after the whole call's timeout.

Statuses: 429 is `RateLimited` (unless the provider says a retry cannot help,
``x-should-retry: false``, or the account is out of quota); 408, 409 and 5xx
are `ProviderUnavailable`; 401 and 403 `ProviderAuthError`; other answers
that are not a success are `ProviderRejected`. Nothing here retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from legion.errors import (
    LegionError,
    MalformedResponse,
    ProviderAuthError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from legion.llm.headers import parse_rate_limit_headers
from legion.llm.provider import ChatResult
from legion.llm.sse import ServerSentEvent, SSEDecoder
from legion.llm.types import ChatResponse, RateLimitInfo

R = TypeVar("R")

_MAX_DETAIL_CHARS = 500
_RETRYABLE_CLIENT_STATUSES = frozenset({408, 409})


class StreamAssembler(Protocol):
    """Builds a `ChatResponse` from the events of one stream."""

    @property
    def done(self) -> bool:
        """Whether the event that ends a complete stream has been seen."""
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
    ) -> None:
        if max_connections < 0:
            raise ValueError("max_connections must be >= 0 (0: unlimited)")
        if stream_idle_timeout <= 0:
            raise ValueError("stream_idle_timeout must be > 0")
        self.provider = provider
        self._headers = {"Content-Type": "application/json", **headers}
        self._max_connections = max_connections
        self._idle_timeout = stream_idle_timeout
        self._stream_timeout = aiohttp.ClientTimeout(sock_read=stream_idle_timeout)
        self._plain_timeout = aiohttp.ClientTimeout()
        self._auth_hint = auth_hint
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
            return parse(await response.read())

        return ChatResult(*await self._post(url, payload, total, self._plain_timeout, read))

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
            return parse(await response.read())

        return await self._post(url, payload, total, self._plain_timeout, read)

    async def stream(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        total: float,
        assembler: StreamAssembler,
    ) -> ChatResult:
        """POST ``payload`` and feed the answer's events to ``assembler``, in at
        most ``total`` seconds.

        The stream is read to its end so the connection can be reused; a
        failure after the final event no longer matters.
        """

        async def read(response: aiohttp.ClientResponse) -> ChatResponse:
            decoder = SSEDecoder()
            try:
                async for chunk in response.content.iter_any():
                    for event in decoder.feed(chunk):
                        if not assembler.done:
                            assembler.add(event)
            except (aiohttp.ClientError, OSError):
                if not assembler.done:
                    raise
            if not assembler.done:
                raise ProviderUnavailable(
                    f"{self.provider} ended the stream before its final event",
                    provider=self.provider,
                )
            return assembler.response()

        return ChatResult(*await self._post(url, payload, total, self._stream_timeout, read))

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=self._plain_timeout
        )
        return self._session

    async def _post(
        self,
        url: str,
        payload: Mapping[str, Any],
        total: float,
        read_timeout: aiohttp.ClientTimeout,
        read: Callable[[aiohttp.ClientResponse], Awaitable[R]],
    ) -> tuple[R, RateLimitInfo]:
        session = self._session or self._open()
        body = orjson.dumps(payload)
        provider = self.provider
        try:
            async with asyncio.timeout(total):
                async with session.post(
                    url, data=body, timeout=read_timeout, allow_redirects=False
                ) as response:
                    rate_limits = parse_rate_limit_headers(response.headers)
                    if response.status >= 300:
                        raise error_for_status(
                            provider,
                            response.status,
                            await response.read(),
                            response.headers,
                            rate_limits,
                            auth_hint=self._auth_hint,
                        )
                    return await read(response), rate_limits
        except aiohttp.ServerTimeoutError as exc:
            raise ProviderUnavailable(
                f"{provider} sent nothing for {self._idle_timeout:g} s (stream idle timeout)",
                provider=provider,
            ) from exc
        except TimeoutError as exc:
            raise ProviderUnavailable(
                f"{provider} did not answer within {total:g} s", provider=provider
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise ProviderRejected(
                f"{provider}: invalid URL {url!r}; check the base URL", provider=provider
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderUnavailable(
                f"{provider} connection failed: {type(exc).__name__}: {exc}", provider=provider
            ) from exc


def error_for_status(
    provider: str,
    status: int,
    body: bytes,
    headers: CIMultiDictProxy[str] | Mapping[str, str],
    rate_limits: RateLimitInfo,
    *,
    auth_hint: str,
) -> LegionError:
    """The legion error for an answer with HTTP ``status`` that is not a
    success, its message quoting what the provider said in ``body``."""
    detail, code = error_detail(body)
    if status == 429:
        if code == "insufficient_quota":
            return ProviderAuthError(
                f"{provider} says the account is out of quota (429): {detail.rstrip('.')}. "
                "Check the plan and billing of this API key.",
                provider=provider,
                status=status,
            )
        if headers.get("x-should-retry", "").lower() == "false":
            return ProviderRejected(
                f"{provider} rejected the request and says retrying cannot help (429): {detail}",
                provider=provider,
                status=status,
            )
        return RateLimited(
            f"{provider} rate limit hit (429): {detail}",
            provider=provider,
            status=status,
            retry_after=rate_limits.retry_after,
        )
    if status >= 500 or status in _RETRYABLE_CLIENT_STATUSES:
        return ProviderUnavailable(
            f"{provider} failed ({status}): {detail}",
            provider=provider,
            status=status,
            retry_after=rate_limits.retry_after,
        )
    if status == 401:
        return ProviderAuthError(
            f"{provider} rejected the API key (401): {detail.rstrip('.')}. {auth_hint}",
            provider=provider,
            status=status,
        )
    if status == 403:
        return ProviderAuthError(
            f"{provider} denied access (403): {detail.rstrip('.')}. {auth_hint}",
            provider=provider,
            status=status,
        )
    if status < 400:
        return ProviderRejected(
            f"{provider} answered with a redirect ({status}) to "
            f"{headers.get('location', '?')}; check the base URL",
            provider=provider,
            status=status,
        )
    return ProviderRejected(
        f"{provider} rejected the request ({status}): {detail}", provider=provider, status=status
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


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_CHARS else text[:_MAX_DETAIL_CHARS] + "..."
