"""``legion run``, ``status`` and ``retry`` as subprocesses, against real SQLite files (and
an empty PostgreSQL schema)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest

import legion as lg
from legion import __version__
from legion.loader import load_agent
from legion.run.runtime import Runtime
from legion.store.queries import migrations
from legion.task import TaskStatus
from tests.acceptance.conftest import (
    LEGION,
    legion,
    read_jsonl,
    start_legion,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow


def test_run_writes_one_line_per_input_and_resumes(tmp_path: Path, agents_file: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(30)])
    out = tmp_path / "out.jsonl"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {"STEP_LOG": str(tmp_path / "steps.log")}
    first = legion(
        "run", f"{agents_file}:work", "-i", str(inp), "-o", str(out), "--store", store, env=env
    )
    assert first.returncode == 0, first.stderr
    rows = read_jsonl(out)
    assert [r["line"] for r in rows] == list(range(1, 31))
    assert all(r["status"] == "succeeded" for r in rows)
    assert rows[4]["output"] == ["a", "b1", "b2", 4]
    assert len({r["key"] for r in rows}) == 30
    assert "30 succeeded" in first.stderr
    executed = (tmp_path / "steps.log").read_text().splitlines()
    assert len(executed) == 90

    again = legion(
        "run", f"{agents_file}:work", "-i", str(inp), "-o", str(out), "--store", store, env=env
    )
    assert again.returncode == 0, again.stderr
    assert "30 finished in an earlier run" in again.stderr
    assert "(0 ran now: 0 tasks/s" in again.stderr  # (not a rate of what ran before)
    assert read_jsonl(out) == rows
    assert (tmp_path / "steps.log").read_text().splitlines() == executed  # nothing ran again


def test_an_output_that_is_not_a_runs_output_is_refused_not_replaced(
    tmp_path: Path, agents_file: Path
) -> None:
    """A mistyped --output replaced whatever file it named, without a word."""
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    notes = tmp_path / "notes.txt"
    notes.write_text("PRECIOUS\n")
    store = f"sqlite:///{tmp_path / 'db'}"
    args = ("run", f"{agents_file}:typed", "-i", str(inp), "--store", store)
    refused = legion(*args, "-o", str(notes))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: cannot write {notes}: it is not the output of a legion run (its first line "
        "is not a result), and the results would replace it: give another --output, or "
        "remove the file first"
    )
    assert notes.read_text() == "PRECIOUS\n"
    empty = tmp_path / "empty.jsonl"
    empty.touch()  # (an empty file holds nothing to lose)
    assert legion(*args, "-o", str(empty)).returncode == 0
    assert read_jsonl(empty)[0]["status"] == "succeeded"


def test_bad_lines_are_reported_and_the_rest_still_run(tmp_path: Path, agents_file: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"n": 1}\n{"n": 2\n\n5\n{"n": "three"}\n')
    out = tmp_path / "out.jsonl"
    r = legion(
        "run",
        f"{agents_file}:typed",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        f"sqlite:///{tmp_path / 'db'}",
    )
    assert r.returncode == 1
    rows = {row["line"]: row for row in read_jsonl(out)}
    assert sorted(rows) == [1, 2, 4, 5]  # the blank line 3 is no input
    assert rows[1]["output"] == 2 and rows[4]["output"] == 6
    assert (
        rows[2]["status"] == "failed" and "line 2 is not valid JSON" in rows[2]["error"]["message"]
    )
    assert rows[5]["status"] == "failed" and rows[5]["error"]["type"] == "InputError"
    assert "n: Input should be a valid integer" in rows[5]["error"]["message"]
    assert f"{inp}:2" in r.stderr


def test_a_file_of_many_bad_lines_says_twenty_and_counts_the_rest(
    tmp_path: Path, agents_file: Path
) -> None:
    """A file of the wrong kind printed one "skipped" line per line: 20,000 of them."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(f"not json {i}\n" for i in range(30)))
    out = tmp_path / "out.jsonl"
    store = f"sqlite:///{tmp_path / 'db'}"
    r = legion("run", f"{agents_file}:typed", "-i", str(inp), "-o", str(out), "--store", store)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count(f"skipped {inp}:") == 20
    assert "... and 10 more lines skipped (each with its error in the output)" in r.stderr
    assert len(read_jsonl(out)) == 30


def test_a_priority_the_store_cannot_hold_fails_its_line_alone(
    tmp_path: Path, agents_file: Path
) -> None:
    """A ``"_priority"`` past a 32-bit integer (what PostgreSQL keeps, and what the HTTP
    API takes) is that line's error: not a traceback, not a run stopped for every line."""
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        '{"n": 1}\n{"n": 2, "_priority": 2147483648}\n'
        '{"n": 3, "_priority": 18446744073709551615}\n{"n": 4, "_priority": -2147483648}\n'
    )
    out = tmp_path / "out.jsonl"
    store = f"sqlite:///{tmp_path / 'db'}"
    r = legion("run", f"{agents_file}:typed", "-i", str(inp), "-o", str(out), "--store", store)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1
    rows = {row["line"]: row for row in read_jsonl(out)}
    assert rows[1]["output"] == 2 and rows[4]["output"] == 5
    for line in (2, 3):
        assert rows[line]["status"] == "failed"
        assert rows[line]["error"]["message"] == (
            f'line {line}: "_priority" must be an integer from -2,147,483,648 to 2,147,483,647'
        )


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("missing.py:work", "no such file: missing.py"),
        ("{agents}:nothing", "has no attribute 'nothing'"),
        ("{agents}", "name one, "),  # (a file of several agents; of one: that one)
        ("no.such.module:work", "cannot import no.such.module: ModuleNotFoundError"),
        ("{broken}:work", "cannot import"),
        ("{exits}:work", "cannot import exits.py: it called sys.exit(0) while being imported"),
        ("{nul}:work", "cannot import nul.py: syntax error: source code string cannot contain"),
        ("{twins}:b", "two different agents of twins.py are named 'a'"),
    ],
)
def test_an_agent_that_does_not_load_gives_one_clear_line(
    tmp_path: Path, agents_file: Path, ref: str, message: str
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import legion\nthis is not python\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")  # exited 0, silently
    (tmp_path / "nul.py").write_bytes(b"x = 1\x00\n")  # "syntax error at line None"
    (tmp_path / "twins.py").write_text(  # b's tasks were answered by a's earlier results
        "import legion\n\n@legion.agent\nasync def a(ctx, x: int):\n    return 1\n\n"
        "@legion.agent(name='a')\nasync def b(ctx, x: int):\n    return 2\n"
    )
    inp = write_jsonl(tmp_path / "in.jsonl", [1])
    r = legion(
        "run",
        ref.format(
            agents=agents_file, broken=broken, exits="exits.py", nul="nul.py", twins="twins.py"
        ),
        "-i",
        str(inp),
        "--store",
        f"sqlite:///{tmp_path / 'db'}",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in r.stderr


def test_a_data_file_given_as_the_agent_is_refused_as_not_python(
    tmp_path: Path, agents_file: Path
) -> None:
    # The arguments swapped: the input file where the agent goes.
    write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    store = f"sqlite:///{tmp_path / 'db'}"
    for ref in ("in.jsonl:typed", f"{tmp_path / 'in.jsonl'}:typed"):
        r = legion("run", ref, "-i", "in.jsonl", "--store", store, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        file = ref.removesuffix(":typed")
        assert r.stderr.strip() == (
            f"error: {file} is not a Python file: give the agent as FILE.py:NAME or "
            "package.module:NAME"
        )
    w = legion("worker", "--app", "in.jsonl", "--store", store, cwd=tmp_path)
    assert w.returncode == 2
    assert w.stderr.strip() == (
        "error: in.jsonl is not a Python file: give a file (app.py) or a module (package.module)"
    )
    # A module reference (agents.py, found from the working folder) still loads.
    out = tmp_path / "out.jsonl"
    ok = legion(
        "run",
        "agents:typed",
        "-i",
        "in.jsonl",
        "-o",
        str(out),
        "--store",
        store,
        cwd=agents_file.parent,
    )
    assert ok.returncode == 0, ok.stderr
    assert [row["output"] for row in read_jsonl(out)] == [2]


def test_status_shows_dead_tasks_and_retry_requeues_them(tmp_path: Path, agents_file: Path) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(4)])
    out = tmp_path / "out.jsonl"
    r = legion("run", f"{agents_file}:doomed", "-i", str(inp), "-o", str(out), "--store", store)
    assert r.returncode == 1
    assert {row["status"] for row in read_jsonl(out)} == {"dead"}
    assert read_jsonl(out)[0]["error"] == {"type": "RuntimeError", "message": "doomed 0"}

    st = legion("status", "--store", store, "--json")
    assert st.returncode == 0, st.stderr
    doc = json.loads(st.stdout)
    assert doc["counts"]["dead"] == 4
    assert doc["schema"] == migrations("sqlite")[-1][0]
    assert doc["errors"][0]["error"]["type"] == "RuntimeError"
    assert "raise RuntimeError" in doc["errors"][0]["traceback"]  # (the agent's line)
    human = legion("status", "--store", store)
    assert "doomed" in human.stdout and "RuntimeError: doomed" in human.stdout

    rq = legion("retry", "--dead", "--store", store)
    assert rq.returncode == 0 and "queued again: 4" in rq.stderr
    assert json.loads(legion("status", "--store", store, "--json").stdout)["counts"]["queued"] == 4


def test_status_of_a_missing_store_is_an_error(tmp_path: Path) -> None:
    r = legion("status", "--store", f"sqlite:///{tmp_path / 'nothing.db'}")
    assert r.returncode == 2 and "no store at" in r.stderr and "creates it" in r.stderr
    assert not (tmp_path / "nothing.db").exists()


def test_a_sqlite_file_of_something_else_is_not_taken_for_a_store(
    tmp_path: Path, agents_file: Path
) -> None:
    path = tmp_path / "customers.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    db.execute("INSERT INTO customers VALUES (1, 'ana')")
    db.commit()
    db.close()
    before = path.read_bytes()
    # `legion run` and `legion worker` added legion's tables to it beside the customers
    # (or, for a file with a table named tasks, refused it after setting WAL mode).
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    for args in (
        ["status"],
        ["cancel", "1"],
        ["signal", "1", "go"],
        ["keys", "list"],
        ["run", f"{agents_file}:work", "-i", str(inp), "-o", str(tmp_path / "out.jsonl")],
    ):
        r = legion(*args, "--store", f"sqlite:///{path}")
        assert r.returncode == 2, (args, r.stderr)
        said = f"error: no store at {path}: the file holds another program's tables (customers)"
        assert said in r.stderr, (args, r.stderr)
    assert path.read_bytes() == before  # no legion tables added, not even WAL mode set
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agents.py", "customers.db", "in.jsonl"]


def test_status_refuses_a_count_of_errors_no_store_can_take(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": "x"}])
    r = legion("run", f"{agents_file}:typed", "-i", str(inp), "-o", "/dev/null", "--store", store)
    assert r.returncode == 1  # its one task failed: an error to show
    for count in ("-1", str(2**63)):  # PostgreSQL refuses a negative LIMIT, SQLite a 2**63
        r = legion("status", "--store", store, "--errors", count)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and "Invalid value for '--errors'" in r.stderr
    for count, shown in (("0", 0), ("1", 1)):
        r = legion("status", "--store", store, "--errors", count, "--json")
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["errors"]) == shown


def test_status_retry_and_cancel_on_an_empty_postgres_schema_create_nothing(
    postgres_server: str, postgres_url: str
) -> None:
    schema = dict(parse_qsl(urlsplit(postgres_url).query))["options"].split("=", 1)[1]
    for args in (["status"], ["status", "--json"], ["retry", "--dead"], ["cancel", "1"]):
        r = legion(*args, "--store", postgres_url)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.strip() == (
            f"error: no store at {postgres_url}: schema '{schema}' has no legion tables "
            "(`legion worker`, `legion run` or `legion schedule add` with this --store "
            "creates them)"
        )
    with psycopg.connect(postgres_server) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s",
            (schema,),
        ).fetchone()
    assert found == (0,)


def test_sigkill_mid_run_then_rerun_finishes_without_rerunning_recorded_steps(
    tmp_path: Path, agents_file: Path
) -> None:
    n = 400
    db = tmp_path / "runs.db"
    store = f"sqlite:///{db}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
    # Long leases: the second run must notice that the first worker's process is gone,
    # not wait for its leases to expire.
    args = [
        "run",
        f"{agents_file}:work",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        store,
        "-c",
        "50",
        "--lease-seconds",
        "600",
    ]

    proc = start_legion(*args, env={"STEP_LOG": str(log1)})
    wait_for(
        lambda: log1.exists() and len(log1.read_text().splitlines()) >= 300,
        what="progress of the first run",
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not out.exists()

    db_now = sqlite3.connect(db)
    recorded = {f"{t}:{k}" for t, k in db_now.execute("SELECT task_id, key FROM steps")}
    running = db_now.execute("SELECT count(*) FROM tasks WHERE status = 'running'").fetchone()[0]
    db_now.close()
    assert running > 0, "the kill should catch tasks in flight"
    assert recorded, "some steps should have been recorded"

    second = legion(*args, env={"STEP_LOG": str(log2)})
    assert second.returncode == 0, second.stderr
    rows = read_jsonl(out)
    assert len(rows) == n and all(r["status"] == "succeeded" for r in rows)
    assert sorted(r["output"][3] for r in rows) == list(range(n))

    rerun = log2.read_text().splitlines()
    assert not recorded & set(rerun), "a step recorded before the kill ran again"
    db_after = sqlite3.connect(db)
    steps_per_task = Counter(t for (t,) in db_after.execute("SELECT task_id FROM steps"))
    done = db_after.execute("SELECT count(*) FROM tasks WHERE status = 'succeeded'").fetchone()[0]
    completions = db_after.execute(
        "SELECT count(*) FROM events WHERE status = 'succeeded'"
    ).fetchone()[0]
    db_after.close()
    assert done == n and completions == n  # one completion record per task
    assert set(steps_per_task.values()) == {3}


def test_sigterm_drains_running_tasks_and_loses_nothing(tmp_path: Path, agents_file: Path) -> None:
    n = 60
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(n)])
    out = tmp_path / "out.jsonl"
    log = tmp_path / "runs.log"
    args = [
        "run",
        f"{agents_file}:slow",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        store,
        "-c",
        "10",
    ]
    proc = start_legion(*args, env={"STEP_LOG": str(log)})
    wait_for(
        lambda: log.exists() and len(log.read_text().splitlines()) >= 15, what="tasks to start"
    )
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "interrupted" in err
    rows = read_jsonl(out)
    assert len(rows) == n
    statuses = Counter(r["status"] for r in rows)
    assert set(statuses) <= {"succeeded", "queued"} and statuses["succeeded"] >= 15
    # The summary counts what the file holds, the tasks that ended while draining too.
    (summary,) = [ln for ln in err.splitlines() if ln.startswith("interrupted:")]
    assert f"{statuses['succeeded']} succeeded" in summary, summary
    assert f"{statuses['queued']} unfinished" in summary or not statuses["queued"], summary

    second = legion(*args, env={"STEP_LOG": str(log)})
    assert second.returncode == 0, second.stderr
    assert all(r["status"] == "succeeded" for r in read_jsonl(out))
    runs = Counter(log.read_text().splitlines())
    assert len(runs) == n and set(runs.values()) == {1}  # drained tasks finished; none ran twice


def test_the_process_executor_isolates_a_segfault_from_the_command_line(tmp_path: Path) -> None:
    app = tmp_path / "crashy.py"
    app.write_text(
        "import ctypes\n\nimport legion\n\n\n"
        "@legion.agent(retries=0)\n"
        "async def crashy(ctx, i: int):\n"
        "    if i == 3:\n"
        "        ctypes.string_at(0)  # a segfault in the agent's own process\n"
        "    return i\n"
    )
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(8)])
    out = tmp_path / "out.jsonl"
    r = legion(
        "run",
        f"{app}:crashy",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        f"sqlite:///{tmp_path / 'db'}",
        "--executor",
        "process",
        "--pool-size",
        "2",
        "-c",
        "2",
    )
    assert r.returncode == 1, r.stderr
    rows = read_jsonl(out)
    assert [row["output"] for row in rows if row["status"] == "succeeded"] == [0, 1, 2, 4, 5, 6, 7]
    (crashed,) = [row for row in rows if row["status"] != "succeeded"]
    assert crashed["line"] == 4 and "SIGSEGV" in crashed["error"]["message"]


def test_an_agent_that_catches_its_timeout_for_ever_ends_and_the_run_exits(
    tmp_path: Path,
) -> None:
    app = tmp_path / "deaf.py"
    app.write_text(
        "import asyncio\n\nimport legion\n\n\n"
        "@legion.agent(retries=0, timeout=0.5)\n"
        "async def deaf(ctx, i: int):\n"
        "    if i % 2:\n"
        "        return i\n"
        "    while True:  # catches every cancellation and goes on\n"
        "        try:\n"
        "            await asyncio.sleep(3600)\n"
        "        except asyncio.CancelledError:\n"
        "            pass\n"
    )
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(4)])
    out = tmp_path / "out.jsonl"
    r = legion(
        *("run", f"{app}:deaf", "-i", str(inp), "-o", str(out)),
        *("--store", f"sqlite:///{tmp_path / 'db'}"),
        timeout=90,  # (it hung here: its task stayed running, and the run with it)
    )
    assert r.returncode == 1, r.stderr
    rows = read_jsonl(out)
    assert [row["status"] for row in rows] == ["dead", "succeeded", "dead", "succeeded"]
    for row in rows[::2]:
        assert row["error"]["type"] == "TaskTimeout"
        assert "ran on after it was stopped" in row["error"]["message"]
    assert r.stderr.count("abandoned") >= 2, r.stderr


def test_the_output_survives_an_agent_that_changes_folder_and_spares_its_modules(
    tmp_path: Path,
) -> None:
    (tmp_path / "helper.py").write_text("X = 1\n")
    (tmp_path / "wanders.py").write_text(
        "import asyncio\nimport os\n\nimport helper\nimport legion\n\n\n"
        "@legion.agent(retries=0)\n"
        "async def wanders(ctx, i: int):\n"
        "    os.chdir('/')  # the run's relative --output must not follow it\n"
        "    await asyncio.sleep(0)\n"
        "    return i + helper.X\n"
    )
    write_jsonl(tmp_path / "in.jsonl", [1, 2, 3])
    run = ("run", "wanders.py:wanders", "-i", "in.jsonl", "--store", "sqlite:///s.db")
    clobber = legion(*run, "-o", "helper.py", cwd=tmp_path)
    assert clobber.returncode == 2, clobber.stderr
    assert "it is the code of module 'helper'" in clobber.stderr
    assert (tmp_path / "helper.py").read_text() == "X = 1\n"
    r = legion(*run, "-o", "out.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # (it lost the results: "cannot write out.jsonl")
    assert [row["output"] for row in read_jsonl(tmp_path / "out.jsonl")] == [2, 3, 4]


def test_extra_and_missing_fields_are_named(tmp_path: Path) -> None:
    agents = tmp_path / "mapping.py"
    agents.write_text(
        "import legion\n\n"
        "@legion.agent\nasync def ask(ctx, question: str):\n    return question.upper()\n\n"
        "@legion.agent\nasync def add(ctx, a: int, b: int):\n    return a + b\n"
    )
    store = f"sqlite:///{tmp_path / 'db'}"
    inp = write_jsonl(
        tmp_path / "one.jsonl",
        [{"question": "why?", "id": 1}, {"question": "ok"}, "bare", {"q": "x"}],
    )
    out = tmp_path / "one.out.jsonl"
    r = legion("run", f"{agents}:ask", "-i", str(inp), "-o", str(out), "--store", store)
    assert r.returncode == 1, r.stderr
    rows = read_jsonl(out)
    assert rows[0]["error"]["message"] == (
        "input does not fit agent 'ask': unknown field(s) id (it takes question)"
    )
    assert [rows[1]["output"], rows[2]["output"]] == ["OK", "BARE"]
    assert rows[3]["error"]["message"] == (
        "input does not fit agent 'ask': unknown field(s) q (it takes question); "
        "missing field(s) question"
    )

    inp = write_jsonl(tmp_path / "two.jsonl", [{"a": 1, "b": 2, "id": 7}, {"a": 1}])
    out = tmp_path / "two.out.jsonl"
    r = legion("run", f"{agents}:add", "-i", str(inp), "-o", str(out), "--store", store)
    assert r.returncode == 1, r.stderr
    rows = read_jsonl(out)
    assert rows[0]["error"]["message"] == (
        "input does not fit agent 'add': unknown field(s) id (it takes a, b)"
    )
    assert rows[1]["error"]["message"] == (
        "input does not fit agent 'add': b: Field required (missing from the input)"
    )


def test_cancel_and_retry_say_why_they_did_nothing(tmp_path: Path, agents_file: Path) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}, {"n": "x"}])
    r = legion("run", f"{agents_file}:typed", "-i", str(inp), "-o", "/dev/null", "--store", store)
    assert r.returncode == 1  # task 1 succeeded, task 2 failed (its input)

    c = legion("cancel", "1", "999", "--store", store)
    assert c.returncode == 1
    assert c.stdout.splitlines() == ["1\tsucceeded", "999\tnot found"]
    assert c.stderr.splitlines() == [
        "error: task 1 succeeded; only queued, waiting or running tasks can be cancelled",
        "error: task 999 not found",
    ]

    rq = legion("retry", "1", "2", "999", "--store", store)
    assert rq.returncode == 1
    assert rq.stderr.splitlines() == [
        "error: task 1 succeeded; only dead, failed or cancelled tasks can be retried",
        "error: task 999 not found",
        "queued again: 1 task(s); run a worker (or the same `legion run`) to process them",
    ]
    ok = legion("retry", "2", "--store", store)  # queued now: nothing to do, and it says so
    assert ok.returncode == 1
    assert ok.stderr.splitlines() == [
        "error: task 2 queued; only dead, failed or cancelled tasks can be retried"
    ]
    none = legion("retry", "--dead", "--cancelled", "--agent", "typed", "--store", store)
    assert none.returncode == 0, none.stderr
    assert none.stderr == "nothing to queue again: no dead or cancelled tasks of agent 'typed'\n"
    typo = legion("retry", "--failed", "--agent", "typd", "--store", store)
    assert typo.returncode == 1
    assert "error: no tasks of agent 'typd' in the store (its agents: typed)" in typo.stderr


def test_a_task_id_no_store_can_hold_is_a_usage_error(tmp_path: Path, agents_file: Path) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    r = legion("run", f"{agents_file}:typed", "-i", str(inp), "-o", "/dev/null", "--store", store)
    assert r.returncode == 0, r.stderr
    too_big = str(2**63)  # one past a 64-bit integer, the ids' type in every store
    for args in (["signal", too_big, "go"], ["cancel", "1", too_big], ["retry", too_big]):
        refused = legion(*args, "--store", store)
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr, refused.stderr
        assert "Invalid value for 'task_id" in refused.stderr, refused.stderr
    largest = legion("cancel", str(2**63 - 1), "--store", store)
    assert largest.returncode == 1, largest.stderr
    assert largest.stderr == f"error: task {2**63 - 1} not found\n"


def queued_task(store: str, agents_file: Path) -> int:
    """A task of the ``typed`` agent, queued in ``store`` (no worker runs it)."""
    agent = load_agent(f"{agents_file}:typed")

    async def queue() -> int:
        async with Runtime(store, worker=False) as rt:
            return (await rt.submit(agent, {"n": 1})).id

    return asyncio.run(queue())


def signals_kept(store: str, task: int, n: int) -> list[bytes | None]:
    """The data of the first ``n`` signals "go" that ``task`` was sent (``None``: none)."""

    async def read() -> list[bytes | None]:
        async with Runtime(store, worker=False) as rt:
            return [await rt.store.signal_data(task, "go", i) for i in range(n)]

    return asyncio.run(read())


def test_signal_data_that_is_not_strict_json_is_refused(tmp_path: Path, agents_file: Path) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    task = queued_task(store, agents_file)
    past_64_bits = '{"amount": 123456789012345678901234567890}'  # (a float, read loosely)
    for data in ("NaN", '{"amount": Infinity}', '{"amount": 1e400}', past_64_bits):
        r = legion("signal", str(task), "go", "--data", data, "--store", store)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("error: --data is not JSON: "), r.stderr
    ok = legion("signal", str(task), "go", "--data", '{"amount": 5}', "--store", store)
    assert ok.returncode == 0, ok.stderr
    assert signals_kept(store, task, 2) == [b'{"amount":5}', None]  # JSON would have kept null


def test_signal_data_comes_from_a_file_or_standard_input(tmp_path: Path, agents_file: Path) -> None:
    """Data too large for a command line ("Argument list too long") had no way in."""
    store = f"sqlite:///{tmp_path / 'db'}"
    task = queued_task(store, agents_file)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"text": "x" * 3_000_000}, separators=(",", ":")))
    assert legion("signal", str(task), "go", "--data", f"@{big}", "--store", store).returncode == 0
    piped = legion("signal", str(task), "go", "--data", "-", "--store", store, stdin='{"n": 2}')
    assert piped.returncode == 0, piped.stderr
    first, second, third = signals_kept(store, task, 3)
    assert first == big.read_bytes() and second == b'{"n":2}' and third is None
    for data, said in [
        (f"@{tmp_path / 'missing.json'}", "error: cannot read --data @"),
        (f"@{agents_file}", f"error: the data in {agents_file} is not JSON: "),
    ]:
        refused = legion("signal", str(task), "go", "--data", data, "--store", store)
        assert refused.returncode == 2 and refused.stderr.startswith(said), refused.stderr


def test_signal_for_one_wait_keeps_nothing_unless_the_task_waits_for_it(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    task = queued_task(store, agents_file)  # queued: it waits for nothing yet
    r = legion("signal", str(task), "approval", "-d", "true", "--waiting", "1", "--store", store)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (
        f"error: task {task} does not wait for signal 'approval' number 1 now (it is queued): "
        "nothing was kept"
    )

    async def kept() -> bytes | None:
        async with Runtime(store, worker=False) as rt:
            return await rt.store.signal_data(task, "approval", 0)

    assert asyncio.run(kept()) is None


def test_cancel_stops_a_queued_task_and_is_asked_again_harmlessly(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    task = queued_task(store, agents_file)
    for _ in range(2):  # a cancelled task is cancelled: asking again is not an error
        c = legion("cancel", str(task), "--store", store)
        assert c.returncode == 0, c.stderr
        assert c.stdout.splitlines() == [f"{task}\tcancelled"]
        assert c.stderr == ""


def test_retry_queues_a_task_named_twice_or_also_matched_by_its_status_once(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    task = queued_task(store, agents_file)
    for args in ([str(task), str(task)], ["--cancelled", str(task)]):
        assert legion("cancel", str(task), "--store", store).returncode == 0
        r = legion("retry", *args, "--store", store)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stderr.splitlines() == [
            "queued again: 1 task(s); run a worker (or the same `legion run`) to process them"
        ], args


def test_a_rerun_says_how_to_run_again_what_did_not_succeed(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}, {"n": "x"}])
    args = ("run", f"{agents_file}:typed", "-i", str(inp), "-o", "/dev/null", "--store", store)
    assert legion(*args).returncode == 1  # line 2 fails
    again = legion(*args)
    assert again.returncode == 1
    assert "2 finished in an earlier run and were not run again" in again.stderr
    # Line 2's input does not fit the agent: a retry would fail it the same way.
    assert "1 of them failed on their input (InputError): fix those lines" in again.stderr
    assert "legion retry" not in again.stderr
    inp = write_jsonl(tmp_path / "doomed.jsonl", [{"i": 1}, {"i": 2}])
    doomed = ("run", f"{agents_file}:doomed", "-i", str(inp), "-o", "/dev/null", "--store", store)
    assert legion(*doomed).returncode == 1
    again = legion(*doomed)
    assert "2 of them did not succeed: `legion retry --failed" in again.stderr
    assert "on their input" not in again.stderr


def test_inputs_from_stdin_from_a_file_with_a_bom_and_a_folder_refused(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    piped = subprocess.run(
        [*LEGION, "run", f"{agents_file}:typed", "-i", "-", "--store", store, "--no-progress"],
        input='{"n": 1}\n{"n": 2}\n',
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0, piped.stderr
    assert [r["status"] for r in map(json.loads, piped.stdout.splitlines())] == ["succeeded"] * 2

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"n": 3}\n')  # as some editors save UTF-8
    r = legion("run", f"{agents_file}:typed", "-i", str(bom), "--store", store)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "succeeded"

    folder = legion("run", f"{agents_file}:typed", "-i", str(tmp_path), "--store", store)
    assert folder.returncode == 2
    assert folder.stderr.strip() == (
        f"error: cannot read {tmp_path}: it is a folder (give a JSONL file, or - for stdin)"
    )


def test_version_is_printed() -> None:
    r = legion("--version")
    assert r.returncode == 0 and r.stdout == f"legion {__version__}\n", r.stderr


def test_a_wrong_agent_name_lists_the_agents_found(tmp_path: Path, agents_file: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [1])
    r = legion("run", f"{agents_file}:nope", "-i", str(inp), "--store", "sqlite:///:memory:")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"error: {agents_file} has no attribute 'nope'; its agents: doomed, slow, typed, work"
    )
    empty = tmp_path / "plain.py"
    empty.write_text("async def helper(ctx):\n    return 1\nVALUE = 2\n")
    r = legion("run", f"{empty}:VALUE", "-i", str(inp), "--store", "sqlite:///:memory:")
    assert r.returncode == 2
    assert "defines no agent" not in r.stderr  # said once, not twice over
    assert f"{empty}:VALUE is not an agent, and {empty} defines none" in " ".join(r.stderr.split())


def test_a_store_in_this_process_alone_is_refused_where_other_processes_must_reach_it(
    tmp_path: Path, agents_file: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    memory = ["--store", "sqlite:///:memory:"]
    # Each would wait for ever: no `legion worker` can reach the run's in-memory store,
    # and nothing can submit to a worker's own.
    alone = legion("run", f"{agents_file}:typed", "-i", str(inp), "--no-local-worker", *memory)
    assert alone.returncode == 2, alone.stderr
    assert alone.stderr.startswith("error: --no-local-worker leaves the tasks to `legion worker`")
    assert alone.stdout == ""
    worker = legion("worker", "--app", str(agents_file), *memory)
    assert worker.returncode == 2, worker.stderr
    assert worker.stderr.startswith("error: legion worker needs a store that what submits")
    # An API key made in a store of its own is lost with it; a server or gateway on one
    # can have none (it used to say: make one with `legion keys create --store` that).
    for args in (
        ["serve", "--app", str(agents_file), "--port", "0"],
        ["gateway"],
        ["keys", "create"],
    ):
        r = legion(*args, *memory)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: the API keys live in the store"), (args, r.stderr)
        assert r.stdout == "", args
    run = legion("run", f"{agents_file}:typed", "-i", str(inp), "--no-progress", *memory)
    assert run.returncode == 0, run.stderr  # with its own worker, a run is whole in memory
    assert json.loads(run.stdout)["output"] == 2


def test_sim_help_is_the_commands_help() -> None:
    r = legion("sim", "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("Usage: ") and " sim [OPTIONS]" in r.stdout.splitlines()[0]
    for flag in (
        "--host", "--port", "--allow-remote", "--config", "--model", "--rpm", "--tpm",
        "--max-concurrency", "--window", "--window-seconds", "--rejected-count-against-limit",
        "--latency", "--latency-jitter", "--latency-distribution", "--tokens-per-second",
        "--min-output-tokens", "--max-output-tokens", "--error-rate", "--hang-rate",
        "--hang-seconds", "--malformed-rate", "--stall-rate", "--seed", "--api-key",
    ):  # fmt: skip
        assert f"{flag} " in r.stdout, flag
    bad = legion("sim", "--window", "weekly")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_two_lines_with_one_key_each_get_their_line(tmp_path: Path, agents_file: Path) -> None:
    inp = write_jsonl(
        tmp_path / "in.jsonl",
        [{"n": 1, "_key": "same"}, {"n": 2}, {"n": 1, "_key": "same"}, {"n": 3}],
    )
    out = tmp_path / "out.jsonl"
    store = f"sqlite:///{tmp_path / 'db'}"
    r = legion("run", f"{agents_file}:typed", "-i", str(inp), "-o", str(out), "--store", store)
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(out)
    assert [row["line"] for row in rows] == [1, 2, 3, 4]
    assert [row["output"] for row in rows] == [2, 3, 2, 4]
    assert rows[0]["id"] == rows[2]["id"]
    assert "done: 4/4" in r.stderr


def test_a_store_password_is_never_printed(postgres_url: str, tmp_path: Path) -> None:
    # Trust authentication ignores the password, so the URL works as given.
    parts = urlsplit(postgres_url)
    secret = "hunter2-secret"
    user = parts.username or "postgres"
    netloc = f"{user}:{secret}@{parts.hostname}:{parts.port or 5432}"
    url = parts._replace(netloc=netloc).geturl()
    made = legion("schedule", "add", "nightly", "nobody", "--cron", "0 3 * * *", "--store", url)
    assert made.returncode == 0, made.stderr
    assert "no live worker serves agent 'nobody'" in made.stderr
    for r in (made, legion("status", "--store", url), legion("status", "--json", "--store", url)):
        assert r.returncode == 0, r.stderr
        assert secret not in r.stdout + r.stderr
    assert ":***@" in made.stderr
    assert json.loads(legion("status", "--json", "--store", url).stdout)["store"].count("***") == 1


def test_signal_refuses_an_event_name_no_task_can_wait_for(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'db'}"
    r = legion("signal", "1", "e" * 201, "--store", store)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: the event name is 201 characters; at most 200"), r.stderr


FAMILY = """
import legion


@legion.agent
async def child(ctx, n: int) -> int:
    return n * 10


@legion.agent
async def parent(ctx, n: int) -> list:
    return await ctx.map(child, [n, n + 1])


@legion.agent(resources={"memory_mb": 4096, "gpu": 1})
async def transcribe(ctx, url: str) -> str:
    return url.upper()
"""


def test_children_of_agents_beside_the_agent_run_in_the_run(tmp_path: Path) -> None:
    # The local worker served the named agent alone: the children its tasks started
    # (ctx.map of an agent of the same file) stayed queued, and the run waited for ever.
    (tmp_path / "family.py").write_text(FAMILY)
    inp = write_jsonl(tmp_path / "in.jsonl", [1, 2])
    out = tmp_path / "out.jsonl"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    done = legion(
        "run", f"{tmp_path / 'family.py'}:parent", "-i", str(inp), "-o", str(out),
        "--store", store, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [r["output"] for r in read_jsonl(out)] == [[10, 20], [20, 30]]


def test_an_agent_needing_what_the_run_does_not_offer_is_said_and_offer_runs_it(
    tmp_path: Path,
) -> None:
    # The tasks waited for a worker offering a GPU, silently, for ever.
    (tmp_path / "family.py").write_text(FAMILY)
    inp = write_jsonl(tmp_path / "in.jsonl", ["a"])
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    agent = f"{tmp_path / 'family.py'}:transcribe"
    waiting = start_legion("run", agent, "-i", str(inp), "--store", store, "--no-progress")
    assert waiting.stderr is not None
    first = waiting.stderr.readline()
    waiting.send_signal(signal.SIGTERM)
    waiting.communicate(timeout=60)
    assert "agent 'transcribe' needs gpu=1,memory_mb=4096" in first, first
    assert "--offer gpu=1,memory_mb=4096 runs them here" in first

    offered = legion(
        "run", agent, "-i", str(inp), "--store", store, "--offer", "memory_mb=8192,gpu",
        timeout=60,
    )  # fmt: skip
    assert offered.returncode == 0, offered.stderr
    assert "needs" not in offered.stderr
    assert json.loads(offered.stdout)["output"] == "A"


def test_status_says_which_queued_agents_no_live_worker_serves(tmp_path: Path) -> None:
    # `legion status` showed "waiter | 1 queued" beside healthy workers, with no hint that
    # none of them serves that agent.
    from legion import codec
    from legion.store import store_from_url
    from legion.task import NewTask

    store = f"sqlite:///{tmp_path / 'runs.db'}"

    async def queue() -> None:
        s = store_from_url(store)
        await s.open()
        await s.submit([NewTask("lonely", codec.dumps(1))], 0.0)
        await s.aclose()

    asyncio.run(queue())
    shown = legion("status", "--store", store)
    assert shown.returncode == 0, shown.stderr
    assert "agent 'lonely': 1 queued, and no live worker serves it" in " ".join(
        shown.stdout.split()
    )
    as_json = legion("status", "--store", store, "--json")
    assert json.loads(as_json.stdout)["unserved"] == ["lonely"]

    # A live worker that imports the agent but whose --offer does not cover its
    # resources= leases none of its tasks: still unserved (it read as served).
    from legion.store.types import WorkerInfo

    async def register() -> None:
        s = store_from_url(store)
        await s.open()
        now = await s.now()
        load = {"agents": ["lonely"], "uncovered": ["lonely"], "offer": {}}
        await s.register_worker(WorkerInfo("w1", "h", 1, now, now, load))
        await s.aclose()

    asyncio.run(register())
    as_json = legion("status", "--store", store, "--json")
    assert json.loads(as_json.stdout)["unserved"] == ["lonely"]


def test_status_shows_a_worker_silent_past_its_lease_as_silent_not_ok(tmp_path: Path) -> None:
    # A SIGKILLed worker's row stays in the store; `legion status` showed it "ok".
    from legion.store import store_from_url
    from legion.store.types import WorkerInfo

    store = f"sqlite:///{tmp_path / 'runs.db'}"

    async def register() -> None:
        s = store_from_url(store)
        await s.open()
        now = await s.now()
        # "paused": silent past its own lease (its tasks taken back), under a minute: it
        # was shown "ok", its 25 tasks still counted in flight.
        for name, age, load in (
            ("fresh", 1.0, {"in_flight": 7}),
            ("gone", 70.0, {"in_flight": 0}),
            ("paused", 35.0, {"in_flight": 25, "lease_seconds": 30.0}),
        ):
            beat = now - age
            await s.register_worker(WorkerInfo(name, "h", 1, beat, beat, load))
        await s.aclose()

    asyncio.run(register())
    shown = legion("status", "--store", store)
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if "│ h " in line]
    rows = {line.split("│")[1].strip(): line for line in lines}
    assert " ok " in rows["fresh"] and "silent" not in rows["fresh"] and " 7 " in rows["fresh"]
    assert "silent" in rows["gone"] and " ok " not in rows["gone"]
    assert "silent" in rows["paused"] and " 25 " not in rows["paused"]
    doc = json.loads(legion("status", "--store", store, "--json").stdout)
    live = {w["id"]: w["live"] for w in doc["workers"]}
    assert live == {"fresh": True, "gone": False, "paused": False}


def test_status_shows_a_worker_whose_process_ended_as_gone(tmp_path: Path) -> None:
    # A `legion run` that ended (or was killed) on this machine was shown "ok" for 30 s,
    # and its agent as served: the hint that no worker serves the queue was missing.
    from legion import codec, identity
    from legion.store import store_from_url
    from legion.store.types import WorkerInfo
    from legion.task import NewTask

    ended = subprocess.Popen(["sleep", "60"])
    started = identity.start_time(ended.pid) or 0
    ended.kill()
    ended.wait()
    me = identity.current()
    store = f"sqlite:///{tmp_path / 'runs.db'}"

    async def register() -> None:
        s = store_from_url(store)
        await s.open()
        now = await s.now()
        await s.submit([NewTask("left", codec.dumps(1))], now)
        load = {"agents": ["left"], "in_flight": 3}
        gone = WorkerInfo("ended", "h", ended.pid, now, now, load, me.boot_id, me.pid_ns, started)
        await s.register_worker(gone)
        await s.aclose()

    asyncio.run(register())
    shown = legion("status", "--store", store)
    assert shown.returncode == 0, shown.stderr
    (row,) = [line for line in shown.stdout.splitlines() if "│ h " in line]
    assert "gone: its process has ended" in row and " ok " not in row and " 3 " not in row
    assert "agent 'left': 1 queued, and no live worker serves it" in " ".join(shown.stdout.split())
    doc = json.loads(legion("status", "--store", store, "--json").stdout)
    assert [w["live"] for w in doc["workers"]] == [False]


@lg.agent(retries=0)
async def asks(ctx: lg.Context, amount: int) -> bool:
    return (await ctx.approval(f"refund {amount}?")).approved


async def _parked(store: str, agent: lg.Agent, inputs: list[dict[str, object]]) -> list[int]:
    """Submit ``agent`` on each input, and answer the tasks' ids once all of them wait."""
    async with Runtime(store, agents=[agent]) as rt:
        ids = [(await rt.submit(agent, given)).id for given in inputs]
        for task in ids:
            async with asyncio.timeout(30):
                while getattr(await rt.get(task), "status", None) is not TaskStatus.WAITING:  # noqa: ASYNC110 - a row's status to change
                    await asyncio.sleep(0.01)
        return ids


def test_status_lists_the_waiting_tasks_with_what_each_waits_for(tmp_path: Path) -> None:
    # Nothing on the command line showed a waiting task's id, which `legion signal` needs.
    store = f"sqlite:///{tmp_path / 'runs.db'}"

    first, second = asyncio.run(_parked(store, asks, [{"amount": n} for n in (5, 7)]))
    shown = legion("status", "--store", store, env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert "waiting tasks" in text and "approval #1: refund 7?" in text
    as_json = json.loads(legion("status", "--store", store, "--json").stdout)
    assert [
        (w["id"], w["event"], w["count"], w["prompt"], w["tenant"]) for w in as_json["waiting"]
    ] == [
        (second, "approval", 1, "refund 7?", "default"),
        (first, "approval", 1, "refund 5?", "default"),
    ]
    one = json.loads(legion("status", "--store", store, "--json", "--waiting", "1").stdout)
    assert [w["id"] for w in one["waiting"]] == [second]
    human = legion("status", "--store", store, "--waiting", "1", env={"COLUMNS": "200"})
    assert "waiting tasks (newest 1)" in human.stdout


@lg.agent(retries=0)
async def naps(ctx: lg.Context, seconds: float) -> None:
    await ctx.sleep(seconds)


def test_status_shows_wake_up_times_in_utc_even_one_no_calendar_holds(tmp_path: Path) -> None:
    # A wait of 1e300 seconds (any finite time is taken) made `legion status` exit 1 with
    # an OverflowError, and the times it did show were local, unmarked, beside the UTC of
    # `legion schedule list`.
    store = f"sqlite:///{tmp_path / 'runs.db'}"

    asyncio.run(_parked(store, naps, [{"seconds": s} for s in (1e300, 3600.0)]))
    shown = legion("status", "--store", store, env={"COLUMNS": "200", "TZ": "Asia/Tokyo"})
    assert shown.returncode == 0, shown.stderr
    assert "1e+300 s since 1970" in shown.stdout
    waits = json.loads(legion("status", "--store", store, "--json").stdout)["waiting"]
    wake_at = min(w["wake_at"] for w in waits)
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wake_at)) in shown.stdout


@lg.agent(retries=0)
async def stays(ctx: lg.Context, i: int) -> int:
    return int(await ctx.wait_for("never"))


@lg.agent(retries=0)
async def brood(ctx: lg.Context, n: int) -> list[int]:
    return await ctx.map(stays, list(range(n)), concurrency=n)


def test_cancel_with_children_names_each_descendant_it_cancelled(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'runs.db'}"

    async def park() -> tuple[int, list[int]]:
        async with Runtime(store, agents=[brood, stays]) as rt:
            parent = (await rt.submit(brood, {"n": 2})).id
            async with asyncio.timeout(30):
                while len(kids := await rt.store.children(parent)) < 2 or any(  # noqa: ASYNC110 - rows to change
                    c.status is not TaskStatus.WAITING for c in kids
                ):
                    await asyncio.sleep(0.01)
            return parent, [c.id for c in kids]

    parent, kids = asyncio.run(park())
    r = legion("cancel", "--children", str(parent), "--store", store)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{t}\tcancelled" for t in (parent, *kids)]
    again = legion("cancel", "--children", str(parent), "--store", store)
    assert again.stdout.splitlines() == [f"{parent}\tcancelled"]  # (nothing left to cancel)

    # Retried alone, the parent would find its cancelled children by their keys and fail
    # again: with --children they are queued again too (a child named beside its parent,
    # queued by the parent's walk, is no refusal).
    retried = legion("retry", "--children", str(parent), str(kids[0]), "--store", store)
    assert retried.returncode == 0, retried.stderr
    assert "queued again: 3 task(s)" in retried.stderr

    async def statuses() -> list[TaskStatus | None]:
        async with Runtime(store) as rt:
            return [getattr(await rt.get(t), "status", None) for t in (parent, *kids)]

    assert asyncio.run(statuses()) == [TaskStatus.QUEUED] * 3
    alone = legion("retry", "--children", "--dead", "--store", store)
    assert alone.returncode == 2 and "--children goes with task ids" in alone.stderr


@lg.agent(retries=0)
async def orphans(ctx: lg.Context, n: int) -> None:
    async def boom() -> None:
        await ORPHAN["started"].wait()
        raise RuntimeError("the parent fails, its child still waits")

    await ctx.gather(ctx.spawn(stays, n), boom())


ORPHAN: dict[str, asyncio.Event] = {}  # (set once the child waits)


def test_cancel_with_children_of_a_task_that_ended_otherwise_changes_nothing(
    tmp_path: Path,
) -> None:
    # The descendants were cancelled before the refusal: `legion cancel --children` of a
    # dead parent said "dead; only queued, waiting or running tasks can be cancelled" and
    # had cancelled its waiting child.
    store = f"sqlite:///{tmp_path / 'runs.db'}"

    async def orphan() -> tuple[int, int]:
        ORPHAN["started"] = asyncio.Event()
        async with Runtime(store, agents=[orphans, stays]) as rt:
            parent = (await rt.submit(orphans, {"n": 1})).id
            async with asyncio.timeout(30):
                while not (kids := await rt.store.children(parent)) or (  # noqa: ASYNC110 - rows to change
                    kids[0].status is not TaskStatus.WAITING
                ):
                    await asyncio.sleep(0.01)
                ORPHAN["started"].set()
                assert (await rt.result(parent)).status is TaskStatus.DEAD
            return parent, kids[0].id

    parent, kid = asyncio.run(orphan())
    r = legion("cancel", "--children", str(parent), "--store", store)
    assert r.returncode == 1 and "only queued, waiting or running" in r.stderr
    assert r.stdout.splitlines() == [f"{parent}\tdead"]

    async def child() -> TaskStatus | None:
        async with Runtime(store) as rt:
            return getattr(await rt.get(kid), "status", None)

    assert asyncio.run(child()) is TaskStatus.WAITING


def test_run_exports_spans_with_trace(tmp_path: Path, agents_file: Path) -> None:
    # `--trace` (and $LEGION_TRACE) was `legion serve`'s alone: `legion run` exported
    # nothing and refused the option.
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(3)])
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    env = {"STEP_LOG": str(tmp_path / "steps.log")}
    ran = legion(
        "run", f"{agents_file}:work", "-i", str(inp), "--store", store, "--trace", "console",
        "--no-progress", env=env,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    names = re.findall(r'"name": "([^"]+)"', ran.stderr)
    assert Counter(names)["legion.task work"] == 3 and Counter(names)["legion.step"] == 9


def test_a_collector_that_takes_nothing_holds_the_exit_for_a_bounded_time(
    tmp_path: Path, agents_file: Path
) -> None:
    # A collector that accepts connections and never answers held every command's exit
    # ~30 s (10 s an export, per batch left): the spans are now given up after a bound.
    import socket

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        port = hung.getsockname()[1]
        inp = write_jsonl(tmp_path / "in.jsonl", [{"i": 1}])
        env = {
            "STEP_LOG": str(tmp_path / "steps.log"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        }
        ran = legion(
            "run", f"{agents_file}:work", "-i", str(inp), "--store",
            f"sqlite:///{tmp_path / 'runs.db'}", "--trace", "otlp", "--no-progress", env=env,
        )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "the trace collector took no spans for 5 s at exit" in ran.stderr


def test_process_pool_options_without_the_process_executor_are_refused(
    tmp_path: Path, agents_file: Path
) -> None:
    # --memory-limit 100 without --executor was taken and ignored: a 300 MB allocation
    # ran in the worker itself.
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    store = f"sqlite:///{tmp_path / 'p.db'}"
    for option in (["--memory-limit", "100"], ["--pool-size", "1"]):
        r = legion("run", f"{agents_file}:typed", "-i", str(inp), "--store", store, *option)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(
            "error: --pool-size and --memory-limit are for the process executor, which none "
            "of doomed, slow, typed, work runs on: give --executor process"
        ), r.stderr
    small = legion(
        "run", f"{agents_file}:typed", "-i", str(inp), "--store", store, "--executor",
        "process", "--memory-limit", "40",
    )  # fmt: skip
    assert small.returncode == 2 and "--memory-limit" in small.stderr  # (too small to start)


def submitted(store: str, tasks: list[tuple[str, str]]) -> list[int]:
    """The ids of (agent, tenant) tasks submitted to ``store`` with no input, in order."""
    from legion.store import store_from_url
    from legion.task import NewTask

    async def submit() -> list[int]:
        s = store_from_url(store)
        await s.open()
        try:
            new = [NewTask(agent, b"{}", tenant=tenant) for agent, tenant in tasks]
            return [t.id for t in await s.submit(new, 1.0)]
        finally:
            await s.aclose()

    return asyncio.run(submit())


def test_cancel_with_a_tenant_cancels_its_unfinished_tasks_alone(tmp_path: Path) -> None:
    # Revoking a tenant's key refuses its requests and stops none of its tasks: they were
    # to be cancelled one id at a time.
    store = f"sqlite:///{tmp_path / 'db'}"
    tasks = [("x", "acme"), ("y", "acme"), ("x", "beta"), ("x", "default")]
    acme_x, acme_y, beta, default = submitted(store, tasks)
    one = legion("cancel", "--tenant", "acme", "--agent", "y", "--store", store)
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines() == [f"{acme_y}\tcancelled"]
    rest = legion("cancel", "--tenant", "acme", "--store", store)
    assert rest.stdout.splitlines() == [f"{acme_x}\tcancelled"]
    none = legion("cancel", "--tenant", "acme", "--store", store)
    assert none.returncode == 0 and "tenant 'acme' has no unfinished tasks" in none.stderr
    typo = legion("cancel", "--tenant", "acmee", "--store", store)  # (not a success)
    assert typo.returncode == 1 and "tenant 'acmee' has no tasks in this store" in typo.stderr
    both = legion("cancel", str(beta), "--tenant", "beta", "--store", store)
    assert both.returncode == 2 and "give task ids, or --tenant NAME (not both)" in both.stderr
    with sqlite3.connect(tmp_path / "db") as conn:
        left = dict(conn.execute("SELECT id, status FROM tasks").fetchall())
    assert left == {acme_x: "cancelled", acme_y: "cancelled", beta: "queued", default: "queued"}


def test_cancel_of_a_tenants_many_tasks_goes_a_thousand_at_a_time(tmp_path: Path) -> None:
    # One transaction a task: 130,000 of a tenant's tasks took 5.5 minutes on PostgreSQL
    # (33 s on SQLite), and nothing was printed until the end.
    store = f"sqlite:///{tmp_path / 'db'}"
    ids = submitted(store, [("x", "acme")] * 2500 + [("x", "beta")])
    r = legion("cancel", "--tenant", "acme", "--store", store)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{i}\tcancelled" for i in ids[:2500]]
    assert "cancelling 2,500 tasks of tenant 'acme', 1,000 at a time" in r.stderr
    with sqlite3.connect(tmp_path / "db") as conn:
        left = Counter(s for (s,) in conn.execute("SELECT status FROM tasks"))
        feed = conn.execute("SELECT count(*) FROM events WHERE status = 'cancelled'").fetchone()
    assert left == {"cancelled": 2500, "queued": 1} and feed == (2500,)
    status = legion("status", "--json", "--store", store)
    counts = json.loads(status.stdout)["counts"]
    assert {k: n for k, n in counts.items() if n} == {"cancelled": 2500, "queued": 1}


@pytest.mark.parametrize(("soft", "hard"), [(256, 4096), (256, 256)])
def test_a_run_raises_its_open_files_limit_or_says_it_is_short(
    tmp_path: Path, soft: int, hard: int
) -> None:
    # At a soft limit of 256 (macOS's default) and --concurrency 1000, tasks that opened
    # files failed with "Too many open files" and the in-process simulator logged its
    # failed accepts by the hundred thousand (239 MB of standard error), unannounced.
    import resource

    agents = tmp_path / "fd.py"
    agents.write_text(
        "import resource\n\nasync def limit(ctx, n: int):\n"
        "    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
    )
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [
            *LEGION,
            "run",
            f"{agents}:limit",
            "-i",
            str(inp),
            "-o",
            str(out),
            "--store",
            f"sqlite:///{tmp_path / 'db'}",
            "-c",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert done.returncode == 0, done.stderr
    assert read_jsonl(out)[0]["output"] == hard  # the soft limit raised to the hard one
    short = "--concurrency 1,000 with at most 256 open files (ulimit -n)"
    assert (short in done.stderr) is (hard == 256), done.stderr


def test_a_concurrency_far_above_the_child_processes_is_pointed_out(
    tmp_path: Path, agents_file: Path
) -> None:
    # Each child runs one instance at a time: 1,000 tasks leased for 2 children ran at ~10/s
    # with nothing said, every task shown running.
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    base = ("run", f"{agents_file}:typed", "-i", str(inputs), "--no-progress")
    process = ("--executor", "process", "--pool-size", "1")
    many = legion(*base, "-o", str(tmp_path / "a.jsonl"), *process, "-c", "50")
    assert many.returncode == 0, many.stderr
    assert "runs one instance per child process at a time (--pool-size 1)" in many.stderr
    few = legion(*base, "-o", str(tmp_path / "b.jsonl"), *process, "-c", "2")
    assert few.returncode == 0, few.stderr
    assert "one instance per child process" not in few.stderr


def test_json_logs_hold_every_line_a_run_writes_to_stderr(
    tmp_path: Path, agents_file: Path
) -> None:
    # The run's own lines (its routes, its summary, a failed line's error) were plain text
    # among the JSON records: a log shipper failed on them.
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"i": 1}, {"i": 2}])
    r = legion(
        "run",
        f"{agents_file}:doomed",
        "-i",
        str(inputs),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--store",
        f"sqlite:///{tmp_path / 'runs.db'}",
        "--log-format",
        "json",
    )
    assert r.returncode == 1, r.stderr
    records = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
    said = " ".join(str(record["message"]) for record in records)
    assert "done: 2/2" in said and "doomed 1" in said
