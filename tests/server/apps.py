"""Agents the server tests serve."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

import legion
from legion import attempt

# Set by the `gate` fixture for each test: `held` tasks wait on it.
GATE: dict[str, asyncio.Event] = {}


class Order(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(ge=1)


@legion.agent(timeout=30, retries=1, backoff=0)
async def work(ctx: legion.Context, n: int, delay: float = 0.0) -> dict[str, object]:
    """One step, then two steps in parallel."""

    async def step(name: str) -> str:
        await asyncio.sleep(delay)
        return name

    first = await ctx.step("a", step, "a")
    both = await ctx.gather(ctx.step("b1", step, "b1"), ctx.step("b2", step, "b2"))
    return {"n": n, "steps": [first, *both]}


@legion.agent(retries=1, backoff=0)
async def flaky(ctx: legion.Context, n: int) -> int:
    """Waits for capacity, then fails, on its first attempt."""
    if ctx.attempt == 1:
        with attempt.waiting("capacity on route test"):
            await asyncio.sleep(0.01)  # stands for a route's pace: the attempt is not running
        raise ConnectionError("flaky")
    return n


@legion.agent(retries=0)
async def doomed(ctx: legion.Context, n: int) -> None:
    raise RuntimeError(f"doomed {n}" if n < 1000 else "E" * n)  # (n: its message's length)


@legion.agent(timeout=30)
async def held(ctx: legion.Context, n: int) -> int:
    """Records a step, then waits until the test opens the gate."""
    await ctx.step("started", lambda: n)
    await GATE["open"].wait()
    return n


@legion.agent
async def order(ctx: legion.Context, item: Order, note: str = "") -> str:
    return f"{item.quantity} x {item.sku}{note}"


@legion.agent
async def ask(ctx: legion.Context, question: str) -> str:
    reply = await ctx.llm.chat([{"role": "user", "content": question}], max_tokens=8)
    return reply.text


@legion.agent(retries=0)
async def approve(ctx: legion.Context, amount: int) -> dict[str, object]:
    answer = await ctx.approval(f"pay {amount}?")
    return {"approved": answer.approved}


@legion.agent
async def stepwise(ctx: legion.Context, n: int) -> int:
    """``n`` steps of one name, one after the other (keyed s, s#2, s#3...)."""
    for i in range(n):
        await ctx.step("s", int, i)
    return n


@legion.agent(retries=0)
async def family(ctx: legion.Context, n: int) -> list[int]:
    """``n`` children of `held`, one a number, waited for together."""
    return await ctx.map(held, range(1, n + 1))


@legion.agent(retries=0)
async def clan(ctx: legion.Context, n: int) -> list[list[int]]:
    """Two children of `family`, each with ``n`` children of `held`."""
    return await ctx.map(family, [n, n])


@legion.agent(retries=0)
async def late_family(ctx: legion.Context, n: int) -> list[int]:
    """Records a step, waits for the gate, then starts ``n`` children of `held`."""
    await ctx.step("started", lambda: n)
    await GATE["open"].wait()
    return await ctx.map(held, range(1, n + 1))


@legion.agent(retries=0)
async def orphaning(ctx: legion.Context, n: int) -> None:
    """Starts a child of `held`, and fails once that child has recorded its step."""

    async def boom() -> None:
        await GATE["child"].wait()  # (set by the test once the child runs)
        raise RuntimeError("boom after spawning")

    await ctx.gather(ctx.spawn(held, n), boom())


AGENTS = [
    work,
    flaky,
    doomed,
    held,
    order,
    ask,
    approve,
    stepwise,
    family,
    clan,
    late_family,
    orphaning,
]
