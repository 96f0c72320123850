"""``legion run ... --llm local``: the example agent end to end on the real local model,
as a user runs it (a subprocess), with the model's tokens/s in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, read_jsonl, write_jsonl
from tests.llm.test_local_model import packaged_gguf

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_agent_answers_with_the_local_model(tmp_path: Path) -> None:
    packaged_gguf()  # skip (or fail in CI) without the extra, before starting a run
    questions = [
        json.loads(line)
        for line in (ROOT / "examples" / "questions.jsonl").read_text().splitlines()[:2]
    ]
    inp = write_jsonl(tmp_path / "questions.jsonl", questions)
    out = tmp_path / "answers.jsonl"
    args = ("--input", str(inp), "--output", str(out), "--store", f"sqlite:///{tmp_path / 'db'}")
    r = legion("run", f"{ROOT / 'examples' / 'research.py'}:research", *args, "--llm", "local")
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(out)
    assert [row["status"] for row in rows] == ["succeeded"] * 2
    for row, question in zip(rows, questions, strict=True):
        output = row["output"]
        assert output["question"] == question["question"]
        assert isinstance(output["answer"], str) and output["answer"].strip()
        assert row["usage"]["llm_calls"] >= 2 and row["usage"]["completion_tokens"] > 0
    assert "llm: default=local:gemma-3-270m" in r.stderr
    summary = next(line for line in r.stderr.splitlines() if line.startswith("llm default"))
    assert "(local:gemma-3-270m)" in summary and " tok/s" in summary and "0 429s" in summary
