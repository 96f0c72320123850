"""Admission follows capacity, against a real simulator process: waiting for capacity is
not attempt time, a deadline says what the task waited for, and a failing route neither
multiplies retries nor gets more than a probe a second."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, read_jsonl, sim_stats, start_sim, write_jsonl

AGENTS = """
import asyncio

import legion


@legion.agent(timeout=1, retries=0)
async def nap(ctx, i: int):
    await asyncio.sleep(0.3)
    return i


@legion.agent(timeout=1, retries=3)
async def quick(ctx, i: int):
    answer = await ctx.llm.chat([{"role": "user", "content": f"question {i}"}], max_tokens=8)
    return answer.text


@legion.agent(timeout=60, deadline=1.5, retries=3)
async def hurried(ctx, i: int):
    answer = await ctx.llm.chat([{"role": "user", "content": f"question {i}"}], max_tokens=8)
    return answer.text
"""


@pytest.fixture
def sim_at(tmp_path: Path) -> Iterator[Callable[..., str]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, config: str | None = None) -> str:
        extra: list[str] = []
        if config is not None:
            path = tmp_path / f"sim-{len(procs)}.toml"
            path.write_text("[sim]\n" + config)
            extra = ["--config", str(path)]
        proc, url = start_sim("--latency", "0.02", *extra, *args)
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def _run(tmp_path: Path, agent: str, url: str, tasks: int, *args: str) -> list[dict[str, object]]:
    (tmp_path / "app.py").write_text(AGENTS)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in range(tasks)])
    out = tmp_path / "out.jsonl"
    r = legion(
        "run",
        f"{tmp_path / 'app.py'}:{agent}",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        f"sqlite:///{tmp_path / 'db'}",
        "--llm",
        f"openai:sim-model@{url}",
        "--no-progress",
        *args,
        timeout=180,
    )
    assert r.returncode in (0, 1), r.stderr
    return read_jsonl(out)


def test_waiting_for_capacity_is_not_attempt_time(tmp_path: Path, sim_at) -> None:  # type: ignore[no-untyped-def]
    # 40 one-call tasks at 10 calls a second under the default concurrency: most wait for
    # their turn far longer than the agent's 1 s timeout, and none is charged for it.
    url = sim_at("--rpm", "600", "--window-seconds", "1")
    rows = _run(tmp_path, "quick", url, 40, "--rpm", "600")
    assert len(rows) == 40
    assert [row["status"] for row in rows] == ["succeeded"] * 40
    assert all(row["attempts"] == 1 for row in rows)
    stats = sim_stats(url)
    assert stats["by_status"]["200"] == 40  # each call paid once (a stray 429 may come)


def test_waiting_for_a_free_child_process_is_not_attempt_time(
    tmp_path: Path,
    sim_at: Callable[..., str],
) -> None:
    # One child process, eight tasks of 0.3 s each under a 1 s timeout and no retries:
    # the last ones wait far longer than 1 s for the child, and none is charged for it.
    url = sim_at()
    rows = _run(tmp_path, "nap", url, 8, "--executor", "process", "--pool-size", "1")
    assert [row["status"] for row in rows] == ["succeeded"] * 8


@pytest.mark.parametrize(
    ("agent", "flags"), [("hurried", ()), ("quick", ("--deadline", "1.5"))], ids=["agent", "cli"]
)
def test_a_deadline_says_what_the_task_waited_for(
    tmp_path: Path,
    sim_at: Callable[..., str],
    agent: str,
    flags: tuple[str, ...],
) -> None:
    # One call a second: tasks further back wait past their 1.5 s deadline (the agent's
    # option, or --deadline).
    url = sim_at("--rpm", "60", "--window-seconds", "1")
    rows = _run(tmp_path, agent, url, 8, "--rpm", "60", *flags)
    late = [row for row in rows if row["status"] != "succeeded"]
    assert late, rows
    for row in late:
        assert row["status"] == "failed"  # a deadline bounds the whole: not retried
        error = row["error"]
        assert isinstance(error, dict)
        assert error["type"] == "DeadlineExceeded"
        assert "deadline of 1.5s" in error["message"]
        assert "for capacity on route" in error["message"]
        assert "running" in error["message"]
    assert all(row["attempts"] == 1 for row in rows)


@pytest.mark.parametrize("status", [503, 429])
def test_a_failing_route_costs_no_attempts_and_gets_a_probe_a_second(
    tmp_path: Path,
    sim_at: Callable[..., str],
    status: int,
) -> None:
    # Every request is answered `status` for the simulator's first 10 s, then the route is
    # healthy.
    url = sim_at(config=f"fault_schedule = [[0, 10, {status}]]\nrate_limit_headers = false\n")
    rows = _run(tmp_path, "quick", url, 20, "--rpm", "6000")
    assert [row["status"] for row in rows] == ["succeeded"] * 20
    # The failures were waited out inside the attempt: no task attempt spent on them,
    # no completion paid twice.
    assert all(row["attempts"] == 1 for row in rows)
    stats = sim_stats(url)
    assert stats["by_status"]["200"] == 20
    failures = stats["by_status"][str(status)]
    assert stats["requests_total"] == 20 + failures
    # Once the route is seen failing (its first seconds), one probe a second at most
    # (two in a whole-second bucket: a probe sent on a boundary may land on either side).
    per_second = {int(k): v for k, v in stats["requests_by_second"].items()}
    first = min(per_second)
    assert first + 2 < 9, per_second  # the run met the fault for long enough to tell
    assert all(per_second.get(second, 0) <= 2 for second in range(first + 2, 9)), per_second
