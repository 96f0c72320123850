"""`LegionTransport`: the HTTP transport of the SDK clients ``ctx.llm`` hands out.

Nothing goes on the network from here: each request the SDK writes becomes a
``ctx.llm.chat`` (or ``ctx.llm.embed``) call, recorded as a step of the task, and its
completion comes back in the SDK's wire format. Failures that legion's retry policy
did not overcome come back as the HTTP error the SDK expects (a 429, a 5xx, a 400...),
so the SDK raises its own error type with legion's message.

Streams are true streams: the call runs as a `legion.llm.sdk.live.LiveCall` and the
SDK reads each piece the provider sends as it arrives (the whole completion is still
recorded once the call ends). Nothing is answered before the first piece, so a call
that fails before then is the SDK's usual HTTP error; one that fails after ends its
stream with an error event, which the SDK raises (see `legion.llm.deltas` for why it
is not retried then). A replayed call, or one on a provider that does not stream,
hands the SDK its whole recorded completion as the events of a stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx2

from legion.errors import (
    FATAL_HEADER,
    LEGION_ERROR,
    RETRYABLE_HEADER,
    LegionError,
    Permanent,
    is_retryable,
)
from legion.llm.deltas import Delta
from legion.llm.sdk import anthropic_wire, openai_wire
from legion.llm.sdk.live import LiveCall
from legion.llm.sdk.openai_wire import WireChat, WireError
from legion.llm.sdk.statuses import error_status
from legion.llm.types import ChatResponse

if TYPE_CHECKING:
    from legion.llm.client import LLMClient
    from legion.llm.embeddings import Embeddings

Dialect = Literal["openai", "anthropic"]


class LLMCalls(Protocol):
    """The part of `ctx.llm` (`legion.llm.calls.LLMCalls`) the SDK clients call: recorded
    chat and embedding calls."""

    def chat(
        self, messages: Sequence[Any], model: str | None = None, **kw: Any
    ) -> Awaitable[ChatResponse]: ...

    def embed(
        self, texts: Sequence[str], model: str | None = None, **params: Any
    ) -> Awaitable[Embeddings]: ...


_JSON = {"content-type": "application/json"}
_EVENTS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


class _Events(httpx2.AsyncByteStream):
    """The events of a rendered stream, handed to the SDK one by one."""

    def __init__(self, events: list[bytes]) -> None:
        self._events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self._events:
            yield event

    async def aclose(self) -> None:
        return None


_ErrorEvent = Callable[[int, str, BaseException | None], bytes]
"""An error's body or event, from its status, message and cause."""


class _Renderer(Protocol):
    def start(self) -> bytes: ...

    def delta(self, piece: Delta) -> bytes | list[bytes]: ...

    def end(self, response: ChatResponse) -> list[bytes]: ...

    def whole(self, response: ChatResponse) -> list[bytes]: ...


class _LiveEvents(httpx2.AsyncByteStream):
    """The events of a stream under way, each written as its piece arrives; a failure
    after the first piece ends the stream with an error event (the SDK raises it)."""

    def __init__(
        self,
        live: LiveCall,
        first: Delta,
        render: _Renderer,
        error: _ErrorEvent,
    ) -> None:
        self._live = live
        self._first = first
        self._render = render
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        live, render = self._live, self._render
        yield render.start()
        piece: Delta | None = self._first
        while piece is not None:
            events = render.delta(piece)
            for event in [events] if isinstance(events, bytes) else events:
                yield event
            piece = await live.next()
        try:
            response = await live.result()
        except LegionError as exc:
            yield self._error(error_status(exc), str(exc), exc)
            return
        for event in render.end(response):
            yield event

    async def aclose(self) -> None:
        await self._live.aclose()


class LegionTransport(httpx2.AsyncBaseTransport):
    """Answers an SDK's requests with ``ctx.llm`` calls.

    ``dialect`` is the SDK's wire format. ``route`` sends every request to that route
    (or route's model); ``None`` takes the route the request's model names (by route
    name or model), else the default route.
    """

    def __init__(
        self, calls: LLMCalls, client: LLMClient, dialect: Dialect, route: str | None = None
    ) -> None:
        self._calls = calls
        self._client = client
        self._dialect = dialect
        self._route = route

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        path = request.url.path.rstrip("/")
        try:
            if request.method != "POST":
                return self._error(404, f"legion serves no {request.method} {path}", None)
            if self._dialect == "openai":
                if path.endswith("/chat/completions"):
                    return await self._openai_chat(openai_wire.parse_chat(body), body)
                if path.endswith("/embeddings"):
                    return await self._openai_embed(body)
            elif path.endswith("/messages"):
                return await self._anthropic_messages(anthropic_wire.parse_messages(body), body)
            return self._error(
                404, f"legion serves no POST {path} for the {self._dialect} SDK", None
            )
        except (WireError, LegionError) as exc:
            return self._error(error_status(exc), str(exc), exc)

    def route_for(self, model: str) -> str:
        """The route a request for ``model`` takes."""
        if self._route is not None:
            return self._client.route_for(self._route).name
        try:
            return self._client.route_for(model or None).name
        except Permanent:
            return self._client.route_for(None).name

    async def _chat(self, chat: WireChat) -> ChatResponse:
        route = self.route_for(chat.model)
        return await self._calls.chat(chat.messages, route, stream=chat.stream, **chat.params)

    async def _stream(
        self, chat: WireChat, render: _Renderer, error: _ErrorEvent
    ) -> httpx2.Response:
        """A streamed call: nothing is answered before its first piece (a failure before
        then is an HTTP error, as from the provider), then each piece as it comes."""
        live = LiveCall(lambda: self._chat(chat))
        try:
            first = await live.next()
            if first is None:  # replayed, or from a provider that does not stream
                events = render.whole(await live.result())
                return httpx2.Response(200, headers=_EVENTS, stream=_Events(events))
        except BaseException:
            await live.aclose()
            raise
        stream = _LiveEvents(live, first, render, error)
        return httpx2.Response(200, headers=_EVENTS, stream=stream)

    async def _openai_chat(self, chat: WireChat, body: bytes) -> httpx2.Response:
        if chat.stream:
            model = chat.model or self._client.route_for(self.route_for(chat.model)).model
            chunks = openai_wire.ChunkStream(openai_wire.stream_id(body), model, chat.include_usage)
            return await self._stream(chat, chunks, openai_wire.render_stream_error)
        response = await self._chat(chat)
        content = openai_wire.render_completion(response, chat.model)
        return httpx2.Response(200, headers=_JSON, content=content)

    async def _openai_embed(self, body: bytes) -> httpx2.Response:
        model, texts, params, encoding = openai_wire.parse_embed(body)
        route = self._route if self._route is not None else self._embed_route(model)
        embeddings = await self._calls.embed(texts, route, **params)
        content = openai_wire.render_embeddings(embeddings, model, encoding)
        return httpx2.Response(200, headers=_JSON, content=content)

    def _embed_route(self, model: str) -> str | None:
        try:
            return self._client.route_for(model).name if model else None
        except Permanent:
            return None

    async def _anthropic_messages(self, chat: WireChat, body: bytes) -> httpx2.Response:
        if chat.stream:
            model = chat.model or self._client.route_for(self.route_for(chat.model)).model
            events = anthropic_wire.EventStream(anthropic_wire.stream_message_id(body), model)
            return await self._stream(chat, events, anthropic_wire.render_stream_error)
        response = await self._chat(chat)
        content = anthropic_wire.render_message(response, chat.model)
        return httpx2.Response(200, headers=_JSON, content=content)

    def _error(
        self, status: int, message: str, exc: WireError | LegionError | None
    ) -> httpx2.Response:
        """The HTTP error the SDK raises its own error from, with legion's verdict on the
        call in its headers (`legion.errors.sdk_verdict`): the SDK's error (or a
        framework's, raised from it) is then retried, or not, or stops the run, as
        legion's own error would have been (``exc``; ``None`` and a request legion cannot
        take: not retryable). ``exc`` itself goes with it (`legion.errors.legion_cause`):
        a budget's stop or a long Retry-After then ends the task as it would have."""
        render: _ErrorEvent = (
            openai_wire.render_error if self._dialect == "openai" else anthropic_wire.render_error
        )
        retryable = isinstance(exc, LegionError) and is_retryable(exc)
        headers = {
            **_JSON,
            "x-should-retry": "false",
            RETRYABLE_HEADER: "true" if retryable else "false",
            FATAL_HEADER: "true" if getattr(exc, "fatal", False) else "false",
        }
        return httpx2.Response(
            status,
            headers=headers,
            content=render(status, message, exc),
            extensions={LEGION_ERROR: exc} if isinstance(exc, LegionError) else {},
        )
