"""Durable waiting on the process executor: the wait is made by the worker's context, the
child's instance ends with the suspension, and the task resumes in a child on a signal."""

from __future__ import annotations

import asyncio

import pytest

from legion import Runtime, TaskStatus
from legion.executors import ProcessExecutor
from tests.executors import agents

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaked_processes")]


async def test_a_task_waits_in_a_child_and_resumes_on_a_signal(db_url: str) -> None:
    executor = ProcessExecutor(processes=1, memory_limit_mb=300)
    async with Runtime(
        db_url,
        executors={"process": executor},
        executor="process",
        agents=[agents.waits, agents.doubled],  # a worker runs the children it knows
    ) as rt:
        task = await rt.submit(agents.waits, {"n": 4})
        for _ in range(3000):
            info = await rt.get(task.id)
            assert info is not None
            if info.status is TaskStatus.WAITING:
                break
            await asyncio.sleep(0.01)
        assert info is not None and info.status is TaskStatus.WAITING
        assert await rt.signal(task.id, "go", {"v": 1}) is TaskStatus.QUEUED
        result = await rt.result(task.id)
    assert result.ok, result.error
    assert result.output == {"n": 4, "got": {"v": 1}, "child": {"i": 8}}
