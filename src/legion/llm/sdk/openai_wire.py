"""OpenAI's chat completions and embeddings on the wire, for ``ctx.llm.openai()``.

A request body becomes the messages and parameters of a ``ctx.llm.chat`` call (the
parameters pass through to the provider in OpenAI's names, as for any call); a
completion becomes a ``chat.completion`` body, or the ``chat.completion.chunk``
events of a stream, that the ``openai`` SDK parses. Rendering depends on the
completion alone, so a recorded completion is rendered to the same bytes again.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from legion.codec import json_error, loads_given
from legion.errors import BudgetExceeded
from legion.llm.deltas import Delta
from legion.llm.embeddings import Embeddings
from legion.llm.types import ChatResponse, Message, Usage

_NOT_PARAMS = frozenset({"model", "messages", "stream", "stream_options"})
_DONE = b"data: [DONE]\n\n"


class WireError(ValueError):
    """A request body legion cannot take (answered with a 400)."""


@dataclass(frozen=True, slots=True)
class WireChat:
    """A chat completions request, in the terms of ``ctx.llm.chat``."""

    model: str
    messages: list[Message]
    params: dict[str, Any]
    stream: bool
    include_usage: bool


def parse_chat(body: bytes) -> WireChat:
    """The chat call a ``/chat/completions`` body asks for; `WireError` if it is not one."""
    data = _object(body)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError("'messages' must be a non-empty array")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise WireError(f"'messages[{index}]' must be an object with a 'role'")
    options = data.get("stream_options")
    include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
    params = {name: value for name, value in data.items() if name not in _NOT_PARAMS}
    if "n" in params and params["n"] is None:
        del params["n"]  # (null: the default, one choice, as OpenAI takes it)
    if "n" in params and (type(params["n"]) is not int or params["n"] != 1):
        raise WireError(f"legion answers one choice per request (n=1), not n={params['n']!r}")
    if params.get("logprobs") or params.get("top_logprobs"):
        # (sent on, the provider's answer would come back without them, in silence)
        raise WireError("legion does not pass log probabilities back: call without logprobs")
    model = str(data.get("model") or "")
    return WireChat(model, messages, params, stream_flag(data), include_usage)


def stream_flag(data: Mapping[str, Any]) -> bool:
    """The body's ``stream``: true, false or absent (``"yes"`` is refused, not taken)."""
    stream = data.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise WireError(f"'stream' must be true or false, not {str(stream)[:40]!r}")
    return stream


def parse_embed(body: bytes) -> tuple[str, list[str], dict[str, Any], str]:
    """The model, texts, parameters and encoding (``float``, ``base64``) of an
    ``/embeddings`` body."""
    data = _object(body)
    texts = data.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        if isinstance(texts, list) and texts and all(_tokens(text) for text in texts):
            # (what langchain-openai's OpenAIEmbeddings sends by default)
            raise WireError(
                "'input' as token ids is not taken: send the text (langchain's "
                "OpenAIEmbeddings: check_embedding_ctx_length=False)"
            )
        raise WireError("'input' must be a string or an array of strings")
    encoding = data.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise WireError("encoding_format must be 'float' or 'base64'")
    params = {k: v for k, v in data.items() if k not in ("model", "input", "encoding_format")}
    return str(data.get("model") or ""), texts, params, encoding


def _tokens(value: Any) -> bool:
    """Whether ``value`` is a token id or an array of them."""
    if isinstance(value, list):
        return bool(value) and all(type(token) is int for token in value)
    return type(value) is int


def completion_id(response: ChatResponse) -> str:
    """An id that depends on the completion alone (the same again on a replay)."""
    digest = hashlib.blake2b(orjson.dumps(response.to_json()), digest_size=12).hexdigest()
    return f"chatcmpl-{digest}"


def render_completion(
    response: ChatResponse, model: str, *, fresh: tuple[str, int] | None = None
) -> bytes:
    """``response`` as a ``chat.completion`` body. ``fresh``: its id and creation time
    (Unix seconds), for an answer that is not recorded; by default an id of the
    completion and time 0, so that a replay renders the same bytes."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": response.text
        if response.text or not (response.tool_calls or response.refusal is not None)
        else None,
        "refusal": response.refusal,
    }
    if response.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in response.tool_calls
        ]
    # The provider's id where it gave one (what its support asks for; recorded with the
    # answer, so a replay says it again), else one of legion's.
    answer_id, created = fresh or (completion_id(response), 0)
    answer_id = response.id or answer_id
    return orjson.dumps(
        {
            "id": answer_id,
            "object": "chat.completion",
            "created": created,
            "model": response.model or model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _finish(response),
                }
            ],
            "usage": usage_json(response.usage),
        }
    )


def fresh_id() -> tuple[str, int]:
    """An id of its own and the time now, for an answer that is not recorded (calls of
    unrelated callers with the same body shared one id, created at 0)."""
    return f"chatcmpl-{secrets.token_hex(12)}", int(time.time())


def stream_id(body: bytes) -> str:
    """The id of a stream's chunks: it depends on the request alone (a stream's first
    chunk goes out before the completion is known), so a replay repeats it."""
    return f"chatcmpl-{hashlib.blake2b(body, digest_size=12).hexdigest()}"


class ChunkStream:
    """The ``chat.completion.chunk`` events of one stream, written as its pieces arrive
    (`start`, a `delta` per piece, `end`), or all at once from a completion (`whole`).
    Every chunk names ``model`` (the model the request named)."""

    __slots__ = ("_head", "_include_usage")

    def __init__(self, stream_id: str, model: str, include_usage: bool, created: int = 0) -> None:
        self._head = {
            "id": stream_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._include_usage = include_usage

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**self._head, "choices": [choice]}) + b"\n\n"

    def start(self) -> bytes:
        """The first chunk: the assistant's role."""
        return self._chunk({"role": "assistant", "content": ""})

    def delta(self, piece: Delta) -> bytes:
        """The chunk of one piece (text, or part of a tool call)."""
        if piece.tool_index is None:
            return self._chunk({"content": piece.text})
        call: dict[str, Any] = {"index": piece.tool_index}
        if piece.tool_id:
            call["id"] = piece.tool_id
            call["type"] = "function"
        function: dict[str, Any] = {"arguments": piece.arguments}
        if piece.tool_name:
            function["name"] = piece.tool_name
        call["function"] = function
        return self._chunk({"tool_calls": [call]})

    def end(self, response: ChatResponse) -> list[bytes]:
        """The last chunks: the finish reason, the usage when asked for, ``[DONE]``."""
        events = [self._chunk({}, _finish(response))]
        if response.refusal is not None:  # (kept whole as it came: handed on at the end)
            events.insert(0, self._chunk({"refusal": response.refusal}))
        if self._include_usage:
            tail = {**self._head, "choices": [], "usage": usage_json(response.usage)}
            events.append(b"data: " + orjson.dumps(tail) + b"\n\n")
        events.append(_DONE)
        return events

    def whole(self, response: ChatResponse) -> list[bytes]:
        """Every chunk of ``response``: the role, the text, each tool call, then `end`."""
        events = [self.start()]
        if response.text:
            events.append(self.delta(Delta(text=response.text)))
        for index, call in enumerate(response.tool_calls):
            piece = Delta(
                tool_index=index, tool_id=call.id, tool_name=call.name, arguments=call.arguments
            )
            events.append(self.delta(piece))
        return events + self.end(response)


def render_stream(
    response: ChatResponse, model: str, include_usage: bool, stream_id: str | None = None
) -> list[bytes]:
    """``response`` as the events of a stream: the role, the text, each tool call, the
    finish reason, the usage when asked for, then ``[DONE]`` (``stream_id``: the chunks'
    id, by default one that depends on the completion alone)."""
    chunks = ChunkStream(stream_id or completion_id(response), response.model or model,
                         include_usage)  # fmt: skip
    return chunks.whole(response)


def render_stream_error(status: int, message: str, cause: BaseException | None = None) -> bytes:
    """The event that ends a stream broken after its first chunks (the ``openai`` SDK
    raises an ``APIError`` with ``message``)."""
    return b"data: " + render_error(status, message, cause) + b"\n\n"


def render_embeddings(embeddings: Embeddings, model: str, encoding: str = "float") -> bytes:
    """``embeddings`` as an ``/embeddings`` answer (``base64``: little-endian float32s,
    as OpenAI sends them)."""
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": _encoded(vector, encoding)}
                for index, vector in enumerate(embeddings.vectors)
            ],
            "model": embeddings.model or model,
            "usage": {
                "prompt_tokens": embeddings.usage.prompt_tokens,
                "total_tokens": embeddings.usage.prompt_tokens,
            },
        }
    )


def _encoded(vector: Sequence[float], encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return list(vector)


def render_error(
    status: int, message: str, cause: BaseException | None = None, *, code: str | None = None
) -> bytes:
    """An error body as OpenAI writes it; its ``code`` (unless given) and ``param`` those
    the provider gave for ``cause`` (``context_length_exceeded``, ``messages``), else
    OpenAI's own for what legion says (``rate_limit_exceeded``, ``insufficient_quota``
    for a budget that cannot hold the call, ``invalid_api_key``): a client decides on
    them."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        kind = "rate_limit_error"
    said, param = _said(cause)
    code = code or said
    if code is None:
        code = _CODES.get(status)
        if isinstance(cause, BudgetExceeded):
            code = "insufficient_quota"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


def _said(cause: BaseException | None) -> tuple[str | None, str | None]:
    """The provider's ``error.code`` and ``error.param`` kept with ``cause``."""
    code = getattr(cause, "code", None)
    param = getattr(cause, "param", None)
    return (
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object for ``usage``, with the details it has."""
    data: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total,
    }
    if usage.cached_tokens:
        data["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens:
        data["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return data


def _finish(response: ChatResponse) -> str:
    if response.finish_reason:
        return response.finish_reason
    return "tool_calls" if response.tool_calls else "stop"


def _object(body: bytes) -> dict[str, Any]:
    # Read as legion reads any JSON from outside: nested past `legion.codec.MAX_DEPTH`
    # it is refused here, not sent on (orjson writes no more than 255 levels: a body a
    # little deeper failed as it was sent, a 500 at the gateway).
    try:
        data = loads_given(body)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"the body is not valid JSON: {json_error(exc)}") from None
    if not isinstance(data, dict):
        raise WireError("the body must be a JSON object")
    return data
