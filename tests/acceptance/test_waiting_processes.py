"""Durable waiting with real worker processes on PostgreSQL: a waiting task outlives a
SIGKILLed worker and resumes on a signal sent while another worker runs; a schedule
watched by three workers runs each tick once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import legion
from legion import codec
from tests.acceptance.conftest import legion as run_legion
from tests.acceptance.conftest import wait_for
from tests.acceptance.test_cli_worker import Workers, libpq, lines

pytestmark = pytest.mark.slow

AGENTS = """
import os

import legion


def _record(line):
    with open(os.environ["LEDGER"], "a") as f:
        f.write(line + "\\n")


@legion.agent(retries=0)
async def waits(ctx, i: int):
    await ctx.step("before", lambda: _record(f"{ctx.task_id}:before"))
    got = await ctx.wait_for("go")
    await ctx.step("after", lambda: _record(f"{ctx.task_id}:after:{got['v']}"))
    return {"i": i, "got": got}


@legion.agent(retries=0)
async def ticker(ctx, n: int):
    await ctx.step("tick", lambda: _record(f"{ctx.task_id}:{ctx.key}"))
    return n
"""


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers()
    yield w
    w.stop_all()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "waiting_agents.py"
    path.write_text(AGENTS)
    return path


def _count(url: str, sql: str) -> int:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_a_waiting_task_survives_a_sigkill_and_resumes_on_a_signal_to_another_worker(
    tmp_path: Path, app: Path, postgres_url: str, workers: Workers
) -> None:
    ledger = tmp_path / "ledger.txt"
    env = {"LEDGER": str(ledger)}
    common = ["--app", str(app), "--store", postgres_url, "-c", "10"]
    first = workers.start(*common, env=env)

    async def submit() -> list[int]:
        @legion.agent(name="waits")
        async def waits(ctx: object, i: int) -> None: ...

        async with legion.Runtime(postgres_url, worker=False) as rt:
            return [s.id for s in await rt.submit_many(waits, [{"i": i} for i in range(5)])]

    ids = asyncio.run(submit())
    wait_for(
        lambda: _count(postgres_url, "SELECT count(*) FROM tasks WHERE status = 'waiting'") == 5,
        what="five waiting tasks",
    )
    assert _count(postgres_url, "SELECT count(*) FROM tasks WHERE lease_owner IS NOT NULL") == 0
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    workers.start(*common, env=env)
    for n, task_id in enumerate(ids):
        done = run_legion(
            "signal", str(task_id), "go", "--data", f'{{"v": {n}}}', "--store", postgres_url
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(task_id), "queued"]
    wait_for(
        lambda: _count(postgres_url, "SELECT count(*) FROM tasks WHERE status = 'succeeded'") == 5,
        what="the signalled tasks to finish",
    )
    with psycopg.connect(libpq(postgres_url)) as conn:
        outputs: dict[int, Any] = dict(
            conn.execute("SELECT id, output FROM tasks ORDER BY id").fetchall()
        )
    assert {i: codec.loads(outputs[i])["got"] for i in ids} == {
        i: {"v": n} for n, i in enumerate(ids)
    }
    recorded = lines(ledger)
    assert sorted(recorded) == sorted(
        [f"{i}:before" for i in ids] + [f"{i}:after:{n}" for n, i in enumerate(ids)]
    )  # lost = 0, duplicates = 0
    finished = run_legion("signal", str(ids[0]), "go", "--store", postgres_url)
    assert finished.returncode == 1 and "takes no more signals" in finished.stderr


def test_a_schedule_watched_by_three_workers_runs_each_tick_once(
    tmp_path: Path, app: Path, postgres_url: str, workers: Workers
) -> None:
    ledger = tmp_path / "ledger.txt"
    env = {"LEDGER": str(ledger)}
    # Lease of 2 s: each worker's timer pass (its reaper) comes every second.
    common = ["--app", str(app), "--store", postgres_url, "-c", "10", "--lease-seconds", "2"]
    added = run_legion(
        "schedule",
        "add",
        "yearly",
        "ticker",
        "--cron",
        "0 0 1 1 *",
        "--input",
        '{"n": 1}',
        "--store",
        postgres_url,
    )
    assert added.returncode == 0, added.stderr
    for _ in range(3):
        workers.start(*common, env=env)
    ticks = [1_700_000_000.0 + 60 * k for k in range(3)]  # three past minutes, due now
    for k, tick in enumerate(ticks, start=1):
        with psycopg.connect(libpq(postgres_url), autocommit=True) as conn:
            conn.execute("UPDATE schedules SET next_tick = %s WHERE name = 'yearly'", (tick,))
        wait_for(lambda k=k: len(lines(ledger)) >= k, what=f"tick {k} to run")  # type: ignore[misc]
    workers.stop_all()  # drained: nothing more can be submitted
    keys = [ln.split(":", 1)[1] for ln in lines(ledger)]
    assert len(keys) == 3 and len(set(keys)) == 3, keys
    assert _count(postgres_url, "SELECT count(*) FROM tasks WHERE agent = 'ticker'") == 3
    listed = run_legion("schedule", "list", "--store", postgres_url)
    assert listed.returncode == 0 and "yearly\t0 0 1 1 *\tticker" in listed.stdout
