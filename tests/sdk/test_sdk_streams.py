"""Streams of ``ctx.llm.openai()`` and ``ctx.llm.anthropic()`` are passed on to the SDK as
the provider sends them; the whole completion is still the task's recorded step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

import legion
from legion import Runtime
from legion.llm import SimulatedProvider
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.sim import SimConfig, Simulator

ASK = [{"role": "user", "content": "stream this, please"}]


async def stalling(idle: float = 30.0) -> tuple[LLMClient, Simulator]:
    """A client whose provider sends half of each streamed answer, then nothing."""
    provider = SimulatedProvider(SimConfig(stall_rate=1.0), stream_idle_timeout=idle)
    await provider.start()
    client = LLMClient([Route("default", provider, "sim-model", Capacity("default"))])
    return client, provider.simulator


@legion.agent(retries=0)
async def first_openai_piece(ctx: legion.Context, question: str) -> dict[str, Any]:
    client = ctx.llm.openai()
    stream = await client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": question}], max_tokens=16,
        stream=True,
    )  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            await stream.close()
            return {"piece": chunk.choices[0].delta.content, "id": chunk.id}
    return {}


@legion.agent(retries=0)
async def first_anthropic_piece(ctx: legion.Context, question: str) -> str:
    async with ctx.llm.anthropic().messages.stream(
        model="sim-model", max_tokens=16, messages=[{"role": "user", "content": question}]
    ) as stream:
        async for piece in stream.text_stream:
            return str(piece)
    return ""


@pytest.mark.parametrize(
    "agent", [first_openai_piece, first_anthropic_piece], ids=["openai", "anthropic"]
)
async def test_the_sdk_reads_pieces_the_provider_is_still_sending(db_url: str, agent: Any) -> None:
    # Half of the answer comes, then nothing: only a stream passed on as it comes gives
    # the agent any of it (the guard makes a transport that waits for the whole answer
    # fail rather than hang).
    client, sim = await stalling()
    try:
        async with Runtime(db_url, llm=client) as rt, asyncio.timeout(20):
            (result,) = [r async for r in rt.map(agent, ["why?"])]
        assert result.ok, result.error
        assert result.output
        assert sim.stats().stalls == 1 and sim.stats().requests_total == 1
    finally:
        await client.aclose()


@legion.agent(retries=0)
async def read_all(ctx: legion.Context, question: str) -> dict[str, Any]:
    stream = await ctx.llm.openai().chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": question}], max_tokens=16,
        stream=True,
    )  # fmt: skip
    pieces: list[str] = []
    try:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    except openai.APIError as exc:
        return {"pieces": pieces, "error": exc.message}
    return {"pieces": pieces, "error": None}


@legion.agent(retries=0)
async def read_all_anthropic(ctx: legion.Context, question: str) -> dict[str, Any]:
    pieces: list[str] = []
    try:
        async with ctx.llm.anthropic().messages.stream(
            model="sim-model", max_tokens=16, messages=[{"role": "user", "content": question}]
        ) as stream:
            async for piece in stream.text_stream:
                pieces.append(piece)
    except anthropic.APIStatusError as exc:
        return {"pieces": pieces, "error": str(exc)}
    return {"pieces": pieces, "error": None}


@pytest.mark.parametrize("agent", [read_all, read_all_anthropic], ids=["openai", "anthropic"])
async def test_a_stream_broken_after_its_first_pieces_is_an_sdk_error_not_a_retry(
    db_url: str, agent: Any
) -> None:
    client, sim = await stalling(idle=0.2)
    try:
        async with Runtime(db_url, llm=client) as rt, asyncio.timeout(20):
            (result,) = [r async for r in rt.map(agent, ["why?"])]
        assert result.ok, result.error
        assert result.output["pieces"] and "stream broke" in result.output["error"]
        assert sim.stats().requests_total == 1  # no second answer spliced onto the first
        assert result.usage is None or not result.usage.get("llm_calls")  # nothing recorded
    finally:
        await client.aclose()


async def chunks_of(stream: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in stream]


SEEN: dict[int, list[dict[str, Any]]] = {}


@legion.agent(retries=1, backoff=0)
async def stream_then_fail_once(ctx: legion.Context, question: str) -> str:
    stream = await ctx.llm.openai().chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": question}], max_tokens=16,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    SEEN[ctx.attempt] = [chunk.model_dump() for chunk in await chunks_of(stream)]
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails after its stream")
    return "done"


async def test_a_replayed_stream_comes_whole_and_parses_to_the_same_completion(
    db_url: str,
) -> None:
    SEEN.clear()
    provider = SimulatedProvider()
    await provider.start()
    client = LLMClient([Route("default", provider, "sim-model", Capacity("default"))])
    try:
        async with Runtime(db_url, llm=client) as rt:
            (result,) = [r async for r in rt.map(stream_then_fail_once, ["same?"])]
        assert result.ok, result.error
        assert provider.simulator.stats().requests_total == 1
        live, replayed = SEEN[1], SEEN[2]
        assert len(live) > len(replayed)  # piece by piece, then whole

        def text(chunks: list[dict[str, Any]]) -> str:
            deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
            return "".join(delta["content"] or "" for delta in deltas)

        assert text(live) == text(replayed) != ""
        assert live[-1]["usage"] == replayed[-1]["usage"]
        assert {c["id"] for c in live} == {c["id"] for c in replayed}  # the request's id
    finally:
        await client.aclose()


async def test_a_stream_broken_off_and_left_open_is_not_called_the_agents_task(
    db_url: str,
) -> None:
    # legion's own task that reads the stream was claimed as one the agent created, and
    # reported on every task as "still running after the agent returned".
    @legion.agent(retries=0)
    async def breaks_off(ctx: legion.Context, question: str) -> str:
        stream = await ctx.llm.openai().chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": question}],
            max_tokens=64,
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                return str(chunk.choices[0].delta.content)  # (the stream left open)
        return ""

    async with Runtime(db_url, llm="sim") as rt:
        results = [r async for r in rt.map(breaks_off, ["one", "two", "three"])]
    assert all(r.ok for r in results), results
    assert [d.message for r in results for d in r.diagnostics] == []
