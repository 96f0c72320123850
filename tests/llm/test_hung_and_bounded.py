"""Calls that hang or answer too much, against the simulator over loopback HTTP:
the time-to-first-byte timeout, streams that only ping, bodies and events over
the route's size limits."""

from __future__ import annotations

import pytest
from aiohttp import web

from legion.errors import ProviderUnavailable, ResponseTooLarge
from legion.llm import AnthropicProvider, OpenAIProvider
from legion.llm.types import ChatRequest
from tests.llm.conftest import Closing, StartSimulator

USER = ({"role": "user", "content": "Hello"},)


def request(stream: bool = False) -> ChatRequest:
    return ChatRequest("sim-model", USER, {"max_tokens": 16}, stream)


async def test_a_call_hanging_before_its_headers_ends_at_the_ttfb_timeout(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(hang_rate=1.0)
    provider = closing(OpenAIProvider(base_url=sim.base_url, ttfb_timeout=0.2))
    for stream in (False, True):
        with pytest.raises(ProviderUnavailable, match=r"no answer within 0\.2 s \(time-to-first"):
            await provider.chat(request(stream), timeout=600)
    assert sim.stats().hangs == 2


async def test_the_total_timeout_still_bounds_a_call_when_shorter(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(hang_rate=1.0)
    provider = closing(OpenAIProvider(base_url=sim.base_url, ttfb_timeout=30))
    with pytest.raises(ProviderUnavailable, match=r"did not answer within 0\.2 s"):
        await provider.chat(request(), timeout=0.2)


async def test_a_stream_sending_only_pings_hits_the_idle_timeout(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    # Pings every 20 ms, idle timeout 0.3 s: the bytes keep coming, the data does not.
    sim = await start_simulator(ping_rate=1.0, ping_interval=0.02)
    provider = closing(OpenAIProvider(base_url=sim.base_url, stream_idle_timeout=0.3))
    with pytest.raises(ProviderUnavailable, match=r"sent nothing for 0\.3 s \(stream idle"):
        await provider.chat(request(stream=True), timeout=600)
    assert sim.stats().pings_only == 1


async def test_pings_between_data_do_not_break_a_healthy_stream(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    # A slow stream (10 tokens a second) longer than the idle timeout in all: each token
    # resets the timer, so it completes.
    sim = await start_simulator(tokens_per_second=10, min_output_tokens=6, max_output_tokens=6)
    provider = closing(OpenAIProvider(base_url=sim.base_url, stream_idle_timeout=0.4))
    result = await provider.chat(request(stream=True), timeout=600)
    assert result.response.usage.completion_tokens == 6


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_over_the_size_limit_is_refused_while_read(
    start_simulator: StartSimulator, closing: Closing, stream: bool
) -> None:
    sim = await start_simulator(padding_bytes=3 * 1024 * 1024)
    provider = closing(
        OpenAIProvider(
            base_url=sim.base_url, max_response_bytes=1024 * 1024, max_event_bytes=1024 * 1024
        )
    )
    with pytest.raises(ResponseTooLarge, match=r"openai sent an? .*over the route's limit") as e:
        await provider.chat(request(stream), timeout=60)
    assert not e.value.retryable  # the same request would bring the same answer back
    # Under the limits, the same answers are read whole.
    roomy = closing(OpenAIProvider(base_url=sim.base_url))
    assert (await roomy.chat(request(stream), timeout=60)).response.text


async def test_one_event_over_the_event_limit_is_refused(
    start_simulator: StartSimulator, closing: Closing
) -> None:
    sim = await start_simulator(padding_bytes=300_000)
    provider = closing(AnthropicProvider(api_key=None, base_url=sim.url, max_event_bytes=100_000))
    with pytest.raises(ResponseTooLarge, match=r"an event of at least .* over the limit"):
        await provider.chat(request(stream=True), timeout=60)


async def test_a_chunked_answer_with_no_length_is_cut_at_the_limit(closing: Closing) -> None:
    # A server that does not say how long its answer is: the read stops at the limit.
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"padding": "')
        try:
            for _ in range(1000):  # up to 64 MB
                await response.write(b"x" * 65536)
                sent += 65536
        except ConnectionResetError:
            pass
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        provider = closing(
            OpenAIProvider(base_url=f"http://127.0.0.1:{port}/v1", max_response_bytes=1 << 20)
        )
        with pytest.raises(ResponseTooLarge, match=r"an answer of over 1,048,576 bytes"):
            await provider.chat(request(), timeout=60)
    finally:
        await runner.cleanup()
    assert sent < 64 << 20  # the client hung up long before the end
