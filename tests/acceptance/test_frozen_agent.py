"""An agent that freezes the event loop (``while True: pass`` on the default executor):
its worker records it and exits, the supervisor starts another, the other tasks all
succeed, and after three freezes the culprit is dead with a clear reason. A stop signal
still stops a frozen worker."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from legion import codec
from legion.store import store_from_url
from legion.task import NewTask, TaskInfo, TaskStatus
from tests.acceptance.conftest import start_legion, wait_for

pytestmark = pytest.mark.slow

AGENTS = """
import asyncio
import json
import os

import legion


def _record(task_id, what):
    with open(os.environ["LEDGER"], "a") as f:
        f.write(json.dumps({"task": task_id, "what": what}) + "\\n")


@legion.agent(timeout=float(os.environ.get("SPIN_TIMEOUT", "2")), retries=3, backoff=0)
async def spin(ctx, i: int):
    _record(ctx.task_id, "spin")
    while True:
        pass


@legion.agent(timeout=30, retries=3, backoff=0)
async def normal(ctx, i: int):
    def effect():
        _record(ctx.task_id, "effect")
        return i

    done = await ctx.step("effect", effect)
    await asyncio.sleep(0.05)
    return done
"""

N = 100


def submit(url: str, tasks: list[NewTask]) -> list[int]:
    async def go() -> list[int]:
        store = store_from_url(url)
        await store.open()
        try:
            return [s.id for s in await store.submit(tasks, 0.0)]
        finally:
            await store.aclose()

    return asyncio.run(go())


def tasks_and_events(url: str) -> tuple[list[TaskInfo], Counter[int]]:
    async def go() -> tuple[list[TaskInfo], Counter[int]]:
        store = store_from_url(url)
        await store.open()
        try:
            found = await store.find_keys([f"k{i}" for i in range(-1, N)])
            infos = list(found.values())
            done = Counter(
                e.task_id for e in await store.events_after(0) if e.status is TaskStatus.SUCCEEDED
            )
            return infos, done
        finally:
            await store.aclose()

    return asyncio.run(go())


def sigterm_once_spinning(proc: subprocess.Popen[str], log: Path, what: str) -> str:
    """SIGTERM ``proc`` once its agent spins; answer its stderr once it stopped."""
    try:
        wait_for(lambda: len(ledger(log)) == 1, what="the agent to start spinning")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"SIGTERM did not stop the frozen {what}") from None
    return err


def ledger(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_task_that_freezes_its_worker_dies_alone(tmp_path: Path, store_url: str) -> None:
    app = tmp_path / "spinning.py"
    app.write_text(AGENTS)
    log = tmp_path / "ledger.jsonl"
    (culprit,) = submit(store_url, [NewTask("spin", codec.dumps({"i": 0}), "k-1")])
    normal = submit(
        store_url, [NewTask("normal", codec.dumps({"i": i}), f"k{i}") for i in range(N)]
    )
    supervisor = start_legion(
        "worker",
        "--app",
        str(app),
        "--store",
        store_url,
        "--processes",
        "1",
        "-c",
        "20",
        "--lease-seconds",
        "10",
        env={"LEDGER": str(log)},
    )
    try:

        def finished() -> bool:
            infos, _ = tasks_and_events(store_url)
            return len(infos) == N + 1 and all(t.status.terminal for t in infos)

        wait_for(finished, timeout=180, what="every task to finish")
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=60)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
    assert supervisor.returncode == 0, err
    infos, done = tasks_and_events(store_url)
    by_id = {t.id: t for t in infos}
    dead = by_id[culprit]
    assert dead.status is TaskStatus.DEAD, dead
    assert dead.error is not None and dead.error.type == "EventLoopFrozen"
    assert dead.error.message == "blocked the event loop for 2 s, 3 times: use executor='process'"
    assert "while True" in dead.error.traceback  # where it was stuck
    assert err.count("exited with 4 (an agent froze its event loop); starting another") == 3
    # The others all succeeded, each completion recorded once, every side effect made.
    assert {by_id[i].status for i in normal} == {TaskStatus.SUCCEEDED}
    assert all(done[i] == 1 for i in normal) and culprit not in done
    effects = {e["task"] for e in ledger(log) if e["what"] == "effect"}
    assert effects == set(normal)
    assert sum(1 for e in ledger(log) if e["what"] == "spin") == 3


def test_sigterm_stops_a_frozen_worker(tmp_path: Path, db_url: str) -> None:
    app = tmp_path / "spinning.py"
    app.write_text(AGENTS)
    log = tmp_path / "ledger.jsonl"
    (culprit,) = submit(db_url, [NewTask("spin", codec.dumps({"i": 0}), "k-1")])
    worker = start_legion(
        "worker",
        "--app",
        str(app),
        "--store",
        db_url,
        env={"LEDGER": str(log), "SPIN_TIMEOUT": "600"},
    )
    err = sigterm_once_spinning(worker, log, "worker")
    assert worker.returncode == 128 + signal.SIGTERM, err
    assert "while the event loop has been blocked" in err
    infos, _ = tasks_and_events(db_url)
    (task,) = infos
    assert task.id == culprit and task.status is TaskStatus.QUEUED and task.attempt == 0


def test_legion_run_records_a_frozen_agent_dead_and_a_rerun_finishes_the_rest(
    tmp_path: Path,
) -> None:
    app = tmp_path / "spinning.py"
    app.write_text(AGENTS)
    log = tmp_path / "ledger.jsonl"
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(f'{{"i": {i}}}\n' for i in range(3)))
    out = tmp_path / "out.jsonl"
    run = ("run", f"{app}:spin", "-i", str(inp), "-o", str(out), "--store")
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {"LEDGER": str(log), "SPIN_TIMEOUT": "0.5"}
    codes = []
    for _ in range(4):  # each run: one task freezes the loop, is recorded dead, and it exits
        proc = start_legion(*run, store, env=env)
        _, err = proc.communicate(timeout=60)  # (it spun for ever, deaf to Ctrl-C)
        codes.append(proc.returncode)
        if proc.returncode != 4:
            break
        assert "re-run the same command to go on" in err
    assert codes == [4, 4, 4, 1], err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(
        r["status"] == "dead"
        and r["error"]["type"] == "EventLoopFrozen"
        and "once" in r["error"]["message"]
        for r in rows
    ), rows
    # Every task froze once and no more: a rerun does not run a frozen task again.
    assert Counter(e["task"] for e in ledger(log)) == {r["id"]: 1 for r in rows}


def test_sigterm_stops_a_frozen_legion_run(tmp_path: Path) -> None:
    app = tmp_path / "spinning.py"
    app.write_text(AGENTS)
    log = tmp_path / "ledger.jsonl"
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"i": 0}\n')
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    run = start_legion(
        *("run", f"{app}:spin", "-i", str(inp), "-o", str(tmp_path / "o.jsonl")),
        *("--store", store),
        env={"LEDGER": str(log), "SPIN_TIMEOUT": "600"},
    )
    err = sigterm_once_spinning(run, log, "run")
    assert run.returncode == 128 + signal.SIGTERM, err
    with sqlite3.connect(tmp_path / "runs.db") as db:
        rows = db.execute("SELECT status, attempt FROM tasks").fetchall()
    assert rows == [("queued", 0)]  # given back, not charged
