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


async def test_a_retry_with_children_queues_the_deepest_first_and_skips_below_a_success(
    tmp_path: Path,
) -> None:
    # Parents were queued before their children: a middle parent rerun before its
    # children were queued again found them still cancelled, and failed again. And the
    # failed children of a middle parent that had succeeded (it caught their failure)
    # were run again, for nobody.
    from legion.store.sqlite import SQLiteStore
    from legion.store.types import WriteBatch
    from legion.task import Completion, ErrorInfo, NewTask, Outcome, TaskStatus
    from legion.waiting.family import retriable_descendants

    store = SQLiteStore(str(tmp_path / "tree.db"))
    await store.open()
    try:
        (top,) = await store.submit([NewTask("t", b"{}")], 1.0)
        failed_mid, ok_mid = await store.submit_children(
            top.id, [NewTask("m", b"1", "m1"), NewTask("m", b"2", "m2")], 1.0
        )
        (low,) = await store.submit_children(failed_mid.id, [NewTask("c", b"1", "c1")], 1.0)
        (caught,) = await store.submit_children(ok_mid.id, [NewTask("c", b"2", "c2")], 1.0)
        for task in (low, caught):
            assert await store.cancel(task.id, 2.0) is TaskStatus.CANCELLED
        await store.lease("w", {"m": 2}, 2, 1e12, 3.0)
        ends = [
            Completion(failed_mid.id, 1, "w", Outcome.FAILED, error=ErrorInfo("ChildFailed", "")),
            Completion(ok_mid.id, 1, "w", Outcome.SUCCEEDED, output=b"0"),
        ]
        assert await store.write(WriteBatch(completions=ends), 4.0) == [True, True]
        assert await retriable_descendants(store, top.id) == [low.id, failed_mid.id]
    finally:
        await store.aclose()


async def test_a_retry_with_children_waits_for_a_cancel_not_yet_taken(tmp_path: Path) -> None:
    # A child whose cancel was asked, not yet taken by its worker (still running), ended
    # cancelled after its retried parent had rerun: the parent failed again.
    from legion.errors import StillStopping
    from legion.store.sqlite import SQLiteStore
    from legion.store.types import WriteBatch
    from legion.task import Completion, NewTask, Outcome, TaskStatus
    from legion.waiting.family import requeue_descendants

    store = SQLiteStore(str(tmp_path / "tree.db"))
    await store.open()
    try:
        (top,) = await store.submit([NewTask("t", b"{}")], 1.0)
        (stopping,) = await store.submit_children(top.id, [NewTask("c", b"1", "c1")], 1.0)
        await store.lease("w", {"t": 1, "c": 1}, 2, 1e12, 2.0)
        assert await store.cancel(stopping.id, 3.0) is TaskStatus.RUNNING  # (asked)
        ended = Completion(top.id, 1, "w", Outcome.CANCELLED)
        assert await store.write(WriteBatch(completions=[ended]), 3.0) == [True]
        with pytest.raises(StillStopping, match=f"descendants still stopping \\({stopping.id}"):
            await requeue_descendants(store, top.id)
        info = await store.get(top.id)
        assert info is not None and info.status is TaskStatus.CANCELLED  # nothing queued
        taken = Completion(stopping.id, 1, "w", Outcome.CANCELLED)
        assert await store.write(WriteBatch(completions=[taken]), 4.0) == [True]
        assert await requeue_descendants(store, top.id) == [stopping.id]
    finally:
        await store.aclose()
