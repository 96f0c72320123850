"""``capacity``: how much of a provider's rate limit a client sustains, and at what cost.

Against the in-process provider simulator with a request limit (and, in a second run, a
token limit) enforced over short windows, as providers quantize their per-minute limits,
with a share of server errors injected: ``tasks`` tasks of ``calls`` LLM calls each (one
after the other), run by

- **legion**: a durable `legion.Runtime` on a SQLite file, every call through
  ``ctx.llm`` (the shared, adaptive `legion.llm.Capacity`, told the limit);
- **fixed concurrency**: ``asyncio.gather`` over the tasks, each call inside an
  ``asyncio.Semaphore`` with naive retries (up to ``retries``, waiting the Retry-After on
  a 429 and ``0.5 s * 2**n`` after a server error, inside the semaphore as an SDK's own
  retries are), the way most scripts are written.

Both clients talk to a fresh simulator through the same HTTP provider, and every attempt
is recorded on the client side (`legion.bench.recording`). Reported per client:

- **steady % of limit**: requests the provider admitted (everything but 429s; a server
  error uses up the limit too) per second over the middle 90 % of them (from the 5th to
  the 95th percentile of their start times: ramp-up and drain left out), divided by the
  limit (for a token limit: the tokens the simulator charged per second over the tokens
  allowed per second);
- **goodput % of limit**: successful requests (tokens) over the whole makespan, divided by
  the limit; with 5 % injected errors that also use the limit, 95 % is its ceiling;
- 429s received, attempts, tasks failed.

``scenarios`` adds the hard cases of `legion.bench.capacity_scenarios` (a limit
legion is not told, with and without rate-limit headers, a 429 storm, an outage, a low
limit under the default concurrency), legion alone, each with its own table.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import legion
from legion.bench.capacity_scenarios import SCENARIOS, ScenarioOptions, run_scenarios
from legion.bench.recording import Attempt, RecordingProvider
from legion.bench.results import (
    BenchResult,
    Plot,
    Progress,
    Table,
    fmt_num,
    fmt_pct,
    quiet,
)
from legion.errors import ProviderError, RateLimited
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.simulated import SimulatedProvider
from legion.llm.types import ChatRequest
from legion.sim import SimConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "capacity"
CAPACITY_KW: dict[str, Any] = {}
MODEL = "sim-model"
MAX_TOKENS = 100
LimitKind = Literal["rpm", "tpm"]
_SYSTEM = "You are a careful assistant. Answer in one short paragraph."
_FILLER = (
    "Summarize the following notes about throughput, rate limits and retries for a "
    "colleague who has to plan tomorrow's batch job: "
)


@dataclass(frozen=True, slots=True)
class CapacityOptions:
    """Settings of the ``capacity`` scenario (see the module's documentation)."""

    tasks: int = 2000
    calls: int = 2
    rpm: int = 6000
    tpm: int = 1_200_000
    limits: tuple[LimitKind, ...] = ("rpm", "tpm")
    window_seconds: float = 1.0
    error_rate: float = 0.05
    latency: float = 0.4
    latency_jitter: float = 0.4
    baseline_concurrency: int = 100
    baseline_retries: int = 3
    seed: int = 7
    scenarios: tuple[str, ...] = ()
    """Hard cases to run too (`legion.bench.capacity_scenarios.SCENARIOS`)."""
    quick: bool = False
    """Scale the scenarios down (a shorter storm and outage, fewer tasks)."""

    def __post_init__(self) -> None:
        if self.tasks < 1 or self.calls < 1:
            raise ValueError("tasks and calls must be >= 1")
        if any(k not in ("rpm", "tpm") for k in self.limits):
            raise ValueError("limits must name rpm and/or tpm")
        if not self.limits and not self.scenarios:
            raise ValueError("name at least one limit or scenario")
        unknown = set(self.scenarios) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")


@dataclass(frozen=True, slots=True)
class ClientRun:
    """One client against one limit."""

    client: str
    limit: LimitKind
    makespan: float
    tasks: int
    tasks_failed: int
    attempts: Sequence[Attempt]


def messages(task: int, call: int) -> list[dict[str, str]]:
    """The prompt of call ``call`` of task ``task``: the same length for every call, so
    every request is charged the same tokens."""
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": f"{_FILLER}task {task:06d}, call {call:02d}. " * 3},
    ]


@legion.agent(name="bench-capacity", retries=3, timeout=600)
async def chained_calls(ctx: legion.Context, task: int, calls: int) -> int:
    """``calls`` LLM calls, one after the other (each one a recorded step)."""
    tokens = 0
    for call in range(calls):
        answer = await ctx.llm.chat(messages(task, call), max_tokens=MAX_TOKENS)
        tokens += answer.usage.total
    return tokens


def _sim_config(opts: CapacityOptions, kind: LimitKind) -> SimConfig:
    return SimConfig(
        models=(MODEL,),
        rpm=opts.rpm if kind == "rpm" else None,
        tpm=opts.tpm if kind == "tpm" else None,
        window_seconds=opts.window_seconds,
        error_rate=opts.error_rate,
        latency=opts.latency,
        latency_jitter=opts.latency_jitter,
        seed=opts.seed,
    )


async def run_legion(
    opts: CapacityOptions, kind: LimitKind, folder: Path, progress: Progress
) -> ClientRun:
    """The tasks through a durable runtime; calls through ``ctx.llm``."""
    provider = SimulatedProvider(_sim_config(opts, kind))
    await provider.start()
    recorder = RecordingProvider(provider)
    capacity = Capacity(
        "sim",
        rpm=opts.rpm if kind == "rpm" else None,
        tpm=opts.tpm if kind == "tpm" else None,
        **CAPACITY_KW,
    )
    client = LLMClient([Route("sim", recorder, MODEL, capacity, timeout=30.0)])
    url = f"sqlite:///{folder / f'capacity-{kind}-{time.monotonic_ns()}.db'}"
    failed = 0
    async with client, legion.Runtime(url, concurrency=opts.tasks, llm=client) as rt:
        t0 = time.perf_counter()
        done = 0
        async for result in rt.map(
            chained_calls, [{"task": i, "calls": opts.calls} for i in range(opts.tasks)]
        ):
            done += 1
            if not result.ok:
                failed += 1
                if failed == 1 and result.error is not None:
                    progress(f"  first failure: {result.error.type}: {result.error.message}")
            if done % max(1, opts.tasks // 10) == 0:
                progress(f"  legion ({kind}): {done}/{opts.tasks} tasks")
        makespan = time.perf_counter() - t0
    return ClientRun("legion", kind, makespan, opts.tasks, failed, recorder.attempts)


async def run_fixed_concurrency(
    opts: CapacityOptions, kind: LimitKind, progress: Progress
) -> ClientRun:
    """``asyncio.gather`` + a semaphore, with naive retries inside it."""
    async with SimulatedProvider(_sim_config(opts, kind)) as provider:
        recorder = RecordingProvider(provider)
        semaphore = asyncio.Semaphore(opts.baseline_concurrency)
        done = 0

        async def call(task: int, index: int) -> None:
            request = ChatRequest(MODEL, tuple(messages(task, index)), {"max_tokens": MAX_TOKENS})
            async with semaphore:
                for attempt in range(opts.baseline_retries + 1):
                    try:
                        await recorder.chat(request, timeout=30.0)
                        return
                    except RateLimited as exc:
                        if attempt == opts.baseline_retries:
                            raise
                        await asyncio.sleep(exc.retry_after or 1.0)
                    except ProviderError:
                        if attempt == opts.baseline_retries:
                            raise
                        await asyncio.sleep(0.5 * 2**attempt)

        async def task(i: int) -> None:
            nonlocal done
            try:
                for index in range(opts.calls):
                    await call(i, index)
            finally:
                done += 1
                if done % max(1, opts.tasks // 10) == 0:
                    progress(f"  fixed concurrency ({kind}): {done}/{opts.tasks} tasks")

        t0 = time.perf_counter()
        outcomes = await asyncio.gather(
            *(task(i) for i in range(opts.tasks)), return_exceptions=True
        )
        makespan = time.perf_counter() - t0
    failed = sum(1 for o in outcomes if isinstance(o, BaseException))
    return ClientRun("fixed concurrency", kind, makespan, opts.tasks, failed, recorder.attempts)


def summarize(run: ClientRun, opts: CapacityOptions) -> dict[str, Any]:
    """The figures of one run (see the module's documentation for their meaning)."""
    attempts = run.attempts
    admitted = [a for a in attempts if a.admitted]
    ok = [a for a in attempts if a.outcome == "ok"]
    per_second = (opts.rpm if run.limit == "rpm" else opts.tpm) / 60.0

    def amount(items: Sequence[Attempt]) -> float:
        return float(len(items)) if run.limit == "rpm" else float(sum(a.charge for a in items))

    steady_rate = None
    starts = sorted(a.start for a in admitted)
    if len(starts) >= 20:
        lo, hi = starts[len(starts) // 20], starts[len(starts) * 19 // 20]
        # Over whole windows: a span that ends part-way into a window holds that window's
        # burst over less than its length (108 % of the limit over a short run).
        hi = lo + math.floor((hi - lo) / opts.window_seconds) * opts.window_seconds
        if hi > lo:
            steady_rate = amount([a for a in admitted if lo <= a.start < hi]) / (hi - lo)
    goodput = amount(ok) / run.makespan if run.makespan > 0 else 0.0
    return {
        "client": run.client,
        "limit": run.limit,
        "limit_value": opts.rpm if run.limit == "rpm" else opts.tpm,
        "makespan_s": run.makespan,
        "tasks": run.tasks,
        "tasks_failed": run.tasks_failed,
        "attempts": len(attempts),
        "succeeded_requests": len(ok),
        "server_errors": sum(1 for a in attempts if a.outcome == "error"),
        "rate_limited": len(attempts) - len(admitted),
        "rate_limited_share": (len(attempts) - len(admitted)) / len(attempts) if attempts else 0.0,
        "steady_per_second": steady_rate,
        "steady_pct_of_limit": steady_rate / per_second if steady_rate is not None else None,
        "goodput_per_second": goodput,
        "goodput_pct_of_limit": goodput / per_second,
        "timeline": _timeline(run, opts),
    }


def _timeline(run: ClientRun, opts: CapacityOptions) -> dict[str, list[float]]:
    """Admitted amount and 429s per second since the first attempt."""
    if not run.attempts:
        return {"admitted": [], "rate_limited": []}
    first = min(a.start for a in run.attempts)
    size = math.ceil(max(a.start for a in run.attempts) - first) + 1
    admitted = [0.0] * size
    limited = [0.0] * size
    for a in run.attempts:
        i = int(a.start - first)
        if a.admitted:
            admitted[i] += 1 if run.limit == "rpm" else a.charge
        else:
            limited[i] += 1
    return {"admitted": admitted, "rate_limited": limited}


async def run(
    opts: CapacityOptions | None = None,
    *,
    progress: Progress = quiet,
    workdir: Path | None = None,
) -> BenchResult:
    """Run the scenario: each client against each limit in turn."""
    opts = opts or CapacityOptions()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for kind in opts.limits:
            progress(f"capacity: legion vs the {kind.upper()} limit ({opts.tasks} tasks)")
            rows.append(summarize(await run_legion(opts, kind, Path(tmp), progress), opts))
            progress(f"capacity: fixed concurrency vs the {kind.upper()} limit")
            rows.append(summarize(await run_fixed_concurrency(opts, kind, progress), opts))
        scenarios: list[dict[str, Any]] = []
        if opts.scenarios:
            base = ScenarioOptions.scaled_down() if opts.quick else ScenarioOptions()
            scenarios = await run_scenarios(base, opts.scenarios, Path(tmp), progress)
    result = _result(opts, rows)
    if scenarios:
        _add_scenarios(result, scenarios)
    return result


def _add_scenarios(result: BenchResult, rows: list[dict[str, Any]]) -> None:
    """The scenarios' table, notes and data, after the main runs'."""
    result.data["scenarios"] = rows
    lines = []
    for r in rows:
        if "lanes" in r:
            continue  # its own table below
        runs = [("default", r["default"]), ("tuned", r["tuned"])] if "default" in r else [("", r)]
        for label, x in runs:
            lines.append(
                (
                    r["scenario"] + (f" ({label} concurrency {x['concurrency']})" if label else ""),
                    f"{x['limit_rpm']:,} rpm",
                    fmt_pct(x["steady_pct_of_limit"]),
                    f"{x['rate_limited']:,} ({x['rate_limited_share']:.1%})",
                    fmt_num(x["makespan_s"], 1, " s"),
                    fmt_num(x["p50_latency_s"], 1, " s"),
                    f"{x['calls_per_task_mean']:.2f} / {x['calls_per_task_max']}",
                    str(x.get("probes_per_second_max", "")),
                    f"{x['dead_or_failed']} / {x['lost']}",
                )
            )
    scaled = any(r["scaled_down"] for r in rows)
    result.tables.append(
        Table(
            "hard cases, legion alone" + (" (scaled down)" if scaled else ""),
            (
                "scenario",
                "limit",
                "steady % of limit",
                "429s",
                "makespan",
                "p50 task latency",
                "calls per task (mean / max)",
                "probes/s in the fault (max)",
                "dead or failed / lost",
            ),
            tuple(lines),
        )
    )
    for r in rows:
        if "lanes" in r:
            result.tables.append(
                Table(
                    f"priority lanes: {r['interactive_tasks']} interactive one-call tasks, one "
                    f"every {r['interactive_every_s']:g} s, beside a batch of {r['batch_tasks']:,} "
                    "on one "
                    f"{r['limit_rpm']:,} rpm route",
                    (
                        "interactive tasks",
                        "p50",
                        "p95",
                        "p95, calls that did not fail",
                        "p95 added to the provider's time",
                        "max",
                        "429s",
                        "batch tasks/s meanwhile",
                    ),
                    tuple(
                        (
                            label,
                            fmt_num(x["p50_s"], 2, " s"),
                            fmt_num(x["p95_s"], 2, " s"),
                            fmt_num(x["clean_p95_s"], 2, " s"),
                            fmt_num(x["wait_p95_s"], 3, " s"),
                            fmt_num(x["max_s"], 2, " s"),
                            str(x["rate_limited"]),
                            fmt_num(x["batch_per_s_meanwhile"], 1),
                        )
                        for label, x in (
                            ("alone (idle route)", r["alone"]),
                            ("beside the batch, priority 10 (lanes)", r["lanes"]),
                            ("beside the batch, priority 0 (one queue)", r["no_lanes"]),
                        )
                    ),
                )
            )
    result.notes.extend(_scenario_notes(rows))


def _scenario_notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = [
        "hard cases: 1 s windows, 5 % server errors, rejected requests count against the "
        "window. untold: legion is told no limit (with and without x-ratelimit-* headers); "
        "storm/outage: every request answered 429/503 for the fault's length, from 3 s in; "
        "low-rpm: one-call tasks, agent timeout 20 s, default concurrency (1000) vs one "
        "tuned by hand.",
    ]
    for r in rows:
        name = r["scenario"]
        if name == "priority":
            ratio = r["p95_ratio_lanes_over_alone"]
            clean = r["clean_p95_ratio_lanes_over_alone"]
            share = r["lanes"]["batch_share_of_limit"]
            met = clean <= 1.2 and share >= 0.5
            notes.append(
                f"priority: interactive p95 beside a {r['batch_tasks']:,}-task batch is "
                f"{ratio:.2f}x its p95 on the idle route with lanes "
                f"({clean:.2f}x over the tasks whose calls did not fail), "
                f"{r['p95_ratio_no_lanes_over_alone']:.1f}x in one queue; the batch kept "
                f"{share:.0%} of the limit meanwhile: target (<= 1.2x without failed calls, "
                "the batch not starved) " + ("met." if met else "NOT met.")
            )
            continue
        if name == "two-keys":
            steady = r["steady_pct_of_limit"] or 0.0
            ok = r["dead_or_failed"] == 0 and r["lost"] == 0
            ok = ok and r["steady_ratio_two_keys_over_one"] >= 0.95
            ok = ok and r["rate_limited_share"] <= 0.01
            notes.append(
                f"two-keys: two keys of {r['per_key_rpm']:,} rpm each (limited per key by the "
                f"simulator), one pooled route: {steady:.1%} of their sum, "
                f"{r['rate_limited_share']:.2%} 429s, calls by key {r['served_by']} (one key of "
                f"the whole limit, same run: {r['one_key_of_the_sum']['steady_pct_of_limit']:.1%}"
                f", {r['one_key_of_the_sum']['rate_limited_share']:.2%} 429s): target "
                "(>= 95 % of one key's figure, <= 1 % 429s) " + ("met." if ok else "NOT met.")
            )
            continue
        if name == "low-rpm":
            d = r["default"]
            ok = d["dead_or_failed"] == 0 and d["lost"] == 0
            ratio = r["p50_ratio_default_over_tuned"]
            ok = ok and ratio <= 1.5
            notes.append(
                f"low-rpm: p50 with the default concurrency {ratio:.2f}x "
                f"the tuned run's, makespan {r['makespan_ratio_default_over_tuned']:.2f}x; "
                f"{d['dead_or_failed']} dead or failed: target " + ("met." if ok else "NOT met.")
            )
            continue
        steady = r["steady_pct_of_limit"] or 0.0
        ok = r["dead_or_failed"] == 0 and r["lost"] == 0 and r["paid_twice"] == 0
        if name == "untold-headers":
            ok = ok and steady >= 0.95
        elif name == "untold-no-headers":
            ok = ok and steady >= 0.85 and r["rate_limited_share"] <= 0.03
        else:
            ok = ok and r["probes_per_second_max"] <= 1
            notes.append(
                f"{name}: {r['fault_seconds']:g} s of faults; at most "
                f"{r['probes_per_second_max']} request(s) a second during it (mean "
                f"{r['probes_per_second_mean']:.2f}); the backlog drained "
                f"{r['drain_after_fault_s']:.1f} s after it; makespan "
                f"{r['makespan_over_ideal']:.2f}x the ideal (work at the limit plus the fault)."
            )
        notes.append(f"{name}: target " + ("met." if ok else "NOT met."))
    return notes


def _result(opts: CapacityOptions, rows: list[dict[str, Any]]) -> BenchResult:
    table = Table(
        f"{opts.tasks} tasks x {opts.calls} LLM calls, {opts.error_rate:.0%} server errors, "
        f"limits enforced over {opts.window_seconds:g} s windows",
        (
            "limit",
            "client",
            "steady % of limit",
            "goodput % of limit",
            "makespan",
            "attempts",
            "429s",
            "tasks failed",
        ),
        tuple(
            (
                f"{r['limit_value']:,} {r['limit']}",
                r["client"],
                fmt_pct(r["steady_pct_of_limit"]),
                fmt_pct(r["goodput_pct_of_limit"]),
                fmt_num(r["makespan_s"], 1, " s"),
                fmt_num(r["attempts"]),
                f"{r['rate_limited']:,} ({r['rate_limited_share']:.1%})",
                fmt_num(r["tasks_failed"]),
            )
            for r in rows
        ),
    )
    notes = [
        "steady % of limit: requests (tokens) the provider admitted per second - server "
        "errors use up the limit too, 429s do not - over the middle 90 % of the admitted "
        "requests (from the 5th to the 95th percentile of their start times, which leaves "
        "out the ramp-up and the drain), divided by the limit per second.",
        "goodput % of limit: successful requests (tokens) / makespan, divided by the limit per "
        f"second; with {opts.error_rate:.0%} of admitted requests failing, "
        f"{1 - opts.error_rate:.0%} is its ceiling.",
        f"fixed concurrency: asyncio.gather + Semaphore({opts.baseline_concurrency}), up to "
        f"{opts.baseline_retries} retries per call (Retry-After on a 429, 0.5 s x 2^n after "
        "a server error), inside the semaphore.",
        f"simulator latency {opts.latency:g} s + uniform jitter up to {opts.latency_jitter:g} s; "
        f"{MAX_TOKENS} max_tokens per call. Target for legion: >= 97 % of the limit, 0 tasks "
        "failed, 429s under 1 % of requests.",
    ]
    for r in rows:
        if r["client"] == "legion":
            pct = r["steady_pct_of_limit"]
            met = (
                pct is not None
                and pct >= 0.97
                and r["tasks_failed"] == 0
                and r["rate_limited_share"] < 0.01
            )
            notes.append(
                f"legion vs the {r['limit'].upper()} limit: target "
                + ("met." if met else "NOT met.")
            )
    return BenchResult(
        name=NAME,
        title="achieved share of a provider's rate limit",
        data={"options": asdict(opts), "runs": rows},
        tables=[table],
        notes=notes,
        plots=[Plot(f"{kind}", _plot(rows, kind, opts)) for kind in opts.limits],
    )


def _plot(rows: list[dict[str, Any]], kind: LimitKind, opts: CapacityOptions) -> Any:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        limit = (opts.rpm if kind == "rpm" else opts.tpm) / 60.0
        for r in rows:
            if r["limit"] != kind:
                continue
            series = r["timeline"]["admitted"]
            ax.plot(range(len(series)), series, label=f"{r['client']} (admitted)")
            limited = r["timeline"]["rate_limited"]
            if any(limited):
                ax.plot(range(len(limited)), limited, linestyle=":", label=f"{r['client']} (429s)")
        ax.axhline(limit, color="grey", linestyle="--", label="limit")
        unit = "requests" if kind == "rpm" else "tokens"
        ax.set_xlabel("seconds since the first request")
        ax.set_ylabel(f"{unit} per second")
        ax.set_title(f"capacity: admitted {unit}/s against a {kind.upper()} limit")
        ax.legend(loc="lower center", fontsize="small")

    return draw
