"""A worker SIGKILLed while it holds leases ahead of its free slots: every task ends once,
the held ones run once (after the kill, on the worker that took them back), and nothing
is charged for the kill. The agents keep a ledger of what they did, as side effects."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import legion
from legion import Runtime, TaskStatus

pytestmark = pytest.mark.slow

TASKS = 40

CHILD = """
import asyncio
import os
import sys
from collections import defaultdict

import legion
from legion import Runtime, TaskStatus

DB, LEDGER, TASKS = sys.argv[1], sys.argv[2], int(sys.argv[3])
gates = defaultdict(asyncio.Event)
began = []


def note(*words):
    with open(LEDGER, "a") as f:
        f.write(" ".join(map(str, words)) + "\\n")


@legion.agent(name="short")
async def short(ctx, x: int) -> int:
    began.append(x)
    note("began", x, os.getpid())
    await gates[x].wait()
    note("done", x, os.getpid())
    return x


async def until(condition):
    while not condition():
        await asyncio.sleep(0.01)


async def main():
    async with Runtime(f"sqlite:///{DB}", concurrency=10, lease_ahead=1.0, lease_seconds=3) as rt:
        worker = rt.worker
        # Hold the store's lease calls while half the instances end: the worker learns
        # that 5 slots free during one lease call, and holds twice that ahead.
        open_ = asyncio.Event()
        open_.set()
        waiting = []
        inner = rt.store.lease

        async def lease(*args, **kwargs):
            waiting.append(1)
            await open_.wait()
            waiting.pop()
            return await inner(*args, **kwargs)

        rt.store.lease = lease
        submitted = await rt.submit_many(short, range(TASKS))
        await until(lambda: len(began) == 10)
        open_.clear()
        for x in began[:5]:
            gates[x].set()
        await until(lambda: waiting)
        for x in began[5:10]:
            gates[x].set()
        await until(lambda: worker.statistics().in_flight == 0)
        open_.set()
        await until(lambda: len(began) == 20 and worker.health()["held_ahead"] == 10)
        ids = [s.id for s in submitted]
        while sum(i.status is TaskStatus.SUCCEEDED for i in await rt.store.get_many(ids)) < 10:
            await asyncio.sleep(0.01)  # the first ten's completions are durable
        infos = await rt.store.get_many(ids)
        held = [i.input for i in infos if i.status is TaskStatus.RUNNING and i.input not in began]
        print(" ".join(map(str, held)), flush=True)
        await asyncio.Event().wait()  # until killed


asyncio.run(main())
"""


def test_a_worker_killed_while_holding_leases_ahead_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    db, ledger = tmp_path / "store.db", tmp_path / "ledger.txt"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with subprocess.Popen(
        [sys.executable, str(script), str(db), str(ledger), str(TASKS)],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            held = [int(x) for x in child.stdout.readline().split()]
            assert len(held) == 10, held
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            child.kill()
    killed = child.pid

    @legion.agent(name="short")
    async def short(ctx: legion.Context, x: int) -> int:
        with ledger.open("a") as f:
            f.write(f"began {x} {os.getpid()}\ndone {x} {os.getpid()}\n")
        return x

    async def finish() -> tuple[list[legion.TaskResult], list[legion.TaskInfo]]:
        # The killed worker's process is gone from this host: its leases come back after
        # a heartbeat period (a second, with 3 s leases), uncharged.
        ids = list(range(1, TASKS + 1))
        async with Runtime(
            f"sqlite:///{db}", agents=[short], lease_seconds=3, poll_interval=0.05
        ) as rt:
            return [r async for r in rt.results(ids)], await rt.store.get_many(ids)

    results, infos = asyncio.run(asyncio.wait_for(finish(), 120))
    assert [r.status for r in results] == [TaskStatus.SUCCEEDED] * TASKS
    assert sorted(r.output for r in results) == list(range(TASKS))
    lines = [line.split() for line in ledger.read_text().splitlines()]
    done = Counter(int(x) for what, x, _ in lines if what == "done")
    assert done == Counter(range(TASKS)), "a side effect was lost or repeated"
    began_in_killed = {int(x) for what, x, pid in lines if what == "began" and int(pid) == killed}
    assert not began_in_killed & set(held), "a task held ahead began in the worker killed"
    began = Counter(int(x) for what, x, _ in lines if what == "began")
    assert all(began[x] == 1 for x in held)  # ran once: where it was leased again
    assert [i.attempt for i in infos] == [1] * TASKS  # the kill charged no task
