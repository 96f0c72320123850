"""The durable core under faults: real ``legion worker`` processes, real signals, real
stores, and a ledger of side effects that every test checks.

Each step of the test agents appends ``begin``/``end`` lines to a ledger file (O_APPEND, so
the file's order is the order in which the processes wrote). After a run the ledger and the
store must agree:

- lost = 0: every task that should succeed did;
- duplicate completions = 0: one terminal event per task;
- no step that was recorded runs again: the run whose result was recorded is the last run
  of that step to *begin* (an earlier run may have died before its record);
- no write accepted from a stale lease: every stored step is the one whose value the
  task's output carries, and the task's memory holds its last step's value;
- no innocent task dead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from legion import codec
from legion.store import store_from_url
from legion.task import NewTask
from tests.acceptance.conftest import LEGION, wait_for

pytestmark = pytest.mark.slow

AGENTS = """
import asyncio
import os
import signal
import uuid

import legion

LEDGER = os.environ["LEDGER"]


def note(*fields):
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (" ".join(str(f) for f in fields) + "\\n").encode())
    finally:
        os.close(fd)


async def effect(task_id, name, pause):
    token = uuid.uuid4().hex
    note("begin", task_id, name, token, os.getpid())
    await asyncio.sleep(float(os.environ.get("PAUSE_" + name, pause)))
    note("end", task_id, name, token, os.getpid())
    return token


@legion.agent(timeout=120, retries=3, backoff=0)
async def chain(ctx, i: int, pause: float = 0.0):
    tokens = []
    for k in range(3):
        tokens.append(await ctx.step(f"s{k}", effect, ctx.task_id, f"s{k}", pause))
    await ctx.memory.set("last", tokens[-1])
    return tokens


@legion.agent(timeout=120, retries=0, backoff=0)
async def neighbour(ctx, i: int, culprit: bool = False):
    first = not os.path.exists(os.path.join(os.environ["MARKS"], str(ctx.task_id)))
    open(os.path.join(os.environ["MARKS"], str(ctx.task_id)), "a").close()
    note("begin", ctx.task_id, "run", uuid.uuid4().hex, os.getpid())
    if culprit:
        await asyncio.sleep(0.3)  # the neighbours are running by now
        os.kill(os.getpid(), signal.SIGKILL)
    if first:
        await asyncio.sleep(1.0)  # the first time, be running when a culprit strikes
    return i
"""


class Fleet:
    """Worker processes of one test (stderr to files); all stopped at teardown."""

    def __init__(self, tmp: Path, app: Path, store: str, env: dict[str, str]) -> None:
        self.tmp, self.app, self.store, self.env = tmp, app, store, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"worker{len(self.procs)}.log"
        command = [*prefix, *LEGION, "worker", "--app", str(self.app), "--store", self.store]
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [*command, *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, **self.env, **(env or {})},
            )
        self.procs.append(proc)
        wait_for(lambda: "serving" in log.read_text(), timeout=60, what="a worker to serve")
        return proc, log

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    app = tmp_path / "fault_agents.py"
    app.write_text(AGENTS)
    marks = tmp_path / "marks"
    marks.mkdir()
    yield app, {"LEDGER": str(tmp_path / "ledger"), "MARKS": str(marks)}


def submit(store_url: str, agent: str, inputs: list[dict[str, Any]], max_attempts: int) -> None:
    async def go() -> None:
        store = store_from_url(store_url)
        await store.open()
        try:
            tasks = [NewTask(agent, codec.dumps(i), max_attempts=max_attempts) for i in inputs]
            await store.submit(tasks, 0.0)
        finally:
            await store.aclose()

    asyncio.run(go())


def query(store_url: str, sql: str) -> list[tuple[Any, ...]]:
    if store_url.startswith("sqlite:///"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
            return db.execute(sql).fetchall()
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(store_url)
    keep = [(k, v) for k, v in parse_qsl(parts.query) if not k.startswith("pool_")]
    with psycopg.connect(urlunsplit(parts._replace(query=urlencode(keep)))) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def count(store_url: str, where: str) -> int:
    return int(query(store_url, f"SELECT count(*) FROM tasks WHERE {where}")[0][0])


def ledger(env: dict[str, str]) -> list[list[str]]:
    path = Path(env["LEDGER"])
    return [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []


def text(value: Any) -> str:
    return bytes(value).decode() if isinstance(value, (bytes, memoryview)) else str(value)


def check(
    store_url: str, env: dict[str, str], *, n: int, dead: frozenset[int] = frozenset()
) -> None:
    """The ledger's checks (see the module's docstring)."""
    tasks = {
        tid: (status, codec.loads(text(out)) if out is not None else None)
        for tid, status, out in query(store_url, "SELECT id, status, output FROM tasks")
    }
    assert len(tasks) == n
    not_done = {t for t, (status, _) in tasks.items() if status != "succeeded"}
    assert not_done == set(dead), f"lost or dead: {sorted(not_done - set(dead))}"
    finals = Counter(
        t
        for (t,) in query(
            store_url,
            "SELECT task_id FROM events "
            "WHERE status IN ('succeeded', 'failed', 'dead', 'cancelled')",
        )
    )
    assert all(finals[t] == 1 for t in tasks), "a task has more than one final event"
    begins: dict[tuple[int, str], list[str]] = {}
    for fields in ledger(env):
        if fields[0] == "begin":
            begins.setdefault((int(fields[1]), fields[2]), []).append(fields[3])
    stored = query(store_url, "SELECT task_id, key, output FROM steps")
    for task_id, key, out in stored:
        token = codec.loads(text(out))
        runs = begins.get((task_id, key), [])
        assert runs and runs[-1] == token, f"task {task_id}: recorded step {key} ran again"
    if stored:  # the `chain` agent: stored steps, output and memory agree
        by_task: dict[int, dict[str, str]] = {}
        for task_id, key, out in stored:
            by_task.setdefault(task_id, {})[key] = codec.loads(text(out))
        memory = {
            s: codec.loads(text(v))
            for s, v in query(store_url, "SELECT session, value FROM memory WHERE key = 'last'")
        }
        for t, (_, output) in tasks.items():
            steps = by_task.get(t, {})
            assert output == [steps.get("s0"), steps.get("s1"), steps.get("s2")], (
                f"task {t}: its output disagrees with its stored steps"
            )
            assert memory.get(f"task-{t}") == output[-1], f"task {t}: a stale memory write"


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def chains(n: int, pause: float) -> list[dict[str, Any]]:
    return [{"i": i, "pause": pause} for i in range(n)]


def test_a_worker_paused_past_its_lease_writes_nothing_late_on_postgres(
    tmp_path: Path, setup: tuple[Path, dict[str, str]], postgres_url: str
) -> None:
    app, env = setup
    fleet = Fleet(tmp_path, app, postgres_url, env)
    try:
        n = 30
        submit(postgres_url, "chain", chains(n, 0.3), 4)
        zombie, zombie_log = fleet.start("-c", "6", "--lease-seconds", "1.5")
        wait_for(
            lambda: len(lines := ledger(env)) >= 12 and lines[-1][0] == "begin",
            what="the first worker to be busy in its steps",
        )
        zombie.send_signal(signal.SIGSTOP)
        wait_for(lambda: stopped(zombie.pid), what="the worker to stop")
        at_pause = ledger(env)
        ended = {f[3] for f in at_pause if f[0] == "end"}
        in_flight = [f for f in at_pause if f[0] == "begin" and f[3] not in ended]
        assert in_flight, "the paused worker should have steps in flight"
        fleet.start("-c", "100", "--lease-seconds", "1.5")
        wait_for(lambda: count(postgres_url, "status = 'succeeded'") == n, what="all done")
        mark = len(ledger(env))
        zombie.send_signal(signal.SIGCONT)
        wait_for(lambda: "lost to" in zombie_log.read_text(), what="the zombie to notice")
        late = [f for f in ledger(env)[mark:] if f[4] == str(zombie.pid)]
        assert not [f for f in late if f[0] == "begin"], "a step started under a lost lease"
        # Whatever it still ran (steps in flight at the pause may end) the store refused:
        # the stored steps are the new owner's, and agree with the outputs.
        check(postgres_url, env, n=n)
    finally:
        fleet.stop_all()


def test_released_tasks_replay_their_recorded_steps(
    tmp_path: Path, setup: tuple[Path, dict[str, str]]
) -> None:
    app, env = setup
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    fleet = Fleet(tmp_path, app, store, env)
    try:
        n = 20
        submit(store, "chain", chains(n, 0.0), 4)
        first, first_log = fleet.start("-c", "50", env={"PAUSE_s1": "300"})
        wait_for(
            lambda: sum(1 for f in ledger(env) if f[0] == "begin" and f[2] == "s1") == n,
            what="every task to hang in its second step",
        )
        first.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in first_log.read_text(), what="the worker to drain")
        first.send_signal(signal.SIGTERM)  # the second one releases at once
        assert first.wait(timeout=60) == 0
        assert count(store, "status = 'queued' AND attempt = 0") == n
        fleet.start("-c", "50")
        wait_for(lambda: count(store, "status = 'succeeded'") == n, what="all done")
        s0 = Counter(int(f[1]) for f in ledger(env) if f[0] == "begin" and f[2] == "s0")
        assert set(s0.values()) == {1}, "a released task ran its recorded first step again"
        check(store, env, n=n)
    finally:
        fleet.stop_all()


def test_tasks_that_kill_their_worker_die_alone(
    tmp_path: Path, setup: tuple[Path, dict[str, str]]
) -> None:
    app, env = setup
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    fleet = Fleet(tmp_path, app, store, env)
    try:
        inputs = [{"i": i, "culprit": i in (50, 120, 180)} for i in range(203)]
        submit(store, "neighbour", inputs, 1)
        # A supervisor restarts a worker each time a culprit kills it.
        fleet.start("-c", "500", "--lease-seconds", "2", "--processes", "2")
        wait_for(
            lambda: count(store, "status IN ('succeeded', 'dead')") == 203,
            timeout=120,
            what="every task to end",
        )
        dead = {t for (t,) in query(store, "SELECT id FROM tasks WHERE status = 'dead'")}
        everything = query(store, "SELECT id, input FROM tasks")
        culprits = {t for t, inp in everything if codec.loads(inp)["culprit"]}
        assert dead == culprits, "an innocent neighbour died, or a culprit did not"
        reasons = query(store, "SELECT error, crashes FROM tasks WHERE status = 'dead'")
        for error, crashes in reasons:
            assert "alone" in codec.loads(text(error))["message"] and crashes == 1
        check(store, env, n=203, dead=frozenset(culprits))
    finally:
        fleet.stop_all()


def test_the_tasks_of_a_killed_worker_rerun_in_halves_not_one_by_one(
    tmp_path: Path, setup: tuple[Path, dict[str, str]]
) -> None:
    # A worker SIGKILLed with 20 tasks in flight (an operator's kill -9, a reboot): the
    # next worker reruns them apart from other work in two groups of 10, not one at a
    # time, and loses, repeats and charges nothing.
    app, env = setup
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    fleet = Fleet(tmp_path, app, store, env)
    try:
        submit(store, "chain", chains(20, 0.0), 3)
        first, _ = fleet.start("-c", "20", "--lease-seconds", "2", env={"PAUSE_s0": "3600"})
        wait_for(
            lambda: sum(1 for f in ledger(env) if f[:3] == ["begin", f[1], "s0"]) == 20,
            what="20 tasks in flight",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        second, _ = fleet.start("-c", "20", "--lease-seconds", "2", env={"PAUSE_s0": "0.2"})
        wait_for(lambda: count(store, "status = 'succeeded'") == 20, what="all done")
        check(store, env, n=20)
        assert count(store, "attempt <> 1 OR crashes <> 0") == 0  # nothing was charged
        # At most how many ran s0 at once on the second worker: a group.
        running = most = 0
        for f in ledger(env):
            if f[2] == "s0" and f[4] == str(second.pid):
                running += 1 if f[0] == "begin" else -1
                most = max(most, running)
        assert most == 10, most
    finally:
        fleet.stop_all()


FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def test_workers_with_skewed_clocks_steal_no_live_lease_on_postgres(
    tmp_path: Path, setup: tuple[Path, dict[str, str]], postgres_url: str
) -> None:
    assert Path(FAKETIME).exists(), "install libfaketime: apt-get install -y faketime"
    app, env = setup
    fleet = Fleet(tmp_path, app, postgres_url, env)
    try:
        n = 400
        for skew in ("-20s", "+20s"):  # the slow one first: the fast one would steal from it
            fleet.start(
                "-c",
                "50",
                "--lease-seconds",
                "3",
                env={"LD_PRELOAD": FAKETIME, "FAKETIME": skew, "FAKETIME_DONT_RESET": "1"},
            )
        submit(postgres_url, "chain", chains(n, 0.2), 4)
        wait_for(lambda: count(postgres_url, "status = 'succeeded'") == n, what="all done")
        assert count(postgres_url, "attempt <> 1") == 0, "a live lease was taken back"
        runs = Counter((f[1], f[2]) for f in ledger(env) if f[0] == "begin")
        assert set(runs.values()) == {1}, "a step ran twice"
        check(postgres_url, env, n=n)
    finally:
        fleet.stop_all()


def test_a_live_worker_in_another_pid_namespace_keeps_its_leases(
    tmp_path: Path, setup: tuple[Path, dict[str, str]]
) -> None:
    """Same host name, another PID namespace (a container with host networking): the
    other worker's PID means nothing here (here it is free), so only its heartbeat counts."""
    app, env = setup
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    fleet = Fleet(tmp_path, app, store, env)
    # Inside the namespace the worker gets a PID above 400: one no process has out here.
    boxed = (
        "unshare",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "sh",
        "-c",
        'i=0; while [ $i -lt 400 ]; do /bin/true; i=$((i+1)); done; "$@"',
        "sh",
    )
    try:
        n = 20
        submit(store, "chain", chains(n, 1.0), 4)
        fleet.start("-c", "20", "--lease-seconds", "2", prefix=boxed)
        wait_for(
            lambda: sum(1 for f in ledger(env) if f[0] == "begin") >= n,
            what="the boxed worker to take every task",
        )
        pids = {f[4] for f in ledger(env)}
        assert len(pids) == 1 and not Path(f"/proc/{pids.pop()}").exists()
        fleet.start("-c", "20", "--lease-seconds", "2")
        wait_for(lambda: count(store, "status = 'succeeded'") == n, what="all done")
        assert count(store, "attempt <> 1") == 0, "a live worker's lease was taken"
        runs = Counter((f[1], f[2]) for f in ledger(env) if f[0] == "begin")
        assert set(runs.values()) == {1}, "a step ran twice"
        check(store, env, n=n)
    finally:
        fleet.stop_all()


@pytest.mark.parametrize("point", ["step-ran", "step-recorded", "completed"])
def test_a_worker_killed_at_each_commit_point_loses_nothing(
    tmp_path: Path, setup: tuple[Path, dict[str, str]], point: str
) -> None:
    app, env = setup
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    fleet = Fleet(tmp_path, app, store, env)
    try:
        n = 10
        submit(store, "chain", chains(n, 0.0), 4)
        doomed, log = fleet.start("-c", "1", env={"LEGION_FAULT": f"{point}:kill:5"})
        assert doomed.wait(timeout=60) == -signal.SIGKILL
        assert f"fault {point}:kill" in log.read_text()
        before = count(store, "status = 'succeeded'")
        fleet.start("-c", "10", "--lease-seconds", "2")
        wait_for(lambda: count(store, "status = 'succeeded'") == n, what="all done")
        if point == "completed":  # killed right after the fifth completion's commit
            assert before == 5
        check(store, env, n=n)
    finally:
        fleet.stop_all()


@pytest.mark.parametrize("spec", ["bogus:kill", "completed:explode", "completed:kill:x"])
def test_a_bad_fault_setting_stops_the_command_with_exit_code_2(spec: str) -> None:
    done = subprocess.run(
        [*LEGION, "status", "--help"],
        env={**os.environ, "LEGION_FAULT": spec},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"error: LEGION_FAULT={spec!r}: "), done.stderr
