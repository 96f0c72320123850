"""The process executor: real child processes, real signals, a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import legion
from legion import Runtime, TaskStatus, codec
from legion.executors import ProcessExecutor
from legion.llm import Capacity, LLMClient, Route
from legion.loader import load_agent
from legion.store import store_from_url
from legion.testing import ScriptedProvider
from tests.executors import agents
from tests.executors.conftest import alive, exited, fifo, next_line

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaked_processes")]


@pytest.fixture
async def rt(db_url: str) -> AsyncIterator[Runtime]:
    executor = ProcessExecutor(processes=2, memory_limit_mb=300)
    async with Runtime(db_url, executors={"process": executor}, executor="process") as runtime:
        yield runtime


async def run(rt: Runtime, agent: legion.Agent, *inputs: object) -> list[legion.TaskResult]:
    return sorted([r async for r in rt.map(agent, inputs)], key=lambda r: r.id)


async def test_a_runtime_given_no_executors_makes_the_process_pool_it_is_asked_for(
    db_url: str,
) -> None:
    # `Runtime(executor="process")` was refused: "which this worker does not have (give
    # it with --executor process)", a flag of the command line.
    async with Runtime(db_url, executor="process") as runtime:
        results = await run(runtime, agents.echo, "a")
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED]
    assert results[0].output["pid"] != os.getpid()


async def test_instances_run_in_children_with_the_whole_context(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="legion.agent.echo"):
        results = await run(rt, agents.echo, "a", "b", "c")
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 3
    pids = {r.output["pid"] for r in results}
    assert os.getpid() not in pids and len(pids) <= 2  # a pool of two, reused
    first = results[0]
    assert first.output["twice"] == ["aa", "A"]
    assert first.output["remembered"] == {"value": "a"}
    assert first.output["missing"] == "default"
    assert first.output["items"] == {"text": {"value": "a"}}
    assert first.output["ids"] == [first.id, 1, None, f"task-{first.id}", "echo"]
    steps = await rt.store.steps(first.id)
    assert sorted(s.key for s in steps) == ["double", "double#2"]
    assert all(s.finished_at >= s.started_at for s in steps)
    assert {m for m in caplog.messages if m.startswith("echoing")} == {
        "echoing a",
        "echoing b",
        "echoing c",
    }


async def test_a_child_started_for_an_agent_is_not_taken_for_a_task_it_left_running(
    rt: Runtime,
) -> None:
    # Each agent whose attempt started a child of the pool was told "task 'Task-21' that
    # it created is still running after the agent returned": the executor's watcher of
    # the child, made while the attempt ran.
    results = await run(rt, agents.echo, "a", "b", "c")
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 3
    found = [codec.loads(d.data) for d in await rt.store.diagnostics(limit=100)]
    assert [d for d in found if "still running after the agent returned" in str(d)] == []


async def test_a_retry_replays_the_steps_recorded_before(rt: Runtime) -> None:
    (r,) = await run(rt, agents.replaying, 1)
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 2
    assert r.output["token"] == r.output["first"]  # the step did not run again


async def test_arguments_that_do_not_pickle_fail_the_task_at_once_saying_why(
    rt: Runtime,
) -> None:
    # Retried to death with a bare "TypeError: cannot pickle '_thread.lock' object".
    (r,) = await run(rt, agents.locked, "hello")
    assert r.status is TaskStatus.FAILED and r.attempt == 1, r
    assert r.error is not None and r.error.type == "InputError"
    assert "cannot be sent to the process that runs it" in r.error.message
    assert "cannot pickle '_thread.lock' object" in r.error.message


async def test_arguments_arrive_as_the_agent_declared_them(rt: Runtime) -> None:
    (r,) = await run(rt, agents.takes_model, {"text": "why?"})
    assert r.output == "Question: why?"


async def test_agent_errors_keep_type_message_traceback_and_retryability(rt: Runtime) -> None:
    perm, value, odd, exits = [
        (await run(rt, agent, 7))[0]
        for agent in (agents.permanent, agents.value_error, agents.unpicklable, agents.exits)
    ]
    assert perm.status is TaskStatus.FAILED and perm.attempt == 1
    assert perm.error is not None and perm.error.type == "Permanent"
    assert perm.error.message == "input 7 can never work"
    assert "agents.py" in perm.error.traceback and "in permanent" in perm.error.traceback
    assert value.status is TaskStatus.DEAD and value.error is not None
    assert value.error.type == "ValueError" and "invalid literal" in value.error.message
    (called,) = await run(rt, agents.called_step, 7)  # (a call, not a function)
    assert called.status is TaskStatus.FAILED and called.attempt == 1
    assert called.error is not None and called.error.type == "StepFunctionError"
    # Its class cannot be rebuilt here: it stands in under its own name, still permanent.
    assert odd.status is TaskStatus.FAILED and odd.attempt == 1 and odd.error is not None
    assert (odd.error.type, odd.error.message) == ("Unpicklable", "custom failure")
    assert exits.status is TaskStatus.DEAD and exits.error is not None
    assert (exits.error.type, exits.error.message) == ("SystemExit", "7")


async def test_a_segfault_fails_its_task_only(rt: Runtime) -> None:
    crashed, *fine = await run(rt, agents.segfault, 1) + await run(rt, agents.echo, "x", "y")
    assert crashed.status is TaskStatus.DEAD and crashed.error is not None
    assert crashed.error.type == "InstanceLost"
    assert crashed.error.message.startswith("the agent's process was killed by SIGSEGV")
    # (this pool has --memory-limit 300: a library that fails to allocate may be why)
    assert "under --memory-limit 300 MB: a library that crashes" in crashed.error.message
    assert "Segmentation fault" in crashed.error.traceback
    assert "in segfault" in crashed.error.traceback  # where it happened, from faulthandler
    assert [r.status for r in fine] == [TaskStatus.SUCCEEDED] * 2


async def test_an_exit_of_the_process_fails_its_task(rt: Runtime) -> None:
    (r,) = await run(rt, agents.hard_exit, 3)
    assert r.status is TaskStatus.DEAD and r.error is not None
    assert (r.error.type, r.error.message) == (
        "InstanceLost",
        "the agent's process exited with code 3",
    )


async def test_a_child_that_forks_is_seen_to_die_and_leaves_no_process_behind(
    rt: Runtime, tmp_path: Path
) -> None:
    # A process the agent's forked (a subprocess, a pool of its own) outlived the child
    # as an orphan, holding the run's output open; and while it held the child's pipe, a
    # crash was taken for a hang: TaskTimeout after the attempt's whole timeout.
    dies, lives = tmp_path / "dies", tmp_path / "lives"
    (crashed,) = await run(rt, agents.forks, {"pidfile": str(dies), "then_exit": True})
    assert crashed.error is not None
    assert (crashed.error.type, crashed.error.message) == (
        "InstanceLost",
        "the agent's process exited with code 3",
    )
    (fine,) = await run(rt, agents.forks, {"pidfile": str(lives), "then_exit": False})
    assert fine.ok
    await exited(int(dies.read_text()))  # its group went with it
    await rt.aclose()  # the pool's children leave, and their processes with them
    await exited(int(lives.read_text()))


async def test_a_drain_gives_back_the_tasks_still_waiting_for_a_child(
    db_url: str, tmp_path: Path
) -> None:
    # On Ctrl-C, tasks waiting for a free child started one after the other through the
    # drain (18 of them with a pool of 2), and those still unfinished at its end were
    # given back anyway.
    executor = ProcessExecutor(processes=1)
    rt = Runtime(db_url, executors={"process": executor}, executor="process")
    async with fifo(tmp_path / "begun") as begun:
        await rt.open()
        ids = [s.id for s in await rt.submit_many(agents.told_then_naps, [
            {"fifo": str(tmp_path / "begun"), "n": n} for n in range(3)
        ])]  # fmt: skip
        first = int(await next_line(begun))
        async with asyncio.timeout(20):  # (a bound on a broken test)
            while True:
                if len(executor.queued()) == 2:  # the other two wait for the child
                    break
                await asyncio.sleep(0.005)
        await rt.aclose()  # drains
    store = store_from_url(db_url)
    await store.open()
    try:
        found = {i: await store.get(i) for i in ids}
    finally:
        await store.aclose()
    done = [i for i, t in found.items() if t is not None and t.status is TaskStatus.SUCCEEDED]
    back = [i for i, t in found.items() if t is not None and t.status is TaskStatus.QUEUED]
    assert done == [ids[first]] and len(back) == 2
    assert all(found[i].attempt == 0 for i in back)  # type: ignore[union-attr]


async def test_a_memory_bomb_hits_the_limit_and_the_child_is_replaced(rt: Runtime) -> None:
    (bomb,) = await run(rt, agents.memory_bomb, 16)
    assert bomb.status is TaskStatus.DEAD and bomb.error is not None
    assert bomb.error.type == "MemoryLimitExceeded"
    assert bomb.error.message == "the agent's process exceeded its memory limit of 300 MB"
    assert "in memory_bomb" in bomb.error.traceback
    assert [r.status for r in await run(rt, agents.echo, "after")] == [TaskStatus.SUCCEEDED]


async def test_a_cpu_bound_loop_past_its_timeout_is_killed(rt: Runtime) -> None:
    (r,) = await run(rt, agents.spin_past_timeout, 1)
    assert r.status is TaskStatus.DEAD and r.error is not None
    assert r.error.type == "TaskTimeout"
    pid = codec.loads(await rt.store.memory_get(f"task-{r.id}", "pid") or b"null")
    assert isinstance(pid, int) and not alive(pid)


async def test_the_worker_stays_responsive_while_a_child_spins(rt: Runtime, tmp_path: Path) -> None:
    async with fifo(tmp_path / "spinning") as spinning:
        stuck = await rt.submit(agents.spin, str(tmp_path / "spinning"))
        pid = int(await next_line(spinning))
    # One child spins without end; the other child and the event loop serve the rest.
    others = await run(rt, agents.echo, *"abcdefgh")
    assert [r.status for r in others] == [TaskStatus.SUCCEEDED] * 8
    assert {r.output["pid"] for r in others}.isdisjoint({pid})
    info = await rt.get(stuck.id)
    assert info is not None and info.status is TaskStatus.RUNNING and alive(pid)
    await rt.cancel(stuck.id)
    assert (await rt.result(stuck.id)).status is TaskStatus.CANCELLED
    assert not alive(pid)


async def test_llm_calls_are_made_and_recorded_by_the_worker(db_url: str) -> None:
    provider = ScriptedProvider(["first answer", "second answer"])
    llm = LLMClient([Route("default", provider, "scripted-model", Capacity("default"))])
    executors = {"process": ProcessExecutor(processes=1)}
    async with Runtime(db_url, executors=executors, executor="process", llm=llm) as rt:
        (r,) = await run(rt, agents.chat, "hello?")
        keys = [s.key for s in await rt.store.steps(r.id)]
    assert r.output == ["first answer", "second answer", "scripted-model"]
    assert len(provider.requests) == 2 and all(k.startswith("llm.default.") for k in keys)
    assert r.usage is not None and r.usage["llm_calls"] == 2


async def test_an_agent_can_ask_for_the_process_executor_itself(db_url: str) -> None:
    async with Runtime(db_url, executors={"process": ProcessExecutor(processes=1)}) as rt:
        (r,) = await run(rt, agents.declared, 1)
    assert r.status is TaskStatus.SUCCEEDED and r.output != os.getpid()


async def test_an_agent_that_cannot_be_imported_elsewhere_is_refused(db_url: str) -> None:
    @legion.agent
    async def local(ctx: legion.Context, n: int) -> int:
        return n

    async with Runtime(db_url, executors={"process": ProcessExecutor()}, executor="process") as rt:
        with pytest.raises(legion.ConfigError, match="define it at module level"):
            await rt.submit(local, 1)


async def test_an_agent_loaded_from_a_file_runs_in_a_child(db_url: str, tmp_path: Path) -> None:
    """What ``legion run path/to/file.py:fn --executor process`` does."""
    (tmp_path / "from_file.py").write_text(
        "import os\n\nasync def where(ctx, n: int) -> list[int]:\n    return [n, os.getpid()]\n"
    )
    agent = load_agent(f"{tmp_path / 'from_file.py'}:where")
    executors = {"process": ProcessExecutor(processes=1)}
    async with Runtime(db_url, executors=executors, executor="process") as rt:
        (r,) = await run(rt, agent, 5)
    assert r.status is TaskStatus.SUCCEEDED and r.output[0] == 5 and r.output[1] != os.getpid()


def test_an_agent_of_a_script_run_as_main_runs_in_a_child(tmp_path: Path) -> None:
    """A script that defines its agent (and the model it takes) and runs it itself."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, os
            from pydantic import BaseModel
            import legion
            from legion.executors import ProcessExecutor

            class Point(BaseModel):
                x: int

            @legion.agent(executor="process")
            async def double(ctx, p: Point) -> list:
                return [type(p).__name__, p.x * 2, os.getpid() != {os.getpid()}]

            async def main():
                async with legion.Runtime({f"sqlite:///{tmp_path / 's.db'}"!r},
                                          executors={{"process": ProcessExecutor()}}) as rt:
                    r = await rt.result((await rt.submit(double, {{"x": 21}})).id)
                print(r.status, r.output, r.error)

            if __name__ == "__main__":
                asyncio.run(main())
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "succeeded ['Point', 42, True] None"


@pytest.mark.parametrize("guarded", [True, False])
def test_a_script_on_standard_input_or_without_its_guard_says_what_to_do(
    tmp_path: Path, guarded: bool
) -> None:
    # `python - < app.py`: its children looked for a file "<stdin>" and the whole worker
    # stopped, every other agent with it. A script without `if __name__ == "__main__":`
    # ran its main code again in each child, which failed to import it.
    main = "asyncio.run(main())\n"
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            import legion

            @legion.agent(executor="process", retries=3)
            async def inc(ctx, n: int) -> int:
                return n + 1

            async def main():
                async with legion.Runtime({f"sqlite:///{tmp_path / 's.db'}"!r}) as rt:
                    try:
                        r = await rt.result((await rt.submit(inc, 1)).id)
                        print(r.status, r.attempt, r.error.message if r.error else None)
                    except legion.ConfigError as exc:
                        print("refused:", exc)

            """
        )
        + (f'if __name__ == "__main__":\n    {main}' if guarded else main)
    )
    if guarded:  # run from standard input
        with script.open() as stdin:
            done = subprocess.run(
                [sys.executable, "-"],
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp_path,
                check=False,
            )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(
            "refused: agent 'inc' cannot run in another process: it was defined interactively"
        ), done.stdout
    else:
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("failed 1 cannot import"), done.stdout
        assert 'put that code under `if __name__ == "__main__":`' in done.stdout


async def test_a_child_does_not_outlive_a_killed_worker(tmp_path: Path) -> None:
    """SIGKILL a worker whose child spins: the kernel ends the child too (Linux)."""
    script = textwrap.dedent(
        f"""
        import asyncio
        import legion
        from legion.executors import ProcessExecutor
        from tests.executors import agents

        async def main():
            async with legion.Runtime({f"sqlite:///{tmp_path / 'k.db'}"!r},
                                      executors={{"process": ProcessExecutor()}},
                                      executor="process") as rt:
                await rt.result((await rt.submit(agents.spin, {str(tmp_path / "pid")!r})).id)

        asyncio.run(main())
        """
    )
    async with fifo(tmp_path / "pid") as spinning:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, cwd=Path(__file__).parents[2]
        )
        try:
            pid = int(await next_line(spinning))
        finally:
            worker.kill()
            await worker.wait()
    await exited(pid)


async def test_a_memory_limit_below_what_the_process_maps_says_so_and_hangs_nothing(
    db_url: str,
) -> None:
    # Under what the interpreter maps before it runs anything, every allocation failed,
    # reading its pipe too: a loop of MemoryErrors in the child, the task running until
    # its timeout. Now the child says why it cannot start.
    executor = ProcessExecutor(processes=1, memory_limit_mb=16)
    async with Runtime(db_url, executors={"process": executor}, executor="process") as rt:
        r = await rt.result((await rt.submit(agents.echo, "x")).id)
    assert r.status is TaskStatus.DEAD and r.error is not None, r
    assert r.error.type == "InstanceLost"
    assert "--memory-limit 16 MB is below what the agent's process maps" in r.error.message


def test_options_for_an_executor_no_agent_runs_on_are_refused_not_ignored() -> None:
    from legion.errors import ConfigError
    from legion.executors import executors_from_options
    from legion.executors.ray import RayExecutor

    for executor, ray, pool, memory, why in (
        ("process", "auto", None, None, "--ray-address is for the ray executor"),
        ("async", "auto", None, None, "--ray-address is for the ray executor"),
        ("async", None, 2, None, "--pool-size and --memory-limit are for the process"),
        ("ray", None, None, 300, "--pool-size and --memory-limit are for the process"),
    ):
        with pytest.raises(ConfigError, match=why):
            executors_from_options(executor, ray, pool, memory)
    for bad in ("bogus", "http://x", "host:port", "ray://", ""):
        with pytest.raises(ConfigError, match="bad Ray address"):
            RayExecutor(bad)
    for good in ("auto", "local", "127.0.0.1:6379", "ray://head.example:10001", "[::1]:6379"):
        assert RayExecutor(good).address == good


async def test_remote_steps_are_not_called_independent(rt: Runtime) -> None:
    """Every pair of sequential steps of an agent in another process was reported as
    independent ("gather them"), sited at the program that started the worker: the
    worker never sees the remote side's inputs or lines."""
    (r,) = await run(rt, agents.chained, 1)
    assert r.status is TaskStatus.SUCCEEDED and r.output == 3
    found = await rt.store.diagnostics(task_id=r.id)
    assert [d for d in found if b"sequential" in d.data] == []


@pytest.mark.parametrize(
    "new_code",
    [
        "async def where(ctx, n: int) -> int:\n    return 2\n",
        "raise RuntimeError('import boom')\n",
    ],
)
async def test_a_child_that_finds_the_agent_file_changed_stops_the_worker_charging_nothing(
    db_url: str, tmp_path: Path, new_code: str
) -> None:
    # A deploy wrote new code over the agent's file under a running worker: the children
    # the pool started after it ran the new code beside the worker's (one worker, two
    # versions), or, the new file failing to import, failed every task it leased (dead
    # after its attempts) while the worker showed as healthy.
    path = tmp_path / f"deployed_{len(new_code)}.py"
    path.write_text("async def where(ctx, n: int) -> int:\n    return 1\n")
    agent = load_agent(f"{path}:where")
    executors = {"process": ProcessExecutor(processes=1)}
    async with Runtime(db_url, agents=[agent], executors=executors, executor="process") as rt:
        path.write_text(new_code)  # before the pool's first child starts
        task = await rt.submit(agent, 5)
        with pytest.raises(legion.WorkerStopped, match="changed since its worker started"):
            await rt.result(task.id)
        assert isinstance(rt.fatal_error, legion.AgentChanged)
    store = store_from_url(db_url)
    await store.open()
    try:
        info = await store.get(task.id)
    finally:
        await store.aclose()
    assert info is not None and info.status is TaskStatus.QUEUED  # back for another worker
    assert info.attempt == 0 and info.error is not None  # no attempt spent, and why
    assert info.error.type == "AgentChanged"


async def test_an_agent_its_children_cannot_import_fails_its_tasks_and_stops_nothing_else(
    db_url: str, tmp_path: Path
) -> None:
    # The code imports in the worker, not in a child (here: it refuses other processes;
    # in life, a script that runs its main code when imported). Each task of it failed
    # its attempts one by one; stopping the worker for it stopped every other agent too.
    path = tmp_path / "only_here.py"
    path.write_text(
        f"import os\nimport legion\nif os.getpid() != {os.getpid()}:\n"
        "    raise RuntimeError('not here')\n"
        "@legion.agent(executor='process', retries=3)\n"
        "async def where(ctx, n: int) -> int:\n    return 1\n"
    )
    agent = load_agent(f"{path}:where")

    @legion.agent
    async def beside(ctx: legion.Context, n: int) -> int:
        return n

    executors = {"process": ProcessExecutor(processes=1)}
    async with Runtime(db_url, agents=[agent, beside], executors=executors) as rt:
        refused = await rt.result((await rt.submit(agent, 5)).id)
        fine = await rt.result((await rt.submit(beside, 3)).id)
        assert rt.fatal_error is None
    assert refused.status is TaskStatus.FAILED and refused.attempt == 1
    assert refused.error is not None and refused.error.type == "AgentLoadError"
    assert "not here" in refused.error.message
    assert fine.status is TaskStatus.SUCCEEDED


def test_a_memory_limit_above_the_inherited_hard_limit_is_refused_at_start() -> None:
    # A child may lower its limit but never raise it past the hard one its parent had
    # (ulimit -v): each task died unstarted, "not allowed to raise maximum limit", after
    # using up its attempts, and sixty tracebacks went to standard error.
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n"
        "from legion.errors import ConfigError\n"
        "from legion.executors import ProcessExecutor\n"
        "try:\n"
        "    ProcessExecutor(memory_limit_mb=2048)\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
        "print(ProcessExecutor(memory_limit_mb=512).memory_limit_mb)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    refused, fits = done.stdout.splitlines()
    assert refused.startswith("--memory-limit 2048 MB is above this process's hard limit")
    assert fits == "512"


async def test_a_copy_the_agent_forks_ends_with_it_and_serves_nothing(db_url: str) -> None:
    """A copy forked by an agent that ended with `sys.exit` answered the attempt on the
    pipes it inherited, then served its process's next tasks on a broken event loop: 20
    later tasks of one pool ended dead ("no running event loop"). One that returned had
    its result recorded for another task."""
    executor = ProcessExecutor(processes=1)
    async with Runtime(db_url, executors={"process": executor}, executor="process") as runtime:
        forked = await run(runtime, agents.forks_a_copy, "exit", "return")
        after = await run(runtime, agents.echo, *"abcdef")
    assert [(r.status, r.output["from"]) for r in forked] == [
        (TaskStatus.SUCCEEDED, "the process")
    ] * 2
    assert [r.status for r in after] == [TaskStatus.SUCCEEDED] * 6
    assert [r.output["twice"][1] for r in after] == list("ABCDEF")
