"""Run the demo agent the legacy way and scaled, against the same simulated provider,
and measure both.

- **sequential** (legacy): one task at a time, each step awaited in turn
  (`legion.demo.agent.answer_sequentially`), LLM calls through the same client,
  limits and retry policy as the scaled run;
- **scaled**: every task submitted at once to a durable `legion.Runtime` (SQLite
  file), independent steps gathered, calls paced by the shared capacity.

Each run gets a fresh in-process simulator with the same settings and seed. The *ideal*
scaled makespan for the limits is ``max(critical path of one task, total requests /
allowed request rate + one call)``, where the critical path is a sequential task's mean
time less the calls that the scaled agent makes in parallel with another; the ideal
speed-up is the sequential makespan over that, and *efficiency* is the speed-up reached
over the ideal one.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import legion
from legion.bench.recording import RecordingProvider
from legion.bench.results import Meter, Progress, fmt_ms, fmt_num, fmt_pct, quantile, quiet
from legion.demo.agent import (
    AnswerTable,
    _index,
    answer_sequentially,
    questions_for,
    research,
)
from legion.errors import LegionError
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.simulated import SimulatedProvider
from legion.retry import RetryPolicy
from legion.sim import SimConfig

Mode = Literal["sequential", "scaled"]
MODEL = "sim-model"
# Share of the injected faults that hang (never answer); the rest are server errors.
HANG_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The provider the demo rehearses against, and the run's size."""

    tasks: int = 40
    rpm: int = 3000
    tpm: int = 2_000_000
    window_seconds: float = 1.0
    """Per-minute limits are enforced over windows this long (providers quantize)."""
    latency: float = 0.25
    latency_jitter: float = 0.15
    tokens_per_second: float = 250.0
    faults: float = 0.0
    """Share of LLM requests that fail: three in four with a server error, one in four
    hangs (never answers, until the call's timeout)."""
    call_timeout: float = 10.0
    """Seconds allowed per LLM call attempt (a hang ends there, and is retried)."""
    concurrency: int = 1000
    seed: int = 1
    sequential_limit: int | None = None
    """Run at most this many tasks sequentially and extrapolate to ``tasks`` (the
    sequential makespan grows linearly with the tasks: one at a time)."""

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise ValueError("tasks must be >= 1")
        if not 0 <= self.faults <= 1:
            raise ValueError("faults must be between 0 and 1")
        if self.sequential_limit is not None and self.sequential_limit < 1:
            raise ValueError("sequential_limit must be >= 1")

    def simulator(self) -> SimConfig:
        return SimConfig(
            models=(MODEL,),
            rpm=self.rpm,
            tpm=self.tpm,
            window_seconds=self.window_seconds,
            latency=self.latency,
            latency_jitter=self.latency_jitter,
            tokens_per_second=self.tokens_per_second,
            error_rate=self.faults * (1 - HANG_SHARE),
            hang_rate=self.faults * HANG_SHARE,
            hang_seconds=max(self.call_timeout * 3, 30.0),
            seed=self.seed,
        )


@dataclass(frozen=True, slots=True)
class RunReport:
    """What one run measured."""

    mode: Mode
    tasks: int
    measured_tasks: int
    """Tasks actually run; fewer than ``tasks`` when the sequential run was extrapolated."""
    succeeded: int
    failed: int
    makespan: float
    cpu: float
    """CPU seconds of this process (simulator included, the same in both runs)."""
    rss_peak: int
    rss_growth: int
    latencies: tuple[float, ...]
    """Seconds each task's (last) attempt ran, from its start to its finish."""
    finished: tuple[float, ...]
    """Seconds since the run's start at which each task finished."""
    requests: int
    """LLM attempts sent, retries included."""
    rate_limited: int
    errors: int
    """Attempts answered with a server error."""
    no_answer: int
    """Attempts that got no answer in time (hung calls, cut at the call timeout)."""
    request_starts: tuple[float, ...]
    """Seconds since the run's start at which each attempt was sent."""
    call_latency: float
    """Mean seconds of a successful LLM call."""
    tokens_per_request: float
    """Mean tokens a request is charged against the token limit."""
    ok_calls: int

    @property
    def extrapolated(self) -> bool:
        return self.measured_tasks < self.tasks

    @property
    def throughput(self) -> float:
        return self.tasks / self.makespan if self.makespan > 0 else 0.0

    def latency(self, q: float) -> float | None:
        return quantile(self.latencies, q)

    def done_by(self, q: float) -> float | None:
        """Seconds since the start until the share ``q`` of the tasks had finished (for an
        extrapolated run: of the tasks run)."""
        return quantile(self.finished, q)


@dataclass(frozen=True, slots=True)
class Ideal:
    """The best the scaled run could do under the limits (see the module's documentation)."""

    requests_per_task: float
    rate: float
    """Requests per second the limits allow (the tighter of RPM and TPM)."""
    call_latency: float
    critical_path: float
    rate_bound: float
    makespan: float
    speedup: float
    achieved: float
    efficiency: float

    FORMULA = (
        "ideal scaled makespan = max(critical path of one task, total requests / allowed "
        "request rate + one call); ideal speed-up = sequential makespan / ideal scaled "
        "makespan; efficiency = achieved speed-up / ideal speed-up"
    )


@dataclass(frozen=True, slots=True)
class Comparison:
    config: DemoConfig
    sequential: RunReport | None
    scaled: RunReport
    ideal: Ideal | None


async def _client(cfg: DemoConfig) -> tuple[LLMClient, RecordingProvider, SimulatedProvider]:
    provider = SimulatedProvider(cfg.simulator())
    await provider.start()
    recorder = RecordingProvider(provider)
    capacity = Capacity("sim", rpm=cfg.rpm, tpm=cfg.tpm)
    route = Route("sim", recorder, MODEL, capacity, timeout=cfg.call_timeout)
    retry = RetryPolicy(retries=4, backoff=0.5, max_backoff=10.0)
    return LLMClient([route], retry=retry), recorder, provider


def _report(
    mode: Mode,
    *,
    tasks: int,
    measured: int,
    succeeded: int,
    makespan: float,
    meter: Meter,
    latencies: list[float],
    finished: list[float],
    recorder: RecordingProvider,
    t0: float,
) -> RunReport:
    assert meter.result is not None
    scale = tasks / measured
    attempts = recorder.attempts
    ok = [a for a in attempts if a.outcome == "ok"]
    admitted = [a for a in attempts if a.admitted]
    return RunReport(
        mode=mode,
        tasks=tasks,
        measured_tasks=measured,
        succeeded=succeeded,
        failed=measured - succeeded,
        makespan=makespan * scale,
        cpu=meter.result.cpu * scale,
        rss_peak=meter.result.rss_peak,
        rss_growth=meter.result.rss_growth,
        latencies=tuple(latencies),
        finished=tuple(finished),
        requests=len(attempts),
        rate_limited=sum(1 for a in attempts if a.outcome == "rate_limited"),
        errors=sum(1 for a in attempts if a.outcome == "error"),
        no_answer=sum(1 for a in attempts if a.outcome == "no_answer"),
        request_starts=tuple(a.start - t0 for a in attempts),
        call_latency=sum(a.end - a.start for a in ok) / len(ok) if ok else 0.0,
        tokens_per_request=sum(a.charge for a in admitted) / len(admitted) if admitted else 0.0,
        ok_calls=len(ok),
    )


def _every(total: int) -> int:
    return max(1, total // 10)


async def run_sequential(
    cfg: DemoConfig, questions: Sequence[str], folder: Path, progress: Progress = quiet
) -> RunReport:
    """The legacy way: one task at a time, each step awaited in turn."""
    measured = len(questions) if cfg.sequential_limit is None else cfg.sequential_limit
    measured = min(measured, len(questions))
    client, recorder, _ = await _client(cfg)
    table = AnswerTable(str(folder / "sequential-answers.db"))
    latencies: list[float] = []
    finished: list[float] = []
    succeeded = 0
    try:
        with Meter() as meter:
            t0 = time.perf_counter()
            for i, question in enumerate(questions[:measured]):
                started = time.perf_counter()
                try:
                    await answer_sequentially(question, client, table)
                    succeeded += 1
                except LegionError as exc:
                    progress(f"  sequential: task {i + 1} failed: {type(exc).__name__}: {exc}")
                now = time.perf_counter()
                latencies.append(now - started)
                finished.append(now - t0)
                if (i + 1) % _every(measured) == 0:
                    progress(f"  sequential: {i + 1}/{measured} tasks, {now - t0:.1f} s")
            makespan = time.perf_counter() - t0
    finally:
        table.close()
        await client.aclose()
    return _report(
        "sequential",
        tasks=len(questions),
        measured=measured,
        succeeded=succeeded,
        makespan=makespan,
        meter=meter,
        latencies=latencies,
        finished=finished,
        recorder=recorder,
        t0=t0,
    )


async def run_scaled(
    cfg: DemoConfig, questions: Sequence[str], folder: Path, progress: Progress = quiet
) -> RunReport:
    """Every task at once through a durable runtime."""
    client, recorder, _ = await _client(cfg)
    url = f"sqlite:///{folder / f'scaled-{time.monotonic_ns()}.db'}"
    latencies: list[float] = []
    finished: list[float] = []
    succeeded = 0
    try:
        with Meter() as meter:
            async with legion.Runtime(url, concurrency=cfg.concurrency, llm=client) as rt:
                t0 = time.perf_counter()
                async for result in rt.map(research, questions):
                    now = time.perf_counter()
                    finished.append(now - t0)
                    if result.started_at is not None and result.finished_at is not None:
                        latencies.append(result.finished_at - result.started_at)
                    if result.ok:
                        succeeded += 1
                    elif result.error is not None:
                        progress(f"  scaled: a task failed: {result.error.type}")
                    if len(finished) % _every(len(questions)) == 0:
                        progress(
                            f"  scaled: {len(finished)}/{len(questions)} tasks, {now - t0:.1f} s"
                        )
                makespan = time.perf_counter() - t0
    finally:
        await client.aclose()
    return _report(
        "scaled",
        tasks=len(questions),
        measured=len(questions),
        succeeded=succeeded,
        makespan=makespan,
        meter=meter,
        latencies=latencies,
        finished=finished,
        recorder=recorder,
        t0=t0,
    )


def extrapolate(report: RunReport, tasks: int) -> RunReport:
    """A sequential run's figures for ``tasks`` tasks: one task at a time, the makespan
    and CPU time grow in proportion."""
    scale = tasks / report.tasks
    return dataclasses.replace(
        report, tasks=tasks, makespan=report.makespan * scale, cpu=report.cpu * scale
    )


def ideal_for(cfg: DemoConfig, sequential: RunReport, scaled: RunReport) -> Ideal:
    """The ideal scaled makespan and speed-up for ``cfg``'s limits, from what the
    sequential run measured (call latency, requests per task, tokens per request)."""
    requests_per_task = sequential.ok_calls / sequential.measured_tasks
    rates = [cfg.rpm / 60.0]
    if sequential.tokens_per_request > 0:
        rates.append(cfg.tpm / 60.0 / sequential.tokens_per_request)
    rate = min(rates)
    task_time = sum(sequential.latencies) / len(sequential.latencies)
    # The scaled agent makes the per-passage calls at once: of its calls, only two (one
    # per-passage call, then the combining one) are on its critical path.
    parallel = max(0.0, requests_per_task - 2)
    critical = max(0.0, task_time - parallel * sequential.call_latency)
    rate_bound = requests_per_task * cfg.tasks / rate + sequential.call_latency
    makespan = max(critical, rate_bound)
    speedup = sequential.makespan / makespan
    achieved = sequential.makespan / scaled.makespan
    return Ideal(
        requests_per_task=requests_per_task,
        rate=rate,
        call_latency=sequential.call_latency,
        critical_path=critical,
        rate_bound=rate_bound,
        makespan=makespan,
        speedup=speedup,
        achieved=achieved,
        efficiency=achieved / speedup,
    )


async def compare(
    cfg: DemoConfig,
    *,
    sequential: bool = True,
    sequential_report: RunReport | None = None,
    progress: Progress = quiet,
    workdir: Path | None = None,
) -> Comparison:
    """Run both ways (or only scaled) and compare. ``sequential_report``: reuse a
    sequential run of the same configuration (extrapolated to ``cfg.tasks``) instead of
    running one again."""
    questions = questions_for(cfg.tasks)
    _index()  # build the search index before either run is timed
    with tempfile.TemporaryDirectory(prefix="legion-demo-", dir=workdir) as tmp:
        folder = Path(tmp)
        seq = None
        if sequential_report is not None:
            seq = extrapolate(sequential_report, cfg.tasks)
        elif sequential:
            limit = cfg.sequential_limit
            note = f" (the first {limit}, extrapolated)" if limit and limit < cfg.tasks else ""
            progress(f"sequential: {cfg.tasks} tasks one at a time{note}")
            seq = await run_sequential(cfg, questions, folder, progress)
        progress(f"scaled: {cfg.tasks} tasks at once")
        scaled = await run_scaled(cfg, questions, folder, progress)
    ideal = ideal_for(cfg, seq, scaled) if seq is not None else None
    return Comparison(cfg, seq, scaled, ideal)


# -- presenting ----------------------------------------------------------------------


def rows(c: Comparison) -> list[tuple[str, str, str]]:
    """The side-by-side table: (measure, sequential, scaled)."""

    def row(label: str, show: Callable[[RunReport], str]) -> tuple[str, str, str]:
        seq = "-" if c.sequential is None else show(c.sequential)
        return (label, seq, show(c.scaled))

    def mark(r: RunReport) -> str:
        return " (extrapolated)" if r.extrapolated else ""

    def tasks(r: RunReport) -> str:
        return f"{r.tasks:,}" + (f" ({r.measured_tasks} run)" if r.extrapolated else "")

    def memory(r: RunReport) -> str:
        return f"{r.rss_peak / 2**20:,.0f} MB (+{r.rss_growth / 2**20:,.0f})"

    out = [
        row("tasks", tasks),
        row("makespan", lambda r: f"{r.makespan:,.2f} s{mark(r)}"),
        row("throughput", lambda r: f"{r.throughput:,.2f} tasks/s"),
        row("latency p50", lambda r: fmt_ms(r.latency(0.50))),
        row("latency p95", lambda r: fmt_ms(r.latency(0.95))),
        row("latency p99", lambda r: fmt_ms(r.latency(0.99))),
        row("CPU time", lambda r: f"{r.cpu:,.2f} s{mark(r)}"),
        row("peak memory (RSS)", memory),
        row("LLM requests", lambda r: _counted(r.requests, r)),
        row("429s", lambda r: _counted(r.rate_limited, r)),
        row("server errors (5xx)", lambda r: _counted(r.errors, r)),
        row("hung calls (timed out)", lambda r: _counted(r.no_answer, r)),
        row("tasks failed", lambda r: _counted(r.failed, r)),
        row("half of the tasks done after", lambda r: _seconds(r.done_by(0.5), r)),
        row("90 % of the tasks done after", lambda r: _seconds(r.done_by(0.9), r)),
    ]
    if c.ideal is not None:
        i = c.ideal
        speedup = f"{i.achieved:,.1f}x (ideal {i.speedup:,.1f}x)"
        out.append(("speed-up", "1.00x", speedup))
        out.append(("efficiency (speed-up / ideal)", "-", fmt_pct(i.efficiency)))
    return out


def _counted(n: int, r: RunReport) -> str:
    """A count of what ``r``'s run did: of the tasks it ran, when extrapolated."""
    return f"{n:,}" + (f" (of {r.measured_tasks} run)" if r.extrapolated else "")


def _seconds(value: float | None, r: RunReport) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f} s" + (" (of those run)" if r.extrapolated else "")


def ideal_lines(c: Comparison) -> list[str]:
    """How the ideal was computed, with the numbers."""
    if c.ideal is None:
        return []
    i = c.ideal
    caveat = (
        ["the ideal assumes no faults: with --faults, compare the tasks done over time."]
        if c.config.faults
        else []
    )
    return [
        *caveat,
        Ideal.FORMULA + ".",
        f"allowed rate {fmt_num(i.rate, 1)} requests/s ({c.config.rpm:,} rpm, "
        f"{c.config.tpm:,} tpm); {i.requests_per_task:.2f} requests per task; mean call "
        f"{i.call_latency * 1000:,.0f} ms (all measured in the sequential run)",
        f"critical path {i.critical_path:,.2f} s; rate bound {i.rate_bound:,.2f} s; "
        f"ideal scaled makespan {i.makespan:,.2f} s",
    ]


def as_dict(c: Comparison) -> dict[str, object]:
    """The comparison as JSON data (per-task series left out)."""

    def run(r: RunReport | None) -> dict[str, object] | None:
        if r is None:
            return None
        data = dataclasses.asdict(r)
        for key in ("latencies", "finished", "request_starts"):
            data.pop(key)
        data.update(
            throughput=r.throughput,
            p50=r.latency(0.5),
            p95=r.latency(0.95),
            p99=r.latency(0.99),
            extrapolated=r.extrapolated,
        )
        return data

    return {
        "config": dataclasses.asdict(c.config),
        "sequential": run(c.sequential),
        "scaled": run(c.scaled),
        "ideal": dataclasses.asdict(c.ideal) if c.ideal is not None else None,
        "ideal_formula": Ideal.FORMULA,
    }
