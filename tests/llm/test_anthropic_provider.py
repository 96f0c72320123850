"""AnthropicProvider over real HTTP against the simulator's Messages route,
and its translation of OpenAI-style messages, tools and answers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from legion.errors import (
    MalformedResponse,
    ProviderAuthError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from legion.llm import AnthropicProvider, ChatRequest, OpenAIProvider, ToolCall, Usage
from legion.llm.anthropic import MessageAssembler, build_payload, parse_message
from legion.llm.sse import ServerSentEvent
from tests.llm.conftest import Closing, StartSimulator

MODEL = "sim-model"
MESSAGES = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"})


def request(stream: bool = False, model: str = MODEL, **params: Any) -> ChatRequest:
    return ChatRequest(model, MESSAGES, params, stream)


async def test_json_and_stream_answer_as_the_openai_route_does(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(tokens_per_second=5000.0, rpm=100, tpm=100_000, api_key="k")
    anthropic = closing(AnthropicProvider(base_url=sim.url, api_key="k"))
    openai = closing(OpenAIProvider(base_url=sim.base_url, api_key="k"))
    reference = (await openai.chat(request(max_tokens=1024), timeout=10)).response

    plain = await anthropic.chat(request(), timeout=10)
    streamed = await anthropic.chat(request(stream=True), timeout=10)
    # A base URL with /v1 (as OpenAI's are, and as the simulator prints its own) works
    # too: it was a 404 on <url>/v1/v1/messages for every call.
    with_v1 = closing(AnthropicProvider(base_url=sim.url.rstrip("/") + "/v1/", api_key="k"))
    again = await with_v1.chat(request(), timeout=10)
    assert again.response.text == plain.response.text
    for result in (plain, streamed):
        response = result.response
        assert (response.text, response.usage, response.finish_reason) == (
            reference.text,
            reference.usage,
            "stop",
        )
        assert (response.model, response.provider) == (MODEL, "anthropic")
    info = streamed.rate_limits
    assert (info.limit_requests, info.remaining_requests, info.limit_tokens) == (100, 97, 100_000)
    assert info.reset_requests is not None and 0 < info.reset_requests <= 60.5

    capped = await anthropic.chat(request(stream=True, max_tokens=4), timeout=10)
    assert capped.response.finish_reason == "length"
    assert capped.response.usage.completion_tokens == 4


async def test_statuses_become_legion_errors(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(api_key="k", rpm=1)
    wrong = closing(AnthropicProvider(base_url=sim.url, api_key="nope"))
    with pytest.raises(ProviderAuthError) as auth:
        await wrong.chat(request(), timeout=10)
    assert str(auth.value) == (
        "anthropic rejected the API key (401): invalid x-api-key. Set ANTHROPIC_API_KEY."
    )
    provider = closing(AnthropicProvider(base_url=sim.url, api_key="k"))
    with pytest.raises(ProviderRejected, match=r"\(404\)"):
        await provider.chat(request(model="nope"), timeout=10)
    await provider.chat(request(), timeout=10)
    with pytest.raises(RateLimited) as limited:
        await provider.chat(request(), timeout=10)
    assert limited.value.retry_after is not None and 1 <= limited.value.retry_after <= 60


async def test_malformed_and_stalled_streams(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    broken = await start_simulator(malformed_rate=1.0)
    provider = closing(AnthropicProvider(base_url=broken.url, api_key=None))
    for stream in (False, True):
        with pytest.raises(MalformedResponse, match="anthropic sent invalid JSON"):
            await provider.chat(request(stream=stream), timeout=10)

    stalled = await start_simulator(stall_rate=1.0)
    slow = closing(AnthropicProvider(base_url=stalled.url, api_key=None, stream_idle_timeout=0.2))
    with pytest.raises(ProviderUnavailable, match="stream idle timeout"):
        await slow.chat(request(stream=True), timeout=30)


# -- translation ---------------------------------------------------------------------


def test_openai_style_conversations_are_translated() -> None:
    messages = (
        {"role": "system", "content": "Rule one."},
        {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "t2", "type": "function", "function": {"name": "weather", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2", "content": "rain"},
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {"name": "native", "input_schema": {"type": "object"}},
    ]
    payload = build_payload(
        ChatRequest(
            "claude",
            messages,
            {
                "max_completion_tokens": 300,
                "stop": "END",
                "tools": tools,
                "tool_choice": "required",
                "temperature": 0.5,
                "stream_options": {"include_usage": True},
            },
            stream=True,
        ),
        "anthropic",
        1024,
    )
    assert payload == {
        "model": "claude",
        "system": "Rule one.\n\nRule two.",
        "max_tokens": 300,
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "weather",
                "description": "Weather now",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            {"name": "native", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "any"},
        "temperature": 0.5,
        "stream": True,
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "t2", "name": "weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "rain"},
                ],
            },
        ],
    }


@pytest.mark.parametrize(
    ("choice", "translated"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
        ({"type": "any"}, {"type": "any"}),
    ],
)
def test_tool_choice(choice: Any, translated: Any) -> None:
    payload = build_payload(ChatRequest("m", MESSAGES, {"tool_choice": choice}), "anthropic", 10)
    assert payload["tool_choice"] == translated
    assert payload["max_tokens"] == 10 and payload["stream"] is False


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_openai_parameters_are_translated_or_refused_never_sent_as_they_are() -> None:
    # They went into the Messages body unchanged: Anthropic refuses an unknown field, and
    # a lenient server ignored them (JSON mode asked, prose answered).
    def payload(**params: Any) -> dict[str, Any]:
        return build_payload(ChatRequest("m", MESSAGES, params), "anthropic", 10)

    one_at_a_time = payload(tools=[TOOL], parallel_tool_calls=False, user="u-7")
    assert one_at_a_time["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert one_at_a_time["metadata"] == {"user_id": "u-7"}
    assert "parallel_tool_calls" not in one_at_a_time and "user" not in one_at_a_time
    forced = payload(tools=[TOOL], tool_choice="required", parallel_tool_calls=False)
    assert forced["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    # What SDKs and frameworks send unasked, at OpenAI's defaults, is taken out.
    defaults = payload(n=1, seed=None, presence_penalty=0, response_format={"type": "text"})
    assert set(defaults) == {"model", "messages", "system", "max_tokens", "stream"}
    # Both token limits: the newer name wins, and neither is sent on under its own name.
    both = payload(max_tokens=5, max_completion_tokens=7)
    assert both["max_tokens"] == 7 and "max_completion_tokens" not in both
    # Anthropic's own parameters go through.
    assert payload(top_k=3)["top_k"] == 3
    with pytest.raises(ProviderRejected, match=r"response_format.*ask for JSON") as refused:
        payload(response_format={"type": "json_object"}, seed=7)
    assert "seed" in str(refused.value) and refused.value.status == 400
    with pytest.raises(ProviderRejected, match="metadata"):
        payload(metadata={"app": "x"})


def test_untranslatable_messages_are_rejected() -> None:
    with pytest.raises(ProviderRejected, match="cannot translate"):
        build_payload(ChatRequest("m", ({"content": "no role"},)), "anthropic", 10)


def test_tool_use_answers_and_cached_tokens() -> None:
    body = {
        "model": "claude-3-5-haiku-20241022",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 20},
    }
    response = parse_message(orjson.dumps(body), "anthropic")
    assert response.text == "Let me check." and response.finish_reason == "tool_calls"
    assert response.tool_calls == (ToolCall("toolu_1", "weather", '{"city":"Paris"}'),)
    assert response.usage == Usage(100, 20, cached_tokens=90)  # 90 of the 100 from the cache
    with pytest.raises(MalformedResponse):
        parse_message(b'{"content": [{"text": "no type"}]}', "anthropic")


def test_streamed_tool_use() -> None:
    stream: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {"model": "claude-x", "usage": {"input_tokens": 12, "output_tokens": 1}},
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hm."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "ping"},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ": 1}"},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 30},
        },
    ]
    assembler = MessageAssembler("anthropic", "requested")
    for event in stream:
        assembler.add(ServerSentEvent(event["type"], orjson.dumps(event).decode()))
    assert not assembler.done
    assembler.add(ServerSentEvent("message_stop", '{"type": "message_stop"}'))
    response = assembler.response()
    assert (response.text, response.finish_reason, response.model) == (
        "Hm.",
        "tool_calls",
        "claude-x",
    )
    assert response.tool_calls == (ToolCall("toolu_9", "f", '{"a": 1}'),)
    assert response.usage == Usage(12, 30)


@pytest.mark.parametrize(
    ("error", "raised"),
    [("overloaded_error", ProviderUnavailable), ("rate_limit_error", RateLimited)],
)
def test_error_events_mid_stream(error: str, raised: type[Exception]) -> None:
    event = {"type": "error", "error": {"type": error, "message": "busy"}}
    with pytest.raises(raised, match="mid-stream: busy"):
        MessageAssembler("anthropic", "m").add(
            ServerSentEvent("error", orjson.dumps(event).decode())
        )


def test_a_delta_for_an_unknown_block_is_malformed() -> None:
    delta = {
        "type": "content_block_delta",
        "index": 3,
        "delta": {"type": "text_delta", "text": "x"},
    }
    with pytest.raises(MalformedResponse, match="unexpected stream event"):
        MessageAssembler("anthropic", "m").add(ServerSentEvent("", orjson.dumps(delta).decode()))


def test_a_usage_that_is_no_token_count_is_malformed() -> None:
    for usage in ({"input_tokens": -5}, {"output_tokens": "x"}, {"cache_read_input_tokens": 1e300}):
        body = {"content": [{"type": "text", "text": "hi"}], "usage": usage}
        with pytest.raises(MalformedResponse, match="usage"):
            parse_message(orjson.dumps(body), "anthropic")
        start = {"type": "message_start", "message": {"model": "m", "usage": usage}}
        with pytest.raises(MalformedResponse, match="usage"):
            MessageAssembler("anthropic", "m").add(
                ServerSentEvent(event="message_start", data=orjson.dumps(start).decode())
            )


def test_a_200_whose_body_is_an_error_is_the_providers_failure() -> None:
    body = b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}'
    with pytest.raises(ProviderUnavailable, match="answered 200 with an error: busy"):
        parse_message(body, "anthropic")
