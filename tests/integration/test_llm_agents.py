"""ctx.llm end to end: a real SQLite store, the simulator over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.errors import ProviderAuthError
from legion.llm import Capacity, LLMClient, Route, SimulatedProvider
from legion.llm.types import ChatResponse, ToolCall, Usage
from legion.sim import SimConfig
from legion.testing import ScriptedProvider


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedProvider]:
    provider = SimulatedProvider(SimConfig(models=("cheap-model", "strong-model")))
    await provider.start()
    yield provider
    await provider.aclose()


def client(provider: SimulatedProvider, **kw: Any) -> LLMClient:
    return LLMClient(
        [
            Route("cheap", provider, "cheap-model", Capacity("cheap")),
            Route("strong", provider, "strong-model", Capacity("strong")),
        ],
        **kw,
    )


async def test_completions_are_replayed_not_bought_again(
    db_url: str, sim: SimulatedProvider
) -> None:
    @legion.agent(retries=2, backoff=0)
    async def summarize(ctx: legion.Context, doc: str) -> str:
        parts = await ctx.gather(
            *(ctx.llm.chat([{"role": "user", "content": f"Summarize: {c}"}]) for c in doc.split())
        )
        final = await ctx.llm.chat(
            [{"role": "user", "content": "Combine: " + " ".join(p.text for p in parts)}],
            model="strong",
        )
        if ctx.attempt == 1:
            raise ConnectionError("lost the database after paying for the completions")
        return final.text

    llm = client(sim)
    async with Runtime(db_url, llm=llm) as rt:
        r = await rt.result((await rt.submit(summarize, "alpha beta gamma")).id)
        steps = await rt.store.steps(r.id)
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 2
    assert sim.simulator.stats().requests_total == 4  # 3 parts + 1 combine, once each
    assert sim.simulator.stats().by_model == {"cheap-model": 3, "strong-model": 1}
    assert len([s for s in steps if s.key.startswith("llm.")]) == 4
    assert r.usage is not None and r.usage["llm_calls"] == 4
    assert r.usage["prompt_tokens"] > 0 and r.usage["completion_tokens"] > 0


async def test_same_request_twice_is_two_calls_and_routes_pick_by_name_or_model(
    db_url: str, sim: SimulatedProvider
) -> None:
    @legion.agent
    async def ask(ctx: legion.Context, q: str) -> list[str]:
        msgs = [{"role": "user", "content": q}]
        a = await ctx.llm.chat(msgs)
        b = await ctx.llm.chat(msgs)
        c = await ctx.llm.chat(msgs, model="strong-model", max_tokens=5)
        return [a.model, b.model, c.model, str(c.usage.completion_tokens <= 5), a.text == b.text]  # type: ignore[list-item]

    async with Runtime(db_url, llm=client(sim)) as rt:
        r = await rt.result((await rt.submit(ask, "hello")).id)
        keys = sorted(s.key for s in await rt.store.steps(r.id))
    assert r.output == ["cheap-model", "cheap-model", "strong-model", "True", True]
    assert sim.simulator.stats().requests_total == 3
    assert len(keys) == 3 and any(k.endswith("#2") for k in keys)


async def test_a_rejected_key_stops_the_run_without_burning_the_queue(db_url: str) -> None:
    provider = SimulatedProvider(SimConfig(api_key="the-right-key"))
    await provider.start()
    # A client with the wrong key, against the same simulator.
    from legion.llm import OpenAIProvider

    wrong = OpenAIProvider(base_url=provider.simulator.base_url, api_key="a-wrong-key", name="sim")
    llm = LLMClient([Route("default", wrong, "sim-model", Capacity("default"))])

    @legion.agent(retries=5, backoff=0)
    async def ask(ctx: legion.Context, q: str) -> str:
        return (await ctx.llm.chat([{"role": "user", "content": q}])).text

    try:
        async with Runtime(db_url, llm=llm, concurrency=4) as rt:
            ids = [s.id for s in await rt.submit_many(ask, [f"q{i}" for i in range(200)])]
            assert rt.worker is not None
            assert isinstance(await rt.worker.wait_fatal(), ProviderAuthError)
            await rt.drain()
            counts = await rt.store.counts()
            tasks = await rt.store.get_many(ids)
        # The same run with the key fixed finishes every task.
        llm = LLMClient([Route("default", provider, "sim-model", Capacity("default"))])
        async with Runtime(db_url, llm=llm, concurrency=4, agents=[ask]) as rt:
            finished = [r async for r in rt.results(ids)]
    finally:
        await wrong.aclose()
        await provider.aclose()
    # No task is charged for the key: the first refused, too, goes back to the queue with
    # its attempt unspent (it stayed failed for good: the same command run again after the
    # fix could never finish the file), its error kept to say why.
    assert counts == {TaskStatus.QUEUED: 200}
    refused = [t for t in tasks if t.error is not None]
    assert refused and all(t.error.type == "ProviderAuthError" for t in refused)  # type: ignore[union-attr]
    assert all(t.attempt == 0 for t in tasks), [t.attempt for t in refused]
    # Only the first wave called (one per slot), and nothing after the stop.
    rejected = provider.simulator.stats().by_status
    assert rejected[401] <= 4
    assert [r.status for r in finished] == [TaskStatus.SUCCEEDED] * 200


async def test_an_agent_without_an_llm_fails_with_a_clear_reason(db_url: str) -> None:
    @legion.agent(retries=3)
    async def ask(ctx: legion.Context, q: str) -> str:
        return (await ctx.llm.chat([{"role": "user", "content": q}])).text

    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(ask, "hi")).id)
    assert r.status is TaskStatus.FAILED and r.attempt == 1
    assert r.error is not None and "no LLM is configured" in r.error.message


async def test_a_new_answer_is_the_one_its_replay_gives(db_url: str) -> None:
    seen: list[Any] = []

    @legion.agent(retries=1, backoff=0)
    async def ask(ctx: legion.Context, q: str) -> int:
        answer = await ctx.llm.chat([{"role": "user", "content": q}])
        seen.append(answer)
        if ctx.attempt == 1:
            raise ConnectionError("fails after the call was recorded")
        return answer.usage.total

    usage = Usage(40, 9, cached_tokens=30, cache_write_tokens=5, reasoning_tokens=4)
    call = ToolCall("call-1", "lookup", '{"q": "x"}')
    # One answer: the second attempt replays it (a second call would be past the script).
    provider = ScriptedProvider([ChatResponse("", (call,), "tool_calls", usage, "tool-model")])
    llm = LLMClient([Route("tools", provider, "tool-model", Capacity("tools"))])
    async with Runtime(db_url, llm=llm) as rt:
        r = await rt.result((await rt.submit(ask, "hello")).id)
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 2
    new, replayed = seen
    assert new == replayed and new.tool_calls[0].arguments == '{"q": "x"}'
    assert new.usage.reasoning_tokens == 4 and new.usage.cache_write_tokens == 5
    # Counted once per attempt that saw it, from the recorded JSON either way.
    assert r.usage is not None and r.usage["cached_tokens"] == 30 and r.usage["llm_calls"] == 1


async def test_a_calls_own_timeout_and_transport_reach_the_provider(db_url: str) -> None:
    @legion.agent(retries=0)
    async def ask(ctx: legion.Context, q: str) -> str:
        own = await ctx.llm.chat(
            [{"role": "user", "content": q}], timeout=7.5, stream=True, max_tokens=3
        )
        routes = await ctx.llm.chat([{"role": "user", "content": q + "?"}], max_tokens=3)
        return own.text + routes.text

    provider = ScriptedProvider(["a", "b"])
    llm = LLMClient([Route("r", provider, "m", Capacity("r"), timeout=30.0)])
    async with Runtime(db_url, llm=llm) as rt:
        r = await rt.result((await rt.submit(ask, "hi")).id)
    assert r.ok and r.output == "ab"
    # The first call's own, then the route's.
    assert provider.timeouts == [7.5, 30.0]
    assert [request.stream for request in provider.requests] == [True, False]
    assert [dict(request.params) for request in provider.requests] == [{"max_tokens": 3}] * 2
