"""``legion worker --autoscale``: real supervisor and worker processes on a real store.

A backlog makes it add workers up to MAX; once the work shrinks it stops the surplus
after the cool-down, and the stopped workers drain (the ledger shows every task once, on
its first attempt); an LLM route at its limit keeps it from adding any.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from legion import codec
from legion.store import store_from_url
from legion.task import NewTask
from tests.acceptance.conftest import LEGION, legion, start_legion, start_sim, wait_for

AGENTS = Path(__file__).with_name("autoscale_agents.py")


def submit(url: str, agent: str, inputs: list[dict[str, Any]], needs: str | None = None) -> None:
    async def go() -> None:
        store = store_from_url(url)
        await store.open()
        try:
            tasks = [
                NewTask(agent, codec.dumps(i), None, max_attempts=3, needs=needs) for i in inputs
            ]
            await store.submit(tasks, time.time())
        finally:
            await store.aclose()

    asyncio.run(go())


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql).fetchall()


def autoscaler(db: Path) -> tuple[int, int, str] | None:
    found = rows(db, "SELECT desired, running, reason FROM autoscalers")
    return (int(found[0][0]), int(found[0][1]), str(found[0][2])) if found else None


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return err


def test_backlog_scales_up_to_max_and_drained_work_scales_down_without_loss(
    tmp_path: Path,
) -> None:
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    gates = tmp_path / "gates"
    gates.mkdir()
    ledger = tmp_path / "ledger"
    ledger.touch()
    n = 6
    submit(url, "gated", [{"i": i, "gates": str(gates)} for i in range(n)])
    sup = start_legion(
        "worker", "--app", str(AGENTS), "--store", url, "--autoscale", "1:3",
        "--concurrency", "2", "--cooldown", "2", "--lease-seconds", "3",
        env={"LEDGER": str(ledger)},
    )  # fmt: skip
    try:
        # 6 tasks, 2 slots a worker: the backlog asks for 3 workers, the maximum.
        wait_for(
            lambda: len(rows(db, "SELECT id FROM tasks WHERE status = 'running'")) == n,
            timeout=120,
            what="every task leased",
        )
        state = autoscaler(db)
        assert state is not None and state[0] == 3, state
        owners = rows(db, "SELECT lease_owner, id FROM tasks ORDER BY id")
        by_owner: dict[str, list[int]] = {}
        for owner, task_id in owners:
            by_owner.setdefault(owner, []).append(task_id)
        assert sorted(len(v) for v in by_owner.values()) == [2, 2, 2]
        # Keep one task gated on each of two workers, let the rest finish: the work now
        # asks for one worker, so after the cool-down two stop, one of them holding a task.
        a, b, _c = by_owner.values()
        keep = {a[0], b[0]}
        inputs = {tid: json.loads(inp) for tid, inp in rows(db, "SELECT id, input FROM tasks")}
        for tid, inp in inputs.items():
            if tid not in keep:
                (gates / str(inp["i"])).touch()
        wait_for(
            lambda: (s := autoscaler(db)) is not None and s[0] == 1,
            timeout=120,
            what="the scale-down",
        )
        state = autoscaler(db)
        assert state is not None and ("cool-down" in state[2] or state[0] == 1)
        for tid in keep:
            (gates / str(inputs[tid]["i"])).touch()
        wait_for(
            lambda: rows(db, "SELECT count(*) FROM tasks WHERE status = 'succeeded'")[0][0] == n,
            timeout=120,
            what="every task done",
        )
        wait_for(
            lambda: rows(db, "SELECT count(*) FROM workers")[0][0] == 1,
            timeout=120,
            what="the surplus workers gone",
        )
        status = legion("status", "--store", url, "--json")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert len(doc["workers"]) == 1
        assert [s["desired"] for s in doc["autoscalers"]] == [1]
        assert doc["autoscalers"][0]["running"] == 1
    finally:
        err = stop(sup)
    # Every task ran once, on its first attempt: no lease lost, no attempt charged.
    lines = ledger.read_text().split()
    assert sorted(int(x) for x in lines[::2]) == list(range(n))
    assert set(lines[1::2]) == {"1"}
    assert {a for (a,) in rows(db, "SELECT attempt FROM tasks")} == {1}
    assert "desired 3" in err and "desired 1" in err
    assert rows(db, "SELECT count(*) FROM autoscalers")[0][0] == 0


def test_a_route_at_its_limit_gets_no_more_workers(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    sim, sim_url = start_sim("--rpm", "600", "--window-seconds", "1", "--latency", "0.02")
    submit(url, "chatty", [{"i": i, "calls": 100} for i in range(40)])
    sup = start_legion(
        "worker",
        "--app",
        str(AGENTS),
        "--store",
        url,
        "--autoscale",
        "1:4",
        "--concurrency",
        "4",
        "--lease-seconds",
        "1.5",
        "--drain-timeout",
        "1",
        "--llm",
        f"openai:sim-model@{sim_url}",
        "--rpm",
        "600",
    )  # fmt: skip  (the tasks' 100 calls each would hold the drain for its 30 s)
    try:
        wait_for(
            lambda: (s := autoscaler(db)) is not None and "of its limit" in s[2],
            timeout=120,
            what="the route to hold the scale-up",
        )
        state = autoscaler(db)
        assert state is not None and state[0] == 1, state
        assert "route" in state[2] and "% of its limit" in state[2]
        status = legion("status", "--store", url)
        assert status.returncode == 0, status.stderr
        assert "of its limit" in status.stdout
    finally:
        err = stop(sup)
        sim.send_signal(signal.SIGTERM)
        sim.communicate(timeout=30)
    assert "desired 2" not in err, err
    assert "held at 1: route" in err


def test_a_fleet_of_min_0_starts_no_worker_for_tasks_no_worker_of_it_would_run(
    tmp_path: Path,
) -> None:
    # With none of its workers registered, every agent's queue counted: a task of an
    # agent the app does not define started a worker, which found nothing to run and was
    # stopped after the cool-down, and again, for ever.
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    submit(url, "not-in-the-app", [{"i": i} for i in range(3)])
    sup = start_legion(
        "worker", "--app", str(AGENTS), "--store", url, "--autoscale", "0:2",
        "--cooldown", "1",
    )  # fmt: skip
    try:
        first = None

        def decided_thrice() -> bool:  # (a decision a second: three seconds of them)
            nonlocal first
            found = rows(db, "SELECT at FROM autoscalers")
            if not found:
                return False
            first = first if first is not None else float(found[0][0])
            return float(found[0][0]) >= first + 3

        wait_for(decided_thrice, timeout=120, what="three decisions")
        state = autoscaler(db)
        assert state is not None and state[0] == 0, state
    finally:
        err = stop(sup)
    assert "scaling up" not in err, err


def test_bad_options_are_refused_clearly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    base = ("worker", "--app", str(AGENTS), "--store", url)
    bad = legion(*base, "--autoscale", "4:2")
    assert bad.returncode == 2 and "MAX must be at least 1 and at least MIN" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = legion(*base, "--autoscale", "three")
    assert bad.returncode == 2 and "--autoscale takes MIN:MAX" in bad.stderr
    bad = legion(*base, "--autoscale", "1:2", "--processes", "2")
    assert bad.returncode == 2 and "cannot be used together" in bad.stderr
    bad = legion(*base, "--offer", "memory_mb=lots")
    assert bad.returncode == 2 and "--offer" in bad.stderr
    bad = legion("worker", "--app", str(AGENTS), "--store", "mysql://x/y", "--autoscale", "1:2")
    assert bad.returncode == 2 and "unknown store URL" in bad.stderr
    assert "Traceback" not in bad.stderr


@dataclass
class Fleet:
    """A supervisor over two `gated` tasks (their gates shut), both running; its log."""

    db: Path
    gates: Path
    ledger: Path
    log: Path
    sup: subprocess.Popen[bytes]

    def stop(self) -> str:
        if self.sup.poll() is None:
            os.killpg(self.sup.pid, signal.SIGKILL)
            self.sup.wait()
        return self.log.read_text()


@contextmanager
def gated_fleet(tmp_path: Path, *options: str) -> Iterator[Fleet]:
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    gates, ledger, log = tmp_path / "gates", tmp_path / "ledger", tmp_path / "fleet.log"
    gates.mkdir()
    ledger.touch()
    submit(url, "gated", [{"i": i, "gates": str(gates)} for i in range(2)])
    with log.open("w") as err:
        sup = subprocess.Popen(
            [*LEGION, "worker", "--app", str(AGENTS), "--store", url, *options],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "LEDGER": str(ledger), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # (its own group, as a shell's job is)
        )
    fleet = Fleet(db, gates, ledger, log, sup)
    try:
        wait_for(
            lambda: len(rows(db, "SELECT id FROM tasks WHERE status = 'running'")) == 2,
            timeout=120,
            what="both tasks running",
        )
        yield fleet
    finally:
        fleet.stop()


@pytest.mark.parametrize("fleet", [("--processes", "2"), ("--autoscale", "1:1")])
def test_ctrl_c_in_a_terminal_drains_the_fleet_and_gives_back_nothing(
    tmp_path: Path, fleet: tuple[str, str]
) -> None:
    # A terminal's Ctrl-C signals the whole process group: each worker heard it twice (from
    # the terminal, then from its supervisor), and a second signal gives running tasks back.
    with gated_fleet(tmp_path, "--concurrency", "2", *fleet) as f:
        os.killpg(f.sup.pid, signal.SIGINT)  # what Ctrl-C does
        wait_for(lambda: "draining" in f.log.read_text(), timeout=60, what="the drain")
        for i in range(2):
            (f.gates / str(i)).touch()
        f.sup.wait(timeout=120)
    said = f.stop()
    assert f.sup.returncode == 0, said
    assert rows(f.db, "SELECT status, attempt FROM tasks") == [("succeeded", 1)] * 2, said
    assert sorted(f.ledger.read_text().split()) == ["0", "1", "1", "1"]


LONG_DRAIN = ("--concurrency", "2", "--drain-timeout", "3600")


@pytest.mark.parametrize("fleet", [("--processes", "2"), ("--autoscale", "1:1")])
def test_a_second_stop_signal_to_the_supervisor_gives_the_running_tasks_back(
    tmp_path: Path, fleet: tuple[str, str]
) -> None:
    # A drain that would outlast the test: only a give-back ends the tasks.
    with gated_fleet(tmp_path, *LONG_DRAIN, *fleet) as f:
        workers = int(fleet[1].split(":")[0])
        wait_for(lambda: f.log.read_text().count(": serving") == workers, timeout=60, what="up")
        f.sup.send_signal(signal.SIGINT)  # the supervisor alone (a `kill`, not a terminal)
        wait_for(  # (each worker took the first: two pending at once would be one)
            lambda: f.log.read_text().count("draining") == workers, timeout=60, what="the drain"
        )
        f.sup.send_signal(signal.SIGINT)
        f.sup.wait(timeout=120)  # (the gates stay shut)
    said = f.stop()
    assert rows(f.db, "SELECT status, attempt FROM tasks") == [("queued", 0)] * 2, said
    assert f.ledger.read_text() == ""


def test_a_worker_that_stops_for_good_stops_the_autoscaler_and_so_does_an_absent_store(
    tmp_path: Path,
) -> None:
    # Both ran on for ever: a worker that exits 2 (bad options) or 5 (a spent budget) was
    # started again every second, and a store that never answered was waited for.
    base = ("worker", "--app", str(AGENTS), "--autoscale", "1:2")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    keyless = {"OPENAI_API_KEY": ""}
    r = legion(*base, "--store", url, "--llm", "openai:gpt-4o-mini", env=keyless, timeout=90)
    assert r.returncode == 2, r.stderr
    assert "OPENAI_API_KEY is not set" in r.stderr
    assert "another would stop the same way; stopping the fleet" in r.stderr
    absent = "postgresql://postgres@127.0.0.1:1/nothing"
    r = legion(*base, "--store", absent, "--store-wait", "1", timeout=90)
    assert r.returncode == 3, r.stderr
    assert "the store is still unavailable after" in r.stderr


def test_a_stopped_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    # A worker stopped by SIGSTOP (a frozen container) lived on as a process: it was counted
    # as running, every scale-up waited for it "to start and report", and the work waited.
    options = ("--concurrency", "2", "--lease-seconds", "2", "--autoscale", "1:1")
    with gated_fleet(tmp_path, *options) as f:
        (frozen,) = [pid for (pid,) in rows(f.db, "SELECT pid FROM workers")]
        os.kill(frozen, signal.SIGSTOP)
        try:
            # Silent, it is not counted as running (for `legion status`), then killed.
            wait_for(
                lambda: (
                    (autoscaler(f.db) or (0, -1, ""))[1] == 0
                    or "killed with SIGKILL" in f.log.read_text()
                ),
                timeout=120,
                what="the silent worker not counted",
            )
            assert "killed with SIGKILL" not in f.log.read_text()  # (seen before the kill)
            wait_for(
                lambda: "killed with SIGKILL" in f.log.read_text(), timeout=120, what="the kill"
            )
            wait_for(
                lambda: any(p != frozen for (p,) in rows(f.db, "SELECT pid FROM workers")),
                timeout=120,
                what="another worker",
            )
            for i in range(2):
                (f.gates / str(i)).touch()
            wait_for(
                lambda: rows(f.db, "SELECT DISTINCT status FROM tasks") == [("succeeded",)],
                timeout=120,
                what="the tasks done by the new worker",
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)
    said = f.stop()
    assert f"worker process {frozen} sent no heartbeat" in said, said
    status = Path(f"/proc/{frozen}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text()  # (dead, maybe unreaped)
    assert sorted(line.split()[0] for line in f.ledger.read_text().splitlines()) == ["0", "1"]
