"""Input and output tokens per minute counted apart (``itpm``, ``otpm``), as Anthropic and
Groq limit them: pacing on a fake clock, and the headers learned from the simulator."""

from __future__ import annotations

import asyncio

from legion.llm.anthropic import AnthropicProvider
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.types import RateLimitInfo
from legion.sim import SimConfig, Simulator
from legion.testing import FakeClock

PROMPT, CACHED, MAX_TOKENS, OUTPUT = 1000, 800, 100, 50


async def _paced_calls(capacity: Capacity, clock: FakeClock, seconds: float) -> list[float]:
    """Callers that never stop calling, each call 0.2 s long; answer the start times."""
    starts: list[float] = []

    async def caller() -> None:
        while True:
            async with capacity.reserve(
                PROMPT + MAX_TOKENS, input_tokens=PROMPT, output_tokens=MAX_TOKENS
            ) as slot:
                starts.append(clock.now())
                await clock.sleep(0.2)
                counted = PROMPT - (CACHED if capacity.cache_exempt else 0)
                slot.settle(PROMPT + OUTPUT, input_tokens=counted, output_tokens=OUTPUT)

    callers = [asyncio.create_task(caller()) for _ in range(200)]
    await clock.advance(seconds)
    for task in callers:
        task.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    return starts


async def test_output_tokens_are_paced_at_95_percent_of_the_tighter_limit() -> None:
    """Cache reads exempt: 200 input tokens a call against 600,000 itpm, 50 output tokens
    against 60,000 otpm: output is the tighter limit, 1,200 calls a minute. Calls reserve
    their max_tokens (100) and give the unused half back when they end."""
    clock = FakeClock()
    capacity = Capacity("r", itpm=600_000, otpm=60_000, cache_exempt=True, timer=clock)
    starts = await _paced_calls(capacity, clock, 120.0)
    last_minute = [t for t in starts if t >= 60.0]
    output = len(last_minute) * OUTPUT
    assert 0.95 * 60_000 <= output <= 60_000, output
    # No window of one second saw more than its share of either limit.
    for second in range(60, 120):
        calls = sum(1 for t in starts if second <= t < second + 1)
        assert calls * OUTPUT <= 60_000 / 60 * 1.02, (second, calls)
    stats = capacity.statistics()
    assert (stats.limit_itpm, stats.limit_otpm) == (600_000, 60_000)


async def test_cache_reads_count_where_the_provider_counts_them() -> None:
    """Not exempt: 1,000 input tokens a call against 300,000 itpm binds first (300 calls
    a minute), and the output limit does not matter."""
    clock = FakeClock()
    capacity = Capacity("r", itpm=300_000, otpm=60_000, timer=clock)
    starts = await _paced_calls(capacity, clock, 120.0)
    counted = len([t for t in starts if t >= 60.0]) * PROMPT
    assert 0.95 * 300_000 <= counted <= 300_000, counted


async def test_limits_learned_from_headers_pace_as_configured_ones_do() -> None:
    """A route with no token limit of its own learns both from an answer's headers, then
    paces at the tighter one (output, 1,200 calls a minute) as if they were configured."""
    clock = FakeClock()
    capacity = Capacity("r", cache_exempt=True, timer=clock)
    capacity.observe(RateLimitInfo(limit_input_tokens=600_000, limit_output_tokens=60_000))
    starts = await _paced_calls(capacity, clock, 120.0)
    output = len([t for t in starts if t >= 60.0]) * OUTPUT
    assert 0.95 * 60_000 <= output <= 60_000, output
    stats = capacity.statistics()
    assert (stats.learned_itpm, stats.learned_otpm) == (600_000, 60_000)


async def test_separate_limits_are_learned_from_anthropic_headers() -> None:
    config = SimConfig(itpm=400_000, otpm=80_000, cached_prompt_share=0.5, latency=0.0)
    async with Simulator(config) as sim:
        capacity = Capacity("anthropic:sim-model", cache_exempt=True)
        provider = AnthropicProvider(api_key=None, base_url=sim.url)
        llm = LLMClient([Route("default", provider, "sim-model", capacity)])
        async with llm:
            answers = await asyncio.gather(
                *(
                    llm.chat([{"role": "user", "content": "hello " * 50}], max_tokens=32)
                    for _ in range(5)
                )
            )
    stats = capacity.statistics()
    assert (stats.learned_itpm, stats.learned_otpm) == (400_000, 80_000)
    assert all(a.usage.cached_tokens > 0 for a in answers)  # cache hits in usage
    # Cache reads are left out of the input count, as the provider leaves them out.
    prompt = sum(a.usage.prompt_tokens for a in answers)
    cached = sum(a.usage.cached_tokens for a in answers)
    assert stats.input_tokens_used == prompt - cached
    assert stats.output_tokens_used == sum(a.usage.completion_tokens for a in answers)
    assert sim.stats().rate_limited == 0
