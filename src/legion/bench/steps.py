"""``steps``: agents that record five steps each, through the full durable path.

Each task runs an agent whose five steps each return a small value at once: what is
measured is legion's work per step (replay lookup, JSON encoding, the fenced group
commit of the step rows, the wake-up of the waiting instance) and per task around them,
on a SQLite file and on PostgreSQL. Steps per second counts the recorded steps only
(five per task). Best of ``repeat`` runs, each in a fresh child process.

Next to them, on the SQLite file, agents whose five steps are LLM calls through
``ctx.llm.chat`` to an in-process provider that answers at once: what a call costs
legion on top of a plain step (route, token estimate, capacity, pricing, the answer
recorded with its usage and cost).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import legion
from legion.bench.child import in_child
from legion.bench.postgres import fresh_schema
from legion.bench.results import BenchResult, Progress, Table, fmt_num, quiet
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.provider import ChatResult
from legion.llm.types import ChatRequest, ChatResponse, RateLimitInfo, Usage

NAME = "steps"
SQLITE = "legion, SQLite file"
POSTGRES = "legion, PostgreSQL"
LLM = "legion, SQLite file, ctx.llm.chat"
STEPS = 5
TARGET = 25_000  # steps per second on SQLite


@dataclass(frozen=True, slots=True)
class StepsOptions:
    tasks: int = 10_000
    concurrency: int = 1000
    repeat: int = 3
    postgres: str | None = None
    """A PostgreSQL URL (a fresh schema is made in its database); ``None``: SQLite only."""

    def __post_init__(self) -> None:
        if self.tasks < 1 or self.concurrency < 1 or self.repeat < 1:
            raise ValueError("tasks, concurrency and repeat must be >= 1")


def _value(i: int, n: int) -> int:
    return i * STEPS + n


@legion.agent(name="bench-five-steps", retries=0)
async def five_steps(ctx: legion.Context, i: int) -> int:
    """Five recorded steps, each a small value at once."""
    total = 0
    for n in range(STEPS):
        total += await ctx.step(f"s{n}", _value, i, n)
    return total


class InstantProvider:
    """Answers every chat at once, with a small usage; no network."""

    name = "instant"

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        response = ChatResponse("ok", (), "stop", Usage(12, 2), request.model, self.name)
        return ChatResult(response, RateLimitInfo())

    async def aclose(self) -> None:
        return None


@legion.agent(name="bench-five-llm-calls", retries=0)
async def five_llm_calls(ctx: legion.Context, i: int) -> int:
    """Five recorded LLM calls, each answered at once."""
    total = 0
    for n in range(STEPS):
        answer = await ctx.llm.chat([{"role": "user", "content": f"{i}/{n}"}], max_tokens=2)
        total += answer.usage.total
    return total


async def through_legion(
    url: str, n: int, concurrency: int, llm: bool = False
) -> tuple[float, float]:
    """Seconds and CPU seconds (this process, every thread) for ``n`` five-step tasks
    (``llm``: five LLM calls each)."""
    client = None
    if llm:
        route = Route("instant", InstantProvider(), "instant-model", Capacity("instant"))
        client = LLMClient([route])
    agent = five_llm_calls if llm else five_steps
    async with legion.Runtime(url, concurrency=concurrency, llm=client) as rt:
        cpu0, t0 = time.process_time(), time.perf_counter()
        done = 0
        async for result in rt.map(agent, range(n)):
            done += result.ok
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if done != n:
        raise RuntimeError(f"steps: only {done} of {n} five-step tasks succeeded")
    return elapsed, cpu


def measure(n: int, concurrency: int, url: str, llm: bool = False) -> tuple[float, float]:
    """Run in a child process by `run`."""
    return asyncio.run(through_legion(url, n, concurrency, llm))


async def run(
    opts: StepsOptions | None = None,
    *,
    progress: Progress = quiet,
    workdir: Path | None = None,
) -> BenchResult:
    opts = opts or StepsOptions()
    if opts.postgres:  # (before the SQLite runs: their figures were lost to a bad URL)
        async with fresh_schema(opts.postgres):
            pass
    paths = [SQLITE] + ([POSTGRES] if opts.postgres else []) + [LLM]
    rates: dict[str, list[float]] = {p: [] for p in paths}
    cpu: dict[str, list[float]] = {p: [] for p in paths}
    steps = opts.tasks * STEPS
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for attempt in range(opts.repeat):
            progress(f"steps: round {attempt + 1}/{opts.repeat}, {opts.tasks:,} tasks each")
            url = f"sqlite:///{Path(tmp) / f'steps-{time.monotonic_ns()}.db'}"
            elapsed, used = await in_child(measure, opts.tasks, opts.concurrency, url)
            rates[SQLITE].append(steps / elapsed)
            cpu[SQLITE].append(used / steps)
            if opts.postgres:
                async with fresh_schema(opts.postgres) as pg_url:
                    elapsed, used = await in_child(measure, opts.tasks, opts.concurrency, pg_url)
                rates[POSTGRES].append(steps / elapsed)
                cpu[POSTGRES].append(used / steps)
            url = f"sqlite:///{Path(tmp) / f'llm-{time.monotonic_ns()}.db'}"
            elapsed, used = await in_child(measure, opts.tasks, opts.concurrency, url, True)
            rates[LLM].append(steps / elapsed)
            cpu[LLM].append(used / steps)
            progress(
                "  "
                + ", ".join(f"{name}: {values[-1]:,.0f} steps/s" for name, values in rates.items())
            )
    best = {name: max(values) for name, values in rates.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    table = Table(
        f"{opts.tasks:,} tasks x {STEPS} steps, concurrency {opts.concurrency:,}, "
        f"best of {opts.repeat}",
        ("path", "steps/s", "tasks/s", "CPU per step (this process)"),
        tuple(
            (
                name,
                fmt_num(value),
                fmt_num(value / STEPS),
                f"{best_cpu[name] * 1e6:,.1f} µs",
            )
            for name, value in best.items()
        ),
    )
    notes = [
        "Each step returns a small value at once; its result is recorded (fenced by the "
        "task's lease, group-committed) before the agent goes on. CPU counts the measuring "
        "process only (the PostgreSQL server's own CPU is not included).",
        f"{LLM}: the five steps are LLM calls through ctx.llm.chat to an in-process "
        "provider that answers at once (no network): a call's cost to legion on top of "
        "a plain step's (route, token estimate, capacity, pricing, the answer recorded "
        f"with its usage); {best_cpu[LLM] / best_cpu[SQLITE]:.2f}x a plain step's CPU "
        "in this run.",
        f"Target: >= {TARGET:,} steps/s on SQLite: "
        + ("met." if best[SQLITE] >= TARGET else "NOT met."),
    ]
    if not opts.postgres:
        notes.append("PostgreSQL not measured (--sqlite-only).")
    return BenchResult(
        name=NAME,
        title=f"agents of {STEPS} recorded steps through the durable path",
        data={
            "options": asdict(opts),
            "steps_per_second": {k: {"best": max(v), "all": v} for k, v in rates.items()},
            "cpu_us_per_step": {k: min(v) * 1e6 for k, v in cpu.items()},
        },
        tables=[table],
        notes=notes,
    )
