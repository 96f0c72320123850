"""LLMClient + Capacity + providers against the simulator over loopback HTTP:
rate-limit storms absorbed, permanent errors not retried, transient ones
retried, and a client built from configuration."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from legion.errors import (
    MalformedResponse,
    ProviderAuthError,
    ProviderRejected,
    ProviderUnavailable,
)
from legion.llm import (
    AnthropicProvider,
    Capacity,
    LLMClient,
    OpenAIProvider,
    Provider,
    Route,
    build_client,
    load_config,
)
from legion.llm.simulated import SimulatedProvider
from legion.retry import RetryPolicy
from legion.sim import Simulator
from legion.testing import ScaledClock
from tests.llm.conftest import StartSimulator

USER = [{"role": "user", "content": "Hello"}]
QUICK_RETRY = RetryPolicy(retries=3, backoff=0.001, max_backoff=0.01)


def one_route(
    provider: Provider, capacity: Capacity | None = None, *, retry: RetryPolicy = QUICK_RETRY
) -> LLMClient:
    return LLMClient(
        [Route("main", provider, "sim-model", capacity or Capacity(), timeout=10)], retry=retry
    )


async def test_a_429_storm_is_absorbed_and_the_limit_learned(
    start_simulator: StartSimulator,
) -> None:
    # A minute passes in one real second on both sides: the simulator allows
    # 150 requests per (virtual) minute; the client is told no limit at all.
    clock = ScaledClock(60.0)
    sim = await start_simulator(clock=clock.now, rpm=150)
    capacity = Capacity("sim", timer=clock, rng=random.Random(1))
    client = LLMClient(
        [Route("main", OpenAIProvider(base_url=sim.base_url), "sim-model", capacity)],
        retry=RetryPolicy(retries=4, backoff=0.5, max_backoff=5.0),
        timer=clock,
        rng=random.Random(2),
    )
    async with client:
        replies = await asyncio.gather(
            *(client.chat([{"role": "user", "content": f"task {i}"}]) for i in range(200))
        )
    assert len(replies) == 200 and all(reply.text for reply in replies)  # nothing lost
    stats, route = sim.stats(), client.statistics().routes["main"]
    assert (stats.succeeded, route.succeeded, route.failed) == (200, 200, 0)
    # The first wave is all sent at once: the 50 over the limit are rejected.
    # After that the capacity knows the limit, paused until Retry-After, and paces.
    assert stats.rate_limited >= 50
    assert stats.rate_limited < 75
    assert route.capacity.learned_rpm == 150
    assert route.capacity.rate_limited == stats.rate_limited


async def test_paced_at_the_configured_limit_there_is_no_storm(
    start_simulator: StartSimulator,
) -> None:
    clock = ScaledClock(60.0)
    sim = await start_simulator(clock=clock.now, rpm=120)
    capacity = Capacity("sim", rpm=120, timer=clock, rng=random.Random(1))
    async with one_route(OpenAIProvider(base_url=sim.base_url), capacity) as client:
        await asyncio.gather(
            *(client.chat([{"role": "user", "content": f"task {i}"}]) for i in range(150))
        )
    stats = sim.stats()
    assert stats.succeeded == 150
    assert stats.rate_limited <= 2  # under the 1 % bar, give or take one
    assert client.statistics().routes["main"].failed == 0


@pytest.mark.parametrize("anthropic", [False, True])
async def test_permanent_errors_are_not_retried(
    start_simulator: StartSimulator, anthropic: bool
) -> None:
    sim = await start_simulator(api_key="right")

    def provider(key: str) -> Provider:
        if anthropic:
            return AnthropicProvider(base_url=sim.url, api_key=key)
        return OpenAIProvider(base_url=sim.base_url, api_key=key)

    async with one_route(provider("wrong")) as client:
        with pytest.raises(ProviderAuthError):
            await client.chat(USER)
        assert client.fatal_error is not None and client.fatal_error.status == 401
    assert sim.stats().requests_total == 1

    unknown = LLMClient([Route("main", provider("right"), "gpt-unknown", Capacity())])
    async with unknown:
        with pytest.raises(ProviderRejected, match="404"):
            await unknown.chat(USER)
        assert unknown.fatal_error is None
    assert sim.stats().requests_total == 2
    assert sim.stats().by_status == {401: 1, 404: 1}


async def test_transient_errors_are_retried_until_success(
    start_simulator: StartSimulator,
) -> None:
    sim = await start_simulator(error_rate=0.3, seed=11)
    async with one_route(
        OpenAIProvider(base_url=sim.base_url), retry=RetryPolicy(retries=8, backoff=0.001)
    ) as client:
        for i in range(20):
            await client.chat([{"role": "user", "content": str(i)}])
    stats, route = sim.stats(), client.statistics().routes["main"]
    assert (stats.succeeded, route.succeeded, route.failed) == (20, 20, 0)
    assert route.retries == stats.errors_injected > 0
    assert route.errors == {"ProviderUnavailable": stats.errors_injected}


async def test_malformed_answers_and_hangs_fail_after_the_last_attempt(
    start_simulator: StartSimulator,
) -> None:
    broken = await start_simulator(malformed_rate=1.0)
    async with one_route(OpenAIProvider(base_url=broken.base_url)) as client:
        with pytest.raises(MalformedResponse):
            await client.chat(USER, stream=True)
    assert broken.stats().malformed == 4  # 1 + 3 retries

    hung = await start_simulator(hang_rate=1.0)
    retry = RetryPolicy(retries=1, backoff=0.001)
    async with one_route(OpenAIProvider(base_url=hung.base_url), retry=retry) as client:
        with pytest.raises(ProviderUnavailable, match="did not answer"):
            await client.chat(USER, timeout=0.1)
    assert hung.stats().hangs == 2


async def test_a_client_built_from_legion_toml(tmp_path: Path) -> None:
    path = tmp_path / "legion.toml"
    path.write_text(
        """
[llm]
default = "fast"

[llm.fast]
provider = "sim"
rpm = 6000
max_in_flight = 8

[llm.streaming]
provider = "sim"
model = "sim-large"
stream = true
input_price = 1000000
output_price = 0
simulator = { tokens_per_second = 10000 }
"""
    )
    client = await build_client(load_config(path, env={}))
    async with client:
        fast = await client.chat(USER)
        streamed = await client.chat(USER, "streaming")
        assert fast.provider == streamed.provider == "sim"
        assert streamed.model == "sim-large"
        routes = client.routes
        simulators: list[Simulator] = []
        for name in ("fast", "streaming"):
            provider = routes[name].provider
            assert isinstance(provider, SimulatedProvider)
            simulators.append(provider.simulator)
        assert simulators[0] is not simulators[1]
        stats = client.statistics()
        assert stats.routes["fast"].capacity.limit_rpm == 6000
        assert stats.routes["fast"].capacity.max_in_flight == 8
        assert stats.cost_usd == pytest.approx(streamed.usage.prompt_tokens)
    assert [sim.stats().succeeded for sim in simulators] == [1, 1]
