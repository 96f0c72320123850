"""A parent whose code changed while it waited for its children, on SQLite and
PostgreSQL: children are found by their place (the call's count, the input's index), so
the new code's calls found other calls' children and handed on their outputs, silently.
A child started for another agent or input than the replay gives it fails the parent
now (`ReplayMismatch`); the same call replayed, or one that only adds inputs, is served
as before.

The first version of each parent runs where no worker serves the children (they stay
queued, the parent waits); the second version then runs where they are served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import legion
from legion.task import TaskStatus

CODE: dict[str, Any] = {}  # the parent's "deployed code": what it maps, what it spawns first


@legion.agent(retries=0)
async def child(ctx: Any, x: int) -> int:
    return x * 10


@legion.agent(retries=0)
async def other(ctx: Any, x: int) -> int:
    return x * 1000


@legion.agent(retries=0)
async def parent(ctx: Any) -> Any:
    spawned = None
    if CODE.get("spawn_first") is not None:
        spawned = await ctx.spawn("child", {"x": CODE["spawn_first"]})
    mapped = await ctx.map(CODE["agent"], [{"x": x} for x in CODE["inputs"]])
    return {"spawned": spawned, "mapped": mapped}


async def _until_waiting(rt: legion.Runtime, task_id: int) -> None:
    for _ in range(3000):
        info = await rt.get(task_id)
        if info is not None and info.status is TaskStatus.WAITING:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} never waited for its children")


async def _deploy_twice(url: str, first: dict[str, Any], second: dict[str, Any]) -> Any:
    CODE.clear()
    CODE.update(first)
    async with legion.Runtime(url, agents=[parent]) as rt:  # nothing serves the children
        p = await rt.submit(parent, {})
        await _until_waiting(rt, p.id)
    CODE.clear()
    CODE.update(second)
    async with legion.Runtime(url, agents=[parent, child, other]) as rt:
        async with asyncio.timeout(60):
            return await rt.result(p.id)


@pytest.mark.parametrize(
    ("second", "what"),
    [
        ({"agent": "child", "inputs": [2, 1, 0]}, "the inputs reordered"),
        ({"agent": "other", "inputs": [0, 1, 2]}, "another agent"),
        ({"agent": "child", "inputs": [0, 1, 2], "spawn_first": 99}, "a call added before"),
    ],
)
async def test_a_replay_that_asks_another_child_at_its_place_fails_the_parent(
    store_url: str, second: dict[str, Any], what: str
) -> None:
    result = await _deploy_twice(store_url, {"agent": "child", "inputs": [0, 1, 2]}, second)
    assert result.status is TaskStatus.FAILED, (what, result.output)
    assert result.error is not None and result.error.type == "ReplayMismatch", result.error
    assert "changed while the task ran" in result.error.message


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        ({"agent": "child", "inputs": [0, 1, 2]}, [0, 10, 20]),
        ({"agent": "child", "inputs": [0, 1, 2, 3]}, [0, 10, 20, 30]),  # one input added
    ],
)
async def test_a_replay_that_asks_the_same_children_gets_their_outputs(
    store_url: str, second: dict[str, Any], expected: list[int]
) -> None:
    result = await _deploy_twice(store_url, {"agent": "child", "inputs": [0, 1, 2]}, second)
    assert result.ok, result.error
    assert result.output == {"spawned": None, "mapped": expected}


@legion.agent(retries=0)
async def parent_past_its_map(ctx: Any) -> Any:
    mapped = await ctx.map("child", [{"x": x} for x in CODE["inputs"]])
    await ctx.wait_for("fin")
    return mapped


async def test_a_replay_of_an_ended_map_with_another_number_of_inputs_fails(
    store_url: str,
) -> None:
    # Past its map (the outputs recorded), a parent replayed the recorded list whatever
    # its new code gave: three outputs for four inputs, the fourth never run.
    CODE.clear()
    CODE.update(inputs=[0, 1, 2])
    async with legion.Runtime(store_url, agents=[parent_past_its_map, child]) as rt:
        p = await rt.submit(parent_past_its_map, {})
        for _ in range(3000):  # (until it waits for "fin", its map's outputs recorded)
            waiting = await rt.store.waiting_tasks()
            if any(w.id == p.id and w.event == "fin" for w in waiting):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the parent never got past its map")
    CODE.update(inputs=[0, 1, 2, 3])
    async with legion.Runtime(store_url, agents=[parent_past_its_map, child]) as rt:
        await rt.signal(p.id, "fin")
        async with asyncio.timeout(60):
            result = await rt.result(p.id)
    assert result.status is TaskStatus.FAILED
    assert result.error is not None and result.error.type == "ReplayMismatch"
    assert "recorded the outputs of 3 child tasks, and this run gives it 4" in result.error.message
