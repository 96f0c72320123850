"""`OpenAIProvider`: chat completions from any OpenAI-compatible server
(OpenAI, vLLM, llama.cpp's server, Ollama, LM Studio, the simulator).

Why a thin aiohttp client rather than the official ``openai`` SDK: the client
runs on the hot path of thousands of concurrent calls, and its CPU cost per
call decides how many calls one process can drive. Measured here with
``benchmarks/provider_client_cost.py`` (5,000 calls, 1,000 concurrent,
against the simulator in another process, 2-core machine; two runs):

========================  ============  =======
client                    CPU ms/call   wall s
========================  ============  =======
SDK, default transport    2.80-2.89     14.0
SDK, aiohttp transport    0.91          4.6
bare aiohttp              0.16-0.18     0.9
this provider             0.21-0.22     1.1
========================  ============  =======

The SDK on its aiohttp transport costs over 4x this provider, and would still
need its defaults (600 s timeout, hidden retries, un-jittered Retry-After)
replaced. This provider makes exactly one attempt per call: retries and rate
limits belong to `legion.llm.client.LLMClient` and
`legion.llm.capacity.Capacity`.

Streaming asks for ``stream_options: {"include_usage": true}`` and assembles
text, tool-call deltas, the finish reason and usage. A server that ignores
``include_usage`` yields a response whose usage is zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from legion.errors import MalformedResponse, ProviderUnavailable
from legion.llm import deltas
from legion.llm.embeddings import EmbedRequest, EmbedResult, embed_payload, parse_embeddings
from legion.llm.provider import ChatResult
from legion.llm.sse import ServerSentEvent
from legion.llm.transport import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    HttpTransport,
    decode_json,
    error_body,
)
from legion.llm.types import ChatRequest, ChatResponse, ToolCall, Usage, token_count

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider:
    """An OpenAI-compatible chat completions API at ``base_url``.

    ``api_key`` is sent as a bearer token when given (local servers often need
    none). ``max_connections`` sizes the connection pool (0: one connection per
    concurrent call, as HTTP/1.1 needs); give it the route's ``max_in_flight``
    so that calls wait their turn at the `Capacity`, without a timeout running,
    rather than inside the pool, where the wait counts against the call's
    timeout. ``stream_idle_timeout`` is the longest silence allowed on a
    stream (keep-alive comments are silence), ``ttfb_timeout`` the longest
    wait for the answer's headers; ``max_response_bytes`` and
    ``max_event_bytes`` bound what is read (see `legion.llm.transport`).
    ``key_env`` names the variable to set, in the message of a rejected key.
    """

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        name: str = "openai",
        max_connections: int = 0,
        stream_idle_timeout: float = 30.0,
        ttfb_timeout: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        key_env: str = "OPENAI_API_KEY",
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._name = name
        self.base_url = base_url.rstrip("/")
        """Where the API is (``.../v1``): with the model, what names its limits (workers
        on one store share one budget per endpoint and model, `legion.run.shares`)."""
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._endpoint = (base_url, dict(headers))
        self._embed_url = f"{base_url.rstrip('/')}/embeddings"
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
        """One chat completion; see `legion.llm.provider.Provider.chat`."""
        payload = build_payload(request)
        if request.stream:
            name = self._name
            return await self._transport.stream(
                self._url,
                payload,
                total=timeout,
                assembler=ChunkAssembler(name, request.model),
                whole=lambda body: parse_completion(body, name),
            )
        name = self._name
        return await self._transport.complete(
            self._url, payload, total=timeout, parse=lambda body: parse_completion(body, name)
        )

    async def embed(self, request: EmbedRequest, *, timeout: float) -> EmbedResult:  # noqa: ASYNC109
        """Embeddings from ``/v1/embeddings``; one attempt, like `chat`."""
        name, count = self._name, len(request.texts)
        embeddings, limits = await self._transport.post_json(
            self._embed_url,
            embed_payload(request),
            total=timeout,
            parse=lambda body: parse_embeddings(body, name, count),
        )
        return EmbedResult(embeddings, limits)

    @property
    def batch_endpoint(self) -> tuple[str, dict[str, str]]:
        """The base URL and headers of this provider's batch API (`legion.llm.batch`)."""
        return self._endpoint

    async def aclose(self) -> None:
        await self._transport.aclose()


def build_payload(request: ChatRequest) -> dict[str, Any]:
    """The JSON body of ``request``."""
    payload: dict[str, Any] = {"model": request.model, "messages": list(request.messages)}
    payload.update(request.params)
    if request.stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    else:
        payload.pop("stream", None)
        payload.pop("stream_options", None)
    return payload


def parse_completion(body: bytes, provider: str) -> ChatResponse:
    """The `ChatResponse` in a ``chat.completion`` body; `MalformedResponse`
    if the body is not one."""
    data = decode_json(body, provider)
    if isinstance(data, Mapping) and "choices" not in data and "error" in data:
        raise error_body(data["error"], provider)
    try:
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError("message.content is not a string")
        refusal = message.get("refusal")
        if refusal is not None and not isinstance(refusal, str):
            raise TypeError("message.refusal is not a string")
        tool_calls = tuple(
            ToolCall(
                str(call["id"]), str(call["function"]["name"]), str(call["function"]["arguments"])
            )
            for call in message.get("tool_calls") or ()
        )
        return ChatResponse(
            text=content or "",
            tool_calls=tool_calls,
            finish_reason=choice.get("finish_reason"),
            usage=_usage(data.get("usage")),
            model=str(data.get("model") or ""),
            provider=provider,
            refusal=refusal,
            id=answer_id if isinstance(answer_id := data.get("id"), str) else "",
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedResponse(
            f"{provider} answered with an unexpected completion: {exc!r}", provider=provider
        ) from exc


def _usage(data: Any) -> Usage:
    """OpenAI's usage, with the cached prompt tokens and the reasoning tokens it details."""
    if not isinstance(data, Mapping):
        return Usage()
    prompt = data.get("prompt_tokens_details")
    completion = data.get("completion_tokens_details")
    return Usage(
        token_count(data.get("prompt_tokens"), "prompt_tokens"),
        token_count(data.get("completion_tokens"), "completion_tokens"),
        cached_tokens=_detail(prompt, "cached_tokens"),
        reasoning_tokens=_detail(completion, "reasoning_tokens"),
    )


def _detail(details: Any, key: str) -> int:
    return token_count(details.get(key), key) if isinstance(details, Mapping) else 0


class _PartialCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class ChunkAssembler:
    """Assembles ``chat.completion.chunk`` events into a `ChatResponse`, handing each
    piece to the sink of the streamed call under way, if any (`legion.llm.deltas`)."""

    __slots__ = (
        "_calls",
        "_finish",
        "_model",
        "_provider",
        "_refusal",
        "_sink",
        "_text",
        "_usage",
        "done",
    )

    def __init__(self, provider: str, model: str) -> None:
        self._sink = deltas.attach(self)
        self._provider = provider
        self._model = model
        self._text: list[str] = []
        self._refusal: list[str] = []  # (handed on whole, at the stream's end)
        self._calls: dict[int, _PartialCall] = {}
        self._finish: str | None = None
        self._usage = Usage()
        self.done = False

    def add(self, event: ServerSentEvent) -> None:
        if event.data == "[DONE]":
            self.done = True
            return
        provider = self._provider
        chunk = decode_json(event.data, provider)
        try:
            if "error" in chunk:
                error = chunk["error"]
                message = error.get("message") if isinstance(error, Mapping) else error
                raise ProviderUnavailable(
                    f"{provider} reported an error mid-stream: {message}", provider=provider
                )
            self._model = chunk.get("model") or self._model
            if chunk.get("usage"):
                self._usage = _usage(chunk["usage"])
            for choice in chunk.get("choices") or ():
                self._add_delta(choice.get("delta") or {})
                if choice.get("finish_reason"):
                    self._finish = choice["finish_reason"]
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MalformedResponse(
                f"{provider} sent an unexpected stream chunk: {exc!r}", provider=provider
            ) from exc

    @property
    def finished(self) -> bool:
        """A finish reason came: the answer is whole without its ``[DONE]``."""
        return self._finish is not None

    def _add_delta(self, delta: Mapping[str, Any]) -> None:
        sink = self._sink
        content = delta.get("content")
        if content:
            self._text.append(content)
            if sink is not None:
                sink.emit(self, deltas.Delta(text=content))
        refusal = delta.get("refusal")
        if refusal:
            self._refusal.append(str(refusal))
        for call in delta.get("tool_calls") or ():
            index = call.get("index", 0)
            partial = self._calls.get(index)
            if partial is None:
                partial = self._calls[index] = _PartialCall()
            if call.get("id"):
                partial.id = call["id"]
            function = call.get("function") or {}
            if function.get("name"):
                partial.name = function["name"]
            if function.get("arguments"):
                partial.arguments.append(function["arguments"])
            if sink is not None:
                sink.emit(
                    self,
                    deltas.Delta(
                        tool_index=index,
                        tool_id=str(call.get("id") or ""),
                        tool_name=str(function.get("name") or ""),
                        arguments=str(function.get("arguments") or ""),
                    ),
                )

    def response(self) -> ChatResponse:
        calls = tuple(
            ToolCall(call.id, call.name, "".join(call.arguments))
            for _, call in sorted(self._calls.items())
        )
        return ChatResponse(
            text="".join(self._text),
            tool_calls=calls,
            finish_reason=self._finish,
            usage=self._usage,
            model=self._model,
            provider=self._provider,
            refusal="".join(self._refusal) if self._refusal else None,
        )
