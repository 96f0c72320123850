"""``legion run`` with ``"_key"`` lines: a key reused with another input is an error on that
line, never a silent answer with another task."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, read_jsonl

pytestmark = pytest.mark.slow


def test_a_key_reused_with_another_input_is_an_error_on_its_line(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    first = tmp_path / "first.jsonl"
    first.write_text('{"n": 1, "_key": "a"}\n{"n": 2, "_key": "a"}\n{"n": 3, "_key": "b"}\n')
    out = tmp_path / "out.jsonl"
    run = legion("run", f"{agents_file}:typed", "-i", str(first), "-o", str(out), "--store", store)
    assert run.returncode == 1, run.stderr
    rows = {row["line"]: row for row in read_jsonl(out)}
    assert rows[1]["output"] == 2 and rows[3]["output"] == 4
    assert rows[2]["status"] == "failed"
    assert "was used on line 1 with another input" in rows[2]["error"]["message"]

    second = tmp_path / "second.jsonl"
    second.write_text('{"n": 9, "_key": "b"}\n{"n": 4, "_key": "c"}\n')
    run = legion("run", f"{agents_file}:typed", "-i", str(second), "-o", str(out), "--store", store)
    assert run.returncode == 1, run.stderr
    rows = {row["line"]: row for row in read_jsonl(out)}
    assert rows[1]["status"] == "failed" and rows[1]["key"] == "b"
    assert "names a task submitted before with another input" in rows[1]["error"]["message"]
    assert rows[2]["output"] == 5
    assert f"{second}:1" in run.stderr
