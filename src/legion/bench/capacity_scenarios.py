"""The hard cases of ``capacity``: a limit nobody told legion, a 429 storm, an outage,
and a low limit under the default concurrency.

Each scenario runs legion (a durable `legion.Runtime` on a SQLite file, every
call through ``ctx.llm``) against a fresh simulator with the limit enforced over 1 s
windows, 5 % server errors and rejected requests counting against the window:

- **untold, headers**: legion is told no limit; the simulator sends ``x-ratelimit-*``.
- **untold, no headers**: legion is told no limit and the simulator sends no rate-limit
  header at all (no ``Retry-After`` either), as vLLM and most gateways answer.
- **storm**: told the limit; from ``fault_start`` for ``storm_seconds`` every request
  is answered 429, then the simulator is healthy again.
- **outage**: told the limit; every request is answered 503 for ``outage_seconds``.
- **low rpm, default concurrency**: ``--rpm 120``-like: one-call tasks whose agent has
  a 20 s timeout, at the default concurrency (1000) and at a concurrency tuned by hand.
- **two keys** and **priority**: a pooled route and priority lanes
  (`legion.bench.capacity_lanes`).

``quick`` scales the storm, the outage and the low-rpm run down (and says so in the
results).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from legion.bench.capacity_runs import (
    ScenarioOptions,
    _figures,
    _probes,
    _run_legion,
    _sim,
    one_call,
    two_calls,
)
from legion.bench.results import Progress
from legion.llm.capacity import Capacity

SCENARIOS = (
    "untold-headers",
    "untold-no-headers",
    "storm",
    "outage",
    "low-rpm",
    "two-keys",
    "priority",
)

__all__ = ["SCENARIOS", "ScenarioOptions", "run_scenarios"]


async def run_scenarios(
    opts: ScenarioOptions, names: Sequence[str], folder: Path, progress: Progress
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in names:
        progress(f"capacity: scenario {name}" + (" (scaled down)" if opts.quick else ""))
        row: dict[str, Any] = {"scenario": name, "scaled_down": opts.quick}
        if name in ("untold-headers", "untold-no-headers"):
            sim = _sim(opts, opts.rpm, rate_limit_headers=name == "untold-headers")
            run = await _run_legion(
                sim, Capacity("sim", discover=True), two_calls, opts.tasks, 1000, folder
            )
            row |= {"limit_rpm": opts.rpm, "tasks": opts.tasks, **_figures(run, opts.rpm, 2)}
        elif name in ("storm", "outage"):
            seconds = opts.storm_seconds if name == "storm" else opts.outage_seconds
            span = (opts.fault_start, opts.fault_start + seconds, 429 if name == "storm" else 503)
            sim = _sim(opts, opts.rpm, fault_schedule=(span,))
            # Enough work to keep the route busy before, during and after the fault.
            tasks = opts.tasks
            run = await _run_legion(
                sim, Capacity("sim", rpm=opts.rpm), two_calls, tasks, 1000, folder
            )
            row |= {"limit_rpm": opts.rpm, "tasks": tasks, **_figures(run, opts.rpm, 2)}
            row |= _probes(run, span[0], span[1])
            ideal = opts.tasks * 2 / (opts.rpm / 60.0) / (1 - opts.error_rate) + seconds
            row["makespan_over_ideal"] = run.makespan / ideal
        elif name == "low-rpm":
            sim = _sim(opts, opts.low_rpm)
            for concurrency in (1000, opts.tuned_concurrency):
                run = await _run_legion(
                    sim,
                    Capacity("sim", rpm=opts.low_rpm),
                    one_call,
                    opts.low_rpm_tasks,
                    concurrency,
                    folder,
                )
                key = "default" if concurrency == 1000 else "tuned"
                row[key] = {
                    "concurrency": concurrency,
                    "limit_rpm": opts.low_rpm,
                    "tasks": opts.low_rpm_tasks,
                    "agent_timeout_s": opts.low_rpm_timeout,
                    **_figures(run, opts.low_rpm, 1),
                }
            default, tuned = row["default"], row["tuned"]
            row["p50_ratio_default_over_tuned"] = default["p50_latency_s"] / tuned["p50_latency_s"]
            row["makespan_ratio_default_over_tuned"] = default["makespan_s"] / tuned["makespan_s"]
        elif name == "two-keys":
            from legion.bench.capacity_lanes import two_keys

            row |= await two_keys(opts, folder)
        elif name == "priority":
            from legion.bench.capacity_lanes import priority

            row |= await priority(opts, folder)
        else:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        progress(f"  {name}: {_brief(row)}")
        rows.append(row)
    return rows


def _brief(row: dict[str, Any]) -> str:
    if "lanes" in row:
        return (
            f"interactive p95 alone {row['alone']['p95_s']:.2f} s, beside the batch "
            f"{row['lanes']['p95_s']:.2f} s with lanes, {row['no_lanes']['p95_s']:.2f} s without"
        )
    if "default" in row:
        d, t = row["default"], row["tuned"]
        return (
            f"default p50 {d['p50_latency_s']:.1f} s vs tuned {t['p50_latency_s']:.1f} s, "
            f"dead/failed {d['dead_or_failed']}/{t['dead_or_failed']}"
        )
    steady = row["steady_pct_of_limit"]
    text = (
        f"steady {steady:.1%} of the limit, " if steady is not None else ""
    ) + f"429s {row['rate_limited_share']:.1%}, dead/failed {row['dead_or_failed']}"
    if "probes_per_second_max" in row:
        text += f", probes/s max {row['probes_per_second_max']}"
    return text
