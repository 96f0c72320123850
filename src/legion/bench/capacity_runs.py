"""The parts every capacity scenario shares: the options, the agents, running legion
against a simulator while recording each attempt, and the figures of a run."""

from __future__ import annotations

import collections
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import legion
from legion.bench.recording import Attempt, RecordingProvider
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.provider import ChatResult
from legion.llm.simulated import SimulatedProvider
from legion.llm.types import ChatRequest
from legion.sim import SimConfig

MODEL = "sim-model"
MAX_TOKENS = 100
_TASK = re.compile(r"task (\d{6})")


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    """Sizes of the scenarios; ``quick`` scales the long ones down."""

    quick: bool = False
    tasks: int = 2000
    rpm: int = 6000
    error_rate: float = 0.05
    latency: float = 0.4
    latency_jitter: float = 0.4
    fault_start: float = 3.0
    storm_seconds: float = 60.0
    outage_seconds: float = 45.0
    low_rpm: int = 120
    low_rpm_tasks: int = 200
    low_rpm_timeout: float = 20.0
    tuned_concurrency: int = 4
    seed: int = 7
    interactive_tasks: int = 150
    """priority: interactive tasks, one every ``interactive_every`` seconds (enough of
    them for a p95 that a few failed calls do not decide)."""
    interactive_every: float = 0.1
    batch_factor: int = 5
    """priority: batch tasks per task of ``tasks`` (10,000 in the full run)."""
    fill_seconds: float = 2.0
    """priority: how long the batch runs alone before the interactive tasks come."""

    @classmethod
    def scaled_down(cls) -> ScenarioOptions:
        """Runs of at most a minute or so each, on a small machine."""
        return cls(
            quick=True,
            tasks=600,
            storm_seconds=10.0,
            outage_seconds=10.0,
            low_rpm=240,
            low_rpm_tasks=100,
        )


def _messages(task: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": f"Summarize the notes of task {task:06d}. " * 4},
    ]


@legion.agent(name="bench-scenario", retries=3, timeout=600)
async def two_calls(ctx: legion.Context, task: int) -> int:
    """Two LLM calls, one after the other."""
    tokens = 0
    for call in range(2):
        messages = [*_messages(task), {"role": "user", "content": f"part {call}"}]
        tokens += (await ctx.llm.chat(messages, max_tokens=MAX_TOKENS)).usage.total
    return tokens


@legion.agent(name="bench-one-call", retries=3, timeout=20)
async def one_call(ctx: legion.Context, task: int) -> int:
    """One LLM call, under a 20 s agent timeout."""
    return (await ctx.llm.chat(_messages(task), max_tokens=MAX_TOKENS)).usage.total


class _PerTask:
    """Counts provider calls per task (read from the prompt), around a recorder."""

    def __init__(self, inner: RecordingProvider) -> None:
        self.inner = inner
        self.calls: collections.Counter[int] = collections.Counter()

    @property
    def name(self) -> str:
        return self.inner.name

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        content = request.messages[1].get("content")
        found = _TASK.search(content) if isinstance(content, str) else None
        if found is not None:
            self.calls[int(found.group(1))] += 1
        return await self.inner.chat(request, timeout=timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True, slots=True)
class _Run:
    makespan: float
    statuses: dict[str, int]
    lost: int
    latencies: list[float]
    attempts: Sequence[Attempt]
    calls_per_task: collections.Counter[int]
    origin: float
    first_error: str | None


async def _run_legion(
    sim: SimConfig,
    capacity: Capacity,
    agent: legion.Agent,
    tasks: int,
    concurrency: int,
    folder: Path,
) -> _Run:
    provider = SimulatedProvider(sim)
    await provider.start()
    origin = time.perf_counter()
    recorder = RecordingProvider(provider)
    counting = _PerTask(recorder)
    client = LLMClient([Route("default", counting, MODEL, capacity, timeout=30.0)])
    url = f"sqlite:///{folder / f'scenario-{time.monotonic_ns()}.db'}"
    statuses: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    first_error = None
    async with client, legion.Runtime(url, concurrency=concurrency, llm=client) as rt:
        t0 = time.perf_counter()
        async for result in rt.map(agent, [{"task": i} for i in range(tasks)]):
            latencies.append(time.perf_counter() - t0)
            statuses[str(result.status)] += 1
            if not result.ok and first_error is None and result.error is not None:
                first_error = f"{result.error.type}: {result.error.message}"
        makespan = time.perf_counter() - t0
    return _Run(
        makespan,
        dict(statuses),
        tasks - len(latencies),
        latencies,
        recorder.attempts,
        counting.calls,
        origin,
        first_error,
    )


def _sim(opts: ScenarioOptions, rpm: int, **changes: Any) -> SimConfig:
    return SimConfig(
        models=(MODEL,),
        rpm=rpm,
        window_seconds=1.0,
        rejected_count_against_limit=True,
        error_rate=opts.error_rate,
        latency=opts.latency,
        latency_jitter=opts.latency_jitter,
        seed=opts.seed,
        **changes,
    )


def _figures(run: _Run, rpm: int, calls_per_task: int) -> dict[str, Any]:
    attempts = run.attempts
    admitted = [a for a in attempts if a.admitted]
    ok = sum(1 for a in attempts if a.outcome == "ok")
    limited = len(attempts) - len(admitted)
    steady = None
    starts = sorted(a.start for a in admitted)
    if len(starts) >= 20:
        lo, hi = starts[len(starts) // 20], starts[len(starts) * 19 // 20]
        if hi > lo:
            inside = sum(1 for s in starts if lo <= s < hi)
            steady = inside / (hi - lo) / (rpm / 60.0)
    per_task = list(run.calls_per_task.values()) or [0]
    succeeded = run.statuses.get("succeeded", 0)
    return {
        "makespan_s": run.makespan,
        "statuses": run.statuses,
        "lost": run.lost,
        "dead_or_failed": sum(n for s, n in run.statuses.items() if s != "succeeded"),
        "first_error": run.first_error,
        "p50_latency_s": statistics.median(run.latencies) if run.latencies else None,
        "attempts": len(attempts),
        "ok_attempts": ok,
        "rate_limited": limited,
        "rate_limited_share": limited / len(attempts) if attempts else 0.0,
        "server_errors": sum(1 for a in attempts if a.outcome in ("error", "no_answer")),
        "steady_pct_of_limit": steady,
        "calls_per_task_mean": statistics.fmean(per_task),
        "calls_per_task_max": max(per_task),
        # Every successful call is paid once: calls = successes + failed calls retried.
        "paid_twice": ok - succeeded * calls_per_task,
    }


def _probes(run: _Run, start: float, end: float) -> dict[str, Any]:
    """Requests sent per whole second inside the fault span (its first two seconds left
    out: the calls already under way when it began, and their first retries, sent before
    the route was seen failing)."""
    lo, hi = run.origin + start + 2.0, run.origin + end
    buckets = [0] * max(1, math.floor(hi - lo))
    for a in run.attempts:
        if lo <= a.start < hi:
            buckets[min(len(buckets) - 1, int(a.start - lo))] += 1
    last = max((a.end for a in run.attempts if a.outcome == "ok"), default=hi)
    return {
        "fault_seconds": end - start,
        "probes_per_second_max": max(buckets),
        "probes_per_second_mean": statistics.fmean(buckets),
        "drain_after_fault_s": max(0.0, last - (run.origin + end)),
    }
