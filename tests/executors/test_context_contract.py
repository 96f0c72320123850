"""One behavioural contract for the agent's context, run on both implementations: the
local Context (the agent runs in its worker) and the RemoteContext (the process executor
runs it in a child process). A real SQLite file and real child processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.executors import ProcessExecutor
from legion.llm.specs import open_client
from legion.sim import SimConfig, Simulator
from tests.executors import agents

pytestmark = pytest.mark.usefixtures("no_leaked_processes")


@pytest.fixture(params=["local", "remote"])
async def rt(request: pytest.FixtureRequest, db_url: str) -> AsyncIterator[Runtime]:
    if request.param == "local":
        async with Runtime(db_url) as runtime:
            yield runtime
    else:
        executor = ProcessExecutor(processes=1, memory_limit_mb=300)
        async with Runtime(db_url, executors={"process": executor}, executor="process") as rt:
            yield rt


async def run_one(rt: Runtime, agent: legion.Agent, value: Any) -> legion.TaskResult:
    sub = await rt.submit(agent, value)
    return await rt.result(sub.id)


async def test_steps_are_keyed_by_one_rule_and_recorded(rt: Runtime) -> None:
    r = await run_one(rt, agents.echo, "a")
    assert r.status is TaskStatus.SUCCEEDED
    assert r.output["twice"] == ["aa", "A"]  # gathered, in argument order
    steps = await rt.store.steps(r.id)
    assert sorted(s.key for s in steps) == ["double", "double#2"]


async def test_steps_in_a_gathers_own_branches_are_keyed_within_them_and_replayed(
    rt: Runtime,
) -> None:
    # In a child process every such task failed: "step name 'fetch@0' ends in '@' and a
    # number" (the worker checked again, as a name, the key the child had made).
    r = await run_one(rt, agents.branches, 3)
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 2, r.error
    assert r.output == [f"PAGE {i} ATTEMPT 1" for i in range(3)]  # replayed on attempt 2
    steps = await rt.store.steps(r.id)
    assert sorted(s.key for s in steps) == sorted(
        f"{name}@{i}" for name in ("fetch", "post") for i in range(3)
    )


async def test_memory_reads_what_it_wrote_and_answers_the_default(rt: Runtime) -> None:
    r = await run_one(rt, agents.echo, "b")
    assert r.output["remembered"] == {"value": "b"}
    assert r.output["missing"] == "default"
    assert r.output["items"] == {"text": {"value": "b"}}


async def test_memory_updates_are_read_modify_writes_of_their_own(rt: Runtime) -> None:
    subs = [await rt.submit(agents.tally, word, session="s") for word in ("a", "b", "c")]
    outputs: list[list[str]] = [(await rt.result(sub.id)).output for sub in subs]
    longest = max(outputs, key=len)  # (the last to write has all)
    assert sorted(longest) == ["a", "b", "c"]
    assert await rt.store.memory_get("s", "count") == b"3"


async def test_the_context_says_which_task_attempt_session_and_agent(rt: Runtime) -> None:
    r = await run_one(rt, agents.echo, "c")
    assert r.output["ids"] == [r.id, 1, None, f"task-{r.id}", "echo"]


async def test_a_retry_replays_a_recorded_step_instead_of_running_it(
    rt: Runtime, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    r = await run_one(rt, agents.contract_replay, str(ledger))
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 2
    # the step's side effect happened once (no duplicate), and both attempts saw its value
    assert ledger.read_text().splitlines() == ["ran"]
    assert r.output == {"first": [1, 2], "again": [1, 2]}


async def test_a_step_result_comes_back_as_its_json_form(rt: Runtime) -> None:
    r = await run_one(rt, agents.contract_json, 0)
    assert r.output == {"value": [1, 2], "kind": "list"}


async def test_a_failing_step_fails_the_attempt_and_records_nothing(rt: Runtime) -> None:
    r = await run_one(rt, agents.value_error, 0)
    assert r.status is TaskStatus.DEAD  # retryable, and no retry left (retries=0)
    assert r.error is not None and r.error.type == "ValueError"
    assert await rt.store.steps(r.id) == []


async def test_gather_fails_fast_with_the_first_error(rt: Runtime) -> None:
    r = await run_one(rt, agents.contract_gather, 0)
    assert r.status is TaskStatus.SUCCEEDED
    assert r.output == {"error": "second failed", "collected": [1, "boom"]}


@pytest.mark.parametrize("where", ["local", "remote"])
async def test_a_batch_tier_call_waits_for_its_batch_and_costs_half(
    db_url: str, where: str
) -> None:
    async with Simulator(SimConfig(models=("gpt-5-mini",))) as sim:
        llm = await open_client([f"main=openai:gpt-5-mini@{sim.base_url}"])
        llm.batch_window, llm.batch_poll_interval = 0.02, 0.05
        executors: dict[str, Any] = {}
        if where == "remote":
            executors = {"process": ProcessExecutor(processes=1, memory_limit_mb=300)}
        async with (
            llm,
            Runtime(
                db_url, llm=llm, executors=executors, executor="process" if executors else None
            ) as rt,
        ):
            r = await run_one(rt, agents.contract_batch, "Which tier is cheaper?")
            steps = {s.key: s for s in await rt.store.steps(r.id)}
        stats = sim.stats()
    assert r.status is TaskStatus.SUCCEEDED, r.error
    assert r.output["batched"] == r.output["standard"]
    assert (stats.requests_total, stats.batches, stats.batch_requests) == (1, 1, 1)
    [standard_key] = [k for k in steps if k.startswith("llm.") and "#" not in k]
    assert f"{standard_key}#2" in steps  # the batch answer, recorded as the call's step
    assert r.usage is not None and r.usage["llm_calls"] == 2
    standard_cost = steps[standard_key].output["cost_usd"]
    assert standard_cost > 0
    assert r.usage["cost_usd"] == pytest.approx(1.5 * standard_cost)


async def test_an_sdk_client_in_a_child_process_is_refused_at_once_saying_why(
    db_url: str,
) -> None:
    executor = ProcessExecutor(processes=1, memory_limit_mb=300)
    async with Runtime(db_url, executors={"process": executor}, executor="process") as rt:
        for kind in ("openai", "anthropic"):
            r = await run_one(rt, agents.sdk_client, kind)
            assert (r.status, r.attempt) == (TaskStatus.FAILED, 1), r  # not retried
            assert r.error is not None and r.error.type == "Permanent"
            assert f"ctx.llm.{kind}() (and the framework integrations" in r.error.message


async def test_a_step_result_that_is_not_json_fails_the_task_naming_the_step(
    rt: Runtime,
) -> None:
    r = await run_one(rt, agents.contract_bytes_step, 0)
    assert (r.status, r.attempt) == (TaskStatus.FAILED, 1), r
    assert r.error is not None and r.error.type == "OutputError"
    assert r.error.message.startswith("step 'raw': cannot store value as JSON")
