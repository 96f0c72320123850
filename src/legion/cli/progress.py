"""The live display of ``legion run``: counts, throughput, latency, all on one panel.

On a terminal it redraws in place (rich); elsewhere (CI logs, pipes) it prints one
plain line every few seconds so long runs still show progress.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from legion.stats import LatencySample, Statistics

if TYPE_CHECKING:
    # rich is imported where something is drawn or printed: `legion --help` never needs it.
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    from legion.llm.capacity import Capacity
    from legion.llm.client import LLMClient, Route
from legion.task import TaskResult, TaskStatus


@dataclass
class RunTally:
    """What a run has seen so far, from its results as they arrive."""

    total: int
    started: float = field(default_factory=time.monotonic)
    by_status: dict[TaskStatus, int] = field(default_factory=lambda: dict.fromkeys(TaskStatus, 0))
    latency: LatencySample = field(default_factory=LatencySample)
    resumed: int = 0
    resumed_unsucceeded: int = 0  # of those, the ones that had not succeeded
    resumed_bad_input: int = 0  # of those, the ones their input failed (InputError)
    bad_lines: int = 0
    gone: int = 0  # lines whose task left the store (purged) before its end was read

    def add(self, result: TaskResult, *, resumed: bool = False) -> None:
        self.by_status[result.status] += 1
        if resumed:
            self.resumed += 1
            self.resumed_unsucceeded += result.status is not TaskStatus.SUCCEEDED
            self.resumed_bad_input += result.error is not None and result.error.type == "InputError"
        elif result.latency is not None:
            self.latency.add(result.latency)

    @property
    def done(self) -> int:
        return sum(self.by_status.values()) + self.bad_lines + self.gone

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        ran = self.done - self.resumed - self.bad_lines - self.gone
        return ran / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def not_succeeded(self) -> int:
        return self.done - self.by_status[TaskStatus.SUCCEEDED]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


class Progress:
    def __init__(
        self,
        tally: RunTally,
        *,
        agent: str,
        console: Console,
        enabled: bool = True,
        llm: LLMClient | None = None,
    ) -> None:
        self.tally = tally
        self.llm = llm
        self.agent = agent
        self.console = console
        self.enabled = enabled
        self._live: Live | None = None
        self._last_line = time.monotonic()
        self.worker_stats: Statistics | None = None
        self.running = 0  # in flight on other workers, when there is no local one
        self.waiting = 0  # tasks waiting in the store (a signal, a timer, children)
        self._last_poll = 0.0
        self._logs = LogsAboveLive(console)

    def __enter__(self) -> Progress:
        if self.enabled and self.console.is_terminal:
            from rich.live import Live

            self._live = Live(
                self._render(), console=self.console, refresh_per_second=4, transient=False
            )
            self._live.__enter__()
            self._logs = LogsAboveLive(self.console)
            self._logs.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._logs.__exit__()
            self._live.__exit__(None, None, None)

    def due(self, every: float = 1.0) -> bool:
        """Whether ``every`` seconds passed since the last call that answered True."""
        now = time.monotonic()
        if now - self._last_poll < every:
            return False
        self._last_poll = now
        return True

    def update(self, worker_stats: Statistics | None, *, running: int | None = None) -> None:
        self.worker_stats = worker_stats
        if running is not None:
            self.running = running
        if not self.enabled:
            return
        if self._live is not None:
            self._live.update(self._render())
        elif time.monotonic() - self._last_line >= 5.0:
            self._last_line = time.monotonic()
            self.console.print(self.line(), highlight=False)

    def line(self) -> str:
        t, w = self.tally, self.worker_stats
        dead = t.by_status[TaskStatus.DEAD]  # (as the summary and `legion status` say: a
        failed = t.not_succeeded - t.by_status[TaskStatus.CANCELLED] - dead  # dead is no failed)
        parts = [
            f"{t.done}/{t.total} done",
            f"{rate_text(t.rate())} tasks/s",
            f"p50 {_ms(t.latency.quantile(0.5))}",
            f"p95 {_ms(t.latency.quantile(0.95))}",
            f"in flight {w.in_flight if w else self.running}",
            f"retries {w.retried if w else 0}",
            f"failed {failed}",
            f"dead {dead}",
        ]
        if self.waiting:
            parts.append(f"waiting {self.waiting} (legion status lists them)")
        if t.by_status[TaskStatus.CANCELLED]:
            parts.append(f"cancelled {t.by_status[TaskStatus.CANCELLED]}")
        llm = self._llm_brief()
        return "legion run: " + " | ".join(parts) + (f" | {llm}" if llm else "")

    def _llm_brief(self) -> str:
        if self.llm is None:
            return ""
        s = self.llm.statistics()
        if not any(r.calls for r in s.routes.values()):
            return ""
        from legion.llm.pricing import format_cost  # here: the CLI starts without the LLM layer

        broken = [
            r.name + (f" ({r.last_error[:160]})" if r.last_error else "")
            for r in s.routes.values()
            if r.breaker and r.breaker.state
        ]
        return (
            llm_counts(self.llm)
            + f", {s.usage.total:,} tokens, {format_cost(s.cost_usd, s.unpriced_calls, hint=False)}"
            + _local_speed({id(r.provider): r.provider for r in self.llm.routes.values()}.values())
            + "".join(f" | breaker open on route {name}" for name in broken)
        )

    def llm_line(self) -> str:
        """The LLM part of the final summary, per route."""
        if self.llm is None:
            return ""
        from legion.llm.pricing import format_cost  # here: the CLI starts without the LLM layer

        lines = []
        routes = self.llm.statistics().routes
        for r in routes.values():
            if not r.calls:
                continue
            errors = ", ".join(f"{n} {e}" for e, n in sorted(r.errors.items()))
            # (a pool's 429s are each of its keys'; a call another route answered, a
            # fallback's or another key's, is named by where it went, and so are the
            # 429s of a fallback that has no calls of its own to show them on)
            limited = _limited(d for d in self.llm.deployments if d.name == r.name)
            at_fallbacks = [
                f"{f} {n}"
                for f in sorted(r.served_by)
                if f != r.name and f in routes and not routes[f].calls
                and (n := _limited(d for d in self.llm.deployments if d.name == f))
            ]  # fmt: skip
            if at_fallbacks:
                limited_text = f"{limited} 429s (and at its fallback {', '.join(at_fallbacks)})"
            else:
                limited_text = f"{limited} 429s"
            served = ", ".join(f"{label} {n}" for label, n in sorted(r.served_by.items()))
            # (calls neither answered nor failed with an error of their own: a budget refused
            # them, the run stopped, or their task ended first: a timeout, another call's
            # error; which one, the call does not know)
            unsent = r.calls - r.succeeded - r.failed
            calls = f"{r.calls} calls" + (
                f" ({unsent} unanswered: cut short by a budget, a stop or their task's end)"
                if unsent
                else ""
            )
            if r.batched:  # (a batch job's calls: requests of the job, not paced one by one)
                calls += f", {r.batched} of them by the batch tier"
            lines.append(
                f"llm {r.name} ({r.provider}:{r.model}): {calls}, {r.attempts} requests, "
                f"{limited_text}, {r.usage.prompt_tokens:,} prompt"
                + (f" ({r.usage.cached_tokens:,} cached)" if r.usage.cached_tokens else "")
                + f" + {r.usage.completion_tokens:,} completion"
                + (f" ({r.usage.reasoning_tokens:,} reasoning)" if r.usage.reasoning_tokens else "")
                + f" tokens, {format_cost(r.cost_usd, r.unpriced_calls)}"
                + _local_speed([self.llm.routes[r.name].provider])
                + (f"; {r.hedged} hedged, {r.hedges_won} of them first" if r.hedged else "")
                + (f"; answered by {served}" if served else "")
                + (f"; errors: {errors}" if errors else "")
                + (_found_rate(r.capacity.found_rpm) if r.succeeded > r.batched else "")
            )
        return "\n".join(lines)

    def _render(self) -> Table:
        from rich.table import Table

        t, w = self.tally, self.worker_stats
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        pct = 100.0 * t.done / t.total if t.total else 100.0
        grid.add_row("agent", self.agent)
        grid.add_row(
            "done",
            f"{t.done}/{t.total} ({pct:.1f} %)" + (f", {t.resumed} resumed" if t.resumed else ""),
        )
        grid.add_row("throughput", f"{rate_text(t.rate())} tasks/s over {t.elapsed:.1f} s")
        grid.add_row(
            "latency (last attempt)",
            f"p50 {_ms(t.latency.quantile(0.5))}  p95 {_ms(t.latency.quantile(0.95))}",
        )
        grid.add_row("in flight", str(w.in_flight if w else self.running))
        if self.waiting:
            grid.add_row("waiting", f"{self.waiting} (legion status lists them)")
        grid.add_row("retries", str(w.retried if w else 0))
        failed = t.by_status[TaskStatus.FAILED] + t.bad_lines
        llm = self._llm_brief()
        if llm:
            grid.add_row("llm", llm)
        grid.add_row(
            "not succeeded",
            f"{t.not_succeeded} (failed {failed}, dead {t.by_status[TaskStatus.DEAD]}, "
            f"cancelled {t.by_status[TaskStatus.CANCELLED]})",
        )
        return grid


def rate_text(per_second: float) -> str:
    """A rate with the precision it deserves: 0.04, 0.4, 9.5, 12, 1,234."""
    if per_second <= 0:
        return "0"
    if per_second < 0.1:
        return f"{per_second:.2f}"
    if per_second < 10:
        return f"{per_second:.1f}"
    return f"{per_second:,.0f}"


def llm_counts(client: LLMClient) -> str:
    """Requests sent to the providers, calls waiting for their turn, and 429s, over every
    deployment of every route (each key of a pool has its own capacity; routes that
    share a provider and model share one: it is counted once)."""
    stats = [c.statistics() for c in _capacities(client.deployments)]
    sent = sum(c.requests for c in stats)
    waiting = sum(c.waiting for c in stats)
    limited = sum(c.rate_limited for c in stats)
    return f"LLM {sent:,} sent, {waiting:,} waiting, {limited:,} 429s"


def _found_rate(found_rpm: float | None) -> str:
    """What the summary says of a route paced at a rate it found: its provider's limit
    untold (no --rpm, no rate-limit headers), its calls began slowly and its pace was
    only what worked, which a run's timings then show as the agent's."""
    if found_rpm is None:
        return ""
    return (
        f"; its rate limit unknown (no --rpm, none in the provider's headers): paced from a "
        f"slow start to the rate found, {found_rpm:,.0f} rpm (--rpm gives the provider's)"
    )


def _limited(routes: Iterable[Route]) -> int:
    """The 429s the capacities of ``routes`` were answered."""
    return sum(c.statistics().rate_limited for c in _capacities(routes))


def _capacities(routes: Iterable[Route]) -> list[Capacity]:
    """The capacities of ``routes``, each once."""
    return list({id(r.capacity): r.capacity for r in routes}.values())


class LogsAboveLive:
    """While a live display runs, log records print above it through its console
    (a handler writing straight to stderr would leave a stale copy of the display
    behind each record); the root logger's stderr handlers are restored afterwards."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._swapped: list[tuple[logging.Handler, logging.Handler]] = []

    def __enter__(self) -> LogsAboveLive:
        root = logging.getLogger()
        for handler in list(root.handlers):
            stream = getattr(handler, "stream", None)
            ours = stream is not None and stream in (self.console.file, sys.stderr, sys.__stderr__)
            if type(handler) is logging.StreamHandler and ours:
                live = _ConsoleHandler(self.console)
                live.setLevel(handler.level)
                live.setFormatter(handler.formatter)
                for f in handler.filters:
                    live.addFilter(f)
                root.removeHandler(handler)
                root.addHandler(live)
                self._swapped.append((handler, live))
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        for handler, live in self._swapped:
            root.removeHandler(live)
            root.addHandler(handler)
        self._swapped.clear()


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False)
        except Exception:
            self.handleError(record)


def _local_speed(providers: Iterable[object]) -> str:
    """The tokens/s of the local models among ``providers`` (the machine is their limit)."""
    from legion.llm.local import LocalProvider

    speeds = [p.statistics() for p in providers if isinstance(p, LocalProvider)]
    return "".join(f", {s.tokens_per_second:.1f} tok/s" for s in speeds if s.completion_tokens)


def error_text(message: str) -> Text:
    """``error: MESSAGE``, the message verbatim."""
    from rich.text import Text

    return Text.assemble(("error:", "red"), " ", message)


def stderr_console(*, as_log: bool = False) -> Console:
    """The console of every message on stderr. Markup is off: a message is printed as
    written, so square brackets in a path, an error or an install hint
    (``'.[server]'``) reach the user intact; styles are given with ``style=`` or
    `rich.text.Text`. ``as_log``: each line printed is a log record of ``legion.console``
    instead (``--log-format json``: one JSON object per line, as every other)."""
    from rich.console import Console

    out = _LogLines() if as_log else sys.stderr
    return Console(file=out, highlight=False, soft_wrap=True, markup=False)


class _LogLines(io.StringIO):
    """A console's file that logs each line written to it: ``error: ...`` at ERROR, the
    rest at INFO (shown whatever the root level: they are what the command has to say)."""

    def __init__(self) -> None:
        super().__init__()
        self._log = logging.getLogger("legion.console")
        self._log.setLevel(logging.INFO)
        self._part = ""

    def write(self, text: str) -> int:
        *lines, self._part = (self._part + text).split("\n")
        for line in lines:
            if line.strip():
                level = logging.ERROR if line.startswith("error:") else logging.INFO
                self._log.log(level, "%s", line)
        return len(text)
