"""The batch tier with real processes: worker processes on PostgreSQL, the simulator in a
process of its own. A worker SIGKILLed while its task waits for a batch: the task resumes
on another worker, which polls the same job; no call is sent twice."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import legion
from legion import codec
from tests.acceptance.conftest import sim_stats, start_sim, wait_for
from tests.acceptance.test_cli_worker import Workers, libpq

pytestmark = pytest.mark.slow

MODEL = "gpt-5-mini"
AGENTS = """
import legion


@legion.agent(retries=0)
async def asks(ctx, n: int):
    first = await ctx.llm.chat([{"role": "user", "content": "first"}], max_tokens=8)
    calls = [
        ctx.llm.chat([{"role": "user", "content": f"q{i}"}], max_tokens=8, tier="batch")
        for i in range(n)
    ]
    return {"first": first.text, "answers": [a.text for a in await ctx.gather(*calls)]}
"""


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers()
    yield w
    w.stop_all()


def _count(url: str, sql: str) -> int:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def _standard(base_url: str, content: str) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as r:
        return str(json.loads(r.read())["choices"][0]["message"]["content"])


def test_a_task_waiting_for_a_batch_outlives_a_sigkill_and_sends_nothing_twice(
    tmp_path: Path, postgres_url: str, workers: Workers
) -> None:
    app = tmp_path / "batch_agents.py"
    app.write_text(AGENTS)
    # The batch ends 2 s after it is made: long after the first worker is killed.
    sim, url = start_sim("--model", MODEL, "--batch-turnaround", "2")
    try:
        common = ["--app", str(app), "--store", postgres_url, "--llm", f"openai:{MODEL}@{url}"]
        first = workers.start(*common)

        async def submit() -> int:
            @legion.agent(name="asks")
            async def asks(ctx: object, n: int) -> None: ...

            async with legion.Runtime(postgres_url, worker=False) as rt:
                return (await rt.submit(asks, {"n": 3})).id

        task_id = asyncio.run(submit())
        wait_for(
            lambda: (
                _count(postgres_url, "SELECT count(*) FROM llm_batch_calls WHERE state = 'sent'")
                == 3
            ),
            what="three calls sent in a batch",
        )
        waiting = f"SELECT count(*) FROM tasks WHERE id = {task_id} AND status = 'waiting'"
        # (The sender may send before the task's suspension commits.)
        wait_for(lambda: _count(postgres_url, waiting) == 1, what="the task to wait")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        workers.start(*common)
        done = f"SELECT count(*) FROM tasks WHERE id = {task_id} AND status = 'succeeded'"
        wait_for(lambda: _count(postgres_url, done) == 1, what="the task to finish")
        stats = sim_stats(url)
        # One standard call (recorded before the kill, not sent again), one job of three.
        assert (stats["requests_total"], stats["batches"], stats["batch_requests"]) == (1, 1, 3)
        assert _count(postgres_url, "SELECT count(*) FROM llm_batch_calls") == 0
        with psycopg.connect(libpq(postgres_url)) as conn:
            row = conn.execute("SELECT output FROM tasks WHERE id = %s", (task_id,)).fetchone()
        assert row is not None
        output = codec.loads(row[0])
        assert output["answers"] == [_standard(url, f"q{i}") for i in range(3)]
        assert output["first"] == _standard(url, "first")
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.communicate(timeout=30)
