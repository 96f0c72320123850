"""Costs end to end, against the simulator as an OpenAI-compatible server: cached and
reasoning-free prompt tokens kept and priced, a model without a price shown as unknown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import legion
from legion import Runtime
from legion.sim import SimConfig, Simulator

MODELS = ("gpt-5-mini", "mystery-model")


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimConfig(models=MODELS, cached_prompt_share=0.5, seed=3))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@legion.agent(retries=0)
async def ask(ctx: legion.Context, model: str) -> dict[str, int]:
    prompt = "Tell me about prompt caches. " * 20
    response = await ctx.llm.chat([{"role": "user", "content": prompt}], model=model)
    return response.usage.to_json()


async def test_cached_tokens_are_kept_and_priced_and_an_unknown_price_is_unknown(
    simulator: Simulator, tmp_path: Path
) -> None:
    url = simulator.base_url
    specs = [f"mini=openai:gpt-5-mini@{url}", f"mystery=openai:mystery-model@{url}"]
    async with Runtime(f"sqlite:///{tmp_path / 'costs.db'}", llm=specs) as rt:
        priced, unpriced = [r async for r in rt.map(ask, ["mini", "mystery"])]
        assert rt.llm is not None
        stats = rt.llm.statistics()

    assert priced.ok and unpriced.ok
    usage = priced.output
    assert usage["cached_tokens"] == usage["prompt_tokens"] // 2 > 0
    assert priced.usage is not None and unpriced.usage is not None
    assert priced.usage["cached_tokens"] == usage["cached_tokens"]
    plain = usage["prompt_tokens"] - usage["cached_tokens"]
    expected = (
        plain * 0.25 + usage["cached_tokens"] * 0.025 + usage["completion_tokens"] * 2
    ) / 1e6
    assert priced.usage["cost_usd"] == pytest.approx(expected)
    assert "cost_known" not in priced.usage
    assert unpriced.usage["cost_usd"] == 0.0  # the field stays a number...
    assert unpriced.usage["cost_known"] is False  # ...and says it is not the cost
    assert unpriced.usage["unpriced_calls"] == 1
    assert (stats.routes["mini"].unpriced_calls, stats.routes["mystery"].unpriced_calls) == (0, 1)
    assert stats.routes["mini"].usage.cached_tokens == usage["cached_tokens"]
    assert stats.cost_usd == pytest.approx(expected) and not stats.cost_known
