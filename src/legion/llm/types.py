"""The values that flow through the LLM layer: requests, responses, usage and
the rate-limit state a provider reports.

All are immutable values (`legion.record.value`: frozen for the type checker, hashable,
and made at the speed of a plain class - every LLM call makes several). Messages and
parameters stay plain JSON (``dict``) because they are the JSON edge: they go to the
provider as they are, in OpenAI's chat format (providers with another format translate
them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

from legion.record import value

MOST_TOKENS = 2**31 - 1
"""The most tokens one answer may report in one count: far beyond any model's, and held
exactly by every counter, budget and column downstream."""


def token_count(value: Any, name: str) -> int:
    """A token count as a provider reported it (absent or null: 0): a whole number from 0
    to `MOST_TOKENS`; ValueError otherwise (the provider's parser makes it a
    `MalformedResponse`): a negative count would undo a budget, a string or an
    astronomical one would pass unchecked into every total."""
    if value is None:
        return 0
    if type(value) is int:
        count = value
    elif type(value) is float and value.is_integer():
        count = int(value)
    else:
        raise ValueError(f"usage {name} is not a whole number: {str(value)[:40]!r}")
    if not 0 <= count <= MOST_TOKENS:
        raise ValueError(f"usage {name} is not a token count: {count:.3g}")
    return count


Message = Mapping[str, Any]
"""One chat message in OpenAI's format, e.g. ``{"role": "user", "content": "Hi"}``."""


@value
class Usage:
    """Tokens billed for one completion.

    ``cached_tokens`` (prompt tokens read from the provider's prompt cache) and
    ``cache_write_tokens`` (prompt tokens written to it) are parts of ``prompt_tokens``;
    ``reasoning_tokens`` (a reasoning model's hidden thinking) are part of
    ``completion_tokens``. They change the price, not the totals.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    def to_json(self) -> dict[str, int]:
        """The counts as JSON; the detail counts only when not zero."""
        data = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        for name in _USAGE_DETAILS:
            value = getattr(self, name)
            if value:
                data[name] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Usage:
        """Counts written by `to_json` (a missing detail count is 0)."""
        return cls(
            data["prompt_tokens"],
            data["completion_tokens"],
            **{name: int(data.get(name) or 0) for name in _USAGE_DETAILS},
        )


_USAGE_DETAILS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens")


@value
class ToolCall:
    """A function call the model asks for; ``arguments`` is the JSON text it wrote
    (not parsed: models can write invalid JSON, and the agent decides what to do)."""

    id: str
    name: str
    arguments: str

    def __post_init__(self) -> None:
        if not all(isinstance(value, str) for value in (self.id, self.name, self.arguments)):
            raise TypeError(f"tool call fields must be strings: {self!r}")


@value
class ChatRequest:
    """One chat completion to ask a provider for.

    ``params`` holds the optional parameters, named as in OpenAI's API
    (``max_tokens``, ``temperature``, ``stop``, ``tools``, ``tool_choice``...).
    ``stream`` chooses the transport only: the answer is assembled either way,
    but a stream lets a provider that stops sending be detected early.
    """

    model: str
    messages: Sequence[Message]
    params: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False


@value
class ChatResponse:
    """A completion, normalised across providers.

    ``finish_reason`` uses OpenAI's words (``"stop"``, ``"length"``,
    ``"tool_calls"``, ``"content_filter"``); ``model`` is the model that
    answered, as the provider names it; ``provider`` is the provider's name.
    """

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    usage: Usage = Usage()
    model: str = ""
    provider: str = ""
    deployment: str = ""
    """Which deployment of a pooled route served it (``""``: the route has one)."""
    refusal: str | None = None
    """The model's refusal to answer, as OpenAI gives it apart from the text (structured
    outputs: ``message.refusal``); ``None``: it did not refuse."""
    id: str = ""
    """The provider's id of the answer (OpenAI's ``chatcmpl-...``, Anthropic's
    ``msg_...``; ``""``: none given, or a streamed answer), what its support asks for."""

    def __post_init__(self) -> None:
        # A provider that built a list answers the same value its replay will (a tuple).
        if type(self.tool_calls) is not tuple:
            object.__setattr__(self, "tool_calls", tuple(self.tool_calls))

    def to_json(self) -> dict[str, Any]:
        """The response as plain JSON data; `from_json` rebuilds an equal response."""
        data = {
            "text": self.text,
            "tool_calls": [
                {"id": call.id, "name": call.name, "arguments": call.arguments}
                for call in self.tool_calls
            ],
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_json(),
            "model": self.model,
            "provider": self.provider,
        }
        if self.deployment:
            data["deployment"] = self.deployment
        if self.refusal is not None:
            data["refusal"] = self.refusal
        if self.id:
            data["id"] = self.id
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatResponse:
        """Rebuild a response recorded with `to_json`; ``ValueError`` if ``data``
        is not such a record."""
        try:
            usage = data["usage"]
            response = cls(
                text=data["text"],
                tool_calls=tuple(
                    ToolCall(call["id"], call["name"], call["arguments"])
                    for call in data["tool_calls"]
                ),
                finish_reason=data["finish_reason"],
                usage=Usage.from_json(usage),
                model=data["model"],
                provider=data["provider"],
                deployment=data.get("deployment", ""),
                refusal=data.get("refusal"),
                id=data.get("id", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a recorded chat response: {exc!r}") from exc
        if not isinstance(response.text, str):
            raise ValueError("not a recorded chat response: text must be a string")
        return response


@value
class RateLimitInfo:
    """What a provider's headers said about its rate limits (``None``: not said).

    Limits are per minute. Resets are seconds from when the answer was
    received until that budget is full again (OpenAI's meaning; Anthropic's
    instants are converted). ``retry_after`` is the wait the provider asked
    for, in seconds.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None
    limit_input_tokens: int | None = None
    """Input tokens per minute, where the provider limits them apart (Anthropic)."""
    remaining_input_tokens: int | None = None
    limit_output_tokens: int | None = None
    """Output tokens per minute, where the provider limits them apart."""
    remaining_output_tokens: int | None = None
