"""``legion schedule add`` as a subprocess: an agent no worker would run is said at once
(refused against ``--app``, a warning against the store's live workers)."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, start_legion

pytestmark = pytest.mark.slow

YEARLY = ["--cron", "0 0 1 1 *"]  # no tick while the test runs


def test_an_agent_or_input_the_app_does_not_take_is_refused(
    tmp_path: Path, agents_file: Path
) -> None:
    db = tmp_path / "db"
    store = ["--store", f"sqlite:///{db}"]
    app = ["--app", str(agents_file)]
    r = legion("schedule", "add", "ghost", "nope", *YEARLY, *app, *store)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        f"error: {agents_file} defines no agent 'nope'; its agents: doomed, slow, typed, work"
    )
    for given, said in [
        (
            '{"x": 1}',
            "input does not fit agent 'typed': unknown field(s) x (it takes n); missing field(s) n",
        ),
        ('{"n": "many"}', "input does not fit agent 'typed': n: Input should be a valid integer"),
    ]:
        r = legion("schedule", "add", "ghost", "typed", *YEARLY, "-i", given, *app, *store)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().startswith(f"error: bad --input: {said}"), r.stderr
    assert not db.exists()  # nothing was added: the store was not even made
    # A bad cron is said as such, not as the input it comes with (checked first).
    r = legion("schedule", "add", "ghost", "typed", "--cron", "0 3 * *", *app, *store)
    assert r.returncode == 2, r.stderr
    assert "a cron expression has 5 fields" in r.stderr, r.stderr

    r = legion("schedule", "add", "ghost", "typed", *YEARLY, "-i", '{"n": 1}', *app, *store)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ghost\tnext ") and r.stdout.endswith("-01-01T00:00:00Z\n")
    assert r.stderr == ""
    listed = legion("schedule", "list", *store)
    assert listed.stdout.startswith("ghost\t0 0 1 1 *\ttyped\tnext ")


def test_without_app_a_warning_says_when_no_live_worker_serves_the_agent(
    tmp_path: Path, agents_file: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'db'}"
    r = legion("schedule", "add", "ghost", "nope", *YEARLY, "--store", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ghost\tnext ")  # the output scripts read is as before
    assert r.stderr.strip() == (
        f"warning: no live worker serves agent 'nope' on {url} (no worker is live): its ticks "
        f"wait until one does (then it runs once); start one with `legion worker --app FILE "
        f"--store {url}`, or give --app FILE here to check the agent's name and input"
    )

    worker = start_legion("worker", "--app", str(agents_file), "--store", url, "-c", "2")
    try:
        assert worker.stderr is not None
        line = worker.stderr.readline()
        assert "serving" in line, line
        served = legion("schedule", "add", "real", "typed", *YEARLY, "-i", '{"n": 1}', "-s", url)
        assert served.returncode == 0 and served.stderr == "", served.stderr
        ghost = legion("schedule", "add", "ghost", "nope", *YEARLY, "--store", url)
        assert ghost.returncode == 0, ghost.stderr
        assert (
            "warning: no live worker serves agent 'nope' on "
            f"{url} (the live workers serve doomed, slow, typed, work)"
        ) in ghost.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)


def test_schedule_add_help_explains_app() -> None:
    r = legion("schedule", "add", "--help")
    assert r.returncode == 0
    assert "--app" in r.stdout and "Without it, a warning" in " ".join(r.stdout.split())


def test_an_input_that_is_not_strict_json_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "db"
    for given in ('{"n": NaN}', '{"n": Infinity}', '{"n": 1e400}'):
        r = legion(
            "schedule", "add", "ghost", "typed", *YEARLY, "-i", given, "--store", f"sqlite:///{db}"
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("error: --input is not JSON: "), r.stderr
    assert not db.exists()  # JSON would have stored null in its place: nothing was added


def test_an_input_that_would_not_run_as_given_is_refused(tmp_path: Path) -> None:
    store = ["--store", f"sqlite:///{tmp_path / 'db'}"]
    for given, said in [
        ('{"n": 123456789012345678901234567890}', "the integer 1234567890"),  # not as a float
        ('{"n": NaN}', "--input is not JSON"),
    ]:
        r = legion("schedule", "add", "big", "typed", *YEARLY, "-i", given, *store)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("error: --input is not JSON: ") and said in r.stderr, r.stderr
    for cron, said in [
        ("*/0 * * * *", "the minute field '*/0' has a step of 0; a step is >= 1"),
        ("5-1 * * * *", "the minute field '5-1' has a range that ends before it starts"),
        ("61 * * * *", "the minute field '61' is out of range 0-59"),
    ]:
        r = legion("schedule", "add", "odd", "typed", "--cron", cron, *store)
        assert r.returncode == 2, r.stderr
        assert said in r.stderr, r.stderr


def test_a_name_or_attempts_a_schedule_cannot_keep_are_refused(tmp_path: Path) -> None:
    # A tab or newline in a name split `schedule list`'s lines; a count past 64 bits was a
    # 70-line traceback on SQLite.
    store = ["--store", f"sqlite:///{tmp_path / 'db'}"]
    for name in (" ", "a\tb", "two\nlines", " padded"):
        r = legion("schedule", "add", name, "typed", *YEARLY, *store)
        assert r.returncode == 2 and r.stderr.startswith("error: bad schedule name"), r.stderr
    r = legion("schedule", "add", "big", "typed", *YEARLY, "--max-attempts", "9" * 20, *store)
    assert r.returncode == 2 and "--max-attempts" in r.stderr and "Traceback" not in r.stderr


def test_schedule_list_says_when_there_are_none_and_shows_attempts_in_json(
    tmp_path: Path,
) -> None:
    store = ["--store", f"sqlite:///{tmp_path / 'db'}"]
    assert legion("schedule", "add", "nightly", "typed", *YEARLY, *store).returncode == 0
    twice = legion("schedule", "add", "twice", "typed", *YEARLY, "--max-attempts", "2", *store)
    assert twice.returncode == 0, twice.stderr
    listed = json.loads(legion("schedule", "list", "--json", *store).stdout)
    assert [(s["name"], s["max_attempts"]) for s in listed] == [("nightly", None), ("twice", 2)]
    assert all(s["created_at"].endswith("Z") for s in listed)
    assert not any(s["overdue"] or s["served"] for s in listed)
    # A schedule no worker served for an hour: its next tick is an hour past.
    assert legion("schedule", "add", "ghost", "nope", "--cron", "* * * * *", *store).returncode == 0
    with sqlite3.connect(tmp_path / "db") as db:
        db.execute("UPDATE schedules SET next_tick = next_tick - 3600 WHERE name = 'ghost'")
    lines = legion("schedule", "list", *store).stdout.splitlines()
    assert lines[0].startswith("ghost\t* * * * *\tnope\tnext ")
    assert lines[0].endswith("\toverdue: no live worker serves 'nope' (its ticks wait for one)")
    assert "overdue" not in lines[1] + lines[2]
    assert legion("schedule", "remove", "ghost", *store).returncode == 0
    for name in ("nightly", "twice"):
        assert legion("schedule", "remove", name, *store).returncode == 0
    empty = legion("schedule", "list", *store)
    assert empty.returncode == 0 and empty.stdout == ""
    assert empty.stderr.startswith("no schedules")


def test_a_schedule_that_skips_overlaps_and_its_last_task_are_listed(
    tmp_path: Path, agents_file: Path
) -> None:
    db = tmp_path / "db"
    store = ["--store", f"sqlite:///{db}"]
    bad = legion("schedule", "add", "n", "typed", *YEARLY, "--overlap", "queue", *store)
    assert bad.returncode == 2 and "bad overlap 'queue': give one of allow, skip" in bad.stderr
    skips = legion("schedule", "add", "n", "typed", *YEARLY, "--overlap", "skip", *store)
    assert skips.returncode == 0, skips.stderr
    (listed,) = json.loads(legion("schedule", "list", "--json", *store).stdout)
    assert (listed["overlap"], listed["last_task"], listed["last_status"]) == ("skip", None, None)
    line = legion("schedule", "list", *store).stdout
    assert line.rstrip("\n").endswith("\toverlap skip") and "last task" not in line
    # A tick has run (its task, made here by a run of the same agent).
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"n": 1}\n')
    assert legion("run", f"{agents_file}:typed", "-i", str(inp), *store).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schedules SET last_task = (SELECT max(id) FROM tasks)")
    (listed,) = json.loads(legion("schedule", "list", "--json", *store).stdout)
    assert listed["last_status"] == "succeeded" and listed["last_task"] >= 1
    line = legion("schedule", "list", *store).stdout
    assert f"\tlast task {listed['last_task']} succeeded\toverlap skip\n" in line
    # Added again without --overlap: allow, as by default; its last task is kept.
    assert legion("schedule", "add", "n", "typed", *YEARLY, *store).returncode == 0
    (listed,) = json.loads(legion("schedule", "list", "--json", *store).stdout)
    assert listed["overlap"] == "allow" and listed["last_status"] == "succeeded"
