"""The live line of ``legion run``: its numbers, and log records printed above it."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from pathlib import Path

from rich.console import Console

from legion import Runtime
from legion.cli.progress import Progress, RunTally, llm_counts, rate_text
from legion.cli.run import _refresh
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.hedge import HedgeSettings
from legion.llm.provider import ChatResult
from legion.llm.types import ChatRequest, ChatResponse, RateLimitInfo, Usage
from legion.task import NewTask, TaskStatus
from legion.testing import ScriptedProvider


def test_rates_keep_the_precision_they_deserve() -> None:
    assert [rate_text(r) for r in (0.0, 0.04, 0.4, 2.06, 9.94, 12.4, 1234.4)] == [
        "0",
        "0.04",
        "0.4",
        "2.1",
        "9.9",
        "12",
        "1,234",
    ]


async def test_llm_counts_count_each_capacity_once_and_every_key_of_a_pool() -> None:
    shared, key1, key2 = Capacity("sim:m"), Capacity("openai:x#1"), Capacity("openai:x#2")
    answers = ScriptedProvider(["ok"] * 10)
    client = LLMClient(
        [
            # Two routes on one capacity: its counters are counted once.
            Route("a", answers, "m", shared),
            Route("b", answers, "m", shared),
            # A pool of two keys, each with a capacity of its own: both are counted
            # (the second key's requests and 429s were missed).
            Route("p", answers, "x", key1, deployment="p#1"),
            Route("p", answers, "x", key2, deployment="p#2"),
        ]
    )
    ask = [{"role": "user", "content": "hi"}]
    for route in ("a", "b", "b", "p"):
        await client.chat(ask, route)
    for _ in range(3):  # three requests through the pool's second key
        await key2.acquire(1)
        key2.release()
    key2.rate_limited(0.0)
    assert llm_counts(client) == "LLM 7 sent, 0 waiting, 1 429s"


def test_the_line_off_a_terminal_shows_a_slow_rate() -> None:
    tally = RunTally(total=10)
    tally.started -= 10.0  # 4 tasks in 10 s
    tally.by_status[next(iter(tally.by_status))] += 4
    console = Console(file=io.StringIO(), force_terminal=False)
    line = Progress(tally, agent="a", console=console).line()
    assert "0.4 tasks/s" in line


def test_log_records_print_above_the_live_display() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80, markup=False)
    root = logging.getLogger()
    raw = logging.StreamHandler(buf)  # as basicConfig(stream=sys.stderr) would be
    raw.setFormatter(logging.Formatter("LOG %(message)s"))
    root.addHandler(raw)
    try:
        with Progress(RunTally(total=3), agent="a", console=console):
            assert raw not in root.handlers
            logging.getLogger("legion.test").warning("hello [bold]x[/]")
        assert raw in root.handlers  # restored
    finally:
        root.removeHandler(raw)
    out = buf.getvalue()
    assert out.count("LOG hello [bold]x[/]") == 1
    # Printed through the live console: the display is erased first (cursor up and
    # erase line), then the record, then the display again below it.
    before = out[: out.index("LOG hello")]
    assert before.endswith("\x1b[1A\x1b[2K"), repr(before[-60:])


def test_the_line_says_how_many_tasks_wait_and_where_to_find_them() -> None:
    # A run whose tasks waited for a signal showed "in flight 0" and looked stuck.
    console = Console(file=io.StringIO(), width=200)
    progress = Progress(RunTally(total=3), agent="gate", console=console)
    assert "waiting" not in progress.line()
    progress.waiting = 2
    assert "| waiting 2 (legion status lists them)" in progress.line()


async def test_without_a_local_worker_the_line_counts_the_runs_agent_alone(tmp_path: Path) -> None:
    # `legion run --no-local-worker` of 20 tasks showed "in flight 217": every task
    # running in the store, of every agent the fleet runs.
    async with Runtime(f"sqlite:///{tmp_path / 'p.db'}", worker=False) as rt:
        await rt.store.submit([NewTask("other", b"{}") for _ in range(3)], time.time())
        await rt.store.submit([NewTask("mine", b"{}") for _ in range(2)], time.time())
        await rt.store.lease("w", {"other": 3, "mine": 1}, 4, time.time() + 60, time.time())
        console = Console(file=io.StringIO(), width=200)
        progress = Progress(RunTally(total=2), agent="mine", console=console)
        await _refresh(rt, progress)
    assert "in flight 1" in progress.line()


async def test_the_summary_counts_the_429s_of_a_fallback_that_answered_a_routes_calls() -> None:
    """The fallback has no calls of its own, so no line of the summary showed its 429s:
    the route's line said 0 429s beside its calls' RateLimited errors."""
    main, backup = Capacity("main"), Capacity("backup")
    client = LLMClient(
        [
            Route("main", ScriptedProvider([]), "m", main, fallback=("backup",)),
            Route("backup", ScriptedProvider(["ok"] * 3), "m", backup),
        ]
    )
    for _ in range(3):  # main is failing: its calls go to the backup
        main.failed(sent_at=0.0)
    await client.chat([{"role": "user", "content": "hi"}], "main")
    backup.rate_limited(0.0)  # (as an answer's 429 counts it)
    console = Console(file=io.StringIO())
    progress = Progress(RunTally(total=1), agent="a", console=console, llm=client, enabled=False)
    (line,) = progress.llm_line().splitlines()
    assert line.startswith("llm main (scripted:m): 1 calls, 1 requests, 0 429s (and at its ")
    assert "0 429s (and at its fallback backup 1)" in line and "answered by backup 1" in line


class _SlowOnce:
    """Answers at once, but for the second request, which waits for ever (until its hedged
    copy has answered and it is cancelled)."""

    name = "slow-once"

    def __init__(self) -> None:
        self.requests = 0

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        self.requests += 1
        if self.requests == 2:
            await asyncio.Event().wait()
        response = ChatResponse("ok", (), "stop", Usage(1, 1), request.model, self.name)
        return ChatResult(response, RateLimitInfo())

    async def aclose(self) -> None:
        return None


async def test_the_summary_says_how_many_calls_were_hedged() -> None:
    """A route with hedging said nothing of its hedges: whether any copy was sent could
    not be told from the summary."""
    hedge = HedgeSettings(percentile=50, min_delay=0.01, min_samples=1)
    client = LLMClient([Route("r", _SlowOnce(), "m", Capacity("r"), hedge=hedge)])
    for _ in range(2):  # the first makes a sample; the second's copy answers first
        await client.chat([{"role": "user", "content": "hi"}], "r")
    console = Console(file=io.StringIO())
    progress = Progress(RunTally(total=2), agent="a", console=console, llm=client, enabled=False)
    assert "; 1 hedged, 1 of them first" in progress.llm_line()


async def test_the_summary_says_a_route_was_paced_at_a_rate_it_found() -> None:
    """A provider that tells no limit (no --rpm, no rate-limit headers) is paced from a
    slow start: a run's tasks took ~2.5 s against ~0.9 s with --rpm given, and its summary
    said "0 429s" and nothing of the pace, so the time read as the agent's."""
    untold = Capacity("untold", discover=True)
    client = LLMClient(
        [
            Route("untold", ScriptedProvider(["ok"]), "m", untold),
            Route("told", ScriptedProvider(["ok"]), "m", Capacity("told", rpm=600)),
        ]
    )
    for name in ("untold", "told"):
        await client.chat([{"role": "user", "content": "hi"}], name)
    console = Console(file=io.StringIO())
    progress = Progress(RunTally(total=2), agent="a", console=console, llm=client, enabled=False)
    found, told = progress.llm_line().splitlines()
    assert re.search(r"paced from a slow start to the rate found, [\d,]+ rpm \(--rpm", found), found
    assert "rate found" not in told, told


async def test_the_summary_says_calls_answered_by_a_batch_job_and_finds_no_rate_from_them() -> None:
    """A run whose calls all went through the batch tier was summed up as '1000 calls,
    1000 requests' paced 'from a slow start to the rate found': no request was sent on
    its own, and nothing was paced."""
    untold = Capacity("untold", discover=True)
    client = LLMClient([Route("main", ScriptedProvider([]), "m", untold)])
    for i in range(3):
        client.settle_batch("main", ChatResponse(f"answer {i}", usage=Usage(5, 2), model="m"))
    console = Console(file=io.StringIO())
    progress = Progress(RunTally(total=3), agent="a", console=console, llm=client, enabled=False)
    line = progress.llm_line()
    assert "3 calls, 3 of them by the batch tier" in line, line
    assert "rate found" not in line, line


def test_the_line_tells_dead_from_failed_as_the_summary_does() -> None:
    """The line said "failed 8" for 8 dead tasks, where the summary and `legion status`
    said dead, and `legion retry --failed` found none."""
    tally = RunTally(total=12)
    tally.by_status[TaskStatus.DEAD] = 8
    tally.by_status[TaskStatus.FAILED] = 1
    tally.by_status[TaskStatus.CANCELLED] = 2
    tally.bad_lines = 1
    line = Progress(tally, agent="a", console=Console(file=io.StringIO())).line()
    assert "| failed 2 | dead 8" in line, line
