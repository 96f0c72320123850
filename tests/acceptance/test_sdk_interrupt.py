"""Ctrl-C in a program that runs agents with `legion.Runtime`: Python raises the
KeyboardInterrupt wherever the main thread is, often in an agent's code. It is the
program's, not the task's: the program stops, and the task is neither failed nor dead —
the same program run again finishes it, its recorded step not run again."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.conftest import wait_for

pytestmark = pytest.mark.slow

PROGRAM = """
import asyncio
import signal
import sys
from pathlib import Path

import legion

# Python's own Ctrl-C, whatever this process inherited (a shell's background job, as a
# test runner may be, starts its children with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
ledger = Path(sys.argv[2])


def mark() -> str:
    with ledger.open("a") as f:
        f.write("mark\\n")
    return "marked"


async def spin() -> None:
    with ledger.open("a") as f:
        f.write("spinning\\n")
    while True:  # computing on the loop's thread, where Ctrl-C lands
        sum(range(1000))


@legion.agent(retries=RETRIES, backoff=0)
async def job(ctx, n: int) -> str:
    await ctx.step("mark", mark)
    if sys.argv[3] == "spin":
        await spin()
    elif sys.argv[3] == "gather":  # (in a branch of a gather: a task of its own)
        await ctx.gather(spin(), ctx.step("beside", str, n))
    return "done"


async def main() -> None:
    async with legion.Runtime(sys.argv[1], lease_seconds=LEASE) as rt:
        task = await rt.submit(job, 1, key="the-one")
        result = await rt.result(task)
        print("RESULT", result.status, result.attempt, result.error)


# A host that runs its own loop (no asyncio.run, so Python's own SIGINT handler raises).
asyncio.new_event_loop().run_until_complete(main())
"""


@pytest.mark.parametrize(("retries", "where"), [(0, "spin"), (2, "spin"), (0, "gather")])
def test_ctrl_c_stops_the_program_and_costs_the_task_nothing(
    tmp_path: Path, retries: int, where: str
) -> None:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM.replace("RETRIES", str(retries)).replace("LEASE", "2.0"))
    db, ledger = tmp_path / "runs.db", tmp_path / "ledger.txt"
    store = f"sqlite:///{db}"
    run = [sys.executable, str(program), store, str(ledger)]
    with subprocess.Popen(
        [*run, where], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            wait_for(
                lambda: ledger.exists() and "spinning" in ledger.read_text(),
                what="the agent to spin",
            )
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode != 0, out  # stopped: before, the task was failed and it went on
    assert "KeyboardInterrupt" in err and "RESULT" not in out
    with sqlite3.connect(db) as conn:
        status, error = conn.execute("SELECT status, error FROM tasks").fetchone()
    assert status not in ("dead", "failed", "succeeded"), (status, error)
    assert error is None or "KeyboardInterrupt" not in error

    done = subprocess.run([*run, "finish"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RESULT succeeded" in done.stdout
    assert ledger.read_text().splitlines() == ["mark", "spinning"]  # the step ran once
