"""Durable waiting on the process executor: not supported yet, and said so clearly."""

from __future__ import annotations

import pytest

from legion import Runtime, TaskStatus
from legion.executors import ProcessExecutor

from . import agents

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaked_processes")]


async def test_a_wait_on_the_process_executor_fails_the_task_saying_why(db_url: str) -> None:
    executor = ProcessExecutor(processes=1, memory_limit_mb=300)
    async with Runtime(db_url, executors={"process": executor}, executor="process") as rt:
        result = await rt.result((await rt.submit(agents.waits, {"n": 1})).id)
    assert result.status is TaskStatus.FAILED
    assert result.error is not None and result.error.type == "Permanent"
    assert "ctx.wait_for is not supported on the process and Ray executors" in result.error.message
