"""The async pitfalls, caught and reported on the task with the line to fix."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest

import legion
from legion import Runtime, TaskStatus
from legion.diagnostics.report import Kind
from tests.integration import pitfall_agents as agents

SOURCE = Path(agents.__file__)


def line_of(mark: str) -> int:
    for number, text in enumerate(SOURCE.read_text().splitlines(), start=1):
        if f"MARK: {mark}" in text:
            return number
    raise AssertionError(mark)


async def run(
    db_url: str, agent: legion.Agent, value: object, **options: object
) -> legion.TaskResult:
    async with Runtime(db_url, **options) as rt:  # type: ignore[arg-type]
        result = await rt.result((await rt.submit(agent, value)).id)
        stored = await rt.store.diagnostics(task_id=result.id)
    assert len(stored) == len(result.diagnostics)  # what the run saw is what the store keeps
    return result


async def test_a_blocking_call_is_reported_with_agent_line_and_duration(db_url: str) -> None:
    r = await run(db_url, agents.sleepy, 1)
    (found,) = r.diagnostics
    assert found.kind is Kind.BLOCKED_LOOP
    assert found.site is not None
    assert (Path(found.site.file).name, found.site.line) == (SOURCE.name, line_of("blocking-call"))
    assert found.seconds is not None and 0.2 <= found.seconds < 10
    assert found.message.startswith("agent `sleepy` blocked the event loop for ")
    assert "in `fetch_sync` (time.sleep)" in found.message
    assert r.status is TaskStatus.SUCCEEDED  # reported, not failed


async def test_a_block_deep_in_a_library_is_reported_at_the_agents_line(db_url: str) -> None:
    r = await run(db_url, agents.deep, 1)
    (found,) = r.diagnostics
    assert found.kind is Kind.BLOCKED_LOOP and found.site is not None
    assert (Path(found.site.file).name, found.site.line) == (
        SOURCE.name,
        line_of("deep-blocking-call"),
    )
    assert found.site.code.startswith("return len(json.dumps(value, indent=1))")


async def test_blocking_in_a_gathered_child_is_the_agents_too(db_url: str) -> None:
    r = await run(db_url, agents.sleepy_child, 1)
    (found,) = [d for d in r.diagnostics if d.kind is Kind.BLOCKED_LOOP]
    assert "agent `sleepy_child`" in found.message
    assert found.site is not None and found.site.line == line_of("blocking-call")


async def test_an_unawaited_step_is_reported_and_fails_in_strict_mode(db_url: str) -> None:
    r = await run(db_url, agents.forgetful, 1)
    (found,) = r.diagnostics
    assert found.kind is Kind.UNAWAITED
    assert found.site is not None and found.site.line == line_of("unawaited-step")
    assert "step `save`" in found.message and "never awaited" in found.message
    assert r.status is TaskStatus.SUCCEEDED

    strict = await run(db_url, agents.forgetful, 2, strict=True)
    assert strict.status is TaskStatus.FAILED
    assert strict.error is not None and strict.error.type == "UnawaitedWork"
    assert f"pitfall_agents.py:{line_of('unawaited-step')}" in strict.error.message


async def test_an_unawaited_child_sleep_or_gather_is_reported_as_itself(db_url: str) -> None:
    # They were coroutines: never awaited, the child was never started and the durable
    # sleep never slept, with only Python's warning on stderr (and --strict passed); an
    # unawaited gather's steps were reported as steps to "pass to ctx.gather".
    r = await run(db_url, agents.forgetful_waits, 1)
    found = {d.site.line: d.message for d in r.diagnostics if d.site is not None}
    assert [d.kind for d in r.diagnostics] == [Kind.UNAWAITED] * 3
    assert "ctx.spawn(...) made at" in found[line_of("unawaited-spawn")]
    assert "ctx.sleep(...) made at" in found[line_of("unawaited-sleep")]
    assert "ctx.gather(...) made at" in found[line_of("unawaited-gather")]
    strict = await run(db_url, agents.forgetful_waits, 2, strict=True)
    assert strict.status is TaskStatus.FAILED
    assert strict.error is not None and strict.error.type == "UnawaitedWork"


async def test_an_unawaited_memory_write_is_reported(db_url: str) -> None:
    r = await run(db_url, agents.forgetful_memory, 1)
    (found,) = r.diagnostics
    assert found.kind is Kind.UNAWAITED and "ctx.memory.set('seen')" in found.message
    assert found.site is not None and found.site.line == line_of("unawaited-memory")


async def test_an_exception_escaping_a_spawned_task_is_attached_not_lost(db_url: str) -> None:
    r = await run(db_url, agents.spawner, 1)
    gc.collect()
    (found,) = r.diagnostics
    assert found.kind is Kind.ESCAPED_EXCEPTION
    assert (
        "'background-work'" in found.message
        and "ValueError: lost in the background" in found.message
    )
    # The line to change, where the task was made (the raise is in the report's stack).
    assert found.site is not None and found.site.line == line_of("escaped-made")
    assert f"that it created at {found.site}" in found.message
    assert any(s.line == line_of("escaped-raise") for s in found.stack)
    assert r.status is TaskStatus.SUCCEEDED  # the worker and the task carried on


async def test_a_task_left_running_is_reported_at_the_line_that_made_it(db_url: str) -> None:
    # It named the line the task was paused at, inside the helper, and "Task-22".
    (found,) = (await run(db_url, agents.leaves_a_task, 1)).diagnostics
    assert found.site is not None and found.site.line == line_of("left-running")
    assert "still running after the agent returned" in found.message


async def test_independent_steps_awaited_in_turn_get_advice(db_url: str) -> None:
    r = await run(db_url, agents.serial, "q")
    (found,) = r.diagnostics
    assert found.kind is Kind.SEQUENTIAL_AWAIT
    first, second = line_of("serial-first"), line_of("serial-second")
    assert f"pitfall_agents.py:{first} and " in found.message
    assert f"pitfall_agents.py:{second})" in found.message
    assert "ctx.gather" in found.message
    assert found.seconds is not None and 0.04 <= found.seconds < 10


async def test_clean_and_dependent_agents_get_no_report(db_url: str) -> None:
    assert (await run(db_url, agents.chained, "q")).diagnostics == ()
    assert (await run(db_url, agents.prompt_chain, "q")).diagnostics == ()  # text pasted on
    assert (await run(db_url, agents.clean, "q")).diagnostics == ()
    # The first result is compared as it was recorded, not as the agent left it.
    assert (await run(db_url, agents.consumes_its_result, "q")).diagnostics == ()


async def test_an_excerpt_or_a_write_passed_on_is_a_dependency(db_url: str) -> None:
    # A slice of the first answer inside the second prompt, and a write whose id the second
    # step does not take (it reads the table back), were "appear independent".
    assert (await run(db_url, agents.excerpt_chain, "q")).diagnostics == ()
    assert (await run(db_url, agents.writes_then_reads, "q")).diagnostics == ()


async def test_sdk_calls_made_in_a_task_of_their_own_are_sited_at_the_agents_line(
    db_url: str,
) -> None:
    # A streamed SDK call's request runs in a task: the walk up its frames left the agent
    # for the event loop and named the program's entry point (`asyncio.run(main())`).
    r = await run(db_url, agents.serial_sdk_calls, "q", llm="sim")
    assert r.ok, r.error
    (found,) = r.diagnostics
    line = line_of("sdk-stream")
    assert found.kind is Kind.SEQUENTIAL_AWAIT
    assert f"pitfall_agents.py:{line} and " in found.message
    assert f"pitfall_agents.py:{line})" in found.message


async def test_a_coroutine_let_go_unawaited_is_reported_and_fails_in_strict_mode(
    db_url: str,
) -> None:
    # Any coroutine, an SDK's call among them (`client.chat.completions.create(...)`
    # without `await`): Python's RuntimeWarning on stderr was all there was, and --strict
    # let the task succeed.
    with pytest.warns(RuntimeWarning, match="never awaited"):
        r = await run(db_url, agents.forgets_an_await, "q")
    (found,) = r.diagnostics
    assert found.kind is Kind.UNAWAITED
    assert "coroutine '_notify'" in found.message and "never awaited" in found.message
    assert found.site is not None and found.site.line == line_of("coroutine-dropped")
    with pytest.warns(RuntimeWarning, match="never awaited"):
        strict = await run(db_url, agents.forgets_an_await, "r", strict=True)
    assert strict.status is TaskStatus.FAILED
    assert strict.error is not None and strict.error.type == "UnawaitedWork"


async def test_a_ctx_call_can_be_made_a_task(db_url: str) -> None:
    # It failed with "a coroutine was expected, got <...Pending object>", and was then
    # also reported as never awaited.
    r = await run(db_url, agents.call_in_a_task, "q")
    assert (r.ok, r.output, r.diagnostics) == (True, "hit", ())


async def test_asyncios_close_of_an_async_generator_is_not_the_agents_task(db_url: str) -> None:
    # A stream read in part (LangChain's astream, an SDK's stream) is closed by asyncio in
    # a task it makes: the agent cannot await it, so no advice to await it.
    assert (await run(db_url, agents.reads_part_of_a_stream, "q")).diagnostics == ()


async def test_an_agent_that_stops_the_loop_fails_and_the_loop_goes_on(db_url: str) -> None:
    # loop.stop() in one agent stopped the loop under every instance: `legion run` ended in
    # a traceback with every task left running and nothing written.
    async with Runtime(db_url) as rt:
        loop = asyncio.get_running_loop()
        stopper, fine = (
            await rt.submit(agents.loop_stopper, 1),
            await rt.submit(agents.loop_stopper, 0),
        )
        stopped, done = await rt.result(stopper), await rt.result(fine)
        assert "stop" in vars(loop)  # guarded while the worker runs
    assert stopped.status is TaskStatus.FAILED and stopped.attempt == 1  # not retried
    assert stopped.error is not None and stopped.error.type == "LoopStopRefused"
    assert "loop.stop()" in stopped.error.message
    assert done.status is TaskStatus.SUCCEEDED
    assert "stop" not in vars(loop)  # the loop's own method again


async def test_calls_that_block_one_after_another_in_one_turn_are_each_reported(
    db_url: str,
) -> None:
    # The first call that blocked a turn of the loop was reported, and the others of the
    # same turn were not (3 of 20 such blocks reported, their total a fifth of the time
    # the loop was held).
    agents.GATE["open"] = gate = asyncio.Event()
    async with Runtime(db_url) as rt:
        subs = await rt.submit_many(agents.sleeps_after_the_gate, [1, 2, 3])
        assert rt.worker is not None
        for _ in range(1000):  # (every instance waits at the gate)
            if rt.worker.statistics().in_flight == 3:
                break
            await asyncio.sleep(0.01)
        waiting = asyncio.gather(*(rt.result(s.id) for s in subs))  # (delivered as they end)
        await asyncio.sleep(0)
        gate.set()
        results = await waiting
    for r in results:
        (found,) = r.diagnostics
        assert found.kind is Kind.BLOCKED_LOOP and found.site is not None
        assert found.site.line == line_of("sleeps-in-turn")
        # (each its own length: not the turn's, which held the loop for all three)
        assert found.seconds is not None and found.seconds < 0.6


async def test_a_runtime_logs_each_pitfall_once_per_place(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # From Python, a Runtime's user saw none of the pitfalls (`legion run` summarises them;
    # the rest was in `legion status --advice` alone).
    caplog.set_level(logging.WARNING, logger="legion.pitfalls")
    async with Runtime(db_url) as rt:
        results = [r async for r in rt.map(agents.sleepy, [1, 2, 3])]
    assert all(len(r.diagnostics) == 1 for r in results)
    said = [r.getMessage() for r in caplog.records if r.name == "legion.pitfalls"]
    assert len(said) == 1, said  # (three tasks, one place)
    assert "blocked the event loop" in said[0] and "legion status --advice" in said[0]
