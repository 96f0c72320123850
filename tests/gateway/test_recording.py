"""``X-Legion-Task``: a call that names its task is recorded as a step of it, in the store,
and answered from its record when asked again, through any gateway on the store."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from legion.sim import SimConfig
from tests.gateway.conftest import cluster

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "what is recorded?"}]


def sdk(url: str, key: str, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, default_headers=headers)


async def raw_chat(client: openai.AsyncOpenAI, **extra: Any) -> bytes:
    response = await client.chat.completions.with_raw_response.create(
        model="sim-model", messages=QUESTION, max_tokens=16, **extra
    )
    content: bytes = response.http_response.content
    return content


async def usage(url: str, key: str, **query: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/usage", params=query, headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
        return data


async def test_a_task_s_call_asked_again_on_another_gateway_is_answered_from_its_record(
    store_url: str,
) -> None:
    async with cluster(store_url, n=2) as c:
        key = await c.key("agent")
        one, two = (g.url for g in c.gateways)
        async with sdk(one, key, **{"X-Legion-Task": "order-1"}) as first:
            answer = await raw_chat(first)
        assert c.sim.stats().requests_total == 1
        async with sdk(two, key, **{"X-Legion-Task": "order-1"}) as again:
            assert await raw_chat(again) == answer  # the same bytes, from the other gateway
            stream = await again.chat.completions.create(
                model="sim-model", messages=QUESTION, max_tokens=16, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert c.sim.stats().requests_total == 1  # nothing bought again
        assert text and text in answer.decode()
        # Another task, or no task at all, asks the provider.
        async with sdk(two, key, **{"X-Legion-Task": "order-2"}) as other:
            await raw_chat(other)
        async with sdk(two, key) as plain:
            await raw_chat(plain)
        assert c.sim.stats().requests_total == 3


async def test_identical_calls_of_one_step_sent_at_once_buy_it_once(store_url: str) -> None:
    # Five identical calls of one task sent together each reached the provider (all five
    # answered the first's record): "asked again buys nothing" held only one at a time.
    import asyncio

    async with cluster(store_url) as c:
        key = await c.key("agent")
        async with sdk(c.gateways[0].url, key, **{"X-Legion-Task": "t-100"}) as client:
            answers = await asyncio.gather(*(raw_chat(client) for _ in range(5)))
        assert len(set(answers)) == 1
        assert c.sim.stats().requests_total == 1
        mine = await usage(c.gateways[0].url, key)
        assert (mine["calls"], mine["replayed"]) == (1, 4), mine


async def test_recordings_are_the_calling_key_s_own(store_url: str) -> None:
    async with cluster(store_url) as c:
        mine, theirs = await c.key("mine"), await c.key("theirs")
        url = c.gateways[0].url
        for key in (mine, theirs, mine):
            async with sdk(url, key, **{"X-Legion-Task": "shared-name"}) as client:
                await raw_chat(client)
        assert c.sim.stats().requests_total == 2


async def test_a_named_step_answers_one_request_and_embeddings_are_recorded_too(
    store_url: str,
) -> None:
    async with cluster(store_url) as c:
        key = await c.key("agent")
        url = c.gateways[0].url
        headers = {"X-Legion-Task": "t", "X-Legion-Step": "plan"}
        async with sdk(url, key, **headers) as client:
            first = await raw_chat(client)
            assert await raw_chat(client) == first
            with pytest.raises(openai.ConflictError) as caught:
                await client.chat.completions.create(
                    model="sim-model", messages=[{"role": "user", "content": "else"}]
                )
            assert "plan" in caught.value.message
        async with sdk(url, key, **{"X-Legion-Task": "t"}) as client:
            vectors = [
                (await client.embeddings.create(model="sim-model", input=["a", "b"])).data
                for _ in range(2)
            ]
        assert [v.embedding for v in vectors[0]] == [v.embedding for v in vectors[1]]
        assert c.sim.stats().requests_total == 2  # one chat, one embedding
        async with aiohttp.ClientSession() as session:
            bad = {"Authorization": f"Bearer {key}", "X-Legion-Step": "plan"}
            body = {"model": "sim-model", "messages": QUESTION}
            async with session.post(f"{url}/chat/completions", json=body, headers=bad) as r:
                assert r.status == 400  # a step needs its task
                assert "X-Legion-Task" in (await r.json())["error"]["message"]
        mine = await usage(url, key)
        assert mine["tasks"] == {"t": 2}  # the chat step and the embedding
        assert (mine["calls"], mine["replayed"], mine["failed"]) == (2, 2, 2)


async def test_usage_per_key_is_one_total_over_every_gateway(store_url: str) -> None:
    async with cluster(store_url, n=2) as c:
        key, other = await c.key("agent"), await c.key("other")
        admin = await c.key("ops", admin=True)
        for running in c.gateways:
            async with sdk(running.url, key) as client:
                for _ in range(3):
                    await raw_chat(client)
        one, two = c.gateways
        await two.gateway.book.flush()  # what the usage loop does each second
        mine = await usage(one.url, key)
        assert mine["calls"] == 6 and mine["key"] in key
        assert mine["prompt_tokens"] > 0 and mine["completion_tokens"] > 0
        assert mine["cost_known"] and mine["cost_usd"] == 0  # the simulator is free
        assert await usage(two.url, key) == mine
        assert (await usage(two.url, other))["calls"] == 0
        everyone = await usage(two.url, admin, all="1")
        assert [(k["key"], k["calls"]) for k in everyone["keys"]] == [(mine["key"], 6)]
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{one.url}/usage", params={"all": "1"}, headers={"Authorization": f"Bearer {key}"}
            ) as r,  # fmt: skip
        ):
            assert r.status == 403


async def test_a_request_no_retry_can_help_says_so(store_url: str) -> None:
    # A request too large for the provider's limit: the provider's "x-should-retry: false"
    # was dropped, so the SDKs sent it three times (max_retries=2, their default), each
    # refused again.
    async with cluster(store_url, config=SimConfig(tpm=600)) as c:
        key = await c.key("agent")
        url = c.gateways[0].url
        big: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 4000}]
        retrying = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=2)
        async with retrying:
            with pytest.raises(openai.RateLimitError) as refused:
                await retrying.chat.completions.create(
                    model="sim-model", messages=big, max_tokens=4
                )
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert "retrying cannot help" in refused.value.message
        assert c.sim.stats().requests_total == 1


async def test_with_max_wait_a_call_that_would_wait_longer_is_told_when_to_come_back(
    store_url: str,
) -> None:
    # Every call waited its turn, however long the queue: callers with a 5 s timeout got
    # 18 answers in 40 s from a 120-a-minute route, the rest of its capacity spent on
    # calls whose callers had left, and none was told to come back later.
    async with cluster(store_url, rpm=60, max_wait=2.0) as c:  # a call a second
        key = await c.key("agent")
        async with sdk(c.gateways[0].url, key) as client:
            calls = [
                client.chat.completions.with_raw_response.create(
                    model="sim-model", messages=QUESTION, max_tokens=4
                )
                for _ in range(10)
            ]
            answers = await asyncio.gather(*calls, return_exceptions=True)
        served = [a for a in answers if not isinstance(a, BaseException)]
        told = [a for a in answers if isinstance(a, openai.RateLimitError)]
        assert len(served) + len(told) == 10 and served and told, answers
        for refused in told:
            assert int(refused.response.headers["Retry-After"]) >= 2
            assert "--max-wait of 2 s" in refused.message
        assert c.sim.stats().requests_total == len(served)  # (the refused never went out)
