"""``legion worker`` started while its database is down: it waits, saying so, and serves
once the database starts, or stops cleanly on SIGTERM while it waits; it gives up after
``--store-wait`` (exit 3, which the supervisor answers by starting it again); refused
credentials stop it at once."""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, read_jsonl, start_legion, wait_for, write_jsonl
from tests.pg_cluster import PrivateCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster, initialised but not started."""
    c = PrivateCluster()
    c.init()
    yield c
    c.remove()


def read_until(proc: subprocess.Popen[str], text: str) -> list[str]:
    """Lines of the process's stderr up to the first one containing ``text``."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"the process ended before saying {text!r}: {''.join(seen)}")


def test_a_worker_started_before_its_database_waits_then_runs_tasks(
    tmp_path: Path, agents_file: Path, cluster: PrivateCluster
) -> None:
    log = tmp_path / "steps.log"
    worker = start_legion(
        "worker",
        "--app",
        str(agents_file),
        "--store",
        cluster.url,
        "--store-wait",
        "300",
        "-c",
        "20",
        env={"STEP_LOG": str(log)},
    )
    try:
        waiting = read_until(worker, "the store is unavailable (try 1)")
        assert "trying again in" in waiting[-1]
        cluster.start()
        read_until(worker, "serving")
        n = 50
        inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(n)])
        out = tmp_path / "out.jsonl"
        run = legion(
            "run",
            f"{agents_file}:work",
            "-i",
            str(inp),
            "-o",
            str(out),
            "--store",
            cluster.url,
            "--no-local-worker",
        )
        assert run.returncode == 0, run.stderr
        rows = read_jsonl(out)
        assert len(rows) == n and {r["status"] for r in rows} == {"succeeded"}
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "stopped after 50 succeeded" in err
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def test_a_database_restarted_while_the_worker_starts_is_waited_out(
    tmp_path: Path, agents_file: Path, cluster: PrivateCluster
) -> None:
    """Lost between the store's open and the worker's start (the pool's connections
    ended by a restart), the store is opened again within --store-wait: a plain worker
    exited 3 at once ("the store failed")."""
    cluster.start()
    worker = start_legion(
        "worker",
        "--app",
        str(agents_file),
        "--store",
        cluster.url,
        "--store-wait",
        "300",
        env={"LEGION_FAULT": "store-opened:stop", "STEP_LOG": str(tmp_path / "s.log")},
    )
    try:
        read_until(worker, "fault store-opened:stop")
        state = Path(f"/proc/{worker.pid}/stat")
        wait_for(lambda: state.read_text().rsplit(")", 1)[1].split()[0] == "T", what="stopped")
        cluster.stop()  # (the store's connections end)
        cluster.start()
        worker.send_signal(signal.SIGCONT)
        said = read_until(worker, "serving")
        assert any("the store failed while the worker started" in line for line in said), said
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def test_a_worker_stopped_while_it_waits_for_its_database_exits_cleanly(
    agents_file: Path, cluster: PrivateCluster
) -> None:
    """A supervisor's SIGTERM can come at any moment of a worker's start: the stop signals
    are handled before the store is opened, so the worker ends with 0, not killed by it."""
    worker = start_legion(
        "worker", "--app", str(agents_file), "--store", cluster.url, "--store-wait", "300"
    )
    try:
        read_until(worker, "the store is unavailable (try 1)")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "SIGTERM: draining" in err
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def test_the_supervisor_restarts_a_worker_that_gave_up_on_the_store(
    tmp_path: Path, agents_file: Path, cluster: PrivateCluster
) -> None:
    supervisor = start_legion(
        "worker",
        "--app",
        str(agents_file),
        "--store",
        cluster.url,
        "--store-wait",
        "0.5",
        "--processes",
        "1",
        env={"STEP_LOG": str(tmp_path / "steps.log")},
    )
    try:
        gave_up = read_until(supervisor, "exited with 3")
        assert any("still unavailable" in line for line in gave_up), gave_up
        assert "(the store stayed unavailable); starting another" in gave_up[-1]
        cluster.start()
        read_until(supervisor, "serving")
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=60)
        assert supervisor.returncode == 0, err
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()


def test_a_worker_refused_by_the_database_stops_at_once(
    agents_file: Path, cluster: PrivateCluster
) -> None:
    cluster.start()
    url = cluster.url.replace("postgres@", "nobody@")
    out = legion("worker", "--app", str(agents_file), "--store", url, "--store-wait", "300")
    assert out.returncode == 2, out.stderr
    assert "refused the connection" in out.stderr and "nobody" in out.stderr
    assert "unavailable" not in out.stderr
    bad = legion("worker", "--app", str(agents_file), "--store", "mysql://db/x")
    assert bad.returncode == 2 and "unknown store URL" in bad.stderr


def test_a_command_against_a_database_that_is_down_says_so_on_one_line(
    cluster: PrivateCluster,
) -> None:
    """libpq's message runs over two lines ("Connection refused", then "Is the server
    running...?"); every command prints a store's error as one."""
    out = legion("status", "--store", cluster.url)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: cannot connect to {cluster.url}: "), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr


def test_a_server_started_before_its_database_waits_then_serves(
    agents_file: Path, cluster: PrivateCluster
) -> None:
    """As a worker does: a serve pod that starts before its database no longer exits at
    once (code 2, read as "a restart would not mend") but waits, then serves."""
    server = start_legion(
        "serve", "--app", str(agents_file), "--store", cluster.url, "--port", "0", "--no-worker"
    )
    try:
        read_until(server, "the store is unavailable (try 1)")
        cluster.start()
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "listening on " in line, line
        url = line.split("listening on ", 1)[1].split()[0]
        with urllib.request.urlopen(f"{url}/healthz", timeout=30) as resp:
            assert resp.status == 200
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
        assert server.returncode == 0, err
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def test_a_server_gives_up_on_the_store_with_code_3(
    agents_file: Path, cluster: PrivateCluster
) -> None:
    out = legion("serve", "--app", str(agents_file), "--store", cluster.url, "--store-wait", "0.5")
    assert out.returncode == 3, out.stderr
    assert "still unavailable" in out.stderr.splitlines()[-1]


def test_a_run_whose_database_goes_away_stops_after_store_wait_and_resumes(
    tmp_path: Path, agents_file: Path, cluster: PrivateCluster
) -> None:
    # It ran for ever (its writes retried while the store was away, a Ctrl-C's drain too).
    cluster.start()
    log, out = tmp_path / "steps.log", tmp_path / "out.jsonl"
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(200)])
    command = ("run", f"{agents_file}:slow", "-i", str(inputs), "-o", str(out))
    options = ("--store", cluster.url, "-c", "10", "--store-wait", "3", "--no-progress")
    run = start_legion(*command, *options, env={"STEP_LOG": str(log)})
    try:
        wait_for(lambda: log.exists() and len(log.read_text().split()) >= 20, what="tasks run")
        cluster.stop("immediate")
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 5, err
    assert "the store has not answered for 3 s (--store-wait): the run stops" in err
    assert f"results written so far in {out}.partial" in err
    cluster.start()
    again = legion(*command, *options, env={"STEP_LOG": str(log)}, timeout=300)
    assert again.returncode == 0, again.stderr
    results = read_jsonl(out)
    assert [r["line"] for r in results] == list(range(1, 201))
    assert all(r["status"] == "succeeded" for r in results)
    ran = {line.split(":")[0] for line in log.read_text().split()}
    assert len(ran) == 200  # every task ran (some twice: those running when it stopped)


def test_a_run_started_before_its_database_waits_then_runs_every_line(
    tmp_path: Path, agents_file: Path, cluster: PrivateCluster
) -> None:
    """It exited 2 at once, as if refused, where a worker beside it waited: a submitter
    started while a fleet's workers fill the server (at its max_connections), or while
    the database restarts, failed while everything else went on."""
    log, out = tmp_path / "steps.log", tmp_path / "out.jsonl"
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(20)])
    run = start_legion(
        "run",
        f"{agents_file}:work",
        "-i",
        str(inputs),
        "-o",
        str(out),
        "--store",
        cluster.url,
        "--no-progress",
        env={"STEP_LOG": str(log)},
    )
    try:
        waiting = read_until(run, "the store is unavailable (try 1)")
        assert "trying again in" in waiting[-1] and "giving up in 300s" in waiting[-1]
        cluster.start()
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    results = read_jsonl(out)
    assert [r["status"] for r in results] == ["succeeded"] * 20


def test_a_run_gives_up_on_a_store_that_never_answers_with_code_5(
    tmp_path: Path, agents_file: Path, cluster: PrivateCluster
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("")  # (the user's file: left as it was)
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"i": 1}])
    command = ("run", f"{agents_file}:work", "-i", str(inputs), "-o", str(out))
    gave_up = legion(*command, "--store", cluster.url, "--store-wait", "1")
    assert gave_up.returncode == 5, gave_up.stderr
    assert "the store is still unavailable after" in gave_up.stderr, gave_up.stderr
    assert "Traceback" not in gave_up.stderr
    assert out.read_text() == "" and not Path(f"{out}.partial").exists()
