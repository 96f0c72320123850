"""``legion run`` when an agent leaves a thread running: the run ends, it does not wait
for the thread for ever."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, read_jsonl, write_jsonl

pytestmark = pytest.mark.slow

AGENT = """
import threading

import legion

stop = threading.Event()


@legion.agent
async def poll(ctx, n: int):
    if n == 3:  # a poller that never ends, not a daemon
        threading.Thread(target=stop.wait, name="poller").start()
    return n
"""


def test_a_thread_an_agent_left_running_does_not_keep_the_run_from_exiting(
    tmp_path: Path,
) -> None:
    # It printed "done: 20/20" and then never exited, until it was killed.
    agent = tmp_path / "threads.py"
    agent.write_text(AGENT)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": n} for n in range(20)])
    out = tmp_path / "out.jsonl"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    done = legion(
        "run", f"{agent}:poll", "-i", str(inp), "-o", str(out), "--store", store, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert [r["output"] for r in read_jsonl(out)] == list(range(20))
    assert "1 thread that the agents started still run ('poller')" in done.stderr


def test_legions_own_threads_are_not_named_as_the_agents() -> None:
    # A vectors thread its store's close let go without waiting for it was named in
    # "thread that the agents started still run ('legion-vectors_0')".
    import threading

    from legion.cli.leftover import left_running

    stop = threading.Event()
    ours = threading.Thread(target=stop.wait, name="legion-vectors_0")
    theirs = threading.Thread(target=stop.wait, name="poller")
    ours.start()
    theirs.start()
    try:
        assert [t.name for t in left_running()] == ["poller"]
    finally:
        stop.set()
        ours.join()
        theirs.join()
