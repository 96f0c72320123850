"""``legion serve --tenant-max-calls``: a tenant whose budget is spent gets no call past it
(counted at the simulator), its unfinished task waits in the queue showing the
`BudgetExceeded` error in the API, and another tenant's tasks go on. Real processes, real
HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import legion, sim_stats, start_sim
from tests.acceptance.test_serve import call, events

pytestmark = pytest.mark.slow

# Two calls per task, one task at a time: a tenant's budget of four calls holds two tasks.
AGENT = """\
import legion

@legion.agent(retries=0, concurrency=1)
async def chain(ctx: legion.Context, n: int) -> int:
    for i in range(2):
        await ctx.llm.chat([{"role": "user", "content": f"{n}.{i}"}], max_tokens=8)
    return n
"""


def _key(store: str, tenant: str) -> str:
    made = legion("keys", "create", "--name", tenant, "--tenant", tenant, "--store", store)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def _submit(url: str, key: str, n: int) -> int:
    status, task = call(f"{url}/v1/tasks", key, {"agent": "chain", "input": {"n": n}})
    assert status == 201, task
    return int(task["id"])


def _finished(url: str, key: str, task_id: int) -> dict[str, Any]:
    """The task once it is finished (its event stream ends then)."""
    stream = events(f"{url}/v1/tasks/{task_id}/events", key)
    assert stream, task_id
    status, task = call(f"{url}/v1/tasks/{task_id}", key)
    assert status == 200, task
    return task  # type: ignore[no-any-return]


@pytest.mark.parametrize("where", ["serve", "worker"])
def test_a_tenants_budget_stops_its_calls_and_spares_the_others(tmp_path: Path, where: str) -> None:
    """``where``: the budget is on `legion serve`'s own worker, or on a `legion worker`
    process beside a `legion serve --no-worker`."""
    sim, sim_url = start_sim("--model", "sim-model", "--latency", "0.01")
    store = f"sqlite:///{tmp_path / 'served.db'}"
    (tmp_path / "app.py").write_text(AGENT)
    acme, globex = _key(store, "acme"), _key(store, "globex")
    app = ["--store", store, "--app", str(tmp_path / "app.py")]
    route = ["--llm", f"openai:sim-model@{sim_url}"]
    budget = ["--tenant-max-calls", "4"]
    legion_ = [sys.executable, "-m", "legion"]
    if where == "serve":
        serving = [*legion_, "serve", *app, "--port", "0", *route, *budget]
        workers = []
    else:
        serving = [*legion_, "serve", *app, "--port", "0", "--no-worker"]
        workers = [[*legion_, "worker", *app, *route, *budget]]
    started = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
        for command in (serving, *workers)
    ]
    server = started[0]
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "listening on" in line, line
        url = line.split("listening on ", 1)[1].split()[0]

        first = [_submit(url, acme, n) for n in range(3)]
        done = [_finished(url, acme, task_id) for task_id in first[:2]]
        assert [t["status"] for t in done] == ["succeeded", "succeeded"]
        theirs = [_submit(url, globex, n) for n in range(2)]
        assert [_finished(url, globex, t)["status"] for t in theirs] == ["succeeded"] * 2

        status, parked = call(f"{url}/v1/tasks/{first[2]}", acme)
        assert status == 200, parked
        assert parked["status"] == "queued", parked  # kept, to resume with more budget
        assert parked["error"]["type"] == "BudgetExceeded", parked
        assert "tenant 'acme' --tenant-max-calls 4 reached" in parked["error"]["message"]
        stats = sim_stats(sim_url)
        assert stats["requests_total"] == stats["succeeded"] == 4 + 4  # none past a budget
    finally:
        errors = []
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)
            errors.append(process.communicate(timeout=60)[1])
        sim.terminate()
        sim.communicate(timeout=30)
    assert [p.returncode for p in started] == [0] * len(started), errors


def test_a_tenant_budget_needs_the_servers_worker(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(AGENT)
    store = f"sqlite:///{tmp_path / 'served.db'}"
    args = ["--store", store, "--app", str(tmp_path / "app.py"), "--no-worker"]
    done = legion("serve", *args, "--tenant-max-cost", "1")
    assert done.returncode != 0
    assert "need --worker" in done.stderr and "Traceback" not in done.stderr, done.stderr
