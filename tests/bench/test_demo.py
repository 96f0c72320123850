"""The demo agent and its comparison, at a tiny size, and the HTML report."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from legion.demo import questions_for, sample_questions
from legion.demo.agent import HITS, read, search
from legion.demo.compare import DemoConfig, compare, extrapolate, rows
from legion.demo.report import render

FAST = DemoConfig(
    tasks=3,
    rpm=60_000,
    tpm=10_000_000,
    latency=0.01,
    latency_jitter=0.0,
    tokens_per_second=100_000,
)


def test_the_sample_questions_ship_with_the_package_and_find_passages() -> None:
    questions = sample_questions()
    assert len(questions) == 40
    for question in questions[:5]:
        hits = search(question)
        assert len(hits) == HITS
        note = read(hits[0], question)
        assert note["topic"] and 0 < len(note["summary"]) <= 400
    many = questions_for(45)
    assert len(set(many)) == 45  # repeats are numbered, so every input is distinct


async def test_compare_runs_both_ways_and_reports(tmp_path: Path) -> None:
    c = await compare(FAST, workdir=tmp_path)
    assert c.sequential is not None and c.ideal is not None
    for run in (c.sequential, c.scaled):
        assert (run.tasks, run.succeeded, run.failed) == (3, 3, 0)
        assert run.requests == 3 * (HITS + 1) and run.rate_limited == 0
        assert len(run.latencies) == len(run.finished) == 3
    assert c.ideal.requests_per_task == HITS + 1
    assert {label for label, _, _ in rows(c)} >= {"makespan", "latency p99", "429s"}
    longer = extrapolate(c.sequential, 30)
    assert longer.makespan == pytest.approx(c.sequential.makespan * 10)
    # Counts are of the tasks run, and say so: 3 tasks' requests beside 30 tasks' read as
    # two runs that made different numbers of calls.
    shown = dict((label, seq) for label, seq, _ in rows(replace(c, sequential=longer)))
    assert shown["LLM requests"] == f"{3 * (HITS + 1)} (of 3 run)"
    assert shown["429s"] == "0 (of 3 run)" and shown["tasks"] == "30 (3 run)"
    assert shown["makespan"].endswith("(extrapolated)")

    html = render(c)
    assert html.startswith("<!doctype html>") and html.count("<svg") == 3
    assert not re.search(r"(src|href)=\"https?://", html)  # self-contained


async def test_faults_are_retried_and_scaled_only_skips_the_legacy_run(tmp_path: Path) -> None:
    cfg = DemoConfig(
        tasks=4,
        rpm=60_000,
        tpm=10_000_000,
        latency=0.01,
        latency_jitter=0.0,
        tokens_per_second=100_000,
        faults=0.3,
        call_timeout=0.5,
        seed=3,
    )
    c = await compare(cfg, sequential=False, workdir=tmp_path)
    assert c.sequential is None and c.ideal is None
    assert c.scaled.errors + c.scaled.no_answer > 0
    assert c.scaled.succeeded + c.scaled.failed == 4
    assert "<svg" in render(c)
