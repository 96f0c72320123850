"""The batch tier end to end: a real SQLite file, a worker, the simulator's batch APIs over
HTTP (OpenAI's and Anthropic's). A batch-tier run answers what the standard tier answers,
at half the cost, in one job; a deadline shorter than the batch's turnaround sends the
calls at the standard tier."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest

import legion
from legion import Runtime
from legion.llm.budget import BudgetLimits
from legion.llm.client import LLMClient
from legion.llm.specs import open_client
from legion.sim import SimConfig, Simulator
from legion.task import TaskStatus

MODEL = "gpt-5-mini"  # priced: the cost is not zero
QUESTIONS = [f"What is {n} times {n + 1}?" for n in range(6)]


@legion.agent(retries=0)
async def ask_all(
    ctx: legion.Context,
    questions: list[str],
    tier: Literal["standard", "batch"],
    deadline: float | None = None,
) -> list[str]:
    calls = [
        ctx.llm.chat([{"role": "user", "content": q}], max_tokens=24, tier=tier, deadline=deadline)
        for q in questions
    ]
    return [r.text for r in await ctx.gather(*calls)]


async def client_for(spec: str) -> LLMClient:
    client = await open_client([spec])
    client.batch_window = 0.02  # the desk collects for 20 ms and polls every 50 ms
    client.batch_poll_interval = 0.05
    return client


async def run(rt: Runtime, tier: str, deadline: float | None = None) -> Any:
    given = {"questions": QUESTIONS, "tier": tier, "deadline": deadline}
    [result] = [r async for r in rt.map(ask_all, [given])]
    return result


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(models=(MODEL,), batch_turnaround=0.0)) as simulator:
        yield simulator


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_batch_tier_answers_as_the_standard_tier_at_half_the_cost_in_one_job(
    sim: Simulator, tmp_path: Path, dialect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    url = sim.base_url if dialect == "openai" else sim.url
    client = await client_for(f"main={dialect}:{MODEL}@{url}")
    async with client, Runtime(f"sqlite:///{tmp_path / 'batch.db'}", llm=client) as rt:
        standard = await run(rt, "standard")
        after_standard = sim.stats()
        batched = await run(rt, "batch")
        stats = rt.llm.statistics() if rt.llm is not None else None
        assert rt.worker is not None and rt.worker.batch_desk is not None
        desk = rt.worker.batch_desk
        assert (desk.jobs, desk.answered) == (1, len(QUESTIONS)), (batched, standard)

    assert standard.ok and batched.ok, (standard.error, batched.error)
    assert batched.output == standard.output  # the same answers...
    assert standard.usage is not None and batched.usage is not None
    assert batched.usage["prompt_tokens"] == standard.usage["prompt_tokens"]
    assert batched.usage["completion_tokens"] == standard.usage["completion_tokens"]
    assert standard.usage["cost_usd"] > 0
    assert batched.usage["cost_usd"] == pytest.approx(standard.usage["cost_usd"] / 2)  # ...half
    after = sim.stats()
    assert after_standard.requests_total == after.requests_total == len(QUESTIONS)
    assert (after.batches, after.batch_requests) == (1, len(QUESTIONS))  # in one job
    assert stats is not None
    route = stats.routes["main"]
    assert route.calls == 2 * len(QUESTIONS)
    assert route.cost_usd == pytest.approx(1.5 * standard.usage["cost_usd"])


async def test_a_deadline_shorter_than_the_turnaround_falls_back_to_the_standard_tier(
    tmp_path: Path,
) -> None:
    config = SimConfig(models=(MODEL,), batch_turnaround=3600.0)  # never within the test
    async with Simulator(config) as sim:
        client = await client_for(f"main=openai:{MODEL}@{sim.base_url}")
        # Short leases: the reaper, which wakes the tasks whose timer passed, runs often.
        async with (
            client,
            Runtime(f"sqlite:///{tmp_path / 'fallback.db'}", llm=client, lease_seconds=0.4) as rt,
        ):
            late = await run(rt, "batch", 0.2)
            standard = await run(rt, "standard")
            info = await rt.get(late.id)
        stats = sim.stats()

    assert late.ok and standard.ok, (late.error, standard.error)
    assert late.output == standard.output
    assert info is not None and info.status is TaskStatus.SUCCEEDED
    assert stats.batches == 1 and stats.batch_requests == 0  # sent, never answered
    assert stats.requests_total == 2 * len(QUESTIONS)  # the fallback went standard
    assert late.usage is not None and standard.usage is not None
    assert late.usage["cost_usd"] == pytest.approx(standard.usage["cost_usd"])  # full price


@legion.agent(retries=0, max_cost=1e-9)
async def broke(ctx: legion.Context, question: str) -> str:
    answer = await ctx.llm.chat([{"role": "user", "content": question}], tier="batch")
    return answer.text


@legion.agent(retries=0, max_cost=1.0)
async def thrifty(ctx: legion.Context, question: str) -> str:
    answer = await ctx.llm.chat([{"role": "user", "content": question}], tier="batch")
    return answer.text


async def test_budgets_refuse_a_batch_call_before_it_is_queued_and_count_its_answer(
    sim: Simulator, tmp_path: Path
) -> None:
    url = f"main=openai:{MODEL}@{sim.base_url}"
    async with (
        await client_for(url) as client,
        Runtime(f"sqlite:///{tmp_path / 'broke.db'}", llm=client) as rt,
    ):
        budget = client.budgets.agent("broke", BudgetLimits(max_cost=1e-9))  # as its calls'
        sub = await rt.submit(broke, {"question": "Too dear?"})
        why = await budget.wait_exhausted()
        await rt.drain()
        parked = await rt.get(sub.id)
    assert "max_cost" in why and sim.stats().batches == 0  # refused before it was queued
    assert parked is not None and parked.status is TaskStatus.QUEUED  # parked, as standard
    assert parked.error is not None and parked.error.type == "BudgetExceeded"
    async with (
        await client_for(url) as client,
        Runtime(f"sqlite:///{tmp_path / 'thrifty.db'}", llm=client) as rt,
    ):
        [paid] = [r async for r in rt.map(thrifty, [{"question": "Cheap enough?"}])]
    spent = client.budgets.agents["thrifty"].spent
    assert paid.ok and paid.usage is not None and paid.usage["cost_usd"] > 0
    assert spent.calls == 1 and spent.cost == pytest.approx(paid.usage["cost_usd"])


@legion.agent(retries=0)
async def thrice(ctx: legion.Context, question: str) -> list[str]:
    ask = [{"role": "user", "content": question}]
    calls = [ctx.llm.chat(ask, max_tokens=8, tier="batch") for _ in range(3)]
    return [r.text for r in await ctx.gather(*calls)]


async def test_equal_requests_in_one_gather_are_three_calls_in_one_job(
    sim: Simulator, tmp_path: Path
) -> None:
    async with (
        await client_for(f"main=openai:{MODEL}@{sim.base_url}") as client,
        Runtime(f"sqlite:///{tmp_path / 'thrice.db'}", llm=client) as rt,
    ):
        [r] = [x async for x in rt.map(thrice, [{"question": "Again?"}])]
        keys = sorted(s.key for s in await rt.store.steps(r.id) if s.key.startswith("llm."))
    assert r.ok and len(set(r.output)) == 1 and len(r.output) == 3
    assert [k.partition("#")[2] for k in keys] == ["", "2", "3"]
    assert (sim.stats().batches, sim.stats().batch_requests) == (1, 3)
