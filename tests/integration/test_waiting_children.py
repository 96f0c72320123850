"""10,000 children of one parent, at most 100 unfinished at once; the parent waits
suspended and holds no slot of its worker while they run.

The worker has 100 slots, as many as the fan-out limit, and the first 100 children wait
until all 100 run at once: had the waiting parent kept a slot, only 99 could, and the run
would never end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import legion

pytestmark = pytest.mark.slow

SEEN: dict[str, Any] = {}


@legion.agent(retries=0)
async def child(ctx: Any, i: int) -> int:
    SEEN["running"] += 1
    SEEN["most"] = max(SEEN["most"], SEEN["running"])
    if i < 100:  # the first window: all 100 at once, or never
        if SEEN["running"] == 100:
            SEEN["full"].set()
        await SEEN["full"].wait()
    await asyncio.sleep(0)  # let the other children of the window start
    SEEN["running"] -= 1
    return i


@legion.agent(retries=0)
async def parent(ctx: Any, n: int) -> Any:
    outs = await ctx.map(child, [{"i": i} for i in range(n)], concurrency=100)
    return {"n": len(outs), "sum": sum(outs), "in_order": outs == list(range(n))}


async def test_ten_thousand_children_with_a_fan_out_limit_of_100(tmp_path: Path) -> None:
    SEEN.update(running=0, most=0, full=asyncio.Event())
    n = 10_000
    async with legion.Runtime(
        f"sqlite:///{tmp_path / 'children.db'}", concurrency=100, agents=[parent, child]
    ) as rt:
        p = await rt.submit(parent, {"n": n})
        async with asyncio.timeout(300):
            result = await rt.result(p.id)
        counts = await rt.store.counts()
    assert result.ok, result.error
    assert result.output == {"n": n, "sum": n * (n - 1) // 2, "in_order": True}
    assert counts == {legion.TaskStatus.SUCCEEDED: n + 1}
    assert SEEN["most"] == 100  # the first window ran whole, and no window was larger
