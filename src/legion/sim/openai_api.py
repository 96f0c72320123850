"""OpenAI's chat completions API as a dialect of the simulator.

Errors use OpenAI's body, ``{"error": {"message", "type", "param",
"code"}}``, and rate limits are described by the ``x-ratelimit-*`` headers
(see `legion.sim.limits`), so clients and SDKs react as they would in
production.
"""

from __future__ import annotations

import hmac
import itertools
import re
import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from legion.sim.behaviour import Completion, FinishReason
from legion.sim.dialect import BadRequest, ParsedChat
from legion.sim.limits import Admission
from legion.sim.tools import Offer, script_for

_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_MAX_STOP_SEQUENCES = 4
DONE = b"data: [DONE]\n\n"


def parse_chat_request(raw: bytes, *, tool_calls: bool = False) -> ParsedChat:
    """Validate a chat completions body; raise `BadRequest` if invalid.

    Parameters the simulator has no use for (temperature, top_p...) are accepted and
    ignored, as long as they are well-formed where checked. ``tools`` and
    ``response_format`` are checked as OpenAI checks them, and followed only with
    ``tool_calls`` (`legion.sim.tools`).
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON."
        ) from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("You must provide a model parameter.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", "messages")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _ROLES:
            raise BadRequest(
                f"'messages[{index}]' must be an object with a valid 'role'.",
                f"messages[{index}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(
                f"'messages[{index}].content' must be a string or an array of parts.",
                f"messages[{index}].content",
            )
    max_tokens = optional_positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = optional_positive_int(body, "max_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean.", "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(
            options.get("include_usage", False), bool
        ):
            raise BadRequest(
                "'stream_options' must be an object with a boolean 'include_usage'.",
                "stream_options",
            )
        include_usage = options.get("include_usage", False)
    check_temperature(body, 2)
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest("The simulator only supports n=1.", "n")
    offer = _check_offer(body, messages)  # (checked with tool calls off too)
    return ParsedChat(
        model,
        messages,
        max_tokens,
        _parse_stop(body.get("stop")),
        bool(stream),
        include_usage,
        script_for(offer, messages) if tool_calls else None,
    )


def _check_offer(body: dict[str, Any], messages: list[Any]) -> Offer | None:
    """The tools and response format a request offers, checked; ``None`` for neither."""
    tools, response_format = body.get("tools"), body.get("response_format")
    if tools is None and response_format is None:
        return None
    offered: list[tuple[str, Any]] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("'tools' must be an array.", "tools")
        for index, tool in enumerate(tools):
            where = f"tools[{index}]"
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise BadRequest(f"'{where}' must be an object with a 'type'.", where)
            if tool["type"] != "function":
                continue  # other kinds of tools are accepted, never called
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                raise BadRequest(
                    f"Invalid '{where}.function.name': a string of 1 to 64 letters, digits, "
                    "underscores or dashes is required.",
                    f"{where}.function.name",
                )
            assert isinstance(function, dict)
            parameters = function.get("parameters", {"type": "object"})
            if not isinstance(parameters, dict):
                raise BadRequest(
                    f"Invalid schema for function '{name}': {_brief(parameters)} is not of "
                    "type 'object'.",
                    f"{where}.function.parameters",
                )
            offered.append((name, parameters))
    choice, named = _tool_choice(body.get("tool_choice"))
    called = frozenset(
        str(call["function"].get("name"))
        for message in messages
        if message.get("role") == "assistant" and isinstance(message.get("tool_calls"), list)
        for call in message["tool_calls"]
        if isinstance(call, dict) and isinstance(call.get("function"), dict)
    )
    return Offer(tuple(offered), choice, named, called, _response_schema(response_format))


def _tool_choice(choice: Any) -> tuple[str, str | None]:
    if choice is None:
        return "auto", None
    if choice in ("auto", "none", "required"):
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return "named", function["name"]
    raise BadRequest(
        "'tool_choice' must be 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}.',
        "tool_choice",
    )


def _response_schema(response_format: Any) -> Any:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise BadRequest(
                "'response_format.json_schema' must be an object with a 'name'.",
                "response_format.json_schema",
            )
        schema = spec.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise BadRequest(
                f"Invalid schema for response_format '{spec['name']}': {_brief(schema)} is "
                "not of type 'object'.",
                "response_format.json_schema.schema",
            )
        return schema
    raise BadRequest(
        "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
        "response_format.type",
    )


def _brief(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def optional_positive_int(body: dict[str, Any], name: str) -> int | None:
    """``body[name]`` if it is a positive integer, ``None`` if absent."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"'{name}' must be a positive integer.", name)
    return value


def check_temperature(body: dict[str, Any], highest: float) -> None:
    """Reject a ``temperature`` that is not a number from 0 to ``highest``."""
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= highest
    ):
        raise BadRequest(
            f"'temperature' must be a number between 0 and {highest:g}.", "temperature"
        )


def _parse_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if (
        isinstance(stop, list)
        and len(stop) <= _MAX_STOP_SEQUENCES
        and all(isinstance(item, str) for item in stop)
    ):
        return tuple(stop)
    raise BadRequest(
        f"'stop' must be a string or an array of at most {_MAX_STOP_SEQUENCES} strings.", "stop"
    )


def error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An answer with OpenAI's error body."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class OpenAIDialect:
    """``POST /v1/chat/completions``, authenticated by ``Authorization: Bearer``."""

    path = "/v1/chat/completions"

    def __init__(self, api_key: str | None, *, tool_calls: bool = False) -> None:
        self._expected_auth = f"Bearer {api_key}".encode() if api_key is not None else None
        self._tool_calls = tool_calls
        self._id_prefix = f"chatcmpl-sim{secrets.token_hex(4)}"
        self._ids = itertools.count(1)

    def authorize(self, request: web.Request) -> web.Response | None:
        expected = self._expected_auth
        if expected is None:
            return None
        header = request.headers.get("Authorization")
        if header is None:
            return error_response(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        if hmac.compare_digest(header.encode("utf-8", "surrogateescape"), expected):
            return None
        return error_response(
            401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"
        )

    def parse(self, raw: bytes) -> ParsedChat:
        return parse_chat_request(raw, tool_calls=self._tool_calls)

    def error(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        error_type = "server_error" if status >= 500 else "invalid_request_error"
        return error_response(status, message, error_type, code=code, param=param, headers=headers)

    def rate_limited(self, admission: Admission, message: str) -> web.Response:
        error_type = "tokens" if admission.reason in ("tokens", "too_large") else "requests"
        return error_response(
            429,
            message,
            error_type,
            code="rate_limit_exceeded",
            headers=admission.headers(),
        )

    def headers(self, admission: Admission) -> dict[str, str]:
        return admission.headers()

    def completion(
        self, model: str, completion: Completion, prompt_tokens: int, cached_tokens: int = 0
    ) -> bytes:
        completion_tokens = len(completion.tokens)
        usage: dict[str, object] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
        return orjson.dumps(
            {
                "id": self._new_id(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": _message(completion),
                        "logprobs": None,
                        "finish_reason": completion.finish_reason,
                    }
                ],
                "usage": usage,
            }
        )

    def frames(
        self, model: str, prompt_tokens: int, tool_call: tuple[str, str] | None = None
    ) -> ChunkFrames:
        return ChunkFrames(self._new_id(), int(time.time()), model, prompt_tokens, tool_call)

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"


def _message(completion: Completion) -> dict[str, Any]:
    if completion.tool_call is None:
        return {"role": "assistant", "content": completion.text, "refusal": None}
    call_id, name = completion.tool_call
    function = {"name": name, "arguments": completion.text}
    call = {"id": call_id, "type": "function", "function": function}
    return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}


class ChunkFrames:
    """Pre-serialised pieces of the ``chat.completion.chunk`` events of one
    stream, so each token costs one small JSON string encoding."""

    __slots__ = ("_head", "_prefix", "_prompt_tokens", "_tool_call")

    _SUFFIX = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def __init__(
        self,
        completion_id: str,
        created: int,
        model: str,
        prompt_tokens: int,
        tool_call: tuple[str, str] | None = None,
    ) -> None:
        self._tool_call = tool_call
        self._head = (
            b'data: {"id":'
            + orjson.dumps(completion_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
        )
        self._prefix = self._head + b',"choices":[{"index":0,"delta":'
        self._prompt_tokens = prompt_tokens

    def start(self) -> bytes:
        if self._tool_call is not None:
            call_id, name = self._tool_call
            call = {"index": 0, "id": call_id, "type": "function",
                    "function": {"name": name, "arguments": ""}}  # fmt: skip
            delta = orjson.dumps({"role": "assistant", "content": None, "tool_calls": [call]})
            return self._prefix + delta[:-1] + self._SUFFIX
        return self._prefix + b'{"role":"assistant","content":""' + self._SUFFIX

    def padding(self, size: int) -> bytes:
        # (as the usage chunk: no choices; a "ping" event's choices were None to the SDK)
        return self._head + b',"choices":[],"padding":"' + b"x" * size + b'"}\n\n'

    def content(self, token: str) -> bytes:
        if self._tool_call is not None:
            call = {"index": 0, "function": {"arguments": token}}
            return self._prefix + orjson.dumps({"tool_calls": [call]})[:-1] + self._SUFFIX
        return self._prefix + b'{"content":' + orjson.dumps(token) + self._SUFFIX

    def end(self, reason: FinishReason, completion_tokens: int, include_usage: bool) -> bytes:
        tail = (
            self._prefix + b'{},"logprobs":null,"finish_reason":"' + reason.encode() + b'"}]}\n\n'
        )
        if include_usage:
            usage = {
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": self._prompt_tokens + completion_tokens,
            }
            tail += self._head + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
        return tail + DONE

    def malformed_end(self) -> bytes:
        """An event whose data stops in the middle of the JSON object, then ``[DONE]``."""
        return self._prefix + b'{"content":\n\n' + DONE
