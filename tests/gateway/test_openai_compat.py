"""What an OpenAI client reads from the gateway beyond the answer itself: the provider's
error codes passed on, OpenAI's own codes for the gateway's errors, the paths it serves
named, the model endpoints, and callers turned away by ``--max-wait`` told turns one
after the other."""

from __future__ import annotations

import asyncio

import openai
import pytest

from legion.sim import SimConfig
from tests.gateway.conftest import cluster
from tests.gateway.test_recording import QUESTION, sdk


async def test_the_providers_error_code_reaches_the_caller(store_url: str) -> None:
    # The provider said model_not_found; the caller got "code": null (a client that
    # trims its history on context_length_exceeded never saw the code).
    async with cluster(store_url, config=SimConfig(models=("another-model",))) as c:
        key = await c.key("agent")
        async with sdk(c.gateways[0].url, key) as client:
            with pytest.raises(openai.NotFoundError) as refused:
                await client.chat.completions.create(model="sim-model", messages=QUESTION)
    assert refused.value.code == "model_not_found"
    assert "does not exist" in refused.value.message


async def test_the_gateways_own_errors_carry_openais_codes(store_url: str) -> None:
    async with cluster(store_url) as c:
        key = await c.key("agent")
        url = c.gateways[0].url
        async with sdk(url, "sk-legion-not-a-key") as stranger:
            with pytest.raises(openai.AuthenticationError) as refused:
                await stranger.chat.completions.create(model="sim-model", messages=QUESTION)
        assert refused.value.code == "invalid_api_key"
        async with sdk(url, key) as client:
            # A boolean n is no 1 (it was sent on as "n": true).
            with pytest.raises(openai.BadRequestError) as bad:
                await client.chat.completions.create(
                    model="sim-model", messages=QUESTION, extra_body={"n": True}
                )
            assert "n=True" in bad.value.message
            # The Responses API (the Agents SDK's default) is named as not served, with
            # what is (a bare "Not Found" before).
            with pytest.raises(openai.NotFoundError) as missing:
                await client.responses.create(model="sim-model", input="hi")
            assert "serves no POST /v1/responses" in missing.value.message
            assert "OpenAIChatCompletionsModel" in missing.value.message
            # One model, as clients check it before they use it.
            model = await client.models.retrieve("sim-model")
            assert model.id == "sim-model"
            with pytest.raises(openai.NotFoundError) as unknown:
                await client.models.retrieve("gpt-unknown")
            assert unknown.value.code == "model_not_found"
            assert "default route" in unknown.value.message
    assert c.sim.stats().requests_total == 0


async def test_embeddings_of_a_model_no_route_serves_are_refused_not_sent_to_the_chat_model(
    store_url: str,
) -> None:
    # The default route (a chat model) was asked for the embeddings of another model.
    async with cluster(store_url) as c:
        key = await c.key("agent")
        async with sdk(c.gateways[0].url, key) as client:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.embeddings.create(model="text-embedding-3-small", input="hi")
            assert "--llm embed=openai:text-embedding-3-small" in refused.value.message
            with pytest.raises(openai.BadRequestError) as tokens:
                await client.embeddings.create(model="sim-model", input=[[9906, 1917]])
            assert "token ids" in tokens.value.message
            served = await client.embeddings.create(model="sim-model", input="hi")
    assert len(served.data) == 1
    assert c.sim.stats().requests_total == 1


async def test_callers_turned_away_are_told_turns_one_after_the_other(store_url: str) -> None:
    # Every caller turned away was told the same Retry-After: obeying it, they all came
    # back at once, and all but one were turned away again.
    async with cluster(store_url, rpm=60, max_wait=2.0) as c:  # a call a second
        key = await c.key("agent")
        async with sdk(c.gateways[0].url, key) as client:
            calls = [
                client.chat.completions.with_raw_response.create(
                    model="sim-model", messages=QUESTION, max_tokens=4
                )
                for _ in range(12)
            ]
            answers = await asyncio.gather(*calls, return_exceptions=True)
    told = [
        int(a.response.headers["Retry-After"])
        for a in answers
        if isinstance(a, openai.RateLimitError)
    ]
    assert len(told) >= 6, answers
    # A call a second: the turns given spread over as many seconds as callers told.
    assert max(told) - min(told) >= len(told) - 2, told
    assert len(set(told)) >= len(told) - 1, told


async def test_the_providers_answer_id_reaches_the_caller_and_a_replay_repeats_it(
    store_url: str,
) -> None:
    # The gateway gave every answer an id of its own: the provider's, which its support
    # asks for, was lost.
    async with cluster(store_url) as c:
        key = await c.key("agent")
        async with sdk(c.gateways[0].url, key) as client:
            plain = await client.chat.completions.create(model="sim-model", messages=QUESTION)
        async with sdk(c.gateways[0].url, key, **{"X-Legion-Task": "t1"}) as recording:
            first = await recording.chat.completions.create(model="sim-model", messages=QUESTION)
            again = await recording.chat.completions.create(model="sim-model", messages=QUESTION)
    assert plain.id.startswith("chatcmpl-sim")
    assert first.id.startswith("chatcmpl-sim") and first.id != plain.id
    assert again.id == first.id  # (recorded with its answer)
    assert c.sim.stats().requests_total == 2
