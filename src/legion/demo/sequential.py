"""``sequential-vs-scaled``: the demo's comparison over growing numbers of tasks.

For each N, the demo agent (search -> three parallel LLM calls -> combine -> save) runs
the legacy way and scaled against the same simulated provider (realistic latency, rate
limits enforced over 1 s windows), as in ``legion demo`` (see
`legion.demo.compare`, which also defines the ideal speed-up). The sequential run
takes about two seconds a task, so it is measured up to ``sequential_limit`` tasks and
extrapolated beyond (one task at a time: its makespan grows linearly); the table says
which figures are extrapolated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legion.bench.results import BenchResult, Plot, Progress, Table, fmt_num, fmt_pct, quiet
from legion.demo.compare import Comparison, DemoConfig, Ideal, RunReport, as_dict, compare

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "sequential-vs-scaled"


@dataclass(frozen=True, slots=True)
class SequentialOptions:
    sizes: tuple[int, ...] = (10, 100, 1000)
    sequential_limit: int = 100
    demo: DemoConfig = field(default_factory=DemoConfig)
    """Provider settings (its ``tasks`` is replaced by each size)."""

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1 or self.sequential_limit < 1:
            raise ValueError("sizes and sequential_limit must be >= 1")


async def run(
    opts: SequentialOptions | None = None,
    *,
    progress: Progress = quiet,
    workdir: Path | None = None,
) -> BenchResult:
    opts = opts or SequentialOptions()
    comparisons: list[Comparison] = []
    measured: RunReport | None = None
    for n in sorted(opts.sizes):
        cfg = dataclasses.replace(opts.demo, tasks=n, sequential_limit=opts.sequential_limit)
        reuse = measured if measured is not None and n > opts.sequential_limit else None
        progress(f"sequential-vs-scaled: N = {n:,}")
        c = await compare(cfg, sequential_report=reuse, progress=progress, workdir=workdir)
        assert c.sequential is not None and c.ideal is not None
        if not c.sequential.extrapolated or measured is None:
            measured = c.sequential
        comparisons.append(c)
        progress(
            f"  N = {n:,}: sequential {c.sequential.makespan:,.1f} s, scaled "
            f"{c.scaled.makespan:,.2f} s, speed-up {c.ideal.achieved:,.1f}x of an ideal "
            f"{c.ideal.speedup:,.1f}x ({c.ideal.efficiency:.0%})"
        )
    return _result(opts, comparisons)


def _result(opts: SequentialOptions, comparisons: list[Comparison]) -> BenchResult:
    rows = []
    for c in comparisons:
        seq, ideal = c.sequential, c.ideal
        assert seq is not None and ideal is not None
        mark = "*" if seq.extrapolated else ""
        rows.append(
            (
                f"{c.config.tasks:,}",
                f"{seq.makespan:,.1f} s{mark}",
                f"{c.scaled.makespan:,.2f} s",
                f"{ideal.makespan:,.2f} s",
                f"{ideal.achieved:,.1f}x",
                f"{ideal.speedup:,.1f}x",
                fmt_pct(ideal.efficiency),
                f"{c.scaled.throughput:,.1f}",
                fmt_num(c.scaled.rate_limited),
                fmt_num(c.scaled.failed),
            )
        )
    d = opts.demo
    table = Table(
        f"demo agent (4 LLM calls a task), {d.rpm:,} rpm / {d.tpm:,} tpm over "
        f"{d.window_seconds:g} s windows, latency {d.latency:g} s + up to {d.latency_jitter:g} s, "
        f"{d.tokens_per_second:g} tokens/s",
        (
            "tasks",
            "sequential",
            "scaled",
            "ideal scaled",
            "speed-up",
            "ideal speed-up",
            "efficiency",
            "scaled tasks/s",
            "429s",
            "failed",
        ),
        tuple(rows),
    )
    notes = [
        Ideal.FORMULA + ".",
        "critical path of one task = mean sequential task time less the per-passage calls "
        "that the scaled agent makes alongside another (two calls remain on it); call "
        "latency and requests per task are measured in the sequential run.",
    ]
    bases = sorted(
        {
            c.sequential.measured_tasks
            for c in comparisons
            if c.sequential and c.sequential.extrapolated
        }
    )
    if bases:
        counts = " or ".join(f"{n:,}" for n in bases)
        notes.append(f"* extrapolated from {counts} tasks run sequentially, one at a time.")
    for c in comparisons:
        assert c.ideal is not None
        if c.config.tasks == 100:
            notes.append(
                "Target (100 tasks): speed-up within 10 % of the ideal - "
                + ("met." if c.ideal.efficiency >= 0.9 else "NOT met.")
            )
    return BenchResult(
        name=NAME,
        title="the demo agent, sequential vs scaled, over N tasks",
        data={
            "options": asdict(opts),
            "comparisons": [as_dict(c) for c in comparisons],
        },
        tables=[table],
        notes=notes,
        plots=[Plot("speedup", _plot(comparisons))],
    )


def _plot(comparisons: list[Comparison]) -> Any:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        sizes = [c.config.tasks for c in comparisons]
        ideal = [c.ideal.speedup if c.ideal else 0.0 for c in comparisons]
        achieved = [c.ideal.achieved if c.ideal else 0.0 for c in comparisons]
        ax.plot(
            sizes, ideal, marker="o", linestyle="--", color="#555", label="ideal for the limits"
        )
        ax.plot(sizes, achieved, marker="o", color="#2471a3", label="legion, measured")
        ax.set_xscale("log")
        ax.set_xlabel("tasks")
        ax.set_ylabel("speed-up over sequential")
        ax.set_title("sequential vs scaled: speed-up")
        ax.legend(fontsize="small")

    return draw
