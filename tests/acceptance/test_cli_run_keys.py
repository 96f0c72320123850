"""``legion run`` with ``"_key"`` lines: a key reused with another input is an error on that
line, never a silent answer with another task."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, read_jsonl

pytestmark = pytest.mark.slow


def run_lines(target: str, lines: Path, out: Path, store: str) -> subprocess.CompletedProcess[str]:
    return legion("run", target, "-i", str(lines), "-o", str(out), "--store", store)


def test_a_key_reused_with_another_input_is_an_error_on_its_line(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    first = tmp_path / "first.jsonl"
    first.write_text('{"n": 1, "_key": "a"}\n{"n": 2, "_key": "a"}\n{"n": 3, "_key": "b"}\n')
    out = tmp_path / "out.jsonl"
    run = run_lines(f"{agents_file}:typed", first, out, store)
    assert run.returncode == 1, run.stderr
    rows = {row["line"]: row for row in read_jsonl(out)}
    assert rows[1]["output"] == 2 and rows[3]["output"] == 4
    assert rows[2]["status"] == "failed"
    assert "was used on line 1 with another input" in rows[2]["error"]["message"]

    second = tmp_path / "second.jsonl"
    second.write_text('{"n": 9, "_key": "b"}\n{"n": 4, "_key": "c"}\n')
    run = run_lines(f"{agents_file}:typed", second, out, store)
    assert run.returncode == 1, run.stderr
    rows = {row["line"]: row for row in read_jsonl(out)}
    assert rows[1]["status"] == "failed" and rows[1]["key"] == "b"
    assert "names a task submitted before with another input" in rows[1]["error"]["message"]
    assert rows[2]["output"] == 5
    assert f"{second}:1" in run.stderr


def test_a_key_sent_again_with_an_equal_input_in_another_key_order_is_one_task(
    tmp_path: Path,
) -> None:
    agents = tmp_path / "pairs.py"
    agents.write_text(
        "import legion\n\n@legion.agent\nasync def pair(ctx, a: int, b: int):\n    return a - b\n"
    )
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"a": 5, "b": 2, "_key": "k"}\n{"b": 2, "a": 5, "_key": "k"}\n')
    out = tmp_path / "out.jsonl"
    run = run_lines(f"{agents}:pair", lines, out, store)
    assert run.returncode == 0, run.stderr
    rows = read_jsonl(out)
    assert [(r["status"], r["output"], r["id"]) for r in rows] == [("succeeded", 3, 1)] * 2
    again = tmp_path / "again.jsonl"
    again.write_text('{"b": 2, "a": 5, "_key": "k"}\n')  # a later run: the stored task
    run = run_lines(f"{agents}:pair", again, out, store)
    assert run.returncode == 0, run.stderr
    assert [(r["output"], r["id"]) for r in read_jsonl(out)] == [(3, 1)]
