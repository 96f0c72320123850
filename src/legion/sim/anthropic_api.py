"""Anthropic's Messages API (``POST /v1/messages``) as a dialect of the simulator.

Requests authenticate with ``x-api-key`` (or ``Authorization: Bearer``, as
recent SDKs send it); ``max_tokens`` is required; the
``system`` prompt is a top-level field (a string or text blocks). Answers are
``message`` objects whose content is one text block (or, with ``tool_calls``, one
``tool_use`` block calling a tool the request offers), and streams are the
``message_start`` / ``content_block_*`` / ``message_delta`` /
``message_stop`` events. Errors use Anthropic's body, ``{"type": "error",
"error": {"type", "message"}}``; rate limits are described by the
``anthropic-ratelimit-*`` headers, whose reset times are RFC 3339 instants,
plus ``retry-after`` (whole seconds) on a 429. Simplification: a completion
ended by a stop sequence reports ``end_turn``, as a natural end does.
"""

from __future__ import annotations

import hmac
import itertools
import math
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from legion.sim.behaviour import Completion, FinishReason
from legion.sim.dialect import BadRequest, ParsedChat
from legion.sim.limits import Admission
from legion.sim.openai_api import check_temperature, optional_positive_int
from legion.sim.tools import Offer, script_for

_ROLES = frozenset({"user", "assistant"})
_STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def parse_messages_request(raw: bytes, *, tool_calls: bool = False) -> ParsedChat:
    """Validate a Messages API body; raise `BadRequest` if invalid.

    Parameters the simulator has no use for (top_k, metadata...) are accepted and
    ignored. ``tools`` are checked, and called only with ``tool_calls``
    (`legion.sim.tools`).
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required", "model")
    max_tokens = optional_positive_int(body, "max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise BadRequest(
                f"messages.{index}.role: Input should be 'user' or 'assistant'",
                f"messages.{index}.role",
            )
        if not isinstance(message.get("content"), (str, list)):
            raise BadRequest(
                f"messages.{index}.content: must be a string or an array of content blocks",
                f"messages.{index}.content",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream: Input should be a valid boolean", "stream")
    check_temperature(body, 1)
    conversation: list[dict[str, Any]] = list(messages)
    system = _parse_system(body.get("system"))
    if system:
        conversation.insert(0, {"role": "system", "content": system})
    offer = _check_offer(body, messages)  # (checked with tool calls off too)
    return ParsedChat(
        model,
        conversation,
        max_tokens,
        _parse_stop_sequences(body.get("stop_sequences")),
        bool(stream),
        True,
        script_for(offer, conversation, "toolu_") if tool_calls else None,
    )


def _check_offer(body: dict[str, Any], messages: list[Any]) -> Offer | None:
    """The tools a request offers, checked; ``None`` for none."""
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise BadRequest("tools: Input should be a valid list", "tools")
    offered: list[tuple[str, Any]] = []
    for index, tool in enumerate(tools):
        name = tool.get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools.{index}.name: Field required", f"tools.{index}.name")
        assert isinstance(tool, dict)
        if "input_schema" not in tool:
            continue  # a tool the provider runs (web search...): accepted, never called
        if not isinstance(tool["input_schema"], dict):
            raise BadRequest(
                f"tools.{index}.input_schema: Input should be a valid dictionary",
                f"tools.{index}.input_schema",
            )
        offered.append((name, tool["input_schema"]))
    choice: str = "auto"
    named = None
    wanted = body.get("tool_choice")
    if wanted is not None:
        kind = wanted.get("type") if isinstance(wanted, dict) else None
        if kind not in ("auto", "any", "tool", "none") or (
            kind == "tool" and not isinstance(wanted.get("name"), str)
        ):
            raise BadRequest(
                'tool_choice: must be {"type": "auto"|"any"|"none"} or '
                '{"type": "tool", "name": ...}',
                "tool_choice",
            )
        assert isinstance(wanted, dict)
        choice = {"any": "required", "tool": "named"}.get(kind) or str(kind)
        named = wanted.get("name")
    called = frozenset(
        str(block.get("name"))
        for message in messages
        if message.get("role") == "assistant" and isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_use"
    )
    return Offer(tuple(offered), choice, named, called)


def _parse_system(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if isinstance(system, list) and all(
        isinstance(block, dict) and isinstance(block.get("text"), str) for block in system
    ):
        return "\n".join(block["text"] for block in system)
    raise BadRequest("system: must be a string or an array of text blocks", "system")


def _parse_stop_sequences(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        return tuple(stop)
    raise BadRequest("stop_sequences: must be an array of strings", "stop_sequences")


def _error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    error_type = _ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _instant(seconds_from_now: float) -> str:
    """The RFC 3339 UTC instant ``seconds_from_now`` from now, to the millisecond."""
    moment = datetime.fromtimestamp(time.time() + max(0.0, seconds_from_now), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ratelimit_headers(admission: Admission) -> dict[str, str]:
    """The ``anthropic-ratelimit-*`` headers of ``admission``, plus
    ``retry-after`` (whole seconds, rounded up) on a rejection, or
    ``x-should-retry: false`` for a request that can never fit."""
    headers: dict[str, str] = {}
    if admission.limit_requests is not None:
        headers["anthropic-ratelimit-requests-limit"] = str(admission.limit_requests)
        headers["anthropic-ratelimit-requests-remaining"] = str(admission.remaining_requests)
        headers["anthropic-ratelimit-requests-reset"] = _instant(admission.reset_requests)
    if admission.limit_tokens is not None:
        headers["anthropic-ratelimit-tokens-limit"] = str(admission.limit_tokens)
        headers["anthropic-ratelimit-tokens-remaining"] = str(admission.remaining_tokens)
        headers["anthropic-ratelimit-tokens-reset"] = _instant(admission.reset_tokens)
    for kind in ("input", "output"):
        limit = getattr(admission, f"limit_{kind}_tokens")
        if limit is not None:
            remaining = getattr(admission, f"remaining_{kind}_tokens")
            reset = getattr(admission, f"reset_{kind}_tokens")
            headers[f"anthropic-ratelimit-{kind}-tokens-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{kind}-tokens-remaining"] = str(remaining)
            headers[f"anthropic-ratelimit-{kind}-tokens-reset"] = _instant(reset)
    if admission.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(round(admission.retry_after, 6))))
    elif admission.reason == "too_large":
        headers["x-should-retry"] = "false"
    return headers


class AnthropicDialect:
    """``POST /v1/messages``, authenticated by ``x-api-key`` or a bearer token."""

    path = "/v1/messages"

    def __init__(self, api_key: str | None, *, tool_calls: bool = False) -> None:
        self._expected_key = api_key.encode() if api_key is not None else None
        self._tool_calls = tool_calls
        self._id_prefix = f"msg_sim{secrets.token_hex(4)}"
        self._ids = itertools.count(1)

    def authorize(self, request: web.Request) -> web.Response | None:
        expected = self._expected_key
        if expected is None:
            return None
        key = request.headers.get("x-api-key")
        if key is None:
            authorization = request.headers.get("Authorization", "")
            key = authorization[7:] if authorization.startswith("Bearer ") else None
        if key is None:
            return _error_response(401, "x-api-key header is required")
        if hmac.compare_digest(key.encode("utf-8", "surrogateescape"), expected):
            return None
        return _error_response(401, "invalid x-api-key")

    def parse(self, raw: bytes) -> ParsedChat:
        return parse_messages_request(raw, tool_calls=self._tool_calls)

    def error(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        return _error_response(status, message, headers)

    def rate_limited(self, admission: Admission, message: str) -> web.Response:
        return _error_response(429, message, ratelimit_headers(admission))

    def headers(self, admission: Admission) -> dict[str, str]:
        return ratelimit_headers(admission)

    def completion(
        self, model: str, completion: Completion, prompt_tokens: int, cached_tokens: int = 0
    ) -> bytes:
        usage = {
            "input_tokens": prompt_tokens - cached_tokens,
            "output_tokens": len(completion.tokens),
        }
        if cached_tokens:
            usage["cache_read_input_tokens"] = cached_tokens
        return orjson.dumps(
            {
                "id": self._new_id(),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [_block(completion)],
                "stop_reason": _STOP_REASONS[completion.finish_reason],
                "stop_sequence": None,
                "usage": usage,
            }
        )

    def frames(
        self, model: str, prompt_tokens: int, tool_call: tuple[str, str] | None = None
    ) -> MessageFrames:
        return MessageFrames(self._new_id(), model, prompt_tokens, tool_call)

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"


def _block(completion: Completion) -> dict[str, Any]:
    if completion.tool_call is None:
        return {"type": "text", "text": completion.text}
    call_id, name = completion.tool_call
    return {"type": "tool_use", "id": call_id, "name": name, "input": orjson.loads(completion.text)}


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


class MessageFrames:
    """The events of one streamed message."""

    __slots__ = ("_delta_prefix", "_message_id", "_model", "_prompt_tokens", "_tool_call")

    _TEXT_PREFIX = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
    _JSON_PREFIX = (
        b'{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta",'
        b'"partial_json":'
    )

    def __init__(
        self,
        message_id: str,
        model: str,
        prompt_tokens: int,
        tool_call: tuple[str, str] | None = None,
    ) -> None:
        self._message_id = message_id
        self._model = model
        self._prompt_tokens = prompt_tokens
        self._tool_call = tool_call
        self._delta_prefix = self._TEXT_PREFIX if tool_call is None else self._JSON_PREFIX

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._prompt_tokens, "output_tokens": 1},
        }
        content_block: dict[str, Any] = {"type": "text", "text": ""}
        if self._tool_call is not None:
            call_id, name = self._tool_call
            content_block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        block = {"type": "content_block_start", "index": 0, "content_block": content_block}
        return _event(
            b"message_start", orjson.dumps({"type": "message_start", "message": message})
        ) + _event(b"content_block_start", orjson.dumps(block))

    def padding(self, size: int) -> bytes:
        return _event(b"ping", b'{"type":"ping","padding":"' + b"x" * size + b'"}')

    def content(self, token: str) -> bytes:
        return _event(b"content_block_delta", self._delta_prefix + orjson.dumps(token) + b"}}")

    def end(self, reason: FinishReason, completion_tokens: int, include_usage: bool) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP_REASONS[reason], "stop_sequence": None},
            "usage": {"output_tokens": completion_tokens},
        }
        return (
            _event(b"content_block_stop", b'{"type":"content_block_stop","index":0}')
            + _event(b"message_delta", orjson.dumps(delta))
            + _event(b"message_stop", b'{"type":"message_stop"}')
        )

    def malformed_end(self) -> bytes:
        """A ``content_block_delta`` whose data stops mid-object; nothing follows."""
        return _event(b"content_block_delta", b'{"type":"content_block_delta",')
