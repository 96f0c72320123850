"""Streams through the gateway are passed on as the provider sends them, while the call
still goes through legion's route; the whole completion is counted once it ends."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from legion.gateway import app as gateway_app
from legion.sim import SimConfig
from tests.gateway.conftest import cluster

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "stream this, please"}]


async def stream(client: openai.AsyncOpenAI, max_tokens: int = 16, **extra: Any) -> Any:
    return await client.chat.completions.create(
        model="sim-model", messages=QUESTION, max_tokens=max_tokens, stream=True, **extra
    )


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_the_caller_reads_pieces_the_provider_is_still_sending(
    sqlite_url: str, dialect: str
) -> None:
    # The simulator sends half of the answer, then nothing: only a gateway that passes
    # pieces on as they come lets the caller read any of it (the guard turns a gateway
    # that waits for the whole answer into a failure rather than a hang). The provider
    # speaks OpenAI's API or Anthropic's: the caller reads OpenAI's chunks either way.
    async with cluster(sqlite_url, config=SimConfig(stall_rate=1.0), dialect=dialect) as c:
        key = await c.key("agent")
        client = openai.AsyncOpenAI(base_url=c.gateways[0].url, api_key=key, max_retries=0)
        async with client, asyncio.timeout(20):
            chunks = await stream(client)
            first = ""
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = chunk.choices[0].delta.content
                    break
            await chunks.close()
        assert first
        assert c.sim.stats().stalls == 1 and c.sim.stats().requests_total == 1
        # The caller hung up part-way: the call is counted for its key, as failed (it
        # left no trace in the key's usage at all).
        mine = c.gateways[0].gateway.book.account(key.split("_")[1])
        async with asyncio.timeout(20):
            while mine.failed == 0:  # noqa: ASYNC110 - the handler's cancel lands after
                await asyncio.sleep(0.01)
        assert (mine.calls, mine.failed) == (0, 1)


async def test_a_stream_that_breaks_after_its_first_pieces_ends_in_an_error_not_a_retry(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = SimConfig(stall_rate=1.0)
    async with cluster(sqlite_url, config=config, stream_idle_timeout=0.2) as c:
        key = await c.key("agent")
        client = openai.AsyncOpenAI(base_url=c.gateways[0].url, api_key=key, max_retries=0)
        received: list[str] = []
        async with client, asyncio.timeout(20):
            chunks = await stream(client)
            with pytest.raises(openai.APIError) as caught:
                async for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        received.append(chunk.choices[0].delta.content)
        assert received  # the first half came, then the error
        assert "stream broke" in caught.value.message
        # Why it broke (a stall, a malformed piece, a dropped connection) is said too.
        assert "sent nothing" in caught.value.message or "stall" in caught.value.message, (
            caught.value.message
        )
        # The gateway's log says so (it said nothing of a provider's failures).
        said = [r.getMessage() for r in caplog.records if r.name.startswith("legion.gateway")]
        assert any("a call failed: StreamInterrupted" in m for m in said), said
        # The provider broke it: a server error, not the caller's ("invalid_request_error").
        assert caught.value.type == "server_error", caught.value.body
        # The route's retry was not sent: it would have spliced a second answer on.
        assert c.sim.stats().requests_total == 1
        mine = await c.gateways[0].gateway.book.totals(key.split("_")[1])
        assert (mine.calls, mine.failed) == (0, 1)


async def test_a_whole_stream_matches_the_plain_answer_and_errors_keep_their_status(
    sqlite_url: str,
) -> None:
    async with cluster(sqlite_url) as c:
        key = await c.key("agent")
        client = openai.AsyncOpenAI(base_url=c.gateways[0].url, api_key=key, max_retries=0)
        async with client:
            plain = await client.chat.completions.create(
                model="sim-model", messages=QUESTION, max_tokens=16
            )
            chunks = await stream(client, stream_options={"include_usage": True})
            parts = [chunk async for chunk in chunks]
            # A refusal before the first piece is the caller's HTTP error, as for a plain call.
            with pytest.raises(openai.BadRequestError):
                await stream(client, max_tokens=-1)
            again = await client.chat.completions.create(
                model="sim-model", messages=QUESTION, max_tokens=16
            )
            restreamed = [chunk async for chunk in await stream(client)]
        text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
        assert text == plain.choices[0].message.content  # the simulator is deterministic
        assert len([p for p in parts if p.choices and p.choices[0].delta.content]) > 1
        assert parts[-1].usage == plain.usage
        assert parts[-2].choices[0].finish_reason == plain.choices[0].finish_reason
        assert len({p.id for p in parts}) == 1
        # Calls recorded under no task each have an id of their own and the time they
        # were made (the same body gave every caller one id, created at 0, in 1970).
        assert parts[0].id != plain.id and plain.created > 0 and parts[0].created > 0
        assert again.id != plain.id and restreamed[0].id != parts[0].id
        assert restreamed[0].model == again.model == plain.model == "sim-model"


async def test_a_live_stream_is_recorded_whole_for_its_task(sqlite_url: str) -> None:
    async with cluster(sqlite_url) as c:
        key = await c.key("agent")
        client = openai.AsyncOpenAI(
            base_url=c.gateways[0].url,
            api_key=key,
            max_retries=0,
            default_headers={"X-Legion-Task": "t1"},
        )
        async with client:
            parts = [p async for p in await stream(client)]
            again = await client.chat.completions.create(
                model="sim-model", messages=QUESTION, max_tokens=16
            )
        assert len(parts) > 3  # live: role, pieces, finish
        text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
        assert again.choices[0].message.content == text
        assert c.sim.stats().requests_total == 1  # the plain call was the stream's record
        mine = await c.gateways[0].gateway.book.totals(key.split("_")[1])
        assert (mine.calls, mine.replayed) == (1, 1)


async def test_a_connection_that_sends_no_whole_request_is_closed(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that trickles its headers (or sends nothing) held its connection, and a
    # file descriptor of the gateway, for an hour; a call that takes longer is answered.
    monkeypatch.setattr(gateway_app, "IDLE_SECONDS", 0.5)
    async with cluster(sqlite_url, config=SimConfig(latency=1.0)) as c:
        host, port = c.gateways[0].gateway.address[:2]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""  # closed
        writer.close()
        key = await c.key("slow-answer")
        client = openai.AsyncOpenAI(base_url=c.gateways[0].url, api_key=key, max_retries=0)
        answer = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        await client.close()
    assert answer.choices[0].message.content
