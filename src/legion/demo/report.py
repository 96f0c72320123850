"""The demo's HTML report: one self-contained file (inline SVG charts, inline CSS, no
scripts, nothing fetched), written next to wherever the user asks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from legion.bench.results import describe_machine
from legion.demo.compare import Comparison, RunReport, ideal_lines, rows
from legion.demo.svg import COLORS, Series, line_chart

_CSS = """
body { font-family: sans-serif; max-width: 60rem; margin: 2rem auto; color: #222;
       line-height: 1.45; padding: 0 1rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem .8rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #999; }
.note { color: #555; font-size: .92rem; }
figure { margin: 1.5rem 0; }
"""


def _per_second(starts: Sequence[float]) -> tuple[list[float], list[float]]:
    if not starts:
        return [], []
    size = int(max(starts)) + 1
    counts = [0.0] * size
    for s in starts:
        counts[int(s)] += 1
    return [i + 0.5 for i in range(size)], counts


def _runs(c: Comparison) -> list[tuple[RunReport, str]]:
    out = []
    if c.sequential is not None:
        out.append((c.sequential, COLORS[0]))
    out.append((c.scaled, COLORS[1]))
    return out


def charts(c: Comparison) -> list[str]:
    """The report's charts, as SVG strings."""
    done = []
    for run, color in _runs(c):
        times = sorted(run.finished)
        done.append(
            Series(
                f"{run.mode} ({len(times)} tasks)",
                times,
                list(range(1, len(times) + 1)),
                color,
                step=True,
            )
        )
    finished = line_chart(
        done,
        title="Tasks finished over time (log scale)",
        xlabel="seconds since the start (log scale)",
        ylabel="tasks finished",
        log_x=True,
    )
    rates = []
    for run, color in _runs(c):
        xs, ys = _per_second(run.request_starts)
        rates.append(Series(f"{run.mode}: requests sent", xs, ys, color))
    limit = c.config.rpm / 60.0
    requests = line_chart(
        rates,
        title="LLM requests sent per second",
        xlabel="seconds since the start",
        ylabel="requests per second",
        hline=(limit, f"limit {limit:g}/s"),
    )
    cdf = []
    for run, color in _runs(c):
        lat = sorted(run.latencies)
        cdf.append(
            Series(run.mode, lat, [(i + 1) / len(lat) for i in range(len(lat))], color, step=True)
        )
    latency = line_chart(
        cdf,
        title="Task latency (start to finish of each task), cumulative",
        xlabel="seconds",
        ylabel="share of tasks",
    )
    return [finished, requests, latency]


def render(c: Comparison) -> str:
    """The whole report as one HTML document."""
    cfg = c.config
    head = ["measure", "sequential (legacy)", "scaled (legion)"]
    table = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows(c):
        table.append("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>")
    table.append("</tbody></table>")
    faults = (
        f"{cfg.faults:.0%} of requests fail (three in four with a server error, one in four "
        f"hangs until the {cfg.call_timeout:g} s call timeout)"
        if cfg.faults
        else "no injected faults"
    )
    setup = (
        f"{cfg.tasks} questions; provider simulator in this process: {cfg.rpm:,} requests "
        f"and {cfg.tpm:,} tokens per minute, enforced over {cfg.window_seconds:g} s windows; "
        f"latency {cfg.latency:g} s + up to {cfg.latency_jitter:g} s, "
        f"{cfg.tokens_per_second:g} tokens/s; {faults}. Both runs use the same LLM client "
        "(timeouts, retries with backoff, capacity); only the scheduling differs."
    )
    notes = [escape(line) for line in ideal_lines(c)]
    if c.sequential is not None and c.sequential.extrapolated:
        notes.append(
            escape(
                f"The sequential run ran {c.sequential.measured_tasks} of {c.sequential.tasks} "
                "tasks; its makespan and CPU time are extrapolated in proportion (one task "
                "at a time: it grows linearly)."
            )
        )
    if cfg.faults:
        notes.append(
            "Fault isolation: in the sequential run every hung call holds up every task "
            "behind it until its timeout; in the scaled run a hung call delays only its own "
            "task, and the others finish."
        )
    notes.append(
        "Latency is each task's own run time, from its start to its answer. The scaled "
        "tasks all start at once and share the rate limit, so each takes about as long as "
        "a sequential one while all of them finish much sooner."
    )
    body = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>legion demo: sequential vs scaled</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>legion demo: sequential vs throughput scaling</h1>",
        f"<p class='note'>{escape(time.strftime('%Y-%m-%d %H:%M'))} &middot; "
        f"{escape(describe_machine())}</p>",
        "<p>The example agent (search a local index of Python's documentation &rarr; "
        "summarize the top hits with parallel LLM calls &rarr; combine &rarr; save) runs the "
        "legacy way (one task at a time, each step awaited in turn) and scaled (every task "
        "at once, independent steps gathered, LLM calls paced by legion's shared "
        "capacity).</p>",
        f"<p>{escape(setup)}</p>",
        *table,
        "<ul class='note'>",
        *(f"<li>{n}</li>" for n in notes),
        "</ul>",
        *(f"<figure>{svg}</figure>" for svg in charts(c)),
        "</body></html>",
    ]
    return "\n".join(body)
