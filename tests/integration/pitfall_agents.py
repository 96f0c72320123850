"""One agent per async pitfall (and clean ones), for tests/integration/test_pitfalls.py.

The tests look up line numbers by the marker comments, so lines may move freely.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import legion


def fetch_sync() -> str:
    time.sleep(0.3)  # MARK: blocking-call
    return "page"


@legion.agent(retries=0)
async def sleepy(ctx: legion.Context, x: int) -> str:
    return fetch_sync()


@legion.agent(retries=0)
async def deep(ctx: legion.Context, x: int) -> int:
    # The standard library's encoder writes a list nested 45 deep (with an indent: in
    # Python) in frames of its own: the loop blocks ~50 frames below the agent's line,
    # and 30 frames were looked at.
    value: list[object] = list(range(300_000))
    for _ in range(45):
        value = [value]
    return len(json.dumps(value, indent=1))  # MARK: deep-blocking-call


@legion.agent(retries=0)
async def sleepy_child(ctx: legion.Context, x: int) -> list[str]:
    async def crawl() -> str:
        return fetch_sync()

    return await ctx.gather(crawl(), ctx.step("other", lambda: "ok"))


@legion.agent(retries=0)
async def forgetful(ctx: legion.Context, x: int) -> str:
    ctx.step("save", lambda: "saved")  # MARK: unawaited-step
    return "done"


@legion.agent(retries=0)
async def forgetful_memory(ctx: legion.Context, x: int) -> str:
    ctx.memory.set("seen", x)  # MARK: unawaited-memory
    return "done"


@legion.agent(retries=0)
async def forgetful_waits(ctx: legion.Context, x: int) -> str:
    ctx.spawn(forgetful, x)  # MARK: unawaited-spawn
    ctx.sleep(5)  # MARK: unawaited-sleep
    ctx.gather(ctx.step("a", lambda: 1), ctx.step("b", lambda: 2))  # MARK: unawaited-gather
    return "done"


async def _boom() -> None:
    raise ValueError("lost in the background")  # MARK: escaped-raise


@legion.agent(retries=0)
async def spawner(ctx: legion.Context, x: int) -> str:
    task = asyncio.create_task(_boom(), name="background-work")  # MARK: escaped-made
    await asyncio.sleep(0)  # let it run (and fail) while nobody awaits it
    await asyncio.sleep(0)
    del task
    return "done"


@legion.agent(retries=3)
async def loop_stopper(ctx: legion.Context, x: int) -> str:
    await asyncio.sleep(0)
    if x:
        asyncio.get_running_loop().stop()
    await asyncio.sleep(0)
    return "done"


async def _wait(seconds: float, tag: str) -> str:
    await asyncio.sleep(seconds)
    return tag


@legion.agent(retries=0)
async def serial(ctx: legion.Context, q: str) -> list[str]:
    a = await ctx.step("search", _wait, 0.05, "a")  # MARK: serial-first
    b = await ctx.step("lookup", _wait, 0.05, "b")  # MARK: serial-second
    return [a, b]


@legion.agent(retries=0)
async def chained(ctx: legion.Context, q: str) -> str:
    a = await ctx.step("search", _wait, 0.05, "hit")
    return str(await ctx.step("read", _wait, 0.05, a))  # uses the first step's result


@legion.agent(retries=0)
async def clean(ctx: legion.Context, q: str) -> list[str]:
    parts = await ctx.gather(*(ctx.step(f"part-{i}", _wait, 0.02, str(i)) for i in range(3)))
    await ctx.memory.set("last", parts)
    return list(parts)


async def _chunks() -> AsyncIterator[int]:
    try:
        for i in range(10):
            yield i
    finally:
        await asyncio.sleep(0)  # its close has work to do (a stream closing its response)


@legion.agent(retries=0)
async def reads_part_of_a_stream(ctx: legion.Context, q: str) -> int:
    """Stops reading an async generator early, as a framework's stream does: asyncio
    closes the generator in a task of its own, which is not the agent's to await."""
    async for chunk in _chunks():
        if chunk == 1:
            break
    await asyncio.sleep(0)  # the agent goes on a little: asyncio's task is made by then
    return 1


@legion.agent(retries=0)
async def prompt_chain(ctx: legion.Context, q: str) -> str:
    part = await ctx.step("summarize", _wait, 0.05, "a summary of the first passage")
    return str(await ctx.step("combine", _wait, 0.05, f"Combine these notes: {part}"))


@legion.agent(retries=0)
async def excerpt_chain(ctx: legion.Context, q: str) -> str:
    draft = await ctx.step("draft", _wait, 0.05, "The answer, at length. It goes on and on.")
    return str(await ctx.step("title", _wait, 0.05, f"Write a title for: {draft[:30]}..."))


async def _saved(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return 42  # a new row's id


@legion.agent(retries=0)
async def writes_then_reads(ctx: legion.Context, q: str) -> str:
    await ctx.step("save", _saved, 0.05)
    return str(await ctx.step("recent", _wait, 0.05, "the latest rows"))


@legion.agent(retries=0)
async def serial_sdk_calls(ctx: legion.Context, q: str) -> list[str]:
    client = ctx.llm.openai()
    said = []
    for topic in ("pros", "cons"):  # each streamed: the SDK's request runs in a task
        stream = await client.chat.completions.create(  # MARK: sdk-stream
            model="sim-model",
            messages=[{"role": "user", "content": f"{topic} of {q}"}],
            stream=True,
        )
        said.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
    return said


async def _hits(seconds: float) -> list[str]:
    await asyncio.sleep(seconds)
    return ["hit one", "hit two"]


@legion.agent(retries=0)
async def consumes_its_result(ctx: legion.Context, q: str) -> str:
    hits = await ctx.step("search", _hits, 0.05)
    best = hits.pop(0)  # the agent's copy of the result changes after the step...
    return str(await ctx.step("read", _wait, 0.05, best))  # ...and the second used it


GATE: dict[str, asyncio.Event] = {}


@legion.agent(retries=0)
async def sleeps_after_the_gate(ctx: legion.Context, n: int) -> int:
    await GATE["open"].wait()  # every instance wakes in one turn of the loop
    time.sleep(0.3)  # noqa: ASYNC251  # MARK: sleeps-in-turn
    return n


@legion.agent(retries=0)
async def call_in_a_task(ctx: legion.Context, q: str) -> str:
    # A ctx call answers an awaitable, not a coroutine: asyncio's own create_task refused it.
    task = asyncio.create_task(ctx.step("search", _wait, 0.01, "hit"))  # type: ignore[arg-type,var-annotated]
    return str(await task)


async def _warm() -> None:
    await asyncio.sleep(30)


@legion.agent(retries=0)
async def leaves_a_task(ctx: legion.Context, x: int) -> str:
    asyncio.create_task(_warm())  # noqa: RUF006  # MARK: left-running
    return "done"


async def _notify(q: str) -> str:
    return q


@legion.agent(retries=0)
async def forgets_an_await(ctx: legion.Context, q: str) -> str:
    _notify(q)  # type: ignore[unused-coroutine]  # MARK: coroutine-dropped
    return "done"
