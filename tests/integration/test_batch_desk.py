"""The batch desk pass by pass, on a clock the test moves (the simulator's too): it
submits the queued calls of a route as one job, polls it only when due, signals each
call's answer at half price once the job ended, and sends the calls back to the standard
tier when the job cannot be submitted. A real SQLite file, the simulator over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from legion import codec
from legion.llm.specs import open_client
from legion.sim import SimConfig, Simulator
from legion.store import Store, store_from_url
from legion.store.batches import BatchCall
from legion.task import NewTask
from legion.testing import FakeClock
from legion.waiting.batch import BatchDesk

MODEL = "gpt-5-mini"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = store_from_url(f"sqlite:///{tmp_path / 'desk.db'}")
    await s.open()
    yield s
    await s.aclose()


@pytest.fixture
async def closing() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def queue_calls(store: Store, clock: FakeClock, n: int) -> list[BatchCall]:
    submitted = await store.submit([NewTask("a", b"{}") for _ in range(n)], clock.now())
    calls = []
    for i, s in enumerate(submitted):
        request = codec.dumps(
            {"messages": [{"role": "user", "content": f"q{i}"}], "params": {"max_tokens": 9}}
        )
        call = BatchCall(s.id, f"legion.batch:llm.main.{i}", "main", request, clock.now() + 60)
        await store.batch_enqueue(call, clock.now())
        calls.append(call)
    return calls


async def test_a_pass_submits_one_job_polls_when_due_and_signals_the_answers(
    store: Store, closing: AsyncExitStack
) -> None:
    clock = FakeClock(1_000.0, wall=1_000.0)
    config = SimConfig(models=(MODEL,), batch_turnaround=10.0)
    sim = await closing.enter_async_context(Simulator(config, clock=clock.now))
    spec = f"main=openai:{MODEL}@{sim.base_url}"
    client = await closing.enter_async_context(await open_client([spec]))
    desk = BatchDesk(client, store, clock=clock, window=0.0, poll_interval=4.0)
    closing.push_async_callback(desk.aclose)
    calls = await queue_calls(store, clock, 3)
    assert await desk.tick() == 0
    assert (desk.jobs, sim.stats().batches) == (1, 1)  # all three in one job
    await clock.advance(3.0)
    assert await desk.tick() == 0  # its poll is not due: the provider is not asked
    await clock.advance(1.0)
    assert await desk.tick() == 0  # asked: the job has not ended
    await clock.advance(6.0)
    assert await desk.tick() == 3
    for i, call in enumerate(calls):
        data = await store.signal_data(call.task_id, call.event, 0)
        assert data is not None
        answer = codec.loads(data)["response"]
        standard = await client.chat([{"role": "user", "content": f"q{i}"}], max_tokens=9)
        full_price = client.cost(standard, "main")
        assert full_price is not None and full_price > 0
        assert answer["text"] == standard.text and answer["tier"] == "batch"
        assert answer["cost_usd"] == pytest.approx(full_price / 2)
    assert await store.batch_due(clock.now() + 100, clock.now() + 101) == []
    assert sim.stats().batch_requests == 3


async def test_a_job_that_cannot_be_submitted_sends_its_calls_to_the_standard_tier(
    store: Store, closing: AsyncExitStack
) -> None:
    clock = FakeClock(1_000.0, wall=1_000.0)
    config = SimConfig(models=(MODEL,), api_key="right")
    sim = await closing.enter_async_context(Simulator(config, clock=clock.now))
    spec = f"main=openai:{MODEL}@{sim.base_url}"  # no key: refused
    client = await closing.enter_async_context(await open_client([spec]))
    desk = BatchDesk(client, store, clock=clock, window=0.0, poll_interval=1.0)
    closing.push_async_callback(desk.aclose)
    calls = await queue_calls(store, clock, 2)
    assert await desk.tick() == 2
    for call in calls:
        data = await store.signal_data(call.task_id, call.event, 0)
        assert data is not None and "401" in codec.loads(data)["fallback"]
    assert desk.jobs == 0 and sim.stats().batches == 0
    assert await store.batch_claim("main", 10, "c", clock.now(), 0.0) == []


async def test_a_job_whose_calls_all_gave_up_is_cancelled_and_answers_nobody(
    store: Store, closing: AsyncExitStack
) -> None:
    clock = FakeClock(1_000.0, wall=1_000.0)
    config = SimConfig(models=(MODEL,), batch_turnaround=100.0)
    sim = await closing.enter_async_context(Simulator(config, clock=clock.now))
    spec = f"main=openai:{MODEL}@{sim.base_url}"
    client = await closing.enter_async_context(await open_client([spec]))
    desk = BatchDesk(client, store, clock=clock, window=0.0, poll_interval=1.0)
    closing.push_async_callback(desk.aclose)
    calls = await queue_calls(store, clock, 2)
    await desk.tick()
    await store.batch_forget([(calls[0].task_id, calls[0].event)])  # its deadline came
    await clock.advance(1.0)
    assert await desk.tick() == 0 and desk.cancelled == 0  # the other still waits for it
    await store.batch_forget([(calls[1].task_id, calls[1].event)])
    await clock.advance(1.0)
    assert await desk.tick() == 0
    assert desk.cancelled == 1 and sim.stats().batches_cancelled == 1
    assert await store.batch_due(clock.now() + 100, clock.now() + 101) == []
    for call in calls:
        assert await store.signal_data(call.task_id, call.event, 0) is None
