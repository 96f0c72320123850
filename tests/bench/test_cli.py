"""``legion demo`` and ``legion bench`` as a user runs them: real subprocesses, tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.acceptance.conftest import legion

FAST_SIM = ["--latency", "0.01", "--jitter", "0", "--tokens-per-second", "100000"]


def test_demo_prints_the_comparison_and_writes_the_report(tmp_path: Path) -> None:
    report, figures = tmp_path / "demo.html", tmp_path / "demo.json"
    done = legion(
        "demo", "--tasks", "2", "--rpm", "60000", *FAST_SIM,
        "--report", str(report), "--json", str(figures),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sequential (legacy)" in done.stdout and "speed-up" in done.stdout
    assert "sequential: 2 tasks one at a time" in done.stderr  # progress
    assert report.read_text().count("<svg") == 3
    data = json.loads(figures.read_text())
    assert data["scaled"]["succeeded"] == 2 and data["ideal"]["speedup"] > 0


def test_demo_refuses_a_report_in_a_missing_folder(tmp_path: Path) -> None:
    done = legion("demo", "--report", str(tmp_path / "nowhere" / "r.html"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_bench_overhead_writes_its_results(tmp_path: Path) -> None:
    done = legion(
        "bench", "overhead", "--tasks", "100", "--repeat", "1", "--sqlite-only",
        "--out", str(tmp_path), "--no-plots",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "overhead.json").read_text())
    assert data["command"].startswith("legion bench overhead --tasks 100")
    assert "| legion, SQLite file |" in (tmp_path / "overhead.md").read_text()
    assert "| legion, SQLite file |" in done.stdout


def test_bench_lists_every_scenario() -> None:
    done = legion("bench", "--help")
    assert done.returncode == 0
    names = (
        "overhead",
        "capacity",
        "concurrency",
        "sequential-vs-scaled",
        "scale-out",
        "autoscale",
    )
    for name in names:
        assert name in done.stdout


def test_bench_writes_under_the_current_folder_by_default(tmp_path: Path) -> None:
    # Run where a clone keeps its committed tables: they are left alone.
    committed = tmp_path / "benchmarks" / "results" / "overhead.md"
    committed.parent.mkdir(parents=True)
    committed.write_text("the committed table\n")
    done = legion(
        "bench", "overhead", "--tasks", "100", "--repeat", "1", "--sqlite-only", "--no-plots",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert committed.read_text() == "the committed table\n"
    assert (tmp_path / "legion-bench" / "overhead.json").is_file()
    assert "wrote legion-bench/overhead.json" in done.stderr


def test_bench_refuses_an_out_it_cannot_write_before_it_runs(tmp_path: Path) -> None:
    precious = tmp_path / "results.txt"
    precious.write_text("a user's file\n")
    blocked = tmp_path / "ro"
    blocked.mkdir(mode=0o500)
    for out, why in (
        (precious, f"--out {precious} is a file, not a folder"),
        (precious / "sub", f"--out {precious / 'sub'}: cannot write in {precious}"),
    ):
        done = legion("bench", "overhead", "--tasks", "100", "--sqlite-only", "--out", str(out))
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {why}"), done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""  # (nothing ran)
    assert precious.read_text() == "a user's file\n"
    if not os.access(blocked, os.W_OK):  # (root may write anywhere)
        done = legion("bench", "overhead", "--sqlite-only", "--out", str(blocked / "new"))
        assert done.returncode == 2 and "cannot write in" in done.stderr, done.stderr


def test_bench_options_a_scenario_refuses_are_usage_errors(tmp_path: Path) -> None:
    for args, why in (
        (["sequential-vs-scaled", "--sizes", "-5"], "sizes and sequential_limit must be >= 1"),
        (["sequential-vs-scaled", "--sizes", ","], "sizes and sequential_limit must be >= 1"),
        (["scale-out", "--processes", "0"], "tasks, work and processes must be >= 1"),
        (["vectors", "--vectors", "100", "-k", "100"], "k (100) must be below the number"),
    ):
        done = legion("bench", *args, "--out", str(tmp_path))
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith(f"error: {why}"), (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_measurement_that_fails_in_its_child_is_said_once_without_a_traceback() -> None:
    script = (
        "import asyncio, operator\n"
        "from legion.bench.child import in_child\n"
        "try:\n"
        "    asyncio.run(in_child(operator.truediv, 1, 0))\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.stdout == "truediv: ZeroDivisionError: division by zero\n", done
    assert "Traceback" not in done.stderr, done.stderr


def _children(pid: int) -> list[tuple[int, str]]:
    """The processes whose parent is ``pid``, with their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def _schemas(postgres_server: str) -> set[str]:
    import psycopg

    with psycopg.connect(postgres_server) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'legion_bench_%'"
        ).fetchall()
    return {name for (name,) in rows}


def test_sigterm_stops_a_scale_out_run_with_its_workers_and_schema(
    tmp_path: Path, postgres_server: str
) -> None:
    """SIGTERM (a `timeout`, a CI's cancel) left the run's `legion worker` processes
    running for good, its PostgreSQL schema and its temporary folder; Ctrl-C did not."""
    import signal

    before = _schemas(postgres_server)
    run = subprocess.Popen(
        [
            sys.executable, "-m", "legion", "bench", "scale-out", "--tasks", "3000",
            "--work", "1000", "--processes", "1", "--postgres", postgres_server,
            "--out", str(tmp_path), "--no-plots",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    try:
        workers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 120
        while not workers and time.monotonic() < deadline:  # polled: no event to wait on
            workers = [c for c in _children(run.pid) if " worker " in c[1]]
            time.sleep(0.05)
        assert workers, "no worker process started"
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 143, err
    assert "Traceback" not in err, err
    for pid, _ in workers:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
        ), f"worker {pid} still runs"
    assert _schemas(postgres_server) == before
    assert [p.name for p in tmp_path.iterdir()] == [], list(tmp_path.iterdir())


def test_a_postgres_password_goes_into_no_result_file(tmp_path: Path) -> None:
    """`--postgres postgresql://u:SECRET@...` was written to NAME.json (options, command)
    and NAME.md, files made to be committed."""
    from legion.bench.results import BenchResult, write_result

    url = "postgresql://postgres:S3cretPW@127.0.0.1/db?sslpassword=K3y"
    result = BenchResult(
        "x",
        "a title",
        {"options": {"postgres": url}},
        notes=[f"PostgreSQL left out: {url} has no pgvector"],
        command=f"legion bench steps --postgres {url} --postgres={url}",
    )
    assert "S3cretPW" not in result.markdown()
    for path in write_result(result, tmp_path, plots=False):
        text = path.read_text()
        assert "S3cretPW" not in text and "K3y" not in text, text
        assert "postgresql://postgres:***@127.0.0.1/db" in text


def test_a_postgresql_server_that_cannot_be_reached_is_said_with_what_the_command_offers(
    tmp_path: Path,
) -> None:
    """scale-out named --sqlite-only, which it does not take (it is all on PostgreSQL), and
    said so only after its SQLite leg had run; `all` named it too, without taking it."""
    from tests.pg_cluster import free_port

    away = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    out = tmp_path / "out"
    scale = legion("bench", "scale-out", "--tasks", "20", "--postgres", away, "--out", str(out))
    assert scale.returncode == 2, scale.stderr
    assert "cannot reach PostgreSQL at" in scale.stderr, scale.stderr
    assert "--sqlite-only" not in scale.stderr and "--postgres names a server" in scale.stderr
    assert "scale-out: SQLite" not in scale.stderr  # (checked before its SQLite leg)
    overhead = legion("bench", "overhead", "--tasks", "20", "--postgres", away, "--out", str(out))
    assert overhead.returncode == 2 and "(--sqlite-only skips the PostgreSQL runs)" in (
        overhead.stderr
    ), overhead.stderr
    assert "--sqlite-only" in legion("bench", "all", "--help").stdout
    assert not out.exists()


def test_a_vector_bench_says_its_postgresql_server_could_not_be_reached() -> None:
    """It fell back to a private server (or left PostgreSQL out) as if the one named had no
    pgvector."""
    import psycopg

    from legion.bench.vectors import _has_pgvector
    from tests.pg_cluster import free_port

    notes: list[str] = []
    url = f"postgresql://postgres:S3cret@127.0.0.1:{free_port()}/x"
    assert not _has_pgvector(psycopg, url, notes)
    (note,) = notes
    assert note.startswith("PostgreSQL at postgresql://postgres:***@127.0.0.1:"), note
    assert "could not be reached" in note and "S3cret" not in note


def test_a_bench_without_matplotlib_says_on_the_terminal_that_its_plots_were_skipped(
    tmp_path: Path,
) -> None:
    """The note was only in NAME.md, below the table the terminal showed."""
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # (not installed)\n"
        "from legion.cli import main\n"
        "sys.argv = ['legion', 'bench', 'concurrency', '--instances', '50', '--delay', '0.01',"
        f" '--out', {str(tmp_path)!r}]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "plots skipped: matplotlib is not installed" in done.stderr, done.stderr
    assert not list(tmp_path.glob("*.png"))
