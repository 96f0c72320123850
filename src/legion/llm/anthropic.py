"""`AnthropicProvider`: Anthropic's Messages API (``POST /v1/messages``).

Agents write messages and parameters in OpenAI's format whatever the
provider; this module translates them (a thin aiohttp client, for the reasons
measured in `legion.llm.openai`):

* ``system`` and ``developer`` messages become the ``system`` field (a list of
  text blocks when one of them carries a ``cache_control`` hint, which is kept);
  content blocks of other messages go through as given, ``cache_control`` included
  (prompt caching: the answer's cache reads and writes are counted in usage and
  priced apart);
* an assistant message's ``tool_calls`` become ``tool_use`` blocks, and
  ``tool`` messages become ``tool_result`` blocks of a user turn;
* ``max_tokens`` (or ``max_completion_tokens``) is required by Anthropic and
  defaults to ``default_max_tokens``; ``stop`` becomes ``stop_sequences``;
  function ``tools`` and ``tool_choice`` are translated, ``parallel_tool_calls=False``
  becomes ``disable_parallel_tool_use`` and ``user`` becomes ``metadata.user_id``;
  OpenAI's parameters that Anthropic has no field for (``response_format``, ``seed``,
  the penalties...) are refused, by name, unless at their default value; other
  parameters (Anthropic's own: ``top_k``, ``thinking``...) go through unchanged.

Answers come back normalised: text blocks joined, ``tool_use`` blocks as
`ToolCall` (arguments as JSON text), stop reasons in OpenAI's words
(``end_turn`` → ``stop``, ``max_tokens`` → ``length``, ``tool_use`` →
``tool_calls``), cached input tokens counted as prompt tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from legion.errors import MalformedResponse, ProviderRejected, ProviderUnavailable, RateLimited
from legion.llm import deltas
from legion.llm.provider import ChatResult
from legion.llm.sse import ServerSentEvent
from legion.llm.transport import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    HttpTransport,
    decode_json,
    error_body,
)
from legion.llm.types import ChatRequest, ChatResponse, Message, ToolCall, Usage, token_count

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_INPUT_USAGE_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class AnthropicProvider:
    """The Messages API at ``base_url`` (without ``/v1``; with it, the same), authenticated by
    ``x-api-key``; other arguments as for `legion.llm.openai.OpenAIProvider`."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        name: str = "anthropic",
        default_max_tokens: int = 1024,
        max_connections: int = 0,
        stream_idle_timeout: float = 30.0,
        ttfb_timeout: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        key_env: str = "ANTHROPIC_API_KEY",
    ) -> None:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        self._name = name
        # Anthropic's base URL is without /v1; one given with it (as OpenAI's are, and as
        # `legion sim` prints its own) is read the same: the API is at <root>/v1/messages.
        root = base_url.rstrip("/").removesuffix("/v1")
        self.base_url = root
        """Where the API is: with the model, what names its limits (`legion.run.shares`)."""
        self._url = f"{root}/v1/messages"
        self._endpoint = (base_url, dict(headers))
        self._default_max_tokens = default_max_tokens
        self._transport = HttpTransport(
            provider=name,
            headers=headers,
            max_connections=max_connections,
            stream_idle_timeout=stream_idle_timeout,
            auth_hint=f"Set {key_env}.",
            ttfb_timeout=ttfb_timeout,
            max_response_bytes=max_response_bytes,
            max_event_bytes=max_event_bytes,
        )

    @property
    def name(self) -> str:
        return self._name

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        """One message; see `legion.llm.provider.Provider.chat`."""
        payload = build_payload(request, self._name, self._default_max_tokens)
        if request.stream:
            name = self._name
            assembler = MessageAssembler(name, request.model)
            return await self._transport.stream(
                self._url,
                payload,
                total=timeout,
                assembler=assembler,
                whole=lambda body: parse_message(body, name),
            )
        name = self._name
        return await self._transport.complete(
            self._url, payload, total=timeout, parse=lambda body: parse_message(body, name)
        )

    @property
    def default_max_tokens(self) -> int:
        return self._default_max_tokens

    @property
    def batch_endpoint(self) -> tuple[str, dict[str, str]]:
        """The base URL and headers of this provider's batch API (`legion.llm.batch`)."""
        return self._endpoint

    async def aclose(self) -> None:
        await self._transport.aclose()


def build_payload(request: ChatRequest, provider: str, default_max_tokens: int) -> dict[str, Any]:
    """The Messages API body of ``request``; `ProviderRejected` if a message
    cannot be translated."""
    params = dict(request.params)
    max_tokens = params.pop("max_tokens", None)
    max_tokens = params.pop("max_completion_tokens", None) or max_tokens
    _openai_only(params, provider)
    try:
        system, messages = _messages(request.messages)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ProviderRejected(
            f"{provider}: cannot translate the messages to Anthropic's format: {exc!r}",
            provider=provider,
        ) from exc
    payload: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": max_tokens or default_max_tokens,
    }
    if system:
        payload["system"] = system
    stop = params.pop("stop", None)
    if stop:
        payload["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if "tools" in params:
        payload["tools"] = [_tool(tool) for tool in params.pop("tools")]
    if "tool_choice" in params:
        payload["tool_choice"] = _tool_choice(params.pop("tool_choice"))
    if params.pop("parallel_tool_calls", None) is False and "tools" in payload:
        choice = dict(payload.get("tool_choice") or {"type": "auto"})
        if choice.get("type") != "none":
            choice["disable_parallel_tool_use"] = True
        payload["tool_choice"] = choice
    user = params.pop("user", None)
    if user is not None:
        payload["metadata"] = {**(params.pop("metadata", None) or {}), "user_id": str(user)}
    params.pop("stream_options", None)
    payload.update(params)
    payload["stream"] = request.stream
    return payload


# OpenAI's parameters that the Messages API has no field for. Sent on, Anthropic refuses
# the request (400) and a lenient server in its place ignores them: JSON mode asked, and
# prose answered. Each is taken at its default value (what SDKs and frameworks send
# without being asked), and refused, by name, at any other.
_OPENAI_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "seed": (None,),
    "response_format": (None, {"type": "text"}),
    "store": (None, False),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "audio": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
}
_HINTS = {
    "response_format": "ask for JSON in the prompt, or give a tool whose input is the schema",
    "reasoning_effort": "Anthropic's extended thinking is its own parameter, 'thinking'",
}


def _openai_only(params: dict[str, Any], provider: str) -> None:
    """Take OpenAI's parameters that Anthropic has no field for out of ``params``, those
    at their default value; `ProviderRejected` naming the others."""
    refused = []
    for name in [name for name in params if name in _OPENAI_DEFAULTS]:
        value = params.pop(name)
        if not any(type(value) is type(d) and value == d for d in _OPENAI_DEFAULTS[name]):
            refused.append(name)
    metadata = params.get("metadata")
    if isinstance(metadata, Mapping) and set(metadata) - {"user_id"}:
        refused.append("metadata (Anthropic's takes 'user_id' alone)")
    if refused:
        hints = "".join(f"; {name}: {_HINTS[name]}" for name in refused if name in _HINTS)
        raise ProviderRejected(
            f"{provider}: Anthropic's Messages API has no counterpart for "
            f"{', '.join(refused)}: call without it on this route{hints}",
            provider=provider,
            status=400,
        )


def _messages(
    messages: Sequence[Message],
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[str] = []
    blocks_of_system: list[dict[str, Any]] = []
    hinted = False  # a system block asks for prompt caching: keep the blocks
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(_text(content))
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "text":
                        blocks_of_system.append(dict(part))
                        hinted = hinted or "cache_control" in part
            elif content:
                blocks_of_system.append({"type": "text", "text": content})
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "content": content or "",
            }
            last = turns[-1] if turns else None
            if last is not None and last["role"] == "user" and _is_tool_results(last["content"]):
                last["content"].append(result)
            else:
                turns.append({"role": "user", "content": [result]})
        elif role == "assistant" and message.get("tool_calls"):
            blocks: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            for call in message["tool_calls"]:
                function = call["function"]
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": function["name"],
                        "input": orjson.loads(function.get("arguments") or "{}"),
                    }
                )
            turns.append({"role": "assistant", "content": blocks})
        else:
            turns.append({"role": role, "content": content})
    if hinted:
        return blocks_of_system, turns
    return "\n\n".join(part for part in system if part), turns


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    return "".join(part["text"] for part in content if part.get("type") == "text")


def _is_tool_results(content: Any) -> bool:
    return isinstance(content, list) and all(
        block.get("type") == "tool_result" for block in content
    )


def _tool(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    if tool.get("type") != "function" or "function" not in tool:
        return tool  # already in Anthropic's format (or one of its server tools)
    function = tool["function"]
    translated = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        translated["description"] = function["description"]
    return translated


def _tool_choice(choice: Any) -> Any:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "tool", "name": choice["function"]["name"]}
    return choice


def parse_message(body: bytes, provider: str) -> ChatResponse:
    """The `ChatResponse` in a ``message`` body; `MalformedResponse` if the
    body is not one."""
    data = decode_json(body, provider)
    if isinstance(data, Mapping) and data.get("type") == "error" and "content" not in data:
        raise error_body(data.get("error"), provider)
    try:
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in data["content"]:
            if block["type"] == "text":
                text.append(block["text"])
            elif block["type"] == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                calls.append(ToolCall(block["id"], block["name"], arguments))
        usage = data.get("usage") or {}
        return ChatResponse(
            text="".join(text),
            tool_calls=tuple(calls),
            finish_reason=_finish_reason(data.get("stop_reason")),
            usage=_usage(usage, token_count(usage.get("output_tokens"), "output_tokens")),
            model=str(data.get("model") or ""),
            provider=provider,
            id=answer_id if isinstance(answer_id := data.get("id"), str) else "",
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedResponse(
            f"{provider} answered with an unexpected message: {exc!r}", provider=provider
        ) from exc


def _finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    return _STOP_REASONS.get(stop_reason, str(stop_reason))


def _input_tokens(usage: Mapping[str, Any]) -> int:
    return sum(token_count(usage.get(key), key) for key in _INPUT_USAGE_KEYS)


def _usage(usage: Mapping[str, Any], output: int) -> Usage:
    """Anthropic's usage: its ``input_tokens`` leave out the tokens read from and written
    to the prompt cache, which `Usage.prompt_tokens` counts (and prices apart)."""
    return Usage(
        _input_tokens(usage),
        output,
        cached_tokens=token_count(usage.get("cache_read_input_tokens"), "cache_read_input_tokens"),
        cache_write_tokens=token_count(
            usage.get("cache_creation_input_tokens"), "cache_creation_input_tokens"
        ),
    )


class _Block:
    __slots__ = ("id", "kind", "name", "parts")

    def __init__(self, kind: str, id: str = "", name: str = "") -> None:
        self.kind = kind
        self.id = id
        self.name = name
        self.parts: list[str] = []


class MessageAssembler:
    """Assembles the events of a streamed message into a `ChatResponse`, handing each
    piece to the sink of the streamed call under way, if any (`legion.llm.deltas`)."""

    __slots__ = (
        "_blocks",
        "_finish",
        "_input_usage",
        "_model",
        "_output",
        "_provider",
        "_sink",
        "_tools",
        "done",
    )

    def __init__(self, provider: str, model: str) -> None:
        self._sink = deltas.attach(self)
        self._tools: dict[int, int] = {}  # block index -> tool call number, for the sink
        self._provider = provider
        self._model = model
        self._blocks: dict[int, _Block] = {}
        self._finish: str | None = None
        self._input_usage: Mapping[str, Any] = {}
        self._output = 0
        self.done = False

    def add(self, event: ServerSentEvent) -> None:
        provider = self._provider
        data = decode_json(event.data, provider)
        try:
            kind = data["type"]
            if kind == "content_block_delta":
                delta = data["delta"]
                block = self._blocks[data["index"]]
                if delta["type"] == "text_delta":
                    block.parts.append(delta["text"])
                    self._emit(deltas.Delta(text=delta["text"]))
                elif delta["type"] == "input_json_delta":
                    block.parts.append(delta["partial_json"])
                    tool = self._tools.get(data["index"])
                    if tool is not None:
                        self._emit(deltas.Delta(tool_index=tool, arguments=delta["partial_json"]))
            elif kind == "content_block_start":
                start = data["content_block"]
                block = _Block(start["type"], start.get("id", ""), start.get("name", ""))
                if start["type"] == "text" and start.get("text"):
                    block.parts.append(start["text"])
                    self._emit(deltas.Delta(text=start["text"]))
                elif start["type"] == "tool_use":
                    tool = self._tools[data["index"]] = len(self._tools)
                    piece = deltas.Delta(tool_index=tool, tool_id=block.id, tool_name=block.name)
                    self._emit(piece)
                self._blocks[data["index"]] = block
            elif kind == "message_start":
                message = data["message"]
                self._model = message.get("model") or self._model
                usage = message.get("usage") or {}
                _usage(usage, 0)  # (checked here, where a bad count is a bad event)
                self._input_usage = usage
                self._output = token_count(usage.get("output_tokens"), "output_tokens")
            elif kind == "message_delta":
                self._finish = _finish_reason(data["delta"].get("stop_reason"))
                usage = data.get("usage") or {}
                _usage(usage, 0)
                self._output = token_count(usage.get("output_tokens"), "output_tokens") or (
                    self._output
                )
                if any(usage.get(key) for key in _INPUT_USAGE_KEYS):
                    self._input_usage = usage
            elif kind == "message_stop":
                self.done = True
            elif kind == "error":
                self._raise_error(data.get("error") or {})
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MalformedResponse(
                f"{provider} sent an unexpected stream event: {exc!r}", provider=provider
            ) from exc

    @property
    def finished(self) -> bool:
        """A stop reason came (`message_delta`): the answer is whole without its
        ``message_stop``."""
        return self._finish is not None

    def _emit(self, delta: deltas.Delta) -> None:
        if self._sink is not None and (delta.text or delta.tool_index is not None):
            self._sink.emit(self, delta)

    def _raise_error(self, error: Mapping[str, Any]) -> None:
        provider = self._provider
        message = f"{provider} reported an error mid-stream: {error.get('message')}"
        if error.get("type") == "rate_limit_error":
            raise RateLimited(message, provider=provider)
        raise ProviderUnavailable(message, provider=provider)

    def response(self) -> ChatResponse:
        text: list[str] = []
        calls: list[ToolCall] = []
        for _, block in sorted(self._blocks.items()):
            if block.kind == "text":
                text.extend(block.parts)
            elif block.kind == "tool_use":
                calls.append(ToolCall(block.id, block.name, "".join(block.parts) or "{}"))
        return ChatResponse(
            text="".join(text),
            tool_calls=tuple(calls),
            finish_reason=self._finish,
            usage=_usage(self._input_usage, self._output),
            model=self._model,
            provider=self._provider,
        )
