"""A streamed call's pieces as they arrive, for whoever passes them on (true streaming).

``legion gateway`` and the SDK clients of ``ctx.llm.openai()`` answer ``stream: true``
by passing the provider's pieces on as they come, while the call itself still goes
through `legion.llm.client.LLMClient` (capacity, retries, breaker) and is recorded
whole once it ends. The call runs with a `StreamSink` set (`streaming_to`); the
providers' stream assemblers (`legion.llm.openai.ChunkAssembler`,
`legion.llm.anthropic.MessageAssembler`) hand each piece to it as a `Delta`.

One attempt owns the stream. The client may make several attempts of one call (a
retry, a hedged copy); the first attempt to hand over a piece claims the sink, and
its pieces alone are passed on. Once a piece has gone to the caller, no other attempt
can take over without sending the caller a second answer, so any later attempt (a
retry after the owner failed mid-stream, a hedged copy) fails before it is sent with
`StreamInterrupted`, a permanent error: the caller gets an error at the end of its
stream instead of a spliced answer. A failure before the first piece is retried as
usual, unseen by the caller.

A call with no sink set, a provider that does not stream (a local model) and a call
replayed from its record hand over nothing: the caller then gets the whole answer,
rendered from the completion, when the call ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from legion.errors import Permanent


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of a streamed completion: text, or a piece of tool call number
    ``tool_index`` (its id and name come with its first piece, its arguments in parts)."""

    text: str = ""
    tool_index: int | None = None
    tool_id: str = ""
    tool_name: str = ""
    arguments: str = ""


class StreamInterrupted(Permanent):
    """Raised by an attempt of a streamed call whose stream another attempt had already
    begun passing on to the caller (it failed mid-stream): retrying would send the caller a
    second answer after part of the first."""


class StreamSink:
    """Where the pieces of one streamed call go: ``forward`` gets each piece of the
    attempt that owns the stream, in order. ``forwarded`` counts them."""

    __slots__ = ("_forward", "_owner", "broke_with", "forwarded")

    def __init__(self, forward: Callable[[Delta], None]) -> None:
        self._forward = forward
        self._owner: object | None = None
        self.forwarded = 0
        self.broke_with: BaseException | None = None
        """Why the attempt that owns the stream failed part-way (see `broke`)."""

    def attach(self, attempt: object) -> None:
        """Called by an attempt before it is sent: `StreamInterrupted` if another attempt
        owns the stream already."""
        if self._owner is not None and self._owner is not attempt:
            why = "" if self.broke_with is None else f" ({self.broke_with})"
            raise StreamInterrupted(
                f"the stream broke after {self.forwarded} piece(s) of the answer had been "
                f"passed on to the caller{why}; legion does not retry it, as the caller would "
                "get a second answer spliced onto the first"
            )

    def emit(self, attempt: object, delta: Delta) -> None:
        """Pass ``delta`` on if ``attempt`` owns the stream (the first to emit does)."""
        if self._owner is None:
            self._owner = attempt
        elif self._owner is not attempt:
            self.attach(attempt)  # raises
        self.forwarded += 1
        self._forward(delta)


_SINK: ContextVar[StreamSink | None] = ContextVar("legion_stream_sink", default=None)


def broke(exc: BaseException) -> None:
    """A try of the streamed call under way failed with ``exc``: the first such failure
    after the stream began is why it broke (said when the call is not retried)."""
    sink = _SINK.get()
    if sink is not None and sink.forwarded and sink.broke_with is None:
        sink.broke_with = exc


def attach(attempt: object) -> StreamSink | None:
    """The sink of the streamed call under way, if any, checked for ``attempt`` (see
    `StreamSink.attach`); ``None`` when no one listens."""
    sink = _SINK.get()
    if sink is not None:
        sink.attach(attempt)
    return sink


@contextlib.contextmanager
def streaming_to(sink: StreamSink) -> Iterator[None]:
    """Calls made inside hand their streamed pieces to ``sink``."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)
