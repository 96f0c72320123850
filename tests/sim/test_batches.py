"""The simulator's batch APIs over real HTTP, driven by the official SDKs: OpenAI's Batch
API (files, batches, output file) and Anthropic's Message Batches (batches, results), with
the turnaround on a clock the test moves."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from legion.sim import SimConfig, Simulator

MODEL = "sim-model"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sim(clock: Clock) -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(batch_turnaround=30.0), clock=clock) as simulator:
        yield simulator


def questions(n: int) -> list[Any]:  # the SDKs' message types
    return [[{"role": "user", "content": f"Question number {i}?"}] for i in range(n)]


async def test_openai_batch_answers_as_the_standard_endpoint_after_the_turnaround(
    sim: Simulator, clock: Clock
) -> None:
    client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    async with client:
        lines = b"".join(
            orjson.dumps(
                {
                    "custom_id": f"q{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": MODEL, "messages": messages, "max_tokens": 20},
                }
            )
            + b"\n"
            for i, messages in enumerate(questions(3))
        )
        uploaded = await client.files.create(file=("in.jsonl", lines), purpose="batch")
        assert uploaded.bytes == len(lines)
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "in_progress" and batch.output_file_id is None
        clock.now += 29.0
        assert (await client.batches.retrieve(batch.id)).status == "in_progress"
        clock.now += 1.0
        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.output_file_id
        assert done.request_counts is not None and done.request_counts.completed == 3
        output = await client.files.content(done.output_file_id)
        lines_out = [orjson.loads(line) for line in output.content.splitlines()]
        answers = {line["custom_id"]: line for line in lines_out}
        assert sorted(answers) == ["q0", "q1", "q2"]
        assert sim.stats().requests_total == 0  # not the standard endpoint's requests
        for i, messages in enumerate(questions(3)):
            standard = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=20
            )
            response = answers[f"q{i}"]["response"]
            assert response["status_code"] == 200
            body = response["body"]
            assert body["choices"][0]["message"]["content"] == standard.choices[0].message.content
            assert standard.usage is not None
            assert body["usage"]["prompt_tokens"] == standard.usage.prompt_tokens
            assert body["usage"]["completion_tokens"] == standard.usage.completion_tokens
    stats = sim.stats()
    assert (stats.batches, stats.batch_requests, stats.requests_total) == (1, 3, 3)


async def test_openai_batch_cancelled_before_it_ends_answers_nothing(
    sim: Simulator, clock: Clock
) -> None:
    client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    async with client:
        line = {
            "custom_id": "only",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": questions(1)[0]},
        }
        uploaded = await client.files.create(file=("in.jsonl", orjson.dumps(line)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        cancelled = await client.batches.cancel(batch.id)
        clock.now += 60.0
        again = await client.batches.retrieve(batch.id)
        assert cancelled.status == again.status == "cancelled"
        assert again.output_file_id is None
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_nope")
    assert (sim.stats().batch_requests, sim.stats().batches_cancelled) == (0, 1)


async def test_anthropic_message_batch_answers_as_the_messages_endpoint(
    sim: Simulator, clock: Clock
) -> None:
    client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="x", max_retries=0)
    async with client:
        batch = await client.messages.batches.create(
            requests=[
                {
                    "custom_id": f"q{i}",
                    "params": {"model": MODEL, "max_tokens": 20, "messages": messages},
                }
                for i, messages in enumerate(questions(2))
            ]
        )
        assert batch.processing_status == "in_progress" and batch.results_url is None
        clock.now += 30.0
        ended = await client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.request_counts.succeeded == 2
        stream = await client.messages.batches.results(batch.id)
        results = {r.custom_id: r.result async for r in stream}
        for i, messages in enumerate(questions(2)):
            standard = await client.messages.create(model=MODEL, max_tokens=20, messages=messages)
            result = results[f"q{i}"]
            assert result.type == "succeeded"
            assert result.message.content == standard.content
            assert result.message.usage.output_tokens == standard.usage.output_tokens
            assert result.message.stop_reason == standard.stop_reason


async def test_anthropic_batch_cancelled_reports_every_request_canceled(
    sim: Simulator,
) -> None:
    client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="x", max_retries=0)
    async with client:
        params: Any = {"model": MODEL, "max_tokens": 20, "messages": questions(1)[0]}
        batch = await client.messages.batches.create(
            requests=[{"custom_id": "a", "params": params}, {"custom_id": "b", "params": params}]
        )
        ended = await client.messages.batches.cancel(batch.id)
        assert ended.processing_status == "ended" and ended.request_counts.canceled == 2
        results = [r async for r in await client.messages.batches.results(batch.id)]
        assert [(r.custom_id, r.result.type) for r in results] == [
            ("a", "canceled"),
            ("b", "canceled"),
        ]


async def test_batches_need_the_key_and_known_models(clock: Clock) -> None:
    config = SimConfig(api_key="secret", batch_turnaround=0.0)
    async with Simulator(config, clock=clock) as sim:
        denied = openai.AsyncOpenAI(base_url=sim.base_url, api_key="wrong", max_retries=0)
        async with denied:
            with pytest.raises(openai.AuthenticationError):
                await denied.files.create(file=("in.jsonl", b"{}"), purpose="batch")
        client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="secret", max_retries=0)
        async with client:
            params: Any = {"model": "no-such-model", "max_tokens": 5, "messages": questions(1)[0]}
            batch = await client.messages.batches.create(
                requests=[{"custom_id": "x", "params": params}]
            )
            results = [r async for r in await client.messages.batches.results(batch.id)]
            assert results[0].result.type == "errored"


async def test_batch_times_are_unix_times_and_bad_fields_are_400s(clock: Clock) -> None:
    """A batch's ``created_at`` was the simulator's monotonic clock (1970 to a client),
    and a metadata or file id of the wrong type was a 500."""
    async with Simulator(SimConfig(batch_turnaround=0.0), clock=clock) as sim:
        async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as c:
            upload = await c.files.create(file=("in.jsonl", b""), purpose="batch")
            batch = await c.batches.create(
                input_file_id=upload.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            assert abs(batch.created_at - time.time()) < 3600
            assert abs(upload.created_at - time.time()) < 3600
        async with aiohttp.ClientSession() as session:
            for body in (
                {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "metadata": "a"},
                {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", "metadata": [1]},
                {"input_file_id": [1], "endpoint": "/v1/chat/completions"},
            ):
                async with session.post(f"{sim.base_url}/batches", json=body) as response:
                    assert response.status == 400, body
                    assert (await response.json())["error"]["message"]
        async with anthropic.AsyncAnthropic(base_url=sim.url, api_key="x", max_retries=0) as a:
            params: Any = {"model": "sim-model", "max_tokens": 5, "messages": questions(1)[0]}
            made = await a.messages.batches.create(requests=[{"custom_id": "x", "params": params}])
            assert abs(made.created_at.timestamp() - time.time()) < 3600
