"""The options that several ``legion`` commands share, and how a command fails: a clear
message on stderr and an exit code, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from legion.cli.progress import error_text, stderr_console
from legion.errors import LegionError

T = TypeVar("T")

DEFAULT_STORE = "sqlite:///legion.db"
# The stores' integers are 64-bit: a task id (the HTTP API bounds them the same way) or a
# count past INT64_MAX is a usage error, not a question for the store.
INT64_MAX = 2**63 - 1
TASK_ID_MAX = INT64_MAX

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        "-s",
        envvar="LEGION_STORE",
        help="Where state lives: sqlite:///path.db (relative), sqlite:////abs/path.db, "
        "sqlite:///:memory:, or postgresql://user@host/db (shared by many workers: extra "
        "legion-runtime[postgres]).",
    ),
]

MOST = 2**53 - 1
"""The largest count an option takes: stored as JSON, a count must be a number every
reader holds exactly (one past 64 bits could not be stored at all, and a run waited for
good on a store that refused it)."""

ConcurrencyOpt = Annotated[
    int,
    typer.Option("--concurrency", "-c", min=1, max=MOST, help="Most agent instances at once."),
]
LeaseSecondsOpt = Annotated[
    float,
    typer.Option(
        min=0.1,
        max=86_400,
        help="Lease length; a vanished worker's tasks return to the queue after it.",
    ),
]


StoreWaitOpt = Annotated[
    float,
    typer.Option(
        min=0,
        max=10**9,
        help="At start, wait this long (seconds) for a store that cannot be reached, "
        "trying again with a growing pause; then exit with code 3 (under `legion worker "
        "--processes`, the supervisor starts that worker again: it waits for the store "
        "for as long as it runs).",
    ),
]


LLMOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--llm",
        help="An LLM route for ctx.llm: sim, openai:MODEL, openai:MODEL@URL (any "
        "OpenAI-compatible server), anthropic:MODEL, local (Gemma 3 270M in process; extra "
        "legion-runtime[local]) or local:/path/model.gguf; NAME=SPEC to name it. Repeat for "
        "several. Default: the built-in simulator.",
    ),
]
RpmOpt = Annotated[
    int | None,
    typer.Option("--rpm", min=1, max=MOST, help="Requests per minute allowed per --llm route."),
]
TpmOpt = Annotated[
    int | None,
    typer.Option("--tpm", min=1, max=MOST, help="Tokens per minute allowed per --llm route."),
]
MaxInFlightOpt = Annotated[
    int | None,
    typer.Option("--max-in-flight", min=1, max=MOST, help="Most concurrent calls per --llm route."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="A TOML file with an [llm] table (default: ./legion.toml if present)."
    ),
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        min=0.000001,
        help="Most USD the LLM calls may cost, counted over every run of the same input "
        "(and, for a worker, by this process). Each call reserves its estimate before it is "
        "sent; once the budget cannot hold a call nothing more is sent, and a run ends "
        "with status budget_exceeded (exit 3), a worker drains and exits 5: run again "
        "with a higher limit to continue.",
    ),
]
TenantMaxCostOpt = Annotated[
    float | None,
    typer.Option(
        "--tenant-max-cost",
        min=0.000001,
        help="Most USD each tenant's tasks may spend on LLM calls, in all (what they "
        "recorded before counts; each worker reads it at the tenant's first call there "
        "and counts its own calls after: N workers serving a tenant together may spend up "
        "to N times what was left). Once a tenant's budget cannot hold a call, nothing more "
        "is sent for it: its running tasks go back to the queue with what they recorded, "
        "showing the BudgetExceeded error, and are tried again every minute; restart "
        "with a higher limit to let them continue. Other tenants go on.",
    ),
]
TenantMaxRunningOpt = Annotated[
    int | None,
    typer.Option(
        "--tenant-max-running",
        min=1,
        max=MOST,
        help="Most of one tenant's tasks of an agent running at once, on every worker of "
        "the store (as it counts them; workers leasing at the same moment may go a lease "
        "over): a tenant whose tasks hang cannot take every slot. Default: no cap (tenants "
        "take turns at the queue either way).",
    ),
]
TenantMaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--tenant-max-tokens",
        min=1,
        max=MOST,
        help="Most LLM tokens (prompt + completion) per tenant, in all.",
    ),
]
TenantMaxCallsOpt = Annotated[
    int | None,
    typer.Option("--tenant-max-calls", min=1, max=MOST, help="Most LLM calls per tenant, in all."),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        min=1,
        max=MOST,
        help="Most LLM tokens (prompt + completion); as --max-cost.",
    ),
]
MaxCallsOpt = Annotated[
    int | None,
    typer.Option("--max-calls", min=1, max=MOST, help="Most answered LLM calls; as --max-cost."),
]
DeadlineOpt = Annotated[
    float | None,
    typer.Option(
        "--deadline",
        min=0.001,
        help="Seconds one attempt of a task may last in all, waits for capacity included "
        "(its agent's timeout counts running time only). Default: the agent's own, or none.",
    ),
]


OfferOpt = Annotated[
    str | None,
    typer.Option(
        metavar="RESOURCES",
        help="Resources this worker offers, as name=amount pairs and tags "
        "(memory_mb=4096,gpu): it leases only tasks of agents whose resources= it "
        "covers. Default: none (only tasks that need nothing).",
    ),
]

ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="Where agent instances run, for every agent: async (tasks in this process), "
        "process (a pool of child processes: a crash, memory bomb or endless loop fails only "
        "its own task) or ray (Ray tasks; see --ray-address). Default: where each agent asks.",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="The Ray cluster for --executor ray: host:port, ray://host:10001, auto, or "
        "local (a private local Ray instance). Given alone (without --executor ray), only "
        'agents declared with executor="ray" run on Ray. Default: start a private '
        "local Ray instance (with --executor ray), one per worker process.",
    ),
]
PoolSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--pool-size",
        min=1,
        help="Child processes of the process executor (default: one per CPU). Tasks past "
        "it wait for a free process (not counted against their timeout; their --deadline "
        "counts it): keep --concurrency close to it.",
    ),
]
MEMORY_LIMIT_MAX_MB = 2**43 - 1  # (legion.executors.process.MAX_LIMIT_MB)
MemoryLimitOpt = Annotated[
    int | None,
    typer.Option(
        "--memory-limit",
        min=64,
        max=MEMORY_LIMIT_MAX_MB,
        help="Most memory one agent process may use, in MB (process executor; its address "
        "space, of which the interpreter alone maps ~40 MB): a task that goes over fails "
        "with a clear error and its process is replaced.",
    ),
]


def _refuse_private_store(url: str, needs: str) -> None:
    """Refuse a store that lives in this process alone (``sqlite:///:memory:``) where the
    command ``needs`` another process to reach it: it would wait for ever, or make what
    nothing else can use. ``needs`` says who must reach it."""
    if url == "sqlite:///:memory:":
        raise _fail(
            f"{needs}; {url} lives in this process alone (give a SQLite file or PostgreSQL)"
        )


def _fail(message: str, code: int = 2) -> typer.Exit:
    stderr_console().print(error_text(message))
    return typer.Exit(code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except LegionError as exc:
        raise _fail(str(exc)) from None


def _budget(max_cost: float | None, max_tokens: int | None, max_calls: int | None) -> Any:
    from legion.llm.budget import BudgetLimits

    try:
        return BudgetLimits(max_cost, max_tokens, max_calls)
    except LegionError as exc:
        raise _fail(str(exc)) from None


class TraceExporter(enum.StrEnum):
    otlp = "otlp"
    console = "console"


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


TraceOpt = Annotated[
    TraceExporter | None,
    typer.Option(
        "--trace",
        envvar="LEGION_TRACE",
        help="Export OpenTelemetry spans of tasks, steps and LLM calls: otlp (configured "
        "by the OTEL_EXPORTER_OTLP_* variables) or console. Off by default (extra "
        "legion-runtime[otel]).",
    ),
]
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="LEGION_LOG_FORMAT",
        help="Logs on stderr as text, or as JSON lines that carry task ids (a server's and "
        "a worker's own messages too).",
    ),
]


def _setup_logging(verbose: bool, log_format: LogFormat = LogFormat.text) -> None:
    from legion.telemetry import configure_logging

    configure_logging(
        level=logging.INFO if verbose else logging.WARNING, as_json=log_format is LogFormat.json
    )


def _quiet_failures() -> None:
    """Leave each failed attempt and each async pitfall out of the log
    (`legion.run.worker.tasks_log`, `pitfalls_log`): for a command that reports its tasks'
    ends and pitfalls itself (run, demo, bench)."""
    logging.getLogger("legion.tasks").setLevel(logging.ERROR)
    logging.getLogger("legion.pitfalls").setLevel(logging.ERROR)


@contextlib.contextmanager
def _tracing(exporter: TraceExporter | None) -> Iterator[None]:
    """Export spans with ``exporter`` while the block runs (none: no tracing), and flush
    and stop the export after it."""
    if exporter is None:
        yield
        return
    from legion.telemetry import configure_tracing

    try:
        stop = configure_tracing(exporter.value)
    except LegionError as exc:
        raise _fail(str(exc)) from None
    try:
        yield
    finally:
        stop()
