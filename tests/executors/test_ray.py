"""The Ray executor on a real local cluster: a head node (no CPUs for tasks: it holds the
driver and the bridge) and two worker nodes, all on 127.0.0.1.

Starting the cluster takes ~10 s, once for the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import legion
from legion import Runtime, TaskStatus, codec
from legion.executors.ray import RayExecutor
from tests.executors import agents
from tests.executors.conftest import exited, fifo, next_line

# Ray reads this when it is imported: keep every node of the test cluster on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError as exc:
    pytest.fail(f"the Ray executor tests need Ray: pip install -e '.[dev]' ({exc})", pytrace=False)

pytestmark = pytest.mark.slow

NODE: dict[str, Any] = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    head = {"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(2):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture
async def rt(cluster: Cluster, db_url: str) -> AsyncIterator[Runtime]:
    async with Runtime(db_url, executors={"ray": RayExecutor()}, executor="ray") as runtime:
        yield runtime


async def run(rt: Runtime, agent: legion.Agent, *inputs: object) -> list[legion.TaskResult]:
    return sorted([r async for r in rt.map(agent, inputs)], key=lambda r: r.id)


def in_a_process(script: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a Python process of its own (Ray is initialized once per process),
    from the repository's root; it must succeed."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def worker_nodes(cluster: Cluster) -> dict[str, Any]:
    return {node.node_id: node for node in cluster.worker_nodes}


async def test_instances_run_as_ray_tasks_with_the_whole_context(
    rt: Runtime, cluster: Cluster
) -> None:
    results = await run(rt, agents.echo, "a", "b", "c", "d")
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 4
    assert {r.output["node"] for r in results} <= set(worker_nodes(cluster))
    assert os.getpid() not in {r.output["pid"] for r in results}
    first = results[0]
    assert first.output["twice"] == ["aa", "A"]
    assert first.output["remembered"] == {"value": "a"}
    assert first.output["missing"] == "default"
    assert first.output["items"] == {"text": {"value": "a"}}
    assert sorted(s.key for s in await rt.store.steps(first.id)) == ["double", "double#2"]


async def test_errors_keep_their_type_and_retryability(rt: Runtime) -> None:
    (perm,) = await run(rt, agents.permanent, 3)
    (odd,) = await run(rt, agents.unpicklable, 3)
    assert perm.status is TaskStatus.FAILED and perm.attempt == 1 and perm.error is not None
    assert (perm.error.type, perm.error.message) == ("Permanent", "input 3 can never work")
    assert "in permanent" in perm.error.traceback
    assert odd.status is TaskStatus.FAILED and odd.error is not None
    assert odd.error.type == "Unpicklable"


async def test_what_an_instance_logs_just_before_it_ends_reaches_the_worker(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    # The records came through the bridge, the outcome another way: the instance's end
    # arrived first, and what came after it was dropped (1 of 5 "about to fail" lines).
    caplog.set_level(logging.ERROR, logger="legion.agent.says_why")
    results = await run(rt, agents.says_why, *range(5))
    assert [r.status for r in results] == [TaskStatus.FAILED] * 5
    said = sorted(r.getMessage() for r in caplog.records if r.name == "legion.agent.says_why")
    assert said == [f"task {n} is about to fail" for n in range(5)]


async def test_a_retry_replays_the_steps_recorded_before(rt: Runtime) -> None:
    (r,) = await run(rt, agents.replaying, 1)
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 2
    assert r.output["token"] == r.output["first"]


async def test_a_cpu_bound_loop_past_its_timeout_is_cancelled_on_ray(rt: Runtime) -> None:
    # The timeout runs from when the task is handed to Ray: on a cold cluster (this test
    # run alone) starting a Ray worker and importing legion there took longer than it,
    # so the agent never ran. Warm both nodes' workers first, as the tests before it do.
    # (A warm-up round in which Ray lost an instance, as it once did under a loaded CI
    # run, warms the workers all the same: another round is run, at most three.)
    for round_ in range(3):
        warm = await run(rt, agents.echo, *(f"warm-{round_}-{c}" for c in "abcd"))
        if all(w.status is TaskStatus.SUCCEEDED for w in warm):
            break
    else:
        raise AssertionError([(w.status, w.error) for w in warm])
    (r,) = await run(rt, agents.spin_past_timeout, 1)
    assert r.status is TaskStatus.DEAD and r.error is not None
    assert r.error.type == "TaskTimeout"
    pid = codec.loads(await rt.store.memory_get(f"task-{r.id}", "pid") or b"null")
    await exited(pid)  # ray.cancel(force=True) killed the Ray worker that was spinning


async def test_a_lost_node_means_a_retried_task_not_a_lost_one(
    rt: Runtime, cluster: Cluster, tmp_path: Path
) -> None:
    async with fifo(tmp_path / "where") as where:
        task = await rt.submit(agents.outlives_its_node, str(tmp_path / "where"))
        doomed = await next_line(where)
    cluster.remove_node(worker_nodes(cluster)[doomed])
    try:
        r = await rt.result(task.id)
    finally:
        cluster.add_node(**NODE)  # back to two worker nodes for the next test
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 2
    assert r.output["node"] != doomed
    assert r.output["token"] == r.output["first"]  # its step was replayed, not run again
    info = await rt.get(task.id)
    assert info is not None and info.error is None  # it succeeded: no error
    (lost,) = [a for a in await rt.store.attempts(task.id) if a.attempt == 1]
    assert lost.error is not None  # the first attempt's, kept in its history
    assert lost.error.type == "InstanceLost" and "NodeDiedError" in lost.error.message


def test_without_an_address_a_local_ray_instance_is_started(tmp_path: Path) -> None:
    """What ``legion run --executor ray`` does on a laptop (a process of its own: Ray is
    initialized once per process)."""
    script = textwrap.dedent(
        f"""
        import asyncio
        import legion
        from legion.executors import executors_from_options
        from tests.executors import agents

        async def main():
            executors = executors_from_options("ray", None, None, None)
            async with legion.Runtime({f"sqlite:///{tmp_path / 'local.db'}"!r},
                                      executors=executors, executor="ray") as rt:
                r = await rt.result((await rt.submit(agents.echo, "local")).id)
            print(r.status, r.output["twice"])

        asyncio.run(main())
        """
    )
    done = in_a_process(script, timeout=110)
    assert done.stdout.strip().splitlines()[-1] == "succeeded ['locallocal', 'LOCAL']"


async def test_an_agents_resources_place_its_instances_on_a_node_that_has_them(
    cluster: Cluster, db_url: str
) -> None:
    node = cluster.add_node(**NODE, resources={"widget": 1})
    cluster.wait_for_nodes()
    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    widget = {n["NodeID"] for n in nodes if n["Alive"] and n["Resources"].get("widget")}
    try:
        async with Runtime(
            db_url, executors={"ray": RayExecutor()}, executor="ray", offer={"widget": 1}
        ) as rt:
            results = await run(rt, agents.needs_a_widget, *range(6))
    finally:
        cluster.remove_node(node)
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * 6, [r.error for r in results]
    assert len(widget) == 1
    assert {r.output for r in results} == widget


async def test_a_ray_task_whose_worker_died_begins_no_step(tmp_path: Path) -> None:
    """The worker (the Ray driver, its own local Ray instance) SIGKILLed: its Ray tasks ran
    on for a second or more, and began steps whose side effects nobody could record (the
    rerun ran them again). A step begins once the worker's context has begun it."""
    ledger = tmp_path / "ledger.txt"
    script = textwrap.dedent(
        f"""
        import asyncio
        import legion
        from legion.executors.ray import RayExecutor
        from tests.executors import agents

        async def main():
            executor = RayExecutor(init_options={{"num_cpus": 1, "include_dashboard": False}})
            async with legion.Runtime({f"sqlite:///{tmp_path / 'd.db'}"!r},
                                      executors={{"ray": executor}}, executor="ray") as rt:
                await rt.submit(agents.steps_on, {{"fifo": {str(tmp_path / "where")!r},
                                                   "ledger": {str(ledger)!r}}})
                await asyncio.Event().wait()  # until killed

        asyncio.run(main())
        """
    )
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    async with fifo(tmp_path / "where") as where:
        driver = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            env=env,
            cwd=Path(__file__).parents[2],
            start_new_session=True,
        )
        try:
            task_pid = int(await next_line(where))
            # Steps go on while the worker lives (one a 50 ms)...
            while ledger.read_text().count("next-") < 2:  # noqa: ASYNC110 - a file to grow
                await asyncio.sleep(0.01)
            driver.kill()
            assert await driver.wait() == -signal.SIGKILL
            seen = len(ledger.read_text().splitlines())
            await exited(task_pid)  # Ray stops the dead driver's task (in a second or so)
        finally:
            # (the driver's own Ray instance, in its session: what it started goes too)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
            await driver.wait()
    after = ledger.read_text().splitlines()[seen:]
    assert after == [], "steps began after their worker had died"


async def test_a_drain_gives_back_what_ray_has_not_begun_to_run(
    rt: Runtime, tmp_path: Path
) -> None:
    """Six instances, room for two on the cluster: a Ctrl-C drained all six (the four Ray
    queued counted as running), past the drain timeout with a backlog."""
    gate = tmp_path / "gate"
    async with fifo(tmp_path / "began") as began:
        submitted = await rt.submit_many(
            agents.holds, [{"fifo": str(tmp_path / "began"), "gate": str(gate)}] * 6
        )
        ids = [s.id for s in submitted]
        running = {int(await next_line(began)) for _ in range(2)}
        assert rt.worker is not None
        ray_ = rt.worker.executors["ray"]
        async with asyncio.timeout(60):  # (their start reaches the worker through the bridge)
            while len(ray_.queued()) > 4:  # noqa: ASYNC110 - the executor's count to fall
                await asyncio.sleep(0.01)
        rt.worker.stop()  # drain: the two running finish, the four queued in Ray go back
        async with asyncio.timeout(60):
            while sum(i.status is TaskStatus.QUEUED for i in await rt.store.get_many(ids)) < 4:  # noqa: ASYNC110 - rows to change in the store
                await asyncio.sleep(0.05)
        gate.touch()
        await rt.drain()
    infos = {i.id: i for i in await rt.store.get_many(ids)}
    assert {i for i in ids if infos[i].status is TaskStatus.SUCCEEDED} == running
    assert all(infos[i].attempt == 0 for i in ids if i not in running)  # uncharged


def _killing(kind: str, indent: str = " " * 16) -> str:
    """The lines of a test script (at ``indent`` within it, its first line where it is
    placed) that SIGKILL this node's Ray process of ``kind`` (``RAYLET``, ``GCS_SERVER``)
    and wait for its end."""
    return _signalling(kind, "SIGKILL", indent=indent)


def _signalling(kind: str, sig: str, pid_file: Path | None = None, indent: str = " " * 16) -> str:
    """The lines of a test script that send ``sig`` to this node's Ray process of
    ``kind`` (its pid written to ``pid_file`` first, when given; a SIGKILL waited for)."""
    lines = [
        "import ray",
        "from ray._private import ray_constants",
        "node = ray._private.worker._global_node",
        f"target = node.all_processes[ray_constants.PROCESS_TYPE_{kind}][0].process",
    ]
    if pid_file is not None:
        lines.append(f"open({str(pid_file)!r}, 'w').write(str(target.pid))")
    lines.append(f"os.kill(target.pid, signal.{sig})")
    if sig == "SIGKILL":
        lines.append("target.wait()")
    return ("\n" + indent).join(lines)


def test_ray_dying_on_the_node_stops_the_worker_and_spends_no_attempt(tmp_path: Path) -> None:
    """The local raylet killed under a worker: each task it leased then failed at once and
    the queue went dead within seconds. Now the worker stops (a supervisor starts it, and
    Ray, again) and its tasks go back to the queue unspent. A process of its own: it
    starts, and kills, its own local Ray instance."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        import legion
        from legion.executors import executors_from_options
        from tests.executors import agents

        async def main():
            url = {f"sqlite:///{tmp_path / 'local.db'}"!r}
            executors = executors_from_options("ray", None, None, None)
            async with legion.Runtime(url, executors=executors, executor="ray") as rt:
                first = await rt.result((await rt.submit(agents.echo, "first")).id)
                {_killing("RAYLET")}
                ids = [(await rt.submit(agents.echo, f"t{{i}}")).id for i in range(3)]
                error = await asyncio.wait_for(rt.worker.wait_fatal(), 90)
            async with legion.Runtime(url, worker=False) as rt:
                infos = [await rt.get(i) for i in ids]
            print(first.status, type(error).__name__)
            print(sorted((i.status, i.attempt) for i in infos))

        asyncio.run(main())
        """
    )
    done = in_a_process(script, timeout=200)
    *_, said, tasks = done.stdout.strip().splitlines()
    assert said == "succeeded ExecutorLost"
    assert tasks == str([(TaskStatus.QUEUED, 0)] * 3)


def test_ray_gone_with_its_control_store_stops_the_worker_not_ray_killing_the_process(
    tmp_path: Path,
) -> None:
    """Ray's control store (GCS) killed under a worker (`ray stop --force` does it): the
    instances in flight waited for ever, the bridge was 'unavailable, retrying' every
    few seconds, and after 60 s Ray's own client ended the process with exit 1, its tasks
    leased and the run's output unwritten. Past `LOST_AFTER` (3 s here) the worker now
    stops, and its tasks go back to the queue unspent."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        import legion
        import legion.executors.ray
        from legion import TaskStatus
        from legion.executors import executors_from_options
        from tests.executors import agents

        legion.executors.ray.LOST_AFTER = 3.0

        async def main():
            url = {f"sqlite:///{tmp_path / 'local.db'}"!r}
            executors = executors_from_options("ray", None, None, None)
            async with legion.Runtime(url, executors=executors, executor="ray") as rt:
                first = await rt.result((await rt.submit(agents.echo, "first")).id)
                ids = [(await rt.submit(agents.naps, 600)).id for i in range(2)]
                while [(await rt.get(i)).status for i in ids] != [TaskStatus.RUNNING] * 2:
                    await asyncio.sleep(0.05)
                {_killing("GCS_SERVER")}
                error = await asyncio.wait_for(rt.worker.wait_fatal(), 50)
            async with legion.Runtime(url, worker=False) as rt:
                infos = [await rt.get(i) for i in ids]
            print(first.status, type(error).__name__)
            print(sorted((i.status, i.attempt) for i in infos))

        asyncio.run(main())
        """
    )
    done = in_a_process(script, timeout=200)
    *_, said, tasks = done.stdout.strip().splitlines()
    assert said == "succeeded ExecutorLost"
    assert tasks == str([(TaskStatus.QUEUED, 0)] * 2)


def test_a_run_ends_when_rays_control_store_stops_answering_as_it_closes(tmp_path: Path) -> None:
    """Ray's control store paused (SIGSTOP) after the last task succeeded: the close
    waited on Ray's shutdown for ever, in a thread of the loop's executor that the
    process's exit then waited for too (a run whose tasks had all succeeded never
    ended). The close now leaves Ray after `SHUTDOWN_WAIT` (2 s here), and the process
    exits with its code."""
    gcs = tmp_path / "gcs.pid"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        import legion
        import legion.executors.ray
        from legion.executors import executors_from_options
        from tests.executors import agents

        legion.executors.ray.SHUTDOWN_WAIT = 2.0

        async def main():
            url = {f"sqlite:///{tmp_path / 'local.db'}"!r}
            executors = executors_from_options("ray", None, None, None)
            async with legion.Runtime(url, executors=executors, executor="ray") as rt:
                first = await rt.result((await rt.submit(agents.echo, "first")).id)
                {_signalling("GCS_SERVER", "SIGSTOP", gcs)}
            print(first.status)

        asyncio.run(main())
        from legion.cli.leftover import exit_past_threads
        exit_past_threads(0)  # (as legion's commands end: the finalization crashed in Ray)
        """
    )
    try:
        done = in_a_process(script, timeout=120)
    finally:
        if gcs.exists():  # (a paused process keeps its parent's death signal pending)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(gcs.read_text()), signal.SIGKILL)
    assert done.stdout.strip().splitlines()[-1] == "succeeded"
    assert "Ray did not shut down within 2 s" in done.stderr
