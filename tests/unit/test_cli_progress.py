"""The live line of ``legion run``: its numbers, and log records printed above it."""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any

from rich.console import Console

from legion.cli.progress import Progress, RunTally, llm_counts, rate_text
from legion.llm.capacity import Capacity
from legion.llm.client import LLMStatistics, RouteStatistics
from legion.llm.types import Usage


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


def _route(name: str, capacity: Capacity, **counts: Any) -> RouteStatistics:
    return RouteStatistics(
        name=name,
        provider="sim",
        model="m",
        calls=10,
        succeeded=0,
        failed=0,
        attempts=10,
        retries=0,
        errors={},
        usage=Usage(),
        cost_usd=0.0,
        capacity=dataclasses.replace(capacity.statistics(), **counts),
    )


def test_llm_counts_show_requests_sent_apart_from_calls_waiting() -> None:
    shared, other = Capacity("sim:m"), Capacity("openai:x")
    stats = LLMStatistics(
        routes={
            # Two routes on one capacity: its counters are counted once.
            "a": _route("a", shared, requests=3, waiting=7, rate_limited=1),
            "b": _route("b", shared, requests=3, waiting=7, rate_limited=1),
            "c": _route("c", other, requests=1200, waiting=0, rate_limited=2),
        },
        usage=Usage(),
        cost_usd=0.0,
    )
    assert llm_counts(stats) == "LLM 1,203 sent, 7 waiting, 3 429s"


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
