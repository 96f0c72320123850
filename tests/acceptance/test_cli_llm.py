"""``legion run`` with LLM calls against a simulator running in its own process."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import (
    legion,
    read_jsonl,
    sim_stats,
    start_legion,
    start_sim,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow

AGENT = """
import legion


@legion.agent(timeout=60, retries=2, backoff=0)
async def ask(ctx, topic: str):
    ask = lambda text: ctx.llm.chat([{"role": "user", "content": text}], max_tokens=8)
    parts = await ctx.gather(*(ask(f"{topic} part {i}") for i in range(3)))
    final = await ask(" ".join(p.text for p in parts))
    return final.text
"""


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[str]:
    args = getattr(request, "param", ())
    proc, url = start_sim("--latency", "0.02", *args)
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def test_a_run_reports_llm_usage_per_line_and_in_the_summary(
    tmp_path: Path, simulator: str
) -> None:
    (tmp_path / "app.py").write_text(AGENT)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"topic": f"t{i}"} for i in range(10)])
    out = tmp_path / "out.jsonl"
    r = legion(
        "run",
        f"{tmp_path / 'app.py'}:ask",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        f"sqlite:///{tmp_path / 'db'}",
        "--llm",
        f"openai:sim-model@{simulator}",
        "--rpm",
        "6000",
    )
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(out)
    assert all(row["usage"]["llm_calls"] == 4 for row in rows)
    assert "40 calls, 40 requests, 0 429s" in r.stderr
    assert sim_stats(simulator)["requests_total"] == 40


def test_sigkill_mid_run_does_not_pay_twice_for_recorded_completions(
    tmp_path: Path, simulator: str
) -> None:
    n, calls = 300, 4
    (tmp_path / "app.py").write_text(AGENT)
    db = tmp_path / "runs.db"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"topic": f"t{i}"} for i in range(n)])
    out = tmp_path / "out.jsonl"
    args = [
        "run",
        f"{tmp_path / 'app.py'}:ask",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        f"sqlite:///{db}",
        "-c",
        "40",
        "--lease-seconds",
        "600",
        "--llm",
        f"openai:sim-model@{simulator}",
    ]
    proc = start_legion(*args)
    wait_for(
        lambda: int(sim_stats(simulator)["requests_total"]) >= 300,
        what="LLM calls of the first run",
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)

    con = sqlite3.connect(db)
    recorded = con.execute("SELECT count(*) FROM steps WHERE key LIKE 'llm.%'").fetchone()[0]
    con.close()
    paid_before = int(sim_stats(simulator)["requests_total"])
    assert 0 < recorded <= paid_before < n * calls

    second = legion(*args)
    assert second.returncode == 0, second.stderr
    assert all(row["status"] == "succeeded" for row in read_jsonl(out))
    paid_after = int(sim_stats(simulator)["requests_total"])
    # Exactly the completions that were not recorded are bought again; no recorded one is.
    assert paid_after - paid_before == n * calls - recorded


@pytest.mark.parametrize("simulator", [("--api-key", "the-right-key")], indirect=True)
def test_a_rejected_api_key_stops_the_run_with_one_clear_line(
    tmp_path: Path, simulator: str
) -> None:
    (tmp_path / "app.py").write_text(AGENT)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"topic": f"t{i}"} for i in range(500)])
    run = [
        "run",
        f"{tmp_path / 'app.py'}:ask",
        "-i",
        str(inp),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--store",
        f"sqlite:///{tmp_path / 'db'}",
        "-c",
        "20",
        "--llm",
        f"openai:sim-model@{simulator}",
    ]
    r = legion(*run, env={"OPENAI_API_KEY": "a-wrong-key"})
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "401" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert "rate found" not in r.stderr  # (nothing was found: no call was answered)
    stats = sim_stats(simulator)
    assert int(stats["requests_total"]) <= 20 * 3
    rows = read_jsonl(tmp_path / "out.jsonl")
    # Every line is left for the next run: those refused too (one stayed failed for
    # good, and the same command with the key fixed exited 1).
    assert [row["status"] for row in rows] == ["queued"] * 500
    again = legion(*run, env={"OPENAI_API_KEY": "the-right-key"})
    assert again.returncode == 0, again.stderr
    assert [row["status"] for row in read_jsonl(tmp_path / "out.jsonl")] == ["succeeded"] * 500


def test_a_run_whose_provider_is_not_listening_stops_with_its_tasks_unspent(
    tmp_path: Path,
) -> None:
    # `legion sim &` forgotten, or a port mistyped: every task failed one by one over two
    # minutes, dead for good, and the same command then did nothing.
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "app.py").write_text(AGENT)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"topic": f"t{i}"} for i in range(20)])
    out, store = tmp_path / "out.jsonl", f"sqlite:///{tmp_path / 'db'}"
    run = ["run", f"{tmp_path / 'app.py'}:ask", "-i", str(inp), "-o", str(out), "-s", store]
    r = legion(*run, "--llm", f"openai:sim-model@http://127.0.0.1:{port}/v1", timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"nothing listens at http://127.0.0.1:{port}/v1" in errors[0]
    assert [row["status"] for row in read_jsonl(out)] == ["queued"] * 20
    proc, url = start_sim("--latency", "0.02")
    try:
        again = legion(*run, "--llm", f"openai:sim-model@{url}", timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert again.returncode == 0, again.stderr
    rows = read_jsonl(out)
    assert [row["status"] for row in rows] == ["succeeded"] * 20
    assert {row["attempts"] for row in rows} == {1}  # (none was spent on the refusals)


def test_a_run_whose_provider_host_does_not_resolve_stops_with_its_tasks_unspent(
    tmp_path: Path,
) -> None:
    """A mistyped host: every call failed for two minutes, and every task ended dead for
    good, where a mistyped port stopped the run in seconds with nothing spent."""
    (tmp_path / "app.py").write_text(AGENT)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"topic": f"t{i}"} for i in range(5)])
    out, store = tmp_path / "out.jsonl", f"sqlite:///{tmp_path / 'db'}"
    where = "http://no-such-host.invalid:9/v1"  # (.invalid never resolves: RFC 2606)
    run = ["run", f"{tmp_path / 'app.py'}:ask", "-i", str(inp), "-o", str(out), "-s", store]
    r = legion(*run, "--llm", f"openai:sim-model@{where}", timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"the host of {where}" in errors[0], r.stderr
    assert "does not resolve" in errors[0]
    assert [row["status"] for row in read_jsonl(out)] == ["queued"] * 5
