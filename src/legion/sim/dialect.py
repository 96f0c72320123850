"""What a wire format (a *dialect*) of the simulator must provide.

The simulator serves the same behaviour (rate limits, faults, deterministic
completions, counters) under several provider APIs: OpenAI's chat
completions and Anthropic's messages. Everything that differs between them —
authentication, request validation, error bodies, rate-limit headers, the
completion object and the streamed events — sits behind `Dialect`; the
serving pipeline in `legion.sim.server` knows nothing of either format.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from aiohttp import web

from legion.sim.behaviour import Completion, FinishReason
from legion.sim.limits import Admission, format_reset
from legion.sim.tools import Script


class BadRequest(Exception):
    """A request body the dialect rejects with a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ParsedChat(NamedTuple):
    """A valid chat request, in the terms the simulator reasons in."""

    model: str
    messages: list[dict[str, Any]]
    """The conversation, system prompt included, as OpenAI-style messages:
    what prompt tokens are estimated from and the completion is derived from."""
    max_tokens: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    """Whether a stream ends with the usage (always, for some dialects)."""
    script: Script | None = None
    """A tool call or JSON answer to give instead of generated text (`legion.sim.tools`)."""


class StreamFrames(Protocol):
    """The server-sent events of one streamed completion, pre-serialised."""

    def start(self) -> bytes:
        """The events sent before the first token."""
        ...

    def content(self, token: str) -> bytes:
        """The event carrying one token."""
        ...

    def padding(self, size: int) -> bytes:
        """An event that carries ``size`` bytes of padding and no content, of a kind the
        provider's clients skip (a chunk without choices, a ping)."""
        ...

    def end(self, reason: FinishReason, completion_tokens: int, include_usage: bool) -> bytes:
        """The events closing a stream that delivered everything."""
        ...

    def malformed_end(self) -> bytes:
        """An event whose data is not valid JSON, then whatever ends the stream."""
        ...


class Dialect(Protocol):
    """One provider API served by the simulator."""

    path: str
    """The route of chat requests, e.g. ``/v1/chat/completions``."""

    def authorize(self, request: web.Request) -> web.Response | None:
        """``None`` if the request may proceed, else the 401 to answer."""
        ...

    def parse(self, raw: bytes) -> ParsedChat:
        """Validate a request body; raise `BadRequest` if it is invalid."""
        ...

    def error(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """An error answer with this API's error body."""
        ...

    def rate_limited(self, admission: Admission, message: str) -> web.Response:
        """The 429 answer to a request the limiter rejected, saying ``message`` (see
        `rate_limit_message`)."""
        ...

    def headers(self, admission: Admission) -> dict[str, str]:
        """The rate-limit headers describing ``admission``."""
        ...

    def completion(
        self, model: str, completion: Completion, prompt_tokens: int, cached_tokens: int = 0
    ) -> bytes:
        """The JSON body of a complete, non-streamed answer; ``cached_tokens`` of the
        prompt's tokens are reported as read from a prompt cache."""
        ...

    def frames(
        self, model: str, prompt_tokens: int, tool_call: tuple[str, str] | None = None
    ) -> StreamFrames:
        """The events of a new stream."""
        ...


def rate_limit_message(admission: Admission, charge: int, max_concurrency: int | None) -> str:
    """Why the limiter rejected a request, worded as OpenAI words it (a fault schedule's
    429, which no limit made, names none)."""
    retry = format_reset(admission.retry_after or 0.0)
    reason = admission.reason
    if reason == "too_large":
        what, asked, cap, seconds = admission.too_large or (
            "tokens",
            charge,
            admission.limit_tokens or 0,
            60.0,
        )
        return (
            f"Request too large for {what} per min: Requested {asked}, over the {cap} one "
            f"window of {seconds:g} s admits (the per-minute limit, enforced per window). "
            "The input or output tokens must be reduced in order to run successfully."
        )
    if reason == "concurrency":
        most = f": Limit {max_concurrency}" if max_concurrency is not None else ""
        return f"Too many concurrent requests{most}. Please try again in {retry}."
    kinds: dict[str, tuple[str, int | None, int | None]] = {
        "requests": ("requests per min (RPM)", admission.limit_requests, 1),
        "tokens": ("tokens per min (TPM)", admission.limit_tokens, charge),
        "input_tokens": ("input tokens per min (ITPM)", admission.limit_input_tokens, None),
        "output_tokens": ("output tokens per min (OTPM)", admission.limit_output_tokens, None),
    }
    label, limit, requested = kinds[reason or "requests"]
    told = "" if limit is None else f": Limit {limit}"
    if limit is not None and requested is not None:
        told += f", Requested {requested}"
    return f"Rate limit reached for {label}{told}. Please try again in {retry}."
