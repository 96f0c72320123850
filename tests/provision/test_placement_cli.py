"""Placement by resources with real worker processes: tasks of an agent that needs a gpu
are run only by the worker that offers one; the others by either."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

from tests.acceptance.conftest import start_legion, wait_for
from tests.provision.autoscale_agents import on_gpu
from tests.provision.test_autoscale_cli import AGENTS, submit


def test_only_a_worker_offering_what_a_task_needs_leases_it(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    base = ("worker", "--app", str(AGENTS), "--store", url, "--concurrency", "2")
    submit(url, "anywhere", [])  # creates the store
    plain = start_legion(*base)
    gpu = start_legion(*base, "--offer", "gpu,memory_mb=1024")
    try:
        wait_for(
            lambda: _one(db, "SELECT count(*) FROM workers") == 2,
            timeout=120,
            what="both workers registered",
        )
        submit(url, "on_gpu", [{"i": i} for i in range(20)], needs=on_gpu.needs)
        submit(url, "anywhere", [{"i": i} for i in range(20)])
        wait_for(
            lambda: _one(db, "SELECT count(*) FROM tasks WHERE status = 'succeeded'") == 40,
            timeout=120,
            what="every task done",
        )
        with sqlite3.connect(db) as conn:
            ran = conn.execute("SELECT agent, output FROM tasks").fetchall()
    finally:
        for proc in (plain, gpu):
            proc.send_signal(signal.SIGTERM)
        ended = []
        for proc in (plain, gpu):  # both are waited for, whatever the first one did
            _, err = proc.communicate(timeout=60)
            ended.append((proc.returncode, err))
    for code, err in ended:
        assert code == 0, err
    pids = {agent: {json.loads(out) for a, out in ran if a == agent} for agent, _ in ran}
    assert pids["on_gpu"] == {gpu.pid}
    assert pids["anywhere"] <= {gpu.pid, plain.pid}


def _one(db: Path, sql: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute(sql).fetchone()[0])
