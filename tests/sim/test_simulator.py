"""The simulator over real HTTP on loopback, driven by the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from legion.sim import SimConfig, Simulator
from legion.sim.behaviour import (
    Fault,
    FaultInjector,
    estimate_prompt_tokens,
    generate_completion,
)
from legion.sim.cli import main

StartSimulator = Callable[..., Awaitable[Simulator]]  # the start_simulator fixture
Connect = Callable[..., openai.AsyncOpenAI]  # the connect fixture

MODEL = "sim-model"
SRC = Path(__file__).resolve().parents[2] / "src"


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll simulator state until ``predicate`` holds (fail after 5 s).

    Used only where the server reacts to something the test cannot await,
    such as noticing that a client disconnected; nothing is assumed about
    how long that takes.
    """
    async with asyncio.timeout(5.0):
        while not predicate():  # noqa: ASYNC110 - no event to await on the server side
            await asyncio.sleep(0.001)


# -- configuration and behaviour (no sockets) --------------------------------


def test_config_from_mapping_accepts_lists_and_rejects_unknown_keys() -> None:
    config = SimConfig.from_mapping({"models": ["a", "b"], "rpm": 10, "error_statuses": [503]})
    assert config.models == ("a", "b")
    assert config.error_statuses == (503,)
    with pytest.raises(ValueError, match=r"unknown simulator setting.*rmp"):
        SimConfig.from_mapping({"rmp": 10})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rpm": 0}, "rpm must be a positive integer"),
        ({"tpm": True}, "tpm must be a positive integer"),
        ({"error_rate": 1.5}, "error_rate must be between 0 and 1"),
        ({"hang_rate": -0.1}, "hang_rate must be >= 0"),
        ({"error_rate": 0.6, "hang_rate": 0.6}, "must be <= 1"),
        ({"min_output_tokens": 10, "max_output_tokens": 5}, "max_output_tokens"),
        ({"window": "rolling"}, "window must be one of"),
        ({"models": []}, "models must be a non-empty"),
        ({"error_statuses": [404]}, "5xx"),
        ({"latency": float("nan")}, "latency must be a finite number"),
        ({"tokens_per_second": 0}, "tokens_per_second must be > 0"),
    ],
)
def test_config_rejects_invalid_values(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig.from_mapping(settings)


def test_prompt_token_estimate() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "x" * 8},
        {"role": "user", "content": [{"type": "text", "text": "abcde"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None},
    ]
    # 3 reply + 3 per message, 8 chars -> 2, 5 chars -> 2, an image -> 85.
    assert estimate_prompt_tokens(messages) == 3 + 3 * 3 + 2 + 2 + 85


def test_completion_length_cap_and_stop() -> None:
    full = generate_completion(MODEL, user("hi"), min_tokens=20, max_tokens=20)
    assert len(full.tokens) == 20 and full.finish_reason == "stop"
    assert full.text.endswith(".") and full.text[0].isupper()
    capped = generate_completion(MODEL, user("hi"), min_tokens=20, max_tokens=20, limit=5)
    assert capped.tokens == full.tokens[:5] and capped.finish_reason == "length"
    stop = full.tokens[3].strip()[:2]
    stopped = generate_completion(MODEL, user("hi"), min_tokens=20, max_tokens=20, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text
    assert full.text.startswith(stopped.text)


def test_fault_bands_match_rates() -> None:
    injector = FaultInjector(
        SimConfig(error_rate=0.1, hang_rate=0.05, malformed_rate=0.05, stall_rate=0.2, seed=9)
    )
    counts = {fault: 0 for fault in Fault}
    for _ in range(20_000):
        counts[injector.plan(stream=True).fault] += 1
    assert counts[Fault.ERROR] / 20_000 == pytest.approx(0.1, abs=0.01)
    assert counts[Fault.HANG] / 20_000 == pytest.approx(0.05, abs=0.01)
    assert counts[Fault.MALFORMED] / 20_000 == pytest.approx(0.05, abs=0.01)
    assert counts[Fault.STALL] / 20_000 == pytest.approx(0.2, abs=0.01)


def test_ping_only_streams_and_a_scripted_outage() -> None:
    injector = FaultInjector(SimConfig(ping_rate=1.0, outage_after=2, outage_requests=3))
    plans = [injector.plan(stream=True) for _ in range(7)]
    assert [p.fault for p in plans] == [Fault.PING] * 2 + [Fault.ERROR] * 3 + [Fault.PING] * 2
    assert {p.error_status for p in plans[2:5]} == {503}
    # Pings apply to streams only, like stalls.
    assert FaultInjector(SimConfig(ping_rate=1.0)).plan(stream=False).fault is Fault.NONE


# -- completions -------------------------------------------------------------


async def test_completion_is_deterministic_and_counts_usage(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator()
    client = connect(sim)
    first = await client.chat.completions.create(model=MODEL, messages=user("Hello there"))
    again = await client.chat.completions.create(model=MODEL, messages=user("Hello there"))
    other = await client.chat.completions.create(model=MODEL, messages=user("Something else"))

    assert first.object == "chat.completion"
    assert first.model == MODEL
    assert first.id != again.id
    content = first.choices[0].message.content
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].finish_reason == "stop"
    assert content and content == again.choices[0].message.content
    assert content != other.choices[0].message.content
    assert first.usage is not None
    assert first.usage.prompt_tokens == estimate_prompt_tokens(user("Hello there"))
    assert first.usage.completion_tokens == len(content.split())
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert 8 <= first.usage.completion_tokens <= 64

    capped = await client.chat.completions.create(
        model=MODEL,
        messages=user("Hello there"),
        max_completion_tokens=3,
        temperature=0.2,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
    )
    assert capped.choices[0].finish_reason == "length"
    assert capped.choices[0].message.content == " ".join(content.split()[:3])
    assert capped.usage is not None and capped.usage.completion_tokens == 3


async def test_stream_assembles_to_the_same_text_with_usage(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(tokens_per_second=2000.0)
    client = connect(sim)
    messages = user("Stream me")
    plain = await client.chat.completions.create(model=MODEL, messages=messages)

    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert plain.usage is not None and len(content_chunks) == plain.usage.completion_tokens

    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, max_tokens=2
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sim.stats().succeeded == 3


# -- rate limits -------------------------------------------------------------


async def test_rpm_limit_answers_429_with_retry_after_and_ratelimit_headers(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(rpm=2, tpm=100_000)
    client = connect(sim)
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=user("a"))
    assert raw.status_code == 200
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
    charged = 100_000 - int(raw.headers["x-ratelimit-remaining-tokens"])
    usage = raw.parse().usage
    assert usage is not None and charged == usage.total_tokens  # no max_tokens: actual length
    assert re.fullmatch(
        r"\d+(\.\d+)?(ms|s)|\d+m\d+(\.\d+)?s", raw.headers["x-ratelimit-reset-requests"]
    )
    await client.chat.completions.create(model=MODEL, messages=user("b"))

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=user("c"))
    error = caught.value
    headers = error.response.headers
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert "requests per min" in error.message
    assert 1 <= int(headers["retry-after"]) <= 60
    assert 0 < int(headers["retry-after-ms"]) <= 60_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    for name in ("limit-tokens", "remaining-tokens", "reset-requests", "reset-tokens"):
        assert f"x-ratelimit-{name}" in headers
    stats = sim.stats()
    assert (stats.succeeded, stats.rate_limited, stats.by_status) == (2, 1, {200: 2, 429: 1})


async def test_tpm_limit_charges_prompt_and_max_tokens(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(tpm=102)
    client = connect(sim)
    messages = user("abcd")  # 7 prompt tokens
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=40
    )
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(102 - 47)
    assert "x-ratelimit-limit-requests" not in raw.headers  # no RPM configured
    await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40)

    with pytest.raises(openai.RateLimitError, match="tokens per min") as caught:
        await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40)
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "8"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    # 7 + 1 tokens: fits exactly.
    await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)

    with pytest.raises(openai.RateLimitError, match="Request too large") as caught:
        await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=500)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert sim.stats().rate_limited == 2


async def test_a_request_too_large_for_a_window_says_what_the_window_admits(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    # 24,000 tokens a minute enforced per 1 s window: 400 a window. A request of 407 said
    # "Limit 24000, Requested 407".
    sim = await start_simulator(tpm=24_000, window_seconds=1.0)
    client = connect(sim)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=user("abcd"), max_tokens=400)
    assert "Requested 407, over the 400 one window of 1 s admits" in caught.value.message


async def test_max_concurrency_rejects_extra_requests(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    # Stalled streams hold their slot: once the SDK returns the stream, the
    # request is admitted and in flight.
    sim = await start_simulator(max_concurrency=2, stall_rate=1.0, concurrency_retry_after=1.0)
    client = connect(sim)
    streams = [
        await client.chat.completions.create(model=MODEL, messages=user(str(i)), stream=True)
        for i in range(2)
    ]
    assert sim.stats().in_flight == 2

    with pytest.raises(openai.RateLimitError, match="concurrent") as caught:
        await client.chat.completions.create(model=MODEL, messages=user("third"))
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.headers["retry-after-ms"] == "1000"

    for stream in streams:
        await stream.close()
    await wait_until(lambda: sim.stats().in_flight == 0)
    await client.chat.completions.create(model=MODEL, messages=user("now it fits"))
    stats = sim.stats()
    assert (stats.max_in_flight, stats.rate_limited, stats.stalls) == (2, 1, 2)


# -- injected faults -----------------------------------------------------------


async def test_injected_errors_follow_the_seed_exactly(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    settings: dict[str, Any] = {"error_rate": 0.25, "seed": 1234}
    sim = await start_simulator(**settings)
    client = connect(sim)
    observed = []
    for i in range(40):
        try:
            await client.chat.completions.create(model=MODEL, messages=user(str(i)))
            observed.append(200)
        except openai.InternalServerError as error:
            assert error.type == "server_error"
            observed.append(error.status_code)

    replay = FaultInjector(SimConfig(**settings))
    expected = [plan.error_status or 200 for plan in (replay.plan(stream=False) for _ in range(40))]
    assert observed == expected
    errors = sum(status != 200 for status in observed)
    assert errors == 14  # fixed by seed 1234: runs are reproducible
    assert {status for status in observed if status != 200} == {500, 503}
    stats = sim.stats()
    assert stats.errors_injected == errors
    assert stats.succeeded == 40 - errors
    assert sum(stats.by_status.values()) == 40


async def test_malformed_body_makes_the_sdk_raise(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(malformed_rate=1.0)
    client = connect(sim)
    # The SDK does not wrap the decoding error: it raises json.JSONDecodeError.
    with pytest.raises(json.JSONDecodeError):
        await client.chat.completions.create(model=MODEL, messages=user("x"))
    stream = await client.chat.completions.create(model=MODEL, messages=user("x"), stream=True)
    with pytest.raises(json.JSONDecodeError):
        async for _ in stream:
            pass
    await stream.close()
    stats = sim.stats()
    assert (stats.malformed, stats.succeeded, stats.by_status) == (2, 0, {200: 2})


async def test_hang_lasts_until_the_client_gives_up(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(hang_rate=1.0)
    with pytest.raises(openai.APITimeoutError):
        await connect(sim, timeout=0.2).chat.completions.create(model=MODEL, messages=user("x"))
    assert sim.stats().hangs == 1
    assert sim.stats().by_status == {}  # never answered
    await wait_until(lambda: sim.stats().in_flight == 0)  # released when the client left


async def test_stopping_releases_hung_requests(connect: Connect) -> None:
    sim = Simulator(SimConfig(hang_rate=1.0))
    await sim.start()
    try:
        request = asyncio.create_task(
            connect(sim).chat.completions.create(model=MODEL, messages=user("x"))
        )
        await wait_until(lambda: sim.stats().hangs == 1)
    finally:
        await sim.stop()
    with pytest.raises(openai.InternalServerError) as caught:
        await request
    assert caught.value.status_code == 503


async def test_stall_stops_the_stream_midway(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(stall_rate=1.0)  # stalls apply to streams only
    full = await connect(sim).chat.completions.create(model=MODEL, messages=user("x"))
    assert full.usage is not None

    stream = await connect(sim, timeout=0.3).chat.completions.create(
        model=MODEL, messages=user("x"), stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APITimeoutError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    await stream.close()
    assert len(received) == 1 + full.usage.completion_tokens // 2  # role chunk, half the tokens
    assert full.choices[0].message.content
    assert full.choices[0].message.content.startswith("".join(received))
    assert sim.stats().stalls == 1


async def test_a_ping_only_stream_sends_comments_and_nothing_else(
    start_simulator: StartSimulator,
) -> None:
    sim = await start_simulator(ping_rate=1.0, ping_interval=0.01)
    body = {"model": MODEL, "messages": user("x"), "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.base_url + "/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        received = b""
        while received.count(b": ping\n\n") < 3:
            received += await resp.content.readany()
    assert received.replace(b": ping\n\n", b"") == b""  # no event, no data
    assert sim.stats().pings_only == 1


async def test_padding_makes_answers_larger_and_still_valid(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(padding_bytes=100_000)
    client = connect(sim)
    full = await client.chat.completions.with_raw_response.create(model=MODEL, messages=user("x"))
    assert len(full.content) > 100_000 and full.parse().choices[0].message.content
    stream = await client.chat.completions.create(model=MODEL, messages=user("x"), stream=True)
    chunks = [c async for c in stream]
    # Every chunk has choices, a list (the padding's "ping" had None: a loop reading
    # chunk.choices[0] as the SDK's own examples do broke on it).
    assert all(isinstance(c.choices, list) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.parse().choices[0].message.content


# -- access and validation -------------------------------------------------------


async def test_api_key_is_required_when_configured(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(api_key="secret")
    with pytest.raises(openai.AuthenticationError) as caught:
        await connect(sim, api_key="wrong").chat.completions.create(model=MODEL, messages=user("x"))
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await connect(sim, api_key="wrong").models.list()
    reply = await connect(sim, api_key="secret").chat.completions.create(
        model=MODEL, messages=user("x")
    )
    assert reply.choices[0].message.content
    assert sim.stats().by_status == {401: 1, 200: 1}


async def test_bad_requests_get_400_with_an_openai_error_body(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator()
    url = f"{sim.base_url}/chat/completions"
    async with aiohttp.ClientSession() as session:
        for body, param in [
            (b"{not json", None),
            (b"[1, 2]", None),
            (b'{"model": "sim-model"}', "messages"),
            (b'{"model": "sim-model", "messages": [{"content": "x"}]}', "messages[0].role"),
            (
                b'{"model": "sim-model", "messages": [{"role": "user"}], "max_tokens": 0}',
                "max_tokens",
            ),
            (b'{"model": "sim-model", "messages": [{"role": "user"}], "stop": 3}', "stop"),
        ]:
            async with session.post(url, data=body) as response:
                assert response.status == 400, body
                error = (await response.json())["error"]
                assert error["type"] == "invalid_request_error"
                assert error["param"] == param
                assert error["message"]

    client = connect(sim)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-unknown", messages=user("x"))
    assert caught.value.code == "model_not_found"
    assert sim.stats().by_status == {400: 7, 404: 1}


async def test_models_endpoint_lists_configured_models(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(models=("alpha", "beta"))
    page = await connect(sim).models.list()
    assert [model.id for model in page.data] == ["alpha", "beta"]
    reply = await connect(sim).chat.completions.create(model="beta", messages=user("x"))
    assert reply.model == "beta"


async def test_stats_endpoint_matches_what_happened(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    sim = await start_simulator(rpm=2)
    client = connect(sim)
    replies = [
        await client.chat.completions.create(model=MODEL, messages=user(text))
        for text in ("one", "two")
    ]
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=user("three"))
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=user("four"))

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim.url}/stats") as response:
            stats = await response.json()
        assert stats["requests_total"] == 4
        assert stats["by_status"] == {"200": 2, "429": 1, "404": 1}
        assert (stats["succeeded"], stats["rate_limited"]) == (2, 1)
        assert stats["by_model"] == {MODEL: 3}
        assert stats["prompt_tokens"] == sum(r.usage.prompt_tokens for r in replies if r.usage)
        assert stats["completion_tokens"] == sum(
            r.usage.completion_tokens for r in replies if r.usage
        )
        assert (stats["in_flight"], stats["max_in_flight"]) == (0, 1)
        assert stats["requests_per_second"] > 0
        assert sum(stats["requests_by_second"].values()) == 4
        # Over HTTP as in-process, save JSON's string keys and the moving clock.
        assert stats == {
            **sim.stats().to_dict(),
            "by_status": stats["by_status"],
            "requests_by_second": stats["requests_by_second"],
            "elapsed_seconds": stats["elapsed_seconds"],
            "requests_per_second": stats["requests_per_second"],
        }

        async with session.post(f"{sim.url}/stats/reset") as response:
            assert response.status == 204
    reset = sim.stats()
    assert (reset.requests_total, reset.succeeded) == (0, 0)
    assert reset.by_status == {} and reset.by_model == {}


# -- command line ------------------------------------------------------------------


def test_cli_refuses_remote_hosts_and_invalid_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--host", "192.0.2.1"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["--error-rate", "2"]) == 2
    assert "error_rate must be between 0 and 1" in capsys.readouterr().err


@pytest.mark.slow
async def test_python_m_legion_sim_serves_until_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text('[sim]\nmodel = "cfg-model"\nrpm = 2\nlatency-jitter = 0.001\n')
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "legion.sim",
        "--config",
        str(config),
        "--port",
        "0",
        "--seed",
        "7",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)$", line.strip())
        assert match, line
        async with openai.AsyncOpenAI(base_url=match[1], api_key="x", max_retries=0) as client:
            assert [m.id async for m in client.models.list()] == ["cfg-model"]
            reply = await client.chat.completions.create(model="cfg-model", messages=user("hi"))
            assert reply.choices[0].message.content
            await client.chat.completions.create(model="cfg-model", messages=user("hi"))
            with pytest.raises(openai.RateLimitError):  # rpm from the config file
                await client.chat.completions.create(model="cfg-model", messages=user("hi"))
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


async def test_embeddings_take_token_ids_and_answer_base64_as_the_sdks_ask(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    """Token-id inputs (LangChain's default) were 400s, and ``encoding_format: base64``
    got floats."""
    client = connect(await start_simulator())
    by_ids = await client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4]])
    assert [len(d.embedding) for d in by_ids.data] == [384, 384]
    assert by_ids.usage.prompt_tokens == 4
    one = await client.embeddings.create(model=MODEL, input=[1, 2, 3])
    assert one.data[0].embedding == by_ids.data[0].embedding
    floats = await client.embeddings.create(model=MODEL, input="hello world")
    raw = await client.embeddings.with_raw_response.create(
        model=MODEL, input="hello world", encoding_format="base64"
    )
    encoded = json.loads(raw.content)["data"][0]["embedding"]
    decoded = struct.unpack("<384f", base64.b64decode(encoded))
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-6)
    bad: Any
    for bad in ([1, "a"], [[]], [-1], True):
        with pytest.raises(openai.BadRequestError):
            await client.embeddings.create(model=MODEL, input=bad)
