"""The framework examples run as their docstrings say: ``legion run`` against a
``legion sim --tool-calls`` process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, read_jsonl, sim_stats, start_sim, write_jsonl

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def simulator() -> Iterator[str]:
    # 1,200 requests a minute, enforced over each second (20 a second).
    proc, url = start_sim("--tool-calls", "--rpm", "1200", "--window-seconds", "1")
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
    n = 30  # all at once (unpaced, a third of their first calls would get a 429)
    inp = write_jsonl(tmp_path / "q.jsonl", [{"question": f"Question {i}?"} for i in range(n)])
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
        "--rpm",
        "1140",  # 5 % under the provider's limit, as one configures it
    )
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(out)
    assert [row["status"] for row in rows] == ["succeeded"] * n, rows
    assert all(row["usage"]["llm_calls"] == calls for row in rows)
    stats = sim_stats(simulator)
    assert stats["requests_total"] == n * calls  # no 429, nothing retried
    assert stats["rate_limited"] == 0
