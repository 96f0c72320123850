"""OpenAIProvider over real HTTP on loopback against the simulator, and its
parsing of bodies the simulator does not produce (tool calls)."""

from __future__ import annotations

import socket

import orjson
import pytest

from legion.errors import (
    MalformedResponse,
    ProviderAuthError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from legion.llm import ChatRequest, OpenAIProvider, ToolCall, Usage
from legion.llm.openai import ChunkAssembler, build_payload, parse_completion
from legion.llm.sse import ServerSentEvent
from legion.sim.behaviour import estimate_prompt_tokens, generate_completion
from tests.llm.conftest import Closing, StartSimulator

MODEL = "sim-model"
MESSAGES = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"})


def request(stream: bool = False, model: str = MODEL, **params: object) -> ChatRequest:
    return ChatRequest(model, MESSAGES, params, stream)


async def test_json_and_stream_give_the_same_completion_and_usage(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(tokens_per_second=5000.0, rpm=1000, tpm=1_000_000)
    provider = closing(OpenAIProvider(base_url=sim.base_url, api_key="x", name="sim"))
    expected = generate_completion(MODEL, MESSAGES, min_tokens=8, max_tokens=64)
    usage = Usage(estimate_prompt_tokens(MESSAGES), len(expected.tokens))

    plain = await provider.chat(request(), timeout=10)
    streamed = await provider.chat(request(stream=True), timeout=10)
    for result in (plain, streamed):
        response = result.response
        assert (response.text, response.finish_reason, response.usage) == (
            expected.text,
            "stop",
            usage,
        )
        assert (response.model, response.provider, response.tool_calls) == (MODEL, "sim", ())
    assert (plain.rate_limits.limit_requests, plain.rate_limits.remaining_requests) == (1000, 999)
    assert streamed.rate_limits.remaining_requests == 998
    assert plain.rate_limits.limit_tokens == 1_000_000

    capped = await provider.chat(request(stream=True, max_tokens=3), timeout=10)
    assert capped.response.finish_reason == "length"
    assert capped.response.usage.completion_tokens == 3
    stats = sim.stats()
    assert (stats.succeeded, stats.completion_tokens) == (3, 2 * usage.completion_tokens + 3)


async def test_statuses_become_legion_errors(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(api_key="right", rpm=1, tpm=100)
    wrong = closing(OpenAIProvider(base_url=sim.base_url, api_key="wrong"))
    with pytest.raises(ProviderAuthError) as auth:
        await wrong.chat(request(), timeout=10)
    assert str(auth.value) == (
        "openai rejected the API key (401): Incorrect API key provided. Set OPENAI_API_KEY."
    )
    assert (auth.value.status, auth.value.provider, auth.value.fatal) == (401, "openai", True)

    provider = closing(OpenAIProvider(base_url=sim.base_url, api_key="right"))
    with pytest.raises(ProviderRejected, match=r"\(404\): The model `nope` does not exist"):
        await provider.chat(request(model="nope"), timeout=10)
    with pytest.raises(ProviderRejected, match=r"\(400\): 'temperature' must be"):
        await provider.chat(request(temperature=5), timeout=10)
    with pytest.raises(ProviderRejected, match="retrying cannot help"):  # over the TPM limit
        await provider.chat(request(max_tokens=500), timeout=10)
    await provider.chat(request(max_tokens=5), timeout=10)
    with pytest.raises(RateLimited) as limited:
        await provider.chat(request(max_tokens=5), timeout=10)
    assert limited.value.status == 429
    assert limited.value.retry_after is not None and 0 < limited.value.retry_after <= 60


async def test_server_errors_are_unavailable(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(error_rate=1.0, error_statuses=(503,))
    provider = closing(OpenAIProvider(base_url=sim.base_url))
    with pytest.raises(
        ProviderUnavailable, match=r"openai failed \(503\): The server had an error"
    ):
        await provider.chat(request(), timeout=10)


async def test_malformed_bodies_and_streams(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(malformed_rate=1.0)
    provider = closing(OpenAIProvider(base_url=sim.base_url))
    for stream in (False, True):
        with pytest.raises(MalformedResponse, match="openai sent invalid JSON"):
            await provider.chat(request(stream=stream), timeout=10)
    assert sim.stats().malformed == 2


async def test_a_hung_call_times_out(start_simulator: StartSimulator, closing: Closing) -> None:
    sim = await start_simulator(hang_rate=1.0)
    provider = closing(OpenAIProvider(base_url=sim.base_url))
    with pytest.raises(ProviderUnavailable, match=r"did not answer within 0\.2 s"):
        await provider.chat(request(), timeout=0.2)
    assert sim.stats().hangs == 1


async def test_a_stalled_stream_hits_the_idle_timeout(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(stall_rate=1.0)
    provider = closing(OpenAIProvider(base_url=sim.base_url, stream_idle_timeout=0.2))
    with pytest.raises(ProviderUnavailable, match=r"sent nothing for 0\.2 s"):
        await provider.chat(request(stream=True), timeout=30)
    assert sim.stats().stalls == 1


async def test_a_refused_connection_is_unavailable(closing: Closing) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = closing(OpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(ProviderUnavailable, match="connection failed"):
        await provider.chat(request(), timeout=5)


# -- bodies the simulator does not produce -------------------------------------------


def test_payload_sets_streaming_options() -> None:
    payload = build_payload(ChatRequest("m", MESSAGES, {"max_tokens": 5, "stream": True}))
    assert "stream" not in payload and payload["max_tokens"] == 5
    streamed = build_payload(ChatRequest("m", MESSAGES, {}, stream=True))
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}


def test_tool_calls_in_a_completion() -> None:
    body = {
        "model": "gpt-4o-mini",
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q":"x"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    response = parse_completion(orjson.dumps(body), "openai")
    assert response.text == "" and response.finish_reason == "tool_calls"
    assert response.tool_calls == (ToolCall("call_1", "lookup", '{"q":"x"}'),)
    assert response.usage == Usage(10, 5)


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"choices": []}', b'{"choices": [{"message": {"content": 3}}]}'],
)
def test_unexpected_completions_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_completion(body, "openai")


def test_a_refusal_is_kept_plain_and_streamed() -> None:
    # Structured outputs: the model's refusal comes apart from the text (it was lost).
    message = {"role": "assistant", "content": None, "refusal": "I can't help."}
    body = {"model": "m", "choices": [{"message": message, "finish_reason": "stop"}]}
    assert parse_completion(orjson.dumps(body), "openai").refusal == "I can't help."
    assembler = ChunkAssembler("openai", "m")
    for delta in (
        {"role": "assistant", "refusal": ""},
        {"refusal": "I can't"},
        {"refusal": " help."},
    ):
        chunk = {"choices": [{"delta": delta}]}
        assembler.add(ServerSentEvent("", orjson.dumps(chunk).decode()))
    assert assembler.response().refusal == "I can't help."
    assert ChunkAssembler("openai", "m").response().refusal is None


def test_a_200_whose_body_is_an_error_is_the_providers_failure() -> None:
    # A gateway before the provider says a passing failure so: it was "malformed",
    # its message lost ("KeyError('choices')").
    body = b'{"error": {"message": "upstream overloaded", "code": 502}}'
    with pytest.raises(
        ProviderUnavailable, match="answered 200 with an error: upstream overloaded"
    ):
        parse_completion(body, "openai")


def test_stream_assembles_tool_call_deltas() -> None:
    chunks = [
        {"model": "gpt-4o", "choices": [{"delta": {"role": "assistant", "content": None}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}},
                        ]
                    }
                }
            ]
        },
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}},
                            {"index": 0, "function": {"arguments": ": 1}"}},
                        ]
                    }
                }
            ]
        },
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}},
    ]
    assembler = ChunkAssembler("openai", "requested-model")
    for chunk in chunks:
        assembler.add(ServerSentEvent("", orjson.dumps(chunk).decode()))
    assert not assembler.done
    assembler.add(ServerSentEvent("", "[DONE]"))
    assert assembler.done
    response = assembler.response()
    assert response.tool_calls == (ToolCall("a", "f", '{"x": 1}'), ToolCall("b", "g", "{}"))
    assert (response.finish_reason, response.usage, response.model) == (
        "tool_calls",
        Usage(7, 9),
        "gpt-4o",
    )


def test_an_error_event_mid_stream_is_unavailable() -> None:
    assembler = ChunkAssembler("openai", "m")
    with pytest.raises(ProviderUnavailable, match="mid-stream: overloaded"):
        assembler.add(ServerSentEvent("", '{"error": {"message": "overloaded"}}'))


def test_cached_and_reasoning_tokens_are_kept() -> None:
    body = {
        "model": "o3-mini",
        "choices": [{"message": {"content": "42"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 256},
        },
    }
    usage = parse_completion(orjson.dumps(body), "openai").usage
    assert usage == Usage(1200, 300, cached_tokens=1024, reasoning_tokens=256)
    body["usage"] = {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None}
    assert parse_completion(orjson.dumps(body), "openai").usage == Usage(5, 1)


@pytest.mark.parametrize(
    ("usage", "said"),
    [
        ({"prompt_tokens": -100000, "completion_tokens": 5}, "prompt_tokens is not a token count"),
        ({"prompt_tokens": 1e300}, "prompt_tokens is not a token count"),
        ({"prompt_tokens": 2**63 - 1}, "prompt_tokens is not a token count"),
        ({"prompt_tokens": "ten"}, "prompt_tokens is not a whole number: 'ten'"),
        ({"completion_tokens": 2.5}, "completion_tokens is not a whole number"),
        ({"completion_tokens_details": {"reasoning_tokens": -1}}, "reasoning_tokens"),
    ],
)
def test_a_usage_that_is_no_token_count_is_malformed(usage: dict[str, object], said: str) -> None:
    # Negative usage undid --max-tokens; 1e300 failed the task as its own OutputError;
    # "ten" escaped as a bare ValueError, uncounted; 2**63-1 went into every total.
    body = {"choices": [{"message": {"content": "hi"}}], "usage": usage}
    with pytest.raises(MalformedResponse, match=said):
        parse_completion(orjson.dumps(body), "openai")
    chunk = {"choices": [], "usage": usage}
    stream = ChunkAssembler("openai", "m")
    with pytest.raises(MalformedResponse, match=said):
        stream.add(ServerSentEvent("", orjson.dumps(chunk).decode()))
    whole = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 7.0}}
    assert parse_completion(orjson.dumps(whole), "openai").usage == Usage(7, 0)  # a count


async def test_a_stream_asked_of_a_server_that_answers_json_or_omits_done_is_taken(
    closing: Closing,
) -> None:
    # A server that ignores stream: true (JSON), or ends its stream after the finish
    # reason without [DONE]: each answer was thrown away as "ended the stream before its
    # final event" and asked again, paid each time (the gateway's client waited for ever).
    from aiohttp import web

    whole = {
        "choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    chunk = {"choices": [{"delta": {"content": "cut"}, "finish_reason": "stop"}]}

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/json"):
            return web.json_response(whole)
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        await stream.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await stream.write_eof()  # no data: [DONE]
        return stream

    app = web.Application()
    app.router.add_post("/{kind}/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        for kind, text, usage in (("json", "whole", Usage(3, 1)), ("cut", "cut", Usage())):
            url = f"http://127.0.0.1:{port}/{kind}/v1"
            provider = closing(OpenAIProvider(base_url=url, api_key="x", name="odd"))
            result = await provider.chat(request(stream=True), timeout=10)
            assert (result.response.text, result.response.finish_reason) == (text, "stop")
            assert result.response.usage == usage
    finally:
        await runner.cleanup()


async def test_a_key_the_provider_quotes_back_in_its_error_is_scrubbed(closing: Closing) -> None:
    """A provider (or a proxy) that quotes the key it was sent in its error: the key was
    in the task's error, the output, the store, a tenant's API answers and the gateway's
    answers to its callers."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        said = f"Incorrect API key provided: {request.headers['Authorization']}."
        # (an error in a 200's body, as some gateways answer, too)
        status = {"auth": 401, "bad": 400, "ok": 200}[request.path.split("/")[1]]
        return web.json_response({"error": {"message": said, "type": "x"}}, status=status)

    app = web.Application()
    app.router.add_post("/{kind}/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    key = "sk-LEAKME-1234567890abcdef"
    try:
        for kind in ("auth", "bad", "ok"):
            url = f"http://127.0.0.1:{port}/{kind}/v1"
            provider = closing(OpenAIProvider(base_url=url, api_key=key))
            with pytest.raises(
                (ProviderAuthError, ProviderRejected, ProviderUnavailable)
            ) as caught:
                await provider.chat(request(), timeout=10)
            said = str(caught.value) + repr(getattr(caught.value, "fields", ""))
            assert "LEAKME" not in said and "Incorrect API key provided: ***" in said, said
    finally:
        await runner.cleanup()
