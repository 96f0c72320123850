"""Anthropic's Messages API on the wire, for ``ctx.llm.anthropic()``.

A ``/v1/messages`` body becomes the OpenAI-format messages and parameters of a
``ctx.llm.chat`` call (text, tool use and tool results, tools, tool choice, stop
sequences), so it takes any route, an Anthropic one included (whose provider writes
the Messages API again). A completion becomes a ``message`` body, or the events of
a stream (``message_start`` ... ``message_stop``), that the ``anthropic`` SDK parses,
rendered from the completion alone (the same bytes on a replay).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from legion.codec import json_error
from legion.llm.deltas import Delta
from legion.llm.sdk.openai_wire import WireChat, WireError, stream_flag
from legion.llm.types import ChatResponse, Message

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_PASSED = ("max_tokens", "temperature", "top_p", "metadata")
_READ = frozenset(
    ("model", "messages", "system", "stream", "stop_sequences", "tools", "tool_choice", *_PASSED)
)


def parse_messages(body: bytes) -> WireChat:
    """The chat call a ``/v1/messages`` body asks for; `WireError` if it is not one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"the body is not valid JSON: {json_error(exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise WireError("the body must be an object with a 'messages' array")
    unread = sorted(set(data) - _READ)
    if unread:
        # Dropped, they changed the call in silence: ``thinking`` asked for extended
        # thinking, whose blocks a tool loop must send back, and got none.
        raise WireError(
            f"legion does not pass {', '.join(map(repr, unread))} on to the model; it takes "
            f"{', '.join(sorted(_READ))}"
        )
    messages: list[Message] = []
    system = data.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system)})
    for message in data["messages"]:
        if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
            raise WireError("each message must be an object with role 'user' or 'assistant'")
        messages.extend(_message(message))
    params: dict[str, Any] = {name: data[name] for name in _PASSED if name in data}
    params.pop("metadata", None)
    if data.get("stop_sequences"):
        params["stop"] = list(data["stop_sequences"])
    if data.get("tools"):
        params["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool["name"],
                    "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema") or {"type": "object"},
                },
            }
            for tool in data["tools"]
        ]
    choice = data.get("tool_choice")
    if isinstance(choice, Mapping):
        kind = choice.get("type")
        if kind == "tool":
            params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif kind in ("auto", "none"):
            params["tool_choice"] = kind
        elif kind == "any":
            params["tool_choice"] = "required"
    return WireChat(str(data.get("model") or ""), messages, params, stream_flag(data), True)


def _message(message: Mapping[str, Any]) -> list[Message]:
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise WireError("a message's content must be a string or an array of blocks")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[Message] = []
    for block in content:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind == "tool_result":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block["tool_use_id"],
                    "content": _text(block.get("content") or ""),
                }
            )
        else:
            raise WireError(f"legion does not take content blocks of type {kind!r}")
    out: list[Message] = list(results)
    if role == "assistant":
        reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            reply["tool_calls"] = calls
        out.append(reply)
    elif texts:
        out.append({"role": "user", "content": "".join(texts)})
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        block.get("text", "") for block in content if isinstance(block, Mapping)
    )  # a system prompt or tool result given as blocks


def message_id(response: ChatResponse) -> str:
    digest = hashlib.blake2b(orjson.dumps(response.to_json()), digest_size=12).hexdigest()
    return f"msg_{digest}"


def _blocks(response: ChatResponse) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if response.text or not response.tool_calls:
        blocks.append({"type": "text", "text": response.text})
    for call in response.tool_calls:
        try:
            arguments = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    return blocks


def _stop_reason(response: ChatResponse) -> str:
    reason = response.finish_reason or ("tool_calls" if response.tool_calls else "stop")
    return _STOP_REASONS.get(reason, "end_turn")


def _usage(response: ChatResponse) -> dict[str, int]:
    usage = response.usage
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def render_message(response: ChatResponse, model: str) -> bytes:
    """``response`` as a ``message`` body."""
    return orjson.dumps(
        {
            "id": message_id(response),
            "type": "message",
            "role": "assistant",
            "model": response.model or model,
            "content": _blocks(response),
            "stop_reason": _stop_reason(response),
            "stop_sequence": None,
            "usage": _usage(response),
        }
    )


def stream_message_id(body: bytes) -> str:
    """The message id of a stream: it depends on the request alone (``message_start``
    goes out before the completion is known), so a replay repeats it."""
    return f"msg_{hashlib.blake2b(body, digest_size=12).hexdigest()}"


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventStream:
    """The events of one streamed message, written as its pieces arrive (`start`, a
    `delta` per piece, `end`), or all at once from a completion (`whole`).

    ``message_start`` goes out before the usage is known: it says 0 tokens, and
    ``message_delta`` carries the whole usage, which the ``anthropic`` SDK takes."""

    __slots__ = ("_id", "_index", "_kind", "_model")

    def __init__(self, message_id: str, model: str) -> None:
        self._id = message_id
        self._model = model
        self._index = -1  # the open content block (-1: none yet)
        self._kind = ""  # its type, "" once closed

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _open(self, block: dict[str, Any]) -> list[bytes]:
        events = self._close()
        self._index += 1
        self._kind = block["type"]
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return [*events, _event("content_block_start", start)]

    def _close(self) -> list[bytes]:
        if not self._kind:
            return []
        self._kind = ""
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def delta(self, piece: Delta) -> list[bytes]:
        """The events of one piece: a block opened when the piece starts one, its delta."""
        events: list[bytes] = []
        if piece.tool_index is None:
            if self._kind != "text":
                events += self._open({"type": "text", "text": ""})
            delta: dict[str, Any] = {"type": "text_delta", "text": piece.text}
        else:
            if piece.tool_id or self._kind != "tool_use":
                block = {"type": "tool_use", "id": piece.tool_id, "name": piece.tool_name,
                         "input": {}}  # fmt: skip
                events += self._open(block)
            if not piece.arguments:
                return events
            delta = {"type": "input_json_delta", "partial_json": piece.arguments}
        body = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return [*events, _event("content_block_delta", body)]

    def end(self, response: ChatResponse) -> list[bytes]:
        """The last events: the open block closed, the stop reason and usage, the stop."""
        # An empty answer still has its text block.
        events = self._open({"type": "text", "text": ""}) if self._index < 0 else []
        end = {"stop_reason": _stop_reason(response), "stop_sequence": None}
        delta = {"type": "message_delta", "delta": end, "usage": _usage(response)}
        return [*events, *self._close(), _event("message_delta", delta),
                _event("message_stop", {"type": "message_stop"})]  # fmt: skip

    def whole(self, response: ChatResponse) -> list[bytes]:
        """Every event of ``response``."""
        events = [self.start()]
        for block in _blocks(response):
            if block["type"] == "text":
                events += self._open({"type": "text", "text": ""})
                piece = Delta(text=block["text"])
            else:
                events += self._open({**block, "input": {}})
                piece = Delta(tool_index=0, arguments=orjson.dumps(block["input"]).decode())
            if piece.text or piece.arguments:
                events += self.delta(piece)
        return events + self.end(response)


def render_stream(response: ChatResponse, model: str, stream_id: str | None = None) -> list[bytes]:
    """``response`` as the events of a stream (``stream_id``: the message's id, by default
    one that depends on the completion alone)."""
    events = EventStream(stream_id or message_id(response), response.model or model)
    return events.whole(response)


def render_stream_error(status: int, message: str, cause: BaseException | None = None) -> bytes:
    """The event that ends a stream broken after its first events (the ``anthropic`` SDK
    raises an ``APIStatusError`` with ``message``)."""
    return b"event: error\ndata: " + render_error(status, message) + b"\n\n"


def render_error(status: int, message: str, cause: BaseException | None = None) -> bytes:
    """An error body as Anthropic writes it (which names no code: ``cause`` is not read)."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 429: "rate_limit_error"}.get(status, "api_error")  # fmt: skip
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
