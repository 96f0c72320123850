"""ctx.llm.embed's layers: the simulator's /v1/embeddings over real HTTP, the OpenAI
provider's embeddings, and the client's capacity, counters, cost and errors."""

from __future__ import annotations

import math

import aiohttp
import pytest

from legion.errors import Permanent, ProviderRejected
from legion.llm import (
    Capacity,
    LLMClient,
    OpenAIProvider,
    Price,
    PriceTable,
    Route,
    SimulatedProvider,
)
from legion.sim import SimConfig, Simulator
from legion.sim.embeddings import hashed_embedding


def cosine(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_similar_texts_are_near_and_the_same_text_is_the_same_vector() -> None:
    cat = hashed_embedding("The cat sat on the mat")
    assert cat == hashed_embedding("The cat sat on the mat")
    assert math.isclose(sum(x * x for x in cat), 1.0)
    near = cosine(cat, hashed_embedding("a cat sits on a mat"))
    far = cosine(cat, hashed_embedding("quarterly earnings beat expectations"))
    assert near > 0.3 > far
    assert hashed_embedding("   ") == [0.0] * 384  # (legion refuses such a text)
    symbols = hashed_embedding("* * *")  # no words: its characters give it a direction
    assert symbols != [0.0] * 384 and math.isclose(sum(x * x for x in symbols), 1.0)
    assert cosine(symbols, hashed_embedding("🙂🙂")) < 0.5
    assert len(hashed_embedding("x", 16)) == 16


async def test_the_client_embeds_through_capacity_and_counts_usage_and_cost() -> None:
    async with SimulatedProvider(SimConfig(models=("text-embedding-3-small",))) as provider:
        capacity = Capacity("embed", rpm=600, tpm=100_000)
        client = LLMClient(
            [Route("embed", provider, "text-embedding-3-small", capacity)],
            prices=PriceTable().with_prices({"text-embedding-3-small": Price(1.0, 0.0)}),
        )
        texts = ["first text here", "second text", "a third, longer text than the others"]
        out = await client.embed(texts)
        again = await client.embed(texts[:1], dimensions=8)
        stats = client.statistics().routes["embed"]
    assert len(out.vectors) == 3 and out.dims == 384 and again.dims == 8
    assert out.model == "text-embedding-3-small" and out.provider == "sim"
    assert out.usage.prompt_tokens == sum(-(-len(t) // 4) for t in texts)
    assert stats.calls == 2 and stats.succeeded == 2
    assert stats.usage.prompt_tokens == out.usage.prompt_tokens + again.usage.prompt_tokens
    assert math.isclose(stats.cost_usd, stats.usage.prompt_tokens / 1e6)
    assert stats.capacity.requests == 2  # both calls took their turn at the capacity
    assert stats.capacity.tokens_used == stats.usage.prompt_tokens  # settled with real usage


async def test_the_embed_route_is_the_default_for_embeddings() -> None:
    async with SimulatedProvider(SimConfig(models=("chat-model", "embed-model"))) as provider:
        client = LLMClient(
            [
                Route("default", provider, "chat-model", Capacity("c")),
                Route("embed", provider, "embed-model", Capacity("e")),
            ]
        )
        assert (await client.embed(["hi"])).model == "embed-model"
        assert (await client.embed(["hi"], "default")).model == "chat-model"


async def test_provider_refusals_and_providers_without_embeddings_are_permanent() -> None:
    async with Simulator(SimConfig(models=("m",))) as sim:
        provider = OpenAIProvider(base_url=sim.base_url)
        client = LLMClient([Route("r", provider, "unknown-model", Capacity("r"))])
        with pytest.raises(ProviderRejected, match="does not exist"):
            await client.embed(["hello"])
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{sim.base_url}/embeddings", json={"model": "m"}) as r,
        ):
            assert r.status == 400 and "input" in (await r.json())["error"]["message"]
        await provider.aclose()

    class ChatOnly:
        name = "chat-only"

    client = LLMClient([Route("r", ChatOnly(), "m", Capacity("r"))])  # type: ignore[arg-type]
    with pytest.raises(Permanent, match="serves no embeddings"):
        await client.embed(["hello"])
