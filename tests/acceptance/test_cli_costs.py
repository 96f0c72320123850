"""`legion run` on a model without a price: the summary says the cost is unknown."""

from __future__ import annotations

from pathlib import Path

from tests.acceptance.conftest import legion, read_jsonl, start_sim, write_jsonl

AGENT = """\
import legion

@legion.agent(retries=0)
async def ask(ctx: legion.Context, question: str) -> str:
    return (await ctx.llm.chat([{"role": "user", "content": question}])).text
"""


def test_the_run_summary_says_cost_unknown_not_zero(tmp_path: Path) -> None:
    proc, url = start_sim("--model", "mystery-model", "--cached-prompt-share", "0.5")
    try:
        (tmp_path / "app.py").write_text(AGENT)
        write_jsonl(tmp_path / "in.jsonl", ["one?", "two?"])
        out = tmp_path / "out.jsonl"
        done = legion(
            "run",
            f"{tmp_path / 'app.py'}:ask",
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(out),
            "--store",
            f"sqlite:///{tmp_path / 'legion.db'}",
            "--llm",
            f"openai:mystery-model@{url}",
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    summary = [line for line in output.splitlines() if line.startswith("llm default")]
    assert len(summary) == 1, output
    assert "cost unknown" in summary[0] and "$0.0000" not in summary[0], summary[0]
    assert "cached)" in summary[0], summary[0]
    rows = read_jsonl(out)
    assert [row["usage"]["cost_known"] for row in rows] == [False, False]
    assert all(row["usage"]["cached_tokens"] > 0 for row in rows)
