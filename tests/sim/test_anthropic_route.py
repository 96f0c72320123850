"""The simulator's Anthropic Messages route (``POST /v1/messages``) over real
HTTP: the same behaviour as the OpenAI route, in Anthropic's wire format."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from legion.sim import Simulator
from legion.sim.behaviour import estimate_prompt_tokens, generate_completion

StartSimulator = Callable[..., Awaitable[Simulator]]  # the start_simulator fixture

MODEL = "sim-model"
USER = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post(
    session: aiohttp.ClientSession, sim: Simulator, body: dict[str, Any], **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    async with session.post(
        f"{sim.url}/v1/messages",
        data=orjson.dumps(body),
        headers={"anthropic-version": "2023-06-01", **headers},
    ) as response:
        return response.status, response.headers.copy(), await response.read()


def events(raw: bytes) -> list[tuple[str, Any]]:
    parsed = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n", 1)
            assert name.startswith("event: ") and data.startswith("data: ")
            parsed.append((name[7:], data[6:]))
    return parsed


async def test_message_matches_the_openai_route_with_the_system_prompt_first(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    sim = await start_simulator()
    body = {"model": MODEL, "max_tokens": 100, "system": "Be brief.", "messages": USER}
    status, headers, raw = await post(session, sim, body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    message = orjson.loads(raw)
    conversation = [{"role": "system", "content": "Be brief."}, *USER]
    expected = generate_completion(MODEL, conversation, min_tokens=8, max_tokens=64)
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["id"].startswith("msg_sim")
    assert message["content"] == [{"type": "text", "text": expected.text}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    assert message["usage"] == {
        "input_tokens": estimate_prompt_tokens(conversation),
        "output_tokens": len(expected.tokens),
    }

    async with session.post(
        f"{sim.base_url}/chat/completions",
        data=orjson.dumps({"model": MODEL, "messages": conversation}),
    ) as response:
        openai_text = (await response.json())["choices"][0]["message"]["content"]
    assert openai_text == expected.text

    blocks = [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]
    _, _, capped = await post(
        session, sim, {"model": MODEL, "max_tokens": 3, "system": blocks, "messages": USER}
    )
    capped_message = orjson.loads(capped)
    assert capped_message["stop_reason"] == "max_tokens"
    assert capped_message["usage"]["output_tokens"] == 3


async def test_stream_events(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    sim = await start_simulator(tokens_per_second=5000.0)
    body = {"model": MODEL, "max_tokens": 100, "messages": USER}
    _, _, raw = await post(session, sim, body)
    full = orjson.loads(raw)
    status, headers, streamed = await post(session, sim, {**body, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    stream = events(streamed)
    names = [name for name, _ in stream]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    start = orjson.loads(stream[0][1])["message"]
    assert start["usage"]["input_tokens"] == full["usage"]["input_tokens"]
    assert start["model"] == MODEL and start["content"] == []
    deltas = [orjson.loads(data)["delta"] for name, data in stream if name == "content_block_delta"]
    assert all(delta["type"] == "text_delta" for delta in deltas)
    assert "".join(delta["text"] for delta in deltas) == full["content"][0]["text"]
    final = orjson.loads(stream[-2][1])
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["output_tokens"] == full["usage"]["output_tokens"] == len(deltas)
    assert sim.stats().succeeded == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER, "max_tokens": 5}, "model"),
        ({"model": MODEL, "messages": USER}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "role",
        ),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": 3}]},
            "content",
        ),
        ({"model": MODEL, "max_tokens": 5, "messages": USER, "system": 3}, "system"),
        ({"model": MODEL, "max_tokens": 5, "messages": USER, "stop_sequences": "x"}, "stop"),
        ({"model": MODEL, "max_tokens": 5, "messages": USER, "temperature": 1.5}, "temperature"),
        ({"model": MODEL, "max_tokens": 5, "messages": USER, "stream": "yes"}, "stream"),
    ],
)
async def test_invalid_requests_get_anthropic_400s(
    start_simulator: StartSimulator,
    session: aiohttp.ClientSession,
    body: dict[str, Any],
    param: str,
) -> None:
    sim = await start_simulator()
    status, _, raw = await post(session, sim, body)
    error = orjson.loads(raw)
    assert status == 400 and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert param in error["error"]["message"]


async def test_unknown_model_and_api_key(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    sim = await start_simulator(api_key="secret")
    body = {"model": MODEL, "max_tokens": 5, "messages": USER}
    for headers, message in [
        ({}, "x-api-key header is required"),
        ({"x-api-key": "no"}, "invalid x-api-key"),
    ]:
        status, _, raw = await post(session, sim, body, **headers)
        assert status == 401
        assert orjson.loads(raw)["error"] == {"type": "authentication_error", "message": message}
    assert (await post(session, sim, body, **{"x-api-key": "secret"}))[0] == 200
    assert (await post(session, sim, body, Authorization="Bearer secret"))[0] == 200
    status, _, raw = await post(session, sim, {**body, "model": "nope"}, **{"x-api-key": "secret"})
    assert status == 404 and orjson.loads(raw)["error"]["type"] == "not_found_error"
    assert sim.stats().by_status == {401: 2, 200: 2, 404: 1}


async def test_rate_limits_are_shared_with_the_openai_route(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    sim = await start_simulator(rpm=2, tpm=10_000)
    async with session.post(
        f"{sim.base_url}/chat/completions", data=orjson.dumps({"model": MODEL, "messages": USER})
    ) as response:
        assert response.status == 200
    body = {"model": MODEL, "max_tokens": 10, "messages": USER}
    status, headers, _ = await post(session, sim, body)
    assert status == 200
    assert headers["anthropic-ratelimit-requests-limit"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-tokens-limit"] == "10000"
    assert "x-ratelimit-limit-requests" not in headers
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None

    status, headers, raw = await post(session, sim, body)
    assert status == 429
    error = orjson.loads(raw)["error"]
    assert error["type"] == "rate_limit_error" and "requests per min" in error["message"]
    assert 1 <= int(headers["retry-after"]) <= 60 and "retry-after-ms" not in headers
    status, headers, _ = await post(session, sim, {**body, "max_tokens": 20_000})
    assert status == 429 and headers["x-should-retry"] == "false"  # can never fit
    assert (sim.stats().succeeded, sim.stats().rate_limited) == (2, 2)


async def test_injected_faults(
    start_simulator: StartSimulator, session: aiohttp.ClientSession
) -> None:
    sim = await start_simulator(
        error_rate=0.5, malformed_rate=0.5, error_statuses=(500, 503), seed=3
    )
    body = {"model": MODEL, "max_tokens": 20, "messages": USER, "stream": True}
    seen: dict[str, int] = {}
    for _ in range(12):
        status, _, raw = await post(session, sim, body)
        if status == 200:
            stream = events(raw)
            assert stream[-1][0] == "content_block_delta"  # no message_stop
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(stream[-1][1])
            kind = "malformed"
        else:
            kind = orjson.loads(raw)["error"]["type"]
            assert (status, kind) in {(500, "api_error"), (503, "overloaded_error")}
        seen[kind] = seen.get(kind, 0) + 1
    assert set(seen) == {"malformed", "api_error", "overloaded_error"}
    stats = sim.stats()
    assert stats.malformed == seen["malformed"]
    assert stats.errors_injected == seen["api_error"] + seen["overloaded_error"]


async def test_the_official_sdk_reads_the_route(start_simulator: StartSimulator) -> None:
    anthropic = pytest.importorskip("anthropic")
    sim = await start_simulator(api_key="k", tokens_per_second=5000.0)
    async with anthropic.AsyncAnthropic(base_url=sim.url, api_key="k", max_retries=0) as client:
        message = await client.messages.create(
            model=MODEL, max_tokens=50, system="Be brief.", messages=USER
        )
        async with client.messages.stream(
            model=MODEL, max_tokens=50, system="Be brief.", messages=USER
        ) as stream:
            final = await stream.get_final_message()
    assert final.content[0].text == message.content[0].text
    assert final.usage.output_tokens == message.usage.output_tokens
