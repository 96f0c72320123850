"""GenAI client spans for LLM calls, after the OpenTelemetry GenAI semantic conventions.

`traced_chat` wraps ``LLMClient.chat``: while `legion.telemetry.tracing` is on,
each call gets a ``chat {model}`` span (see `legion.telemetry` for its attributes);
otherwise the call goes straight through.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from legion import telemetry
from legion.errors import LegionError

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from legion.llm.types import ChatResponse

ChatFn = TypeVar("ChatFn", bound=Callable[..., Awaitable["ChatResponse"]])


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Route(Protocol):
    """What a span says of a route (a `legion.llm.client.Route`)."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def provider(self) -> _Named: ...


class _Routed(Protocol):
    def route_for(self, name: str | None) -> _Route: ...


def traced_chat(chat: ChatFn) -> ChatFn:
    """Decorate ``LLMClient.chat(messages, model=None, **options)``: while tracing, each call
    gets a GenAI client span; otherwise the call goes straight through."""

    @functools.wraps(chat)
    def traced(client: _Routed, *args: Any, **kwargs: Any) -> Awaitable[ChatResponse]:
        # Not tracing: the call itself, without a coroutine of its own around it (one
        # frame less held by every call in flight).
        if not telemetry.tracing:
            return chat(client, *args, **kwargs)
        return spanned(client, *args, **kwargs)

    async def spanned(client: _Routed, *args: Any, **kwargs: Any) -> ChatResponse:
        try:
            route = client.route_for(kwargs.get("model", args[1] if len(args) > 1 else None))
        except LegionError:  # an unknown route: the call itself raises the same error
            return await chat(client, *args, **kwargs)
        from opentelemetry.trace import SpanKind, Status, StatusCode

        attributes: dict[str, str | int | float] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": route.provider.name,
            "gen_ai.request.model": route.model,
            "legion.llm.route": route.name,
            **_request_attributes(kwargs),
        }
        with telemetry.active_tracer().start_as_current_span(
            f"chat {route.model}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                response = await chat(client, *args, **kwargs)
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise
            _response_attributes(span, response)
            return response

    return cast(ChatFn, traced)


def _request_attributes(options: Mapping[str, Any]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for name in ("max_tokens", "temperature", "top_p"):
        value = options.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"gen_ai.request.{name}"] = value
    return out


def _response_attributes(span: Span, response: ChatResponse) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", response.usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", response.usage.completion_tokens)
    if response.model:
        span.set_attribute("gen_ai.response.model", response.model)
    if response.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [response.finish_reason])
