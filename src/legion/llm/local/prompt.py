"""The prompt of the local provider: chat messages as a transcript a base model
continues, the completion options it takes, and where its answer ends. See
`legion.llm.local.provider` for the format."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from legion.errors import ProviderRejected
from legion.llm.types import Message

DEFAULT_STOP: tuple[str, ...] = ("\nUser:", "\nAssistant:", "\nSystem:", "\n\n")
"""Stop sequences added to every request (see the module's documentation)."""
_TURN_LABELS = ("User:", "Assistant:", "System:", "Tool:")
"""An answer that starts with one of these is the model ending its turn at once."""

DEFAULT_MAX_TOKENS = 256
DEFAULT_REPEAT_PENALTY = 1.1

_ROLES = {"user": "User", "assistant": "Assistant", "tool": "Tool", "function": "Tool"}
_PARAGRAPH_ROLES = frozenset({"system", "developer"})
_PASSED = (
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
)
_IGNORED = frozenset(
    {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "stream_options"}
)
_UNSUPPORTED = frozenset({"tools", "tool_choice", "functions", "function_call", "response_format"})
_KNOWN = frozenset(
    {*_PASSED, *_IGNORED, *_UNSUPPORTED, "n", "logprobs", "top_logprobs", "stop"}
    | {"max_tokens", "max_completion_tokens"}
)


def build_prompt(messages: Sequence[Message], provider: str = "local") -> str:
    """The completion prompt for chat ``messages`` (the format is in the module's
    documentation); `ProviderRejected` for content other than text, or no message."""
    if not messages:
        raise ProviderRejected(f"{provider}: a chat needs at least one message", provider=provider)
    blocks: list[str] = []
    turns: list[str] = []
    for message in messages:
        role = message.get("role")
        text = _text(message, provider).strip()
        if role in _PARAGRAPH_ROLES:
            if turns:
                blocks.append("\n".join(turns))
                turns = []
            if text:
                blocks.append(text)
            continue
        label = _ROLES.get(role) if isinstance(role, str) else None
        if label is None:
            raise ProviderRejected(f"{provider}: unknown message role {role!r}", provider=provider)
        turns.append(f"{label}: {text}")
    turns.append("Assistant:")
    blocks.append("\n".join(turns))
    return "\n\n".join(blocks)


def _text(message: Message, provider: str) -> str:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            if kind != "text":
                raise ProviderRejected(
                    f"{provider}: the model reads text only, not {kind!r} content",
                    provider=provider,
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise ProviderRejected(
        f"{provider}: message content must be text, got {type(content).__name__}",
        provider=provider,
    )


def completion_options(params: Mapping[str, Any], provider: str = "local") -> dict[str, Any]:
    """llama-cpp-python's ``create_completion`` options for a request's
    OpenAI-style ``params``; `ProviderRejected` for what a base model cannot do."""
    unsupported = sorted(set(params) & _UNSUPPORTED)
    if params.get("n", 1) != 1:
        unsupported.append("n > 1")
    if params.get("logprobs") or params.get("top_logprobs"):
        unsupported.append("logprobs")
    if unsupported:
        raise ProviderRejected(
            f"{provider}: a local base model does not support {', '.join(unsupported)}",
            provider=provider,
        )
    unknown = sorted(set(params) - _KNOWN)
    if unknown:
        raise ProviderRejected(
            f"{provider}: unknown parameter(s) {', '.join(unknown)}", provider=provider
        )
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        max_tokens = params.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ProviderRejected(
            f"{provider}: max_tokens must be a positive integer, got {max_tokens!r}",
            provider=provider,
        )
    options: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "repeat_penalty": DEFAULT_REPEAT_PENALTY,
        "stop": [*DEFAULT_STOP, *_stop(params.get("stop"), provider)],
    }
    for name in _PASSED:
        if params.get(name) is not None:
            options[name] = params[name]
    return options


def _stop(value: Any, provider: str) -> Iterable[str]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ProviderRejected(
        f"{provider}: stop must be a string or a list of strings", provider=provider
    )


def answer_text(generated: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The answer in the text a model ``generated`` so far, and whether a stop sequence
    (or the start of another turn) has ended it. Leading whitespace is dropped, and stop
    sequences match only after the answer's first visible character."""
    text = generated.lstrip()
    if not text:
        return "", False
    if text.startswith(_TURN_LABELS):
        return "", True
    ends = [at for sequence in stop if sequence and (at := text.find(sequence, 1)) > 0]
    if ends:
        return text[: min(ends)].rstrip(), True
    return text.rstrip(), False
