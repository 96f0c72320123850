"""The framework examples run as their docstrings say: ``legion run`` against a
``legion sim --tool-calls`` process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import legion, read_jsonl, sim_stats, start_sim, write_jsonl

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def simulator() -> Iterator[str]:
    proc, url = start_sim("--tool-calls")
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


@pytest.mark.parametrize(
    ("target", "calls"),
    [
        ("pydantic_ai_agent.py:forecast", 2),  # the tool round, the final result
        ("openai_agents_agent.py:support", 3),  # the handoff, the tool round, the answer
        ("langgraph_agent.py:calculate", 2),  # the tool round, the answer
    ],
)
def test_the_example_runs_with_every_call_through_legion(
    tmp_path: Path, simulator: str, target: str, calls: int
) -> None:
    inp = write_jsonl(tmp_path / "q.jsonl", [{"question": "What now?"}, {"question": "Why?"}])
    out = tmp_path / "out.jsonl"
    r = legion(
        "run",
        str(EXAMPLES / target),
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        f"sqlite:///{tmp_path / 'db'}",
        "--llm",
        f"openai:sim-model@{simulator}",
    )
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(out)
    assert [row["status"] for row in rows] == ["succeeded", "succeeded"], rows
    assert all(row["usage"]["llm_calls"] == calls for row in rows)
    assert sim_stats(simulator)["requests_total"] == 2 * calls
