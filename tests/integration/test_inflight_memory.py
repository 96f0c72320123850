"""What an instance holds while it waits on one ``ctx.llm.chat``: the coroutines of the
call chain, and the bytes allocated for it (a runtime on a SQLite file, a provider that
answers once the test lets it)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import types
from pathlib import Path
from typing import Any

import legion
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.provider import ChatResult
from legion.llm.types import ChatRequest, ChatResponse, RateLimitInfo, Usage

INSTANCES = 300


class GatedProvider:
    """Answers every call once `gate` is set; `all_in` is set when ``expected`` calls
    are waiting at once."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.waiting = 0
        self.gate = asyncio.Event()
        self.all_in = asyncio.Event()

    @property
    def name(self) -> str:
        return "gated"

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        self.waiting += 1
        if self.waiting >= self.expected:
            self.all_in.set()
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        response = ChatResponse("ok", (), "stop", Usage(3, 1), request.model, self.name)
        return ChatResult(response, RateLimitInfo())

    async def aclose(self) -> None:
        return None


@legion.agent(name="one-call", retries=0, timeout=600)
async def one_call(ctx: legion.Context, i: int) -> int:
    answer = await ctx.llm.chat([{"role": "user", "content": f"task {i}"}], max_tokens=4)
    return answer.usage.total


def _chain(task: asyncio.Task[Any]) -> list[str]:
    """The coroutines a waiting task is suspended in, outermost first (through the
    iterator a `Pending` hands to ``await``)."""
    names: list[str] = []
    current: Any = task.get_coro()
    while current is not None:
        if isinstance(current, types.CoroutineType):
            names.append(current.cr_code.co_qualname)
            current = current.cr_await
        elif type(current).__name__ == "coroutine_wrapper":  # coro.__await__()
            current = next(
                o for o in gc.get_referents(current) if isinstance(o, types.CoroutineType)
            )
        else:
            break
    return names


async def _all_waiting(tmp_path: Path, measure: Any) -> Any:
    """Run `INSTANCES` instances, call ``measure(tasks)`` once all of them wait on the
    provider, then let them finish; answer what it answered."""
    provider = GatedProvider(INSTANCES)
    client = LLMClient([Route("gated", provider, "m", Capacity("gated"), timeout=600)])
    found: Any = None
    async with legion.Runtime(
        f"sqlite:///{tmp_path / 'inflight.db'}", concurrency=INSTANCES, llm=client
    ) as rt:
        provider.gate.set()  # a first call, answered at once: imports, first commit
        assert [r.ok async for r in rt.map(one_call, [-1])] == [True]
        provider.gate, provider.all_in = asyncio.Event(), asyncio.Event()
        provider.expected = INSTANCES
        results: list[bool] = []

        async def consume() -> None:
            results.extend([r.ok async for r in rt.map(one_call, range(INSTANCES))])

        gc.collect()
        before = measure(None)
        consumer = asyncio.ensure_future(consume())
        await provider.all_in.wait()
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("legion-task-")]
        assert len(tasks) == INSTANCES
        gc.collect()
        found = measure((before, tasks))
        provider.gate.set()
        await consumer
    assert results == [True] * INSTANCES
    return found


async def test_a_waiting_call_holds_no_frame_of_its_own_between_the_step_and_the_provider(
    tmp_path: Path,
) -> None:
    def chain(arg: Any) -> list[str] | None:
        return None if arg is None else _chain(arg[1][0])

    found = await _all_waiting(tmp_path, chain)
    assert found == [
        "run_instance",
        "one_call",
        "Context.record",
        "LLMClient.chat",
        "LLMClient._attempt",
        "GatedProvider.chat",
        "Event.wait",
    ]


async def test_a_waiting_instance_holds_under_10_kb(tmp_path: Path) -> None:
    def traced(arg: Any) -> int:
        now: int = tracemalloc.get_traced_memory()[0]
        return now if arg is None else now - int(arg[0])

    tracemalloc.start()
    try:
        held = await _all_waiting(tmp_path, traced)
    finally:
        tracemalloc.stop()
    # 6.9 KB measured here on Python 3.11 on an idle machine (9.2 KB before the LLM call
    # chain lost three frames, 7.7 KB before the objects counted below), the test's
    # provider and its event included. With three busy processes beside it the same code
    # measured 7.5-9.6 KB (the count of objects below does not move with the load): the
    # bound leaves that room, and the count is the finer guard.
    assert held / INSTANCES < 10_000


async def test_a_finished_attempt_that_called_the_llm_leaves_nothing_for_the_cyclic_gc(
    tmp_path: Path,
) -> None:
    # With the collector off, what a finished attempt left in a reference cycle stays
    # alive; freed by reference counting, it is gone at once. Its context is the root of
    # everything the attempt held (steps, traces, the lease): `ctx.llm` referred back to
    # it, and every finished attempt that made a call waited for a full collection.
    def contexts(_: Any) -> int:
        return sum(type(o) is legion.Context for o in gc.get_objects())

    provider = GatedProvider(1)
    provider.gate.set()
    client = LLMClient([Route("gated", provider, "m", Capacity("gated"), timeout=600)])
    async with legion.Runtime(f"sqlite:///{tmp_path / 'cycles.db'}", llm=client) as rt:
        assert [r.ok async for r in rt.map(one_call, [-1])] == [True]  # warm up
        gc.collect()
        gc.disable()
        try:
            results = [r.ok async for r in rt.map(one_call, range(50))]
            left = contexts(None)
        finally:
            gc.enable()
    assert results == [True] * 50
    assert left == 0


@legion.agent(retries=0)
async def fails(ctx: legion.Context, i: int) -> int:
    await ctx.step("before", lambda: i)
    raise ValueError(f"task {i} failed")


async def test_a_failed_attempt_leaves_nothing_for_the_cyclic_gc(tmp_path: Path) -> None:
    # The exception an attempt ended with holds its traceback, and so the runner's frame:
    # kept in that frame, it made a cycle, and every failed attempt's context, lease and
    # steps waited for the collector (which a running worker runs less often).
    def contexts() -> int:
        return sum(type(o) is legion.Context for o in gc.get_objects())

    async with legion.Runtime(f"sqlite:///{tmp_path / 'failures.db'}") as rt:
        assert [r.ok async for r in rt.map(fails, [-1])] == [False]  # warm up
        gc.collect()
        gc.disable()
        try:
            results = [r.ok async for r in rt.map(fails, range(50))]
            left = contexts()
        finally:
            gc.enable()
    assert results == [False] * 50
    assert left == 0


async def test_a_waiting_instance_holds_at_most_31_objects_the_collector_scans(
    tmp_path: Path,
) -> None:
    """Every full collection of the cyclic GC scans each object it tracks: with 10,000
    instances in flight they were most of its work (44 objects each before the budget
    holds, the capacity reservation, the recorder, the result's waiter list and the
    task's usage before its first answer went)."""

    def tracked(arg: Any) -> int:
        return len(gc.get_objects()) if arg is None else len(gc.get_objects()) - int(arg[0])

    held = await _all_waiting(tmp_path, tracked)
    # 28.1 measured here on Python 3.11 in a process of its own, the test's provider and
    # its event included (30.1 while a step in flight kept its arguments and inputs for
    # the advisor, which compares them only for a step that began after a long one
    # ended). The count also holds a few hundred objects made once, the first time the
    # process runs some path, which depends on the tests it ran before: 29.1 after the
    # integration tests before this file, 30.2 in one run of the whole suite.
    assert held / INSTANCES <= 31, held / INSTANCES
