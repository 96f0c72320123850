"""``legion worker`` processes sharing one store: crashes, restarts, drains, shared limits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest

from tests.acceptance.conftest import (
    LEGION,
    legion,
    read_jsonl,
    sim_stats,
    start_legion,
    start_sim,
    wait_for,
    write_jsonl,
)
from tests.pg_cluster import PrivateCluster

pytestmark = pytest.mark.slow


class Workers:
    """Worker processes started by a test; all stopped at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = start_legion("worker", *args, env=env)
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the worker says it is serving once it is ready
        assert "serving" in line, line
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.communicate(timeout=60)


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers()
    yield w
    w.stop_all()


def libpq(url: str) -> str:
    """A store URL without legion's own pool options, for connecting with psycopg."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if not k.startswith("pool_")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigkill_one_of_two_workers_on_postgres_loses_nothing_and_reruns_no_recorded_step(
    tmp_path: Path, agents_file: Path, postgres_url: str, workers: Workers
) -> None:
    n = 1000
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    log1, log2 = tmp_path / "w1.log", tmp_path / "w2.log"
    common = [
        "--app",
        str(agents_file),
        "--store",
        postgres_url,
        "-c",
        "40",
        "--lease-seconds",
        "600",
    ]
    doomed = workers.start(*common, env={"STEP_LOG": str(log1)})
    workers.start(*common, env={"STEP_LOG": str(log2)})
    run = start_legion(
        "run",
        f"{agents_file}:work",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        postgres_url,
        "--no-local-worker",
    )
    wait_for(lambda: len(lines(log1)) >= 300, what="the first worker to make progress")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    seen_by_survivor = len(lines(log2))
    with psycopg.connect(libpq(postgres_url)) as conn:
        recorded = {f"{t}:{k}" for t, k in conn.execute("SELECT task_id, key FROM steps")}
        held = conn.execute("SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()
    assert held is not None and held[0] > 0, "the kill should catch tasks in flight"

    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    rows = read_jsonl(out)
    assert len(rows) == n and {r["status"] for r in rows} == {"succeeded"}
    rerun = set(lines(log2)[seen_by_survivor:])
    # The killed worker's recorded steps: the survivor's own, recorded after its log was
    # read, would show in both sets without having run twice.
    killed = recorded & set(lines(log1))
    assert killed, "the killed worker should have recorded steps"
    assert not killed & rerun, "a step recorded before the kill ran again"
    with psycopg.connect(libpq(postgres_url)) as conn:
        completions = conn.execute(
            "SELECT count(*) FROM events WHERE status = 'succeeded'"
        ).fetchone()
        steps = conn.execute("SELECT count(*) FROM steps").fetchone()
        # Each attempt the kill ended has its row, written when the survivor took it back.
        lost = conn.execute("SELECT task_id, worker FROM attempts WHERE outcome = 'lost'")
        lost_rows = lost.fetchall()
        # (A succeeded attempt is kept on its task's row, with the worker it ran on.)
        later = conn.execute(
            "SELECT count(*) FROM tasks AS t WHERE t.status = 'succeeded' AND t.succeeded_on "
            "IS NOT NULL AND t.id IN (SELECT task_id FROM attempts WHERE outcome = 'lost')"
        ).fetchone()
    assert completions == (n,)  # exactly one completion record per task
    assert steps == (3 * n,)
    assert lost_rows and len({worker for _, worker in lost_rows}) == 1  # the killed one's
    assert later == (len({task for task, _ in lost_rows}),)  # each then succeeded elsewhere


def test_sigterm_drains_a_worker_and_status_lists_live_workers(
    tmp_path: Path, agents_file: Path, workers: Workers
) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    log = tmp_path / "slow.log"
    worker = workers.start(
        "--app", str(agents_file), "--store", store, "-c", "10", env={"STEP_LOG": str(log)}
    )
    status = json.loads(
        subprocess.run(
            [*LEGION, "status", "--store", store, "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    (entry,) = status["workers"]
    assert entry["pid"] == worker.pid
    assert {"host", "in_flight", "loop_lag_ms", "rss_mb", "overloaded"} <= set(entry)

    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(40)])
    run = start_legion(
        "run",
        f"{agents_file}:slow",
        "-i",
        str(inp),
        "-o",
        str(tmp_path / "o.jsonl"),
        "--store",
        store,
        "--no-local-worker",
    )
    wait_for(lambda: len(lines(log)) >= 10, what="tasks to start")
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "draining" in err and "stopped after" in err
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=60)
    with_started = len(lines(log))
    # Nothing the worker started was left half-done: every started task finished.
    out = subprocess.run(
        [*LEGION, "status", "--store", store, "--json"], capture_output=True, text=True, check=True
    )
    counts = json.loads(out.stdout)["counts"]
    assert counts["running"] == 0
    assert counts["succeeded"] == with_started
    assert counts["queued"] == 40 - with_started
    assert json.loads(out.stdout)["workers"] == []  # it deregistered


def test_a_draining_worker_whose_agents_catch_the_stop_gives_their_tasks_back_and_exits(
    tmp_path: Path, workers: Workers
) -> None:
    app = tmp_path / "deaf.py"
    app.write_text(
        "import asyncio\nimport os\n\nimport legion\n\n\n"
        "@legion.agent(retries=0)\n"
        "async def deaf(ctx, i: int):\n"
        "    with open(os.environ['STARTED'], 'a') as f:\n"
        "        f.write(f'{i}\\n')\n"
        "    while True:  # catches every cancellation and goes on\n"
        "        try:\n"
        "            await asyncio.sleep(3600)\n"
        "        except asyncio.CancelledError:\n"
        "            pass\n"
    )
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    started = tmp_path / "started.log"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(3)])
    run = start_legion(
        *("run", f"{app}:deaf", "-i", str(inp), "-o", str(tmp_path / "o.jsonl")),
        *("--store", store, "--no-local-worker"),
    )
    worker = workers.start(
        *("--app", str(app), "--store", store, "--drain-timeout", "0.5"),
        env={"STARTED": str(started)},
    )
    wait_for(lambda: len(lines(started)) == 3, what="the three tasks to start")
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)  # (it hung here: the drain waited for ever)
    assert worker.returncode == 0, err
    assert err.count("abandoned; it catches asyncio.CancelledError") == 3, err
    assert "3 released (3 abandoned: their agents caught the stop)" in err, err
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=60)
    out = subprocess.run(
        [*LEGION, "status", "--store", store, "--json"], capture_output=True, text=True, check=True
    )
    counts = json.loads(out.stdout)["counts"]
    assert counts["queued"] == 3 and counts["running"] == 0  # given back, not charged


def test_four_workers_sharing_one_api_key_stay_within_its_limit(
    tmp_path: Path, workers: Workers
) -> None:
    # 6,000 requests a minute, enforced over 5 s windows (500 per window). Alone, each
    # worker would pace itself at the full limit: four of them would send four times it.
    sim, url = start_sim("--rpm", "6000", "--window-seconds", "5", "--latency", "0.01")
    try:
        app = tmp_path / "app.py"
        app.write_text(
            "import legion\n\n"
            "@legion.agent(retries=5, backoff=0)\n"
            "async def ask(ctx, i: int):\n"
            "    reply = await ctx.llm.chat([{'role': 'user', 'content': f'q{i}'}], max_tokens=4)\n"
            "    return reply.text\n"
        )
        store = f"sqlite:///{tmp_path / 'runs.db'}"
        for _ in range(4):
            workers.start(
                "--app",
                str(app),
                "--store",
                store,
                "-c",
                "50",
                "--llm",
                f"openai:sim-model@{url}",
                "--rpm",
                "6000",
            )
        inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(1500)])
        run = subprocess.run(
            [
                *LEGION,
                "run",
                f"{app}:ask",
                "-i",
                str(inp),
                "-o",
                str(tmp_path / "o.jsonl"),
                "--store",
                store,
                "--no-local-worker",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        stats = sim_stats(url)
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.communicate(timeout=30)
    assert stats["succeeded"] == 1500
    # Together the four stayed under the limit: the provider refused (almost) nothing.
    assert stats["rate_limited"] <= 15, stats  # under 1 % of the requests


def test_a_run_finishes_when_postgresql_restarts_in_the_middle(
    tmp_path: Path, agents_file: Path, workers: Workers
) -> None:
    # A private cluster: restarting the shared server would break every other test using it.
    cluster = PrivateCluster()
    cluster.init()
    cluster.start()
    try:
        _run_through_a_restart(tmp_path, agents_file, workers, cluster)
    finally:
        workers.stop_all()
        cluster.remove()


def _run_through_a_restart(
    tmp_path: Path, agents_file: Path, workers: Workers, cluster: PrivateCluster
) -> None:
    postgres_url = cluster.url
    n = 400
    log = tmp_path / "w.log"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    workers.start(
        "--app", str(agents_file), "--store", postgres_url, "-c", "20", env={"STEP_LOG": str(log)}
    )
    run = start_legion(
        "run",
        f"{agents_file}:work",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        postgres_url,
        "--no-local-worker",
    )
    wait_for(lambda: len(lines(log)) >= 150, what="the run to get going")
    cluster.stop()
    cluster.start()
    _, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    rows = read_jsonl(out)
    assert len(rows) == n and {r["status"] for r in rows} == {"succeeded"}


def test_a_run_without_a_local_worker_says_when_no_worker_serves_its_agent(
    tmp_path: Path, agents_file: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": 1}])
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    run = start_legion(
        "run", f"{agents_file}:work", "-i", str(inp), "--store", store, "--no-local-worker"
    )
    try:
        assert run.stderr is not None
        said = []
        for line in run.stderr:  # the run waits for a worker: it says so, then keeps waiting
            said.append(line)
            if "no live worker serves agent 'work'" in line:
                break
        else:
            raise AssertionError("".join(said))
        assert f"--store {store}" in said[-1]
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
        assert run.returncode == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def test_a_run_without_a_local_worker_says_when_its_last_worker_goes(
    tmp_path: Path, workers: Workers
) -> None:
    """The only worker exits (a budget spent, a deploy) while the run waits for results:
    the run waited on in silence, a hang to its user. It now says that no worker serves
    its agent any more, and goes on waiting (a new worker would run the tasks)."""
    app = tmp_path / "hold.py"
    app.write_text(
        "import asyncio, os\nimport legion\n\n\n@legion.agent(timeout=600)\n"
        "async def hold(ctx, i: int):\n"
        "    with open(os.environ['STEP_LOG'], 'a') as f:\n"
        "        f.write(f'{i}\\n')\n"
        "    await asyncio.Event().wait()\n"
    )
    log = tmp_path / "steps.log"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    worker = workers.start(
        "--app", str(app), "--store", store, "--drain-timeout", "0", env={"STEP_LOG": str(log)}
    )
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": 1}])
    run = start_legion("run", f"{app}:hold", "-i", str(inp), "--store", store, "--no-local-worker")
    try:
        wait_for(lambda: lines(log) == ["1"], what="the worker to run the task")
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
        assert run.stderr is not None
        said = []
        for line in run.stderr:
            said.append(line)
            if "no live worker serves agent 'hold'" in line:
                break
        else:
            raise AssertionError("".join(said))
        assert "any more" in said[-1] and f"--store {store}" in said[-1], said
        assert not any(" yet:" in line for line in said), said  # the worker served at first
        assert run.poll() is None  # still waiting: a worker started now would run the task
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()


def test_a_worker_process_whose_supervisor_died_before_it_started_does_not_start(
    tmp_path: Path, agents_file: Path
) -> None:
    """A supervisor killed while its worker process is still starting: the kernel cannot
    tell the worker (it had not asked yet), so the worker sees that its parent is no
    longer the supervisor that started it and exits instead of serving, orphaned, forever.
    (Here the parent is this test, and the supervisor named a process that has exited.)"""
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    gone = subprocess.Popen(["true"])  # a supervisor that has exited
    gone.wait()
    orphan = legion(
        "worker",
        "--app",
        str(agents_file),
        "--store",
        store,
        "--worker-process",
        env={"LEGION_SUPERVISOR_PID": str(gone.pid)},
        timeout=60,
    )
    assert orphan.returncode == 0, orphan.stderr
    assert "the supervisor is gone; not starting" in orphan.stderr
    assert not (tmp_path / "runs.db").exists()  # it never opened the store


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def test_a_supervisor_signalled_while_it_starts_its_processes_stops_them_all(
    tmp_path: Path, agents_file: Path
) -> None:
    """SIGTERM as soon as the first worker process exists: the supervisor used to go on
    starting the others, which never heard of the signal and served on."""
    store = f"sqlite:///{tmp_path / 'w.db'}"
    supervisor = start_legion("worker", "-a", str(agents_file), "-s", store, "--processes", "12")
    try:
        deadline = time.monotonic() + 60
        while not _children(supervisor.pid) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert _children(supervisor.pid), "no worker process started"
        supervisor.send_signal(signal.SIGTERM)
        supervisor.communicate(timeout=120)
    finally:
        if supervisor.poll() is None:
            for child in _children(supervisor.pid):
                os.kill(child, signal.SIGKILL)
            supervisor.kill()
            supervisor.communicate()
    assert supervisor.returncode is not None


def test_a_supervisor_refuses_far_more_processes_than_cores(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'w.db'}"
    r = legion("worker", "-a", str(agents_file), "-s", store, "--processes", "100000")
    assert r.returncode == 2
    assert r.stderr.startswith("error: --processes 100000 is far more than this machine's")
    assert "Traceback" not in r.stderr


def test_a_worker_logs_json_lines_only_with_log_format_json(
    tmp_path: Path, agents_file: Path
) -> None:
    # The worker's own messages (serving, draining, stopped) came as plain text among the
    # JSON lines, and a task that died was not logged at all.
    store = f"sqlite:///{tmp_path / 'w.db'}"
    env = {"STEP_LOG": str(tmp_path / "steps.log")}
    proc = start_legion("worker", "-a", str(agents_file), "--store", store, "--log-format", "json")
    try:
        assert proc.stderr is not None
        first = json.loads(proc.stderr.readline())  # once it serves
        assert first["logger"] == "legion.console" and "serving" in first["message"]
        inp = write_jsonl(tmp_path / "in.jsonl", [{"i": 1}])
        ran = legion(
            "run", f"{agents_file}:doomed", "-i", str(inp), "--store", store,
            "--no-local-worker", "--no-progress", env=env,
        )  # fmt: skip
        assert ran.returncode == 1, ran.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    said = [line["message"] for line in lines if line["logger"] == "legion.console"]
    assert said[0] == f"SIGTERM: draining (pid {proc.pid})"
    assert said[-1].endswith("0 retried, 0 released")
    (dead,) = (line for line in lines if line["logger"] == "legion.tasks")
    assert dead["level"] == "warning" and dead["outcome"] == "dead" and dead["agent"] == "doomed"
    assert dead["message"].endswith("dead after attempt 1: RuntimeError: doomed 1")


def test_a_worker_process_an_agent_exits_with_0_is_started_again(tmp_path: Path) -> None:
    # Exit 0 read as "drained": the supervisor exited 0 without a word, and every task
    # the worker held stayed running with nobody to run it.
    agents = tmp_path / "exiter.py"
    agents.write_text(
        "import os\n\nimport legion\n\n\n@legion.agent(retries=2, backoff=0)\n"
        "async def exiter(ctx, n: int):\n    if n == 0 and ctx.attempt == 1:\n"
        "        os._exit(0)\n    return n\n"
    )
    store = f"sqlite:///{tmp_path / 'x.db'}"
    supervisor = start_legion(
        "worker", "-a", str(agents), "-s", store, "--processes", "1", "--lease-seconds", "3"
    )
    try:
        inp = write_jsonl(tmp_path / "in.jsonl", [{"n": i} for i in range(3)])
        ran = legion(
            "run", f"{agents}:exiter", "-i", str(inp), "-s", store, "--no-local-worker",
            "--no-progress", timeout=120,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert [json.loads(line)["output"] for line in ran.stdout.splitlines()] == [0, 1, 2]
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=120)
    assert "exited with 0 though nothing asked it to stop" in err


def test_a_worker_serves_a_plain_async_function_named_as_legion_run_names_it(
    tmp_path: Path,
) -> None:
    # `legion run undec.py:hello` ran a plain `async def`, but no worker could serve the
    # tasks it queued: `legion worker --app undec.py` refused the file (no decorated agent).
    (tmp_path / "undec.py").write_text(
        "async def hello(ctx, name: str):\n    return 'hi ' + name\n"
    )
    app = str(tmp_path / "undec.py")
    store = f"sqlite:///{tmp_path / 'plain.db'}"
    refused = legion("worker", "--app", app, "--store", store)
    assert refused.returncode == 2
    assert f"or name one: --app {app}:hello" in refused.stderr, refused.stderr
    inp = write_jsonl(tmp_path / "in.jsonl", [{"name": "ana"}])
    out = tmp_path / "out.jsonl"
    run = start_legion(
        "run", f"{app}:hello", "-i", str(inp), "-o", str(out), "--store", store, "--no-local-worker"
    )
    worker = start_legion("worker", "--app", f"{app}:hello", "--store", store)
    try:
        run.communicate(timeout=120)
        assert run.returncode == 0
        assert [row["output"] for row in read_jsonl(out)] == ["hi ana"]
    finally:
        for proc in (run, worker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)


def test_a_supervised_worker_whose_agent_file_changed_is_started_again_on_the_new_code(
    tmp_path: Path,
) -> None:
    # A deploy wrote new code over the agent's file under `legion worker --processes`:
    # the worker stopped (its children refuse other code than the worker's) with exit
    # code 2, after which the supervisor starts no other, and nothing served the store.
    app = tmp_path / "deployed.py"
    code = "import legion\n\n@legion.agent(executor='process')\nasync def which(ctx, n: int):\n"
    app.write_text(code + "    return 'v1'\n")
    store = f"sqlite:///{tmp_path / 'deploy.db'}"
    supervisor = start_legion(
        "worker",
        "--app",
        str(app),
        "--processes",
        "1",
        "--store",
        store,
        env={"PYTHONUNBUFFERED": "1"},  # (its lines as they are written)
    )
    try:
        assert supervisor.stderr is not None
        for line in supervisor.stderr:  # (its worker serves: the code it loaded is v1)
            if "serving which" in line:
                break
        app.write_text(code + "    return 'v2'\n")
        inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
        out = tmp_path / "out.jsonl"
        run = legion(
            "run",
            f"{app}:which",
            "-i",
            str(inp),
            "-o",
            str(out),
            "--store",
            store,
            "--no-local-worker",
        )
        assert run.returncode == 0, run.stderr
        (row,) = read_jsonl(out)
        assert row["output"] == "v2" and row["attempts"] == 1  # (the refusal spent none)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=60)
    assert "changed since its worker started" in err, err
    assert "exited with 6 (its agent's file changed: the new worker runs the new code)" in err


def test_a_supervised_worker_whose_agent_file_is_gone_for_a_moment_is_started_again(
    tmp_path: Path,
) -> None:
    """A deploy that moved the agent's file away for a moment: the worker exited 6, the
    supervisor started another, which could not load the file (exit 2) and stopped the
    fleet for good; the file back 12 s later, 3 tasks stayed queued with nothing to run
    them. Another is now started again while the file is away, after a change."""
    app = tmp_path / "deployed.py"
    app.write_text(
        "import legion\n\n@legion.agent(executor='process')\nasync def which(ctx, n: int):\n"
        "    return 'v1'\n"
    )
    away = tmp_path / "deployed.py.away"
    store = f"sqlite:///{tmp_path / 'deploy.db'}"
    supervisor = start_legion(
        "worker", "--app", str(app), "--processes", "1", "--store", store,
        env={"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    out = tmp_path / "out.jsonl"
    run = None
    try:
        assert supervisor.stderr is not None
        seen = []
        for line in supervisor.stderr:  # (its worker serves the code it loaded)
            seen.append(line)
            if "serving which" in line:
                break
        client = tmp_path / "client.py"  # (the submitter's copy: it names the agent)
        client.write_text(app.read_text())
        app.rename(away)
        run = start_legion(
            "run", f"{client}:which", "-i", str(inp), "-o", str(out),
            "--store", store, "--no-local-worker",
        )  # fmt: skip
        for line in supervisor.stderr:  # (the new worker cannot load it: started again)
            seen.append(line)
            if "cannot be loaded yet" in line:
                break
        away.rename(app)
        _, run_err = run.communicate(timeout=120)
        assert run.returncode == 0, run_err
        (row,) = read_jsonl(out)
        assert row["output"] == "v1"
    finally:
        for proc in (run, supervisor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=60)
    said = "".join(seen) + err
    assert "was removed (or cannot be read) since its worker started" in said, said
    assert "exited with 2 (its agent's file changed moments ago" in said, said


def test_a_worker_whose_memory_an_agent_keeps_is_started_afresh(tmp_path: Path) -> None:
    # Past --max-memory, a worker stopped leasing "until it recovers"; memory an agent
    # keeps (a leak) never goes, and the worker sat idle for good with tasks queued. With
    # nothing left running, it now exits (8), and its supervisor starts a fresh one.
    agents = tmp_path / "leaky.py"
    agents.write_text(
        "import legion\n\nKEPT = []\n\n\n@legion.agent\n"
        "async def leaky(ctx, n: int):\n    KEPT.append(b'x' * 150_000_000)\n    return n\n"
    )
    store = f"sqlite:///{tmp_path / 'x.db'}"
    supervisor = start_legion(
        "worker", "-a", str(agents), "-s", store, "--processes", "1", "--concurrency", "1",
        "--max-memory", "400",
    )  # fmt: skip
    try:
        inp = write_jsonl(tmp_path / "in.jsonl", [{"n": i} for i in range(6)])
        ran = legion(
            "run", f"{agents}:leaky", "-i", str(inp), "-s", store, "--no-local-worker",
            "--no-progress", timeout=120,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert [json.loads(line)["output"] for line in ran.stdout.splitlines()] == list(range(6))
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=120)
    assert "with no task running (memory an agent keeps, or a leak)" in err
    assert "exited with 8 (its memory stayed past --max-memory with no task running)" in err


def test_a_run_with_a_budget_says_when_other_workers_serve_its_agent(
    tmp_path: Path, agents_file: Path, workers: Workers
) -> None:
    """A run's --max-calls holds the calls its own process makes: the fleet's workers on
    the same store took most of its tasks, and a run of 300 one-call tasks under
    --max-calls 100 paid for 300, exit 0, without a word."""
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    workers.start("--app", str(agents_file), "--store", store, env={"STEP_LOG": "/dev/null"})
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(20)])
    run = ["run", f"{agents_file}:work", "-i", str(inp), "--store", store]
    r = legion(*run, "--max-calls", "100", env={"STEP_LOG": "/dev/null"}, timeout=120)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert "warning: 1 other live worker(s) on this store serve agent 'work'" in said, said
    assert "give each `legion worker` its own --max-cost/--max-tokens/--max-calls" in said
    other = write_jsonl(tmp_path / "other.jsonl", [{"i": i} for i in range(20, 40)])
    run[3] = str(other)
    plain = legion(*run, env={"STEP_LOG": "/dev/null"}, timeout=120)  # no budget: no word
    assert plain.returncode == 0 and "other live worker" not in plain.stderr
