"""``legion gateway``: real gateway processes on loopback, a ``legion sim`` process as the
provider, the official ``openai`` SDK and a load generator as their callers."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest

from legion.store import store_from_url
from legion.store.ledger import KeyTotals
from tests.acceptance.conftest import LEGION, legion, sim_stats, start_sim, wait_for

pytestmark = pytest.mark.slow


def start_gateway(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*LEGION, "gateway", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready at" not in line:
        proc.kill()
        raise AssertionError(f"no gateway: {line!r} {proc.communicate()[1]}")
    return proc, line.rsplit(" ", 1)[1].strip()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/healthz") as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def new_key(store: str, name: str) -> str:
    r = legion("keys", "create", "--name", name, "--store", store)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture
def sim() -> Iterator[str]:
    # 6,000 requests a minute, enforced over 5 s windows (500 per window). Alone, each
    # gateway would pace itself at the full limit: two of them would send twice it.
    proc, url = start_sim("--rpm", "6000", "--window-seconds", "5", "--latency", "0.01")
    yield url
    stop(proc)


def test_two_gateways_share_one_limit_under_load(sim: str, store_url: str) -> None:
    # On a SQLite file (one machine) and on PostgreSQL (gateways on several machines).
    store = store_url
    key = new_key(store, "load")
    gateways = [start_gateway("--llm", f"openai:sim-model@{sim}", "--rpm", "6000",
                              "--store", store) for _ in range(2)]  # fmt: skip
    try:
        urls = [url for _, url in gateways]
        # Each gateway paces at its share once it has seen the other's claim.
        wait_for(
            lambda: all(health(u)["routes"]["default"]["share"] < 0.9 for u in urls),
            what="the gateways to share the limit",
        )
        n = 1200
        statuses = asyncio.run(load(urls, key, n, concurrency=64))
    finally:
        for proc, _ in gateways:
            stop(proc)
    assert statuses == {200: n}
    stats = sim_stats(sim)
    assert stats["requests_total"] >= n
    assert stats["rate_limited"] <= 0.01 * stats["requests_total"], stats
    # Both gateways added their counts to the key's one total (the last on the way out).
    totals = asyncio.run(key_usage(store, key))
    assert totals is not None and (totals.calls, totals.failed) == (n, 0)


async def key_usage(url: str, token: str) -> KeyTotals | None:
    store = store_from_url(url)
    await store.open()
    try:
        return await store.key_usage(token.split("_")[1])
    finally:
        await store.aclose()


async def load(urls: list[str], key: str, n: int, *, concurrency: int) -> dict[int, int]:
    """``n`` chat requests spread over the gateways, ``concurrency`` at a time."""
    statuses: dict[int, int] = {}
    gate = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {key}"}

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = {"model": "sim-model", "messages": [{"role": "user", "content": f"q{i}"}],
                "max_tokens": 8}  # fmt: skip
        async with (
            gate,
            session.post(
                f"{urls[i % len(urls)]}/chat/completions", json=body, headers=headers
            ) as response,
        ):
            await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, i) for i in range(n)))
    return statuses


def test_the_openai_sdk_works_through_the_gateway_and_keys_are_checked(
    sim: str, store_file: str
) -> None:
    store = store_file
    key = new_key(store, "sdk")
    other = new_key(store, "other")
    proc, url = start_gateway("--llm", f"openai:sim-model@{sim}", "--store", store)
    try:
        asyncio.run(sdk_calls(url, key, other))
    finally:
        stop(proc)
    assert sim_stats(sim)["requests_total"] == 4


async def sdk_calls(url: str, key: str, other: str) -> None:
    async with openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0) as client:
        plain = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
        assert plain.choices[0].message.content and plain.usage is not None
        stream = await client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Legion-Task": "task-7"},
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == plain.choices[0].message.content  # the simulator is deterministic
        assert chunks[-1].usage == plain.usage
        vectors = await client.embeddings.create(model="sim-model", input=["a", "b"])
        assert len(vectors.data) == 2 and vectors.data[0].embedding
        floats = await client.embeddings.create(
            model="sim-model", input="a", encoding_format="float"
        )
        # The SDK asks for base64 (float32) by default; floats come as they are.
        assert vectors.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)

    for bad in ("not-a-key", key[:-4] + "AAAA"):
        async with openai.AsyncOpenAI(base_url=url, api_key=bad, max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.chat.completions.create(
                    model="sim-model", messages=[{"role": "user", "content": "hi"}]
                )
            assert caught.value.status_code == 401

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/chat/completions", json={}) as response:
            assert response.status == 401  # no key at all
        twice = [("Authorization", f"Bearer {key}"), ("Authorization", f"Bearer {other}")]
        async with session.get(f"{url}/usage", headers=twice) as response:
            assert response.status == 401  # which one? (a proxy may read the other)
        usage = {}
        for token in (key, other):
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{url}/usage", headers=headers) as response:
                usage[token] = await response.json()
    mine = usage[key]
    assert mine["calls"] == 4 and mine["tasks"] == {"task-7": 1}
    assert mine["prompt_tokens"] > 0 and mine["completion_tokens"] > 0
    assert mine["cost_known"] and mine["cost_usd"] == 0  # the simulator is free
    assert usage[other]["calls"] == 0


def test_a_non_loopback_host_is_refused_without_allow_remote(store_file: str) -> None:
    r = legion("gateway", "--store", store_file, "--host", "0.0.0.0")
    assert r.returncode == 2
    assert "--allow-remote" in r.stderr and "Traceback" not in r.stderr


def test_a_port_already_taken_is_an_error_that_says_so(store_file: str) -> None:
    first, url = start_gateway("--store", store_file)
    try:
        port = url.removesuffix("/v1").rsplit(":", 1)[1]
        r = legion("gateway", "--store", store_file, "--port", port)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
        assert health(url)["ok"]  # the gateway that holds the port goes on
    finally:
        stop(first)


def stopped_saying(proc: subprocess.Popen[str]) -> str:
    """Stop a gateway; answer what it wrote to stderr."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)[1]


def test_a_store_without_a_key_is_said_at_start(store_file: str) -> None:
    # A new store (or a misspelt --store, which makes one): every call would get 401.
    said = stopped_saying(start_gateway("--store", store_file)[0])
    assert "no API key in this store yet: every request but /healthz is refused (401)" in said
    assert f"legion keys create --store {store_file}" in said
    new_key(store_file, "bot")
    assert "no API key" not in stopped_saying(start_gateway("--store", store_file)[0])
