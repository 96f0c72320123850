"""`legion purge`: tasks that ended long ago go, with what hangs off them; what may still
run stays; a purged line of a `legion run` file runs again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.acceptance.conftest import legion, read_jsonl, write_jsonl

AGENTS = """
import legion

@legion.agent(retries=0)
async def twice(ctx: legion.Context, n: int) -> int:
    with open(__file__ + ".ledger", "a") as ledger:
        ledger.write(f"{n}\\n")
    if n < 0:
        raise legion.Permanent("negative")
    return await ctx.step("double", lambda: 2 * n)
"""


def test_purge_deletes_what_ended_and_a_purged_line_runs_again(tmp_path: Path) -> None:
    agents = tmp_path / "agents.py"
    agents.write_text(AGENTS)
    lines = tmp_path / "in.jsonl"
    write_jsonl(lines, [{"n": 1}, {"n": 2}, {"n": -1}])
    db = tmp_path / "legion.db"
    store = ("--store", f"sqlite:///{db}")
    first = legion(
        "run", f"{agents}:twice", "-i", str(lines), "-o", str(tmp_path / "o.jsonl"), *store
    )
    assert first.returncode == 1, first.stderr  # (one line failed)
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 3

    nothing = legion("purge", "--older-than", "1d", *store)  # nothing is a day old
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout.startswith("0\t")
    typo = legion("purge", "--older-than", "0", "--tenant", "defualt", *store)
    assert typo.returncode == 0 and typo.stdout.startswith("0\t")  # (said as success, alone)
    assert "note: no tasks of tenant 'defualt' in the store (its tenants: default)" in typo.stderr
    right = legion("purge", "--older-than", "1d", "--tenant", "default", *store)
    assert right.returncode == 0 and "note:" not in right.stderr
    dry = legion("purge", "--older-than", "0", "--status", "failed", "--dry-run", *store)
    assert dry.returncode == 0 and dry.stdout.startswith("1\t"), dry.stdout
    assert "dry run" in dry.stdout
    purged = legion("purge", "--older-than", "0", "--status", "succeeded", *store)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith("2\t") and "with their steps" in purged.stderr
    assert "0 vectors of their own sessions" in purged.stderr
    assert not (tmp_path / "legion.vectors.db").exists()  # none made for nothing
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM tasks").fetchall() == [("failed",)]
        assert conn.execute("SELECT count(*) FROM steps").fetchone() == (0,)

    # The purged lines' keys are free: the same command runs them again (the failed
    # one, kept, is not).
    again = legion(
        "run", f"{agents}:twice", "-i", str(lines), "-o", str(tmp_path / "p.jsonl"), *store
    )
    assert again.returncode == 1, again.stderr
    ledger = (tmp_path / "agents.py.ledger").read_text().split()
    assert sorted(ledger) == ["-1", "1", "1", "2", "2"]


def test_purge_refuses_what_could_still_run_and_a_bad_age(tmp_path: Path) -> None:
    store = ("--store", f"sqlite:///{tmp_path / 'legion.db'}")
    queued = legion("purge", "--older-than", "7d", "--status", "queued", *store)
    assert queued.returncode == 2
    assert "ended statuses (succeeded, failed, dead, cancelled), not queued" in queued.stderr
    bad = legion("purge", "--older-than", "a week", *store)
    assert bad.returncode == 2 and "such as 30d, 12h, 90m" in bad.stderr
    assert "Traceback" not in queued.stderr + bad.stderr


MEMORY = """
import legion

@legion.agent(retries=0)
async def note(ctx: legion.Context, n: int) -> int:
    await ctx.memory.set(f"answer:{ctx.task_id}", n)
    return n
"""


def test_purge_sessions_deletes_the_memory_of_idle_named_sessions(tmp_path: Path) -> None:
    """One key per task in named sessions (the README's pattern) grew for ever: `purge`
    keeps named sessions' memory, and nothing else deleted it."""
    agents = tmp_path / "agents.py"
    agents.write_text(MEMORY)
    lines = tmp_path / "in.jsonl"
    write_jsonl(lines, [{"n": n, "_session": f"s{n % 2}"} for n in range(6)])
    db = tmp_path / "legion.db"
    store = ("--store", f"sqlite:///{db}")
    run = legion("run", f"{agents}:note", "-i", str(lines), "-o", str(tmp_path / "o.jsonl"), *store)
    assert run.returncode == 0, run.stderr
    kept = legion("purge", "--older-than", "1d", "--sessions", *store)  # none a day idle
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines()[1].startswith("0\tsessions idle since")
    dry = legion("purge", "--older-than", "0", "--sessions", "--dry-run", *store)
    assert dry.returncode == 0 and dry.stdout.splitlines()[1].startswith("2\t"), dry.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM memory").fetchone() == (6,)
    purged = legion("purge", "--older-than", "0", "--sessions", *store)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.splitlines()[1].startswith("2\tsessions idle since"), purged.stdout
    assert "purged 2 sessions idle since" in purged.stderr and "6 memory keys" in purged.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM memory").fetchone() == (0,)
