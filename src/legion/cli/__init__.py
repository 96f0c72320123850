"""The ``legion`` command. Every command parses its options and calls the library."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..errors import LegionError
from .progress import stderr_console

T = TypeVar("T")

app = typer.Typer(
    name="legion",
    help="Run AI agents at throughput scale: thousands of durable, isolated instances at once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_STORE = "sqlite:///legion.db"

StoreOpt = Annotated[
    str,
    typer.Option(
        "--store",
        "-s",
        envvar="LEGION_STORE",
        help="Where state lives: sqlite:///path.db (relative), sqlite:////abs/path.db, sqlite:///:memory:.",
    ),
]


LLMOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--llm",
        help="An LLM route for ctx.llm: sim, openai:MODEL, openai:MODEL@URL (any "
        "OpenAI-compatible server), anthropic:MODEL; NAME=SPEC to name it. Repeat for "
        "several. Default: the built-in simulator.",
    ),
]
RpmOpt = Annotated[
    int | None, typer.Option("--rpm", min=1, help="Requests per minute allowed per --llm route.")
]
TpmOpt = Annotated[
    int | None, typer.Option("--tpm", min=1, help="Tokens per minute allowed per --llm route.")
]
MaxInFlightOpt = Annotated[
    int | None,
    typer.Option("--max-in-flight", min=1, help="Most concurrent calls per --llm route."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="A TOML file with an [llm] table (default: ./legion.toml if present)."
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    stderr_console().print(f"[red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except LegionError as exc:
        raise _fail(str(exc)) from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def run(
    agent: Annotated[
        str, typer.Argument(help="The agent: path/to/file.py:function or package.module:function.")
    ],
    input: Annotated[Path, typer.Option("--input", "-i", help="JSONL file: one input per line.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write one JSON result per input line (default: stdout).",
        ),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Most agent instances at once.")
    ] = 1000,
    lease_seconds: Annotated[
        float,
        typer.Option(
            min=0.1, help="Lease length; a vanished worker's tasks return to the queue after it."
        ),
    ] = 30.0,
    progress: Annotated[bool, typer.Option(help="Show live progress on stderr.")] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what the worker does.")
    ] = False,
    llm: LLMOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_in_flight: MaxInFlightOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run every line of a JSONL file through an agent, resumably.

    Each line becomes a task whose idempotency key comes from the agent, the line number
    and the line's content (or its "_key" field), so running the same command again
    skips what finished and runs the rest. Exits 1 if any task did not succeed.
    """
    from ..loader import load_agent
    from .llm_options import LLMOptions
    from .run import RunOptions, run_file

    _setup_logging(verbose)
    if not input.is_file():
        raise _fail(f"no such input file: {input}")
    if output is not None and not output.parent.exists():
        raise _fail(f"cannot write {output}: {output.parent} does not exist")
    try:
        loaded = load_agent(agent)
    except LegionError as exc:
        raise _fail(str(exc)) from None
    opts = RunOptions(
        agent=loaded,
        input=input,
        output=output,
        store=store,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        progress=progress,
        llm=LLMOptions(tuple(llm or ()), rpm, tpm, max_in_flight, config),
    )
    code = _run(run_file(opts, stderr_console()))
    raise typer.Exit(code)


@app.command()
def status(
    store: StoreOpt = DEFAULT_STORE,
    errors: Annotated[int, typer.Option(help="How many of the latest errors to show.")] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
) -> None:
    """Show tasks per status and agent, live workers and the latest errors."""
    from .status import show_status

    _run(show_status(store, errors=errors, as_json=as_json))


@app.command()
def retry(
    task_ids: Annotated[list[int] | None, typer.Argument(help="Task ids to queue again.")] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Queue every dead task again.")] = False,
    failed: Annotated[
        bool, typer.Option("--failed", help="Queue every failed task again.")
    ] = False,
    cancelled: Annotated[
        bool, typer.Option("--cancelled", help="Queue every cancelled task again.")
    ] = False,
    agent: Annotated[str | None, typer.Option(help="Only tasks of this agent.")] = None,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Queue dead, failed or cancelled tasks again, with a fresh attempt budget."""
    from .status import requeue

    if not (task_ids or dead or failed or cancelled):
        raise _fail("name task ids, or --dead, --failed or --cancelled")
    n = _run(
        requeue(store, task_ids or [], dead=dead, failed=failed, cancelled=cancelled, agent=agent)
    )
    stderr_console().print(
        f"queued again: {n} task(s); run a worker (or the same `legion run`) to process them"
    )


@app.command()
def cancel(
    task_ids: Annotated[list[int], typer.Argument(help="Task ids to cancel.")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Cancel tasks: queued ones at once, running ones when their worker next checks in."""
    from .status import cancel_tasks

    for task_id, st in _run(cancel_tasks(store, task_ids)):
        print(f"{task_id}\t{st or 'not found'}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def sim(ctx: typer.Context) -> None:
    """Start the provider simulator: an OpenAI-compatible server with rate limits and faults
    (`legion sim --help` lists its options)."""
    from ..sim.cli import main as sim_main

    raise typer.Exit(sim_main(list(ctx.args)))


def main() -> None:
    app()
