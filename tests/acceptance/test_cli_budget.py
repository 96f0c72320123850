"""`legion run --max-calls/--max-cost`: the run stops resumably when its budget is spent,
no call beyond the budget reaches the provider (counted at the simulator), and a run
with a raised budget continues where it stopped without buying a recorded call again."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from legion import Runtime
from legion.store.types import TaskQuery
from legion.task import TaskInfo
from tests.acceptance.conftest import (
    legion,
    read_jsonl,
    sim_stats,
    start_legion,
    start_sim,
    wait_for,
    write_jsonl,
)

# Three calls per task, one after the other: a task stopped by the budget has recorded
# some of them.
AGENT = """\
import legion

@legion.agent(retries=0)
async def chain(ctx: legion.Context, question: str) -> str:
    text = question
    for i in range(3):
        reply = await ctx.llm.chat([{"role": "user", "content": f"{i}: {text}"}], max_tokens=16)
        text = reply.text[:40]
    return text
"""
TASKS = 10
CALLS = 3 * TASKS


def _run(
    tmp_path: Path,
    url: str,
    *budget: str,
    config: Path | None = None,
    model: str = "sim-model",
    concurrency: int = 4,
) -> tuple[int, str]:
    route = ["--config", str(config)] if config else ["--llm", f"openai:{model}@{url}"]
    done = legion(
        "run",
        f"{tmp_path / 'app.py'}:chain",
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(tmp_path / "out.jsonl"),
        "--store",
        f"sqlite:///{tmp_path / 'legion.db'}",
        "--concurrency",
        str(concurrency),
        "--no-progress",
        *route,
        *budget,
    )
    return done.returncode, done.stdout + done.stderr


def _statuses(tmp_path: Path) -> list[str]:
    return [row["status"] for row in read_jsonl(tmp_path / "out.jsonl")]


def test_a_call_budget_stops_the_run_and_a_raised_one_resumes_it(tmp_path: Path) -> None:
    proc, url = start_sim("--model", "sim-model", "--latency", "0.01")
    try:
        (tmp_path / "app.py").write_text(AGENT)
        write_jsonl(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(TASKS)])

        code, output = _run(tmp_path, url, "--max-calls", "13")
        assert code == 3, output
        assert "budget exceeded" in output and "--max-calls 13" in output, output
        served = sim_stats(url)["succeeded"]
        assert served <= 13, served  # not one call past the budget reached the provider
        # The summary's requests are those the provider got, not the calls refused.
        sent = re.search(r"(\d+) calls(?: \([^)]*\))?, (\d+) requests", output)
        assert sent is not None, output
        assert int(sent.group(2)) == sim_stats(url)["requests_total"], output
        statuses = _statuses(tmp_path)
        assert len(statuses) == TASKS
        assert "budget_exceeded" in statuses and "succeeded" in statuses, statuses
        assert set(statuses) <= {"budget_exceeded", "succeeded"}, statuses
        # Every unfinished line says why, not only the one whose call met the limit.
        rows = read_jsonl(tmp_path / "out.jsonl")
        unfinished = [row for row in rows if row["status"] == "budget_exceeded"]
        assert all(row["error"]["type"] == "BudgetExceeded" for row in unfinished), unfinished

        code, output = _run(tmp_path, url, "--max-calls", "20")  # still short of 30
        assert code == 3, output
        assert sim_stats(url)["succeeded"] <= 20

        code, output = _run(tmp_path, url, "--max-calls", str(CALLS))
        assert code == 0, output
        assert _statuses(tmp_path) == ["succeeded"] * TASKS
        # Every call was bought exactly once over the three runs: the recorded ones of
        # parked tasks were replayed, not sent again.
        assert sim_stats(url)["succeeded"] == CALLS
        assert sim_stats(url)["requests_total"] == CALLS
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_same_command_again_buys_nothing_past_the_budget(tmp_path: Path) -> None:
    # A run stopped by its budget leaves tasks queued; run again, the worker started them
    # at once, and their calls went out on a budget that had not yet read what the earlier
    # run spent: the same command bought up to --concurrency calls more each time.
    proc, url = start_sim("--model", "sim-model", "--latency", "0.01")
    try:
        (tmp_path / "app.py").write_text(AGENT)
        write_jsonl(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(100)])
        code, output = _run(tmp_path, url, "--max-calls", "13", concurrency=100)
        assert code == 3, output
        served = sim_stats(url)["requests_total"]
        assert served <= 13, served
        # Each task's first call reserves one of the budget's calls: a worker that leased
        # every queued task (100) saw 87 of them refused at their first call, each back in
        # the queue with a BudgetExceeded error it never met. It leases no more than the
        # tasks that made a call, and one while none ran (its call finds the budget spent).
        refused = asyncio.run(_parked(tmp_path))
        assert {t.error.type for t in refused if t.error} == {"BudgetExceeded"}
        assert len(refused) <= 14, len(refused)
        for _ in range(2):
            code, output = _run(tmp_path, url, "--max-calls", "13", concurrency=100)
            assert code == 3, output
            assert sim_stats(url)["requests_total"] == served, output
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


async def _parked(tmp_path: Path) -> list[TaskInfo]:
    """The tasks that went back to the queue with an error."""
    async with Runtime(f"sqlite:///{tmp_path / 'legion.db'}", worker=False) as rt:
        tasks = await rt.store.list_tasks(TaskQuery(limit=1000))
    return [t for t in tasks if t.error is not None]


def test_a_cost_budget_counts_the_configured_prices(tmp_path: Path) -> None:
    proc, url = start_sim("--model", "sim-model", "--latency", "0.01")
    try:
        (tmp_path / "app.py").write_text(AGENT)
        write_jsonl(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(TASKS)])
        # $1,000 per million tokens either way: a call of ~30 tokens costs ~$0.03.
        config = tmp_path / "legion.toml"
        config.write_text(
            f'[llm.default]\nprovider = "openai"\nmodel = "sim-model"\nbase_url = "{url}"\n'
            "input_price = 1000\noutput_price = 1000\n"
        )
        code, output = _run(tmp_path, url, "--max-cost", "0.2", config=config)
        assert code == 3, output
        assert "--max-cost $0.2" in output, output
        stats = sim_stats(url)
        spent = (stats["prompt_tokens"] + stats["completion_tokens"]) * 1000 / 1e6
        assert spent <= 0.2, stats
        assert "budget_exceeded" in _statuses(tmp_path)

        code, output = _run(tmp_path, url, "--max-cost", "100", config=config)
        assert code == 0, output
        assert _statuses(tmp_path) == ["succeeded"] * TASKS
        assert sim_stats(url)["succeeded"] == CALLS
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_cost_budget_on_a_model_without_a_price_is_refused(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(AGENT)
    write_jsonl(tmp_path / "in.jsonl", [{"question": "q"}])
    code, output = _run(tmp_path, "http://127.0.0.1:9/v1", "--max-cost", "1", model="mystery")
    assert code == 2, output
    assert "needs a price" in output and "Traceback" not in output, output


def test_an_agents_cost_budget_on_a_model_without_a_price_is_refused(tmp_path: Path) -> None:
    # The run started, parked every task and told the user to raise the limit, which
    # could never help.
    (tmp_path / "app.py").write_text(AGENT.replace("retries=0", "retries=0, max_cost=1.0"))
    write_jsonl(tmp_path / "in.jsonl", [{"question": "q"}])
    code, output = _run(tmp_path, "http://127.0.0.1:9/v1", model="mystery")
    assert code == 2, output
    assert "agent 'chain' has max_cost, which needs a price for every route" in output, output
    assert "Traceback" not in output


def test_a_cost_budget_on_free_routes_only_says_it_cannot_bind(tmp_path: Path) -> None:
    # The built-in simulator's price is $0: a budget rehearsed on it passed in silence.
    (tmp_path / "app.py").write_text(AGENT)
    write_jsonl(tmp_path / "in.jsonl", [{"question": "q"}])
    config = tmp_path / "legion.toml"
    config.write_text('[llm.default]\nprovider = "sim"\nmodel = "sim-model"\n')
    code, output = _run(tmp_path, "", "--max-cost", "0.000001", config=config)
    assert code == 0, output
    assert "the cost limit cannot bind: every route is free (sim-model)" in output, output


def test_an_agents_own_budget_stops_the_run_and_a_raised_one_resumes_it(tmp_path: Path) -> None:
    proc, url = start_sim("--model", "sim-model", "--latency", "0.01")
    try:
        limited = AGENT.replace("retries=0", "retries=0, max_calls=LIMIT")
        (tmp_path / "app.py").write_text(limited.replace("LIMIT", "13"))
        write_jsonl(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(TASKS)])

        code, output = _run(tmp_path, url)
        assert code == 3, output
        assert "agent 'chain' max_calls 13 reached" in output, output
        assert sim_stats(url)["requests_total"] <= 13  # not one call past the agent's budget
        statuses = _statuses(tmp_path)
        assert "budget_exceeded" in statuses and "succeeded" in statuses, statuses

        (tmp_path / "app.py").write_text(limited.replace("LIMIT", str(CALLS)))
        code, output = _run(tmp_path, url)
        assert code == 0, output
        assert _statuses(tmp_path) == ["succeeded"] * TASKS
        # The agent's budget started from the calls its tasks recorded: each bought once.
        assert sim_stats(url)["requests_total"] == CALLS
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


HOLDING = """\
import asyncio, os

import legion

@legion.agent(retries=0)
async def chain(ctx: legion.Context, question: str) -> str:
    first = await ctx.llm.chat([{"role": "user", "content": question}], max_tokens=8)
    with open(os.environ["LEDGER"], "a") as f:
        f.write(f"{question}\\n")
    if os.environ.get("HOLD"):
        await asyncio.Event().wait()  # (killed here, its first call recorded)
    second = await ctx.llm.chat([{"role": "user", "content": first.text}], max_tokens=8)
    return second.text
"""


def test_calls_paid_before_a_sigkill_count_against_the_rerun(tmp_path: Path) -> None:
    # A task's usage was written only when an attempt ended: a run killed with its calls
    # in flight (or drained, or cancelled) was read back as having spent nothing, and
    # each kill and rerun overspent the same limit again ($20 of a $10 limit, 4 kills).
    proc, url = start_sim("--model", "sim-model", "--latency", "0.01")
    ledger = tmp_path / "ledger.txt"
    try:
        (tmp_path / "app.py").write_text(HOLDING)
        write_jsonl(tmp_path / "in.jsonl", [{"question": f"q{i}"} for i in range(4)])
        args = [
            "run", f"{tmp_path / 'app.py'}:chain", "--input", str(tmp_path / "in.jsonl"),
            "--output", str(tmp_path / "out.jsonl"), "--store", f"sqlite:///{tmp_path / 'l.db'}",
            "--llm", f"openai:sim-model@{url}", "--no-progress", "--max-calls", "6",
        ]  # fmt: skip
        held = start_legion(*args, env={"HOLD": "1", "LEDGER": str(ledger)})
        try:
            wait_for(
                lambda: ledger.exists() and len(ledger.read_text().split()) == 4,
                what="every task's first call",
            )
        finally:
            held.send_signal(signal.SIGKILL)
            held.communicate(timeout=30)
        assert sim_stats(url)["requests_total"] == 4
        done = legion(*args, env={"LEDGER": str(ledger)})
        said = done.stdout + done.stderr
        assert "budget: 4 of 6 calls" in said, said
        assert done.returncode == 3, said  # (the budget stopped it)
        assert sim_stats(url)["requests_total"] == 6  # 4 before the kill, 2 after
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
