"""The ``legion`` command: the Typer application, its core commands (run, worker, status,
retry, cancel) and the groups registered from their own modules (serve, bench, demo,
sim, vectors). Every command parses its options and calls the library."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from legion.cli.bench import register as _register_bench
from legion.cli.forget import register as _register_forget
from legion.cli.gateway import register as _register_gateway
from legion.cli.leftover import exit_past_threads
from legion.cli.limits import raise_open_files
from legion.cli.options import (
    DEFAULT_STORE,
    INT64_MAX,
    TASK_ID_MAX,
    ConcurrencyOpt,
    ConfigOpt,
    DeadlineOpt,
    ExecutorOpt,
    LeaseSecondsOpt,
    LLMOpt,
    LogFormat,
    LogFormatOpt,
    MaxCallsOpt,
    MaxCostOpt,
    MaxInFlightOpt,
    MaxTokensOpt,
    MemoryLimitOpt,
    OfferOpt,
    PoolSizeOpt,
    RayAddressOpt,
    RpmOpt,
    StoreOpt,
    StoreWaitOpt,
    TenantMaxCallsOpt,
    TenantMaxCostOpt,
    TenantMaxRunningOpt,
    TenantMaxTokensOpt,
    TpmOpt,
    TraceOpt,
    _budget,
    _fail,
    _quiet_failures,
    _refuse_private_store,
    _run,
    _setup_logging,
    _tracing,
)
from legion.cli.progress import error_text, stderr_console
from legion.cli.purge import register as _register_purge
from legion.cli.schedule import register as _register_schedule
from legion.cli.serve import register as _register_serve
from legion.cli.signal import register as _register_signal
from legion.cli.sim import register as _register_sim
from legion.cli.vectors import register as _register_vectors
from legion.errors import LegionError

app = typer.Typer(
    name="legion",
    help="Run AI agents at throughput scale: thousands of durable, isolated instances at once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help and errors verbatim: "legion[server]" keeps its brackets
)


def _print_version(asked: bool) -> None:
    if asked:
        from legion import __version__

        print(f"legion {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print legion's version and exit.",
        ),
    ] = False,
) -> None:
    pass  # the options of `legion` itself (the application's help is its own)


@app.command()
def run(
    agent: Annotated[
        str,
        typer.Argument(
            metavar="AGENT",
            help="The agent: path/to/file.py:function or package.module:function (a file "
            "alone: its one agent).",
        ),
    ],
    input: Annotated[
        Path, typer.Option("--input", "-i", help="JSONL file: one input per line (-: stdin).")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write one JSON result per input line, in input order, each as "
            "soon as the lines before it are done (default, or -: stdout, which holds the "
            "results alone: what else prints there, an agent's print, goes to stderr). A "
            "file is written as "
            "FILE.partial and renamed over FILE at the end, with your umask's mode (a FILE "
            "that is not a legion run's output is refused, not replaced); a device, FIFO, "
            "/dev/stdout or symlink (its target) is written through, never replaced.",
        ),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    concurrency: ConcurrencyOpt = 1000,
    lease_seconds: LeaseSecondsOpt = 30.0,
    progress: Annotated[bool, typer.Option(help="Show live progress on stderr.")] = True,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail a task whose agent made a step, LLM call, memory write, durable "
            "wait, child task, ctx.gather or other coroutine it never awaited (by default "
            "it is reported). Agents on the default executor: one in a process or on Ray "
            "is not watched.",
        ),
    ] = False,
    local_worker: Annotated[
        bool,
        typer.Option(
            help="Run the tasks in this process too. --no-local-worker only submits and "
            "watches: `legion worker` processes sharing the store run them."
        ),
    ] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what the worker does.")
    ] = False,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    pool_size: PoolSizeOpt = None,
    memory_limit: MemoryLimitOpt = None,
    llm: LLMOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_in_flight: MaxInFlightOpt = None,
    config: ConfigOpt = None,
    deadline: DeadlineOpt = None,
    max_cost: MaxCostOpt = None,
    max_tokens: MaxTokensOpt = None,
    max_calls: MaxCallsOpt = None,
    offer: OfferOpt = None,
    trace: TraceOpt = None,
    log_format: LogFormatOpt = LogFormat.text,
    drain_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="On Ctrl-C or SIGTERM, seconds the running tasks get to finish before "
            "they go back to the queue unfinished (a run of the same command takes them).",
        ),
    ] = 30.0,
    store_wait: Annotated[
        float,
        typer.Option(
            min=1,
            max=10**9,
            help="Seconds the run waits for a store that does not answer (a database down, "
            "unreachable or at its max_connections), at start or in its middle, before it "
            "stops with exit code 5; what finished is kept, and the same command run "
            "again goes on from there.",
        ),
    ] = 300.0,
) -> None:
    """Run every line of a JSONL file through an agent, resumably.

    Each line becomes a task whose idempotency key comes from the agent, the line number
    and the line's content (or its "_key" field), so running the same command again
    skips what finished and runs the rest. Exits 1 if any task did not succeed, 2 when an
    error stopped the run (a rejected API key, an output it could not write), 3 when its
    budget stopped it, 4 when an agent froze the event loop, 5 when the store did not
    answer for --store-wait seconds, 128 + the signal's number when a signal did (130
    for Ctrl-C, 143 for SIGTERM).
    """
    from legion.cli.llm_options import ExecutorOptions
    from legion.cli.run import RunOptions, run_file
    from legion.cli.wiring import RuntimeOptions, llm_options
    from legion.loader import load_agent, peers_of

    _setup_logging(verbose, log_format)
    if not verbose:  # each failed line is in the output, with its error
        _quiet_failures()
    if not local_worker:
        _refuse_private_store(
            store,
            "--no-local-worker leaves the tasks to `legion worker` processes, which "
            "must reach the store",
        )
    if str(input) == "-":
        if sys.stdin is None:  # (started with it closed: <&-)
            raise _fail("cannot read --input -: standard input is closed")
    else:
        if input.is_dir():
            raise _fail(f"cannot read {input}: it is a folder (give a JSONL file, or - for stdin)")
        if not input.exists():
            raise _fail(f"no such input file: {input}")
    from legion.resources import parse_offer

    try:
        loaded = load_agent(agent)
        if deadline is not None:
            loaded = loaded.with_deadline(deadline)
        offered = parse_offer(offer) if offer is not None else {}
        executors = ExecutorOptions(executor, ray_address, pool_size, memory_limit)
        executors.check([loaded, *peers_of(loaded)])
    except (LegionError, ValueError) as exc:
        raise _fail(str(exc)) from None
    runtime = RuntimeOptions(
        store=store,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        llm=llm_options(llm, rpm, tpm, max_in_flight, config),
        worker=local_worker,
        strict=strict,
        executors=executors,
        budget=_budget(max_cost, max_tokens, max_calls),
        offer=offered,
        drain_timeout=drain_timeout,
    )
    opts = RunOptions(
        agent=loaded,
        input=input,
        output=output,
        progress=progress,
        runtime=runtime,
        peers=tuple(peers_of(loaded)),
        store_wait=store_wait,
    )
    with _tracing(trace):
        code = _run(run_file(opts, stderr_console(as_log=log_format is LogFormat.json)))
    raise typer.Exit(code)


@app.command()
def worker(
    app_ref: Annotated[
        list[str],
        typer.Option(
            "--app",
            "-a",
            help="The agents to serve: a file (myagents.py) or module (pkg.agents), every agent "
            "it defines; FILE:NAME for one (a plain `async def` too, as `legion run` takes it). "
            "Repeatable.",
        ),
    ],
    store: StoreOpt = DEFAULT_STORE,
    concurrency: ConcurrencyOpt = 1000,
    processes: Annotated[
        str | None,
        typer.Option(
            help="Worker processes to run here, supervised (each restarted when it crashes, "
            "gives up on the store or is frozen by an agent; after a pause that doubles, up "
            "to 30 s, while it keeps crashing): a number, or 'auto' for one per core. "
            "Default: this process is the one worker.",
        ),
    ] = None,
    autoscale: Annotated[
        str | None,
        typer.Option(
            metavar="MIN:MAX",
            help="Run between MIN and MAX worker processes here, as many as the work asks "
            "for: more while a backlog builds, none added while an LLM route is at its "
            "limit, fewer after --cooldown seconds of less work (a stopped worker drains: "
            "no lease lost, no attempt charged). See docs/provisioning.md.",
        ),
    ] = None,
    offer: OfferOpt = None,
    cooldown: Annotated[
        float,
        typer.Option(
            min=0, help="With --autoscale: seconds of less work before workers are stopped."
        ),
    ] = 60.0,
    lease_seconds: Annotated[
        float,
        typer.Option(
            min=0.1, max=86_400, help="Lease length; a dead worker's tasks return after it."
        ),
    ] = 30.0,
    drain_timeout: Annotated[
        float,
        typer.Option(min=0, help="On SIGTERM, seconds running tasks get to finish before release."),
    ] = 30.0,
    max_loop_lag: Annotated[
        float, typer.Option(min=0.01, help="Stop leasing while the event loop lags more (s).")
    ] = 0.5,
    max_memory: Annotated[
        float | None, typer.Option(min=1, help="Stop leasing while memory is above this (MB).")
    ] = None,
    lease_ahead: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Lease at most this share of --concurrency ahead of free slots, to start "
            "as slots free (sized by how fast tasks end: none for long ones); 0: never.",
        ),
    ] = 0.2,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail a task whose agent left a step, call, wait, child, gather or other "
            "coroutine unawaited (agents on the default executor: one in a process or on "
            "Ray is not watched).",
        ),
    ] = False,
    store_wait: StoreWaitOpt = 300.0,
    max_freezes: Annotated[
        int,
        typer.Option(
            min=1,
            help="A task that blocks the event loop past its timeout is recorded and the "
            "worker process exits (the --processes supervisor starts another); a task that "
            "does it this many times is dead.",
        ),
    ] = 3,
    worker_process: Annotated[bool, typer.Option("--worker-process", hidden=True)] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what the worker does.")
    ] = False,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    pool_size: PoolSizeOpt = None,
    memory_limit: MemoryLimitOpt = None,
    llm: LLMOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_in_flight: MaxInFlightOpt = None,
    config: ConfigOpt = None,
    deadline: DeadlineOpt = None,
    max_cost: MaxCostOpt = None,
    max_tokens: MaxTokensOpt = None,
    max_calls: MaxCallsOpt = None,
    tenant_max_cost: TenantMaxCostOpt = None,
    tenant_max_tokens: TenantMaxTokensOpt = None,
    tenant_max_calls: TenantMaxCallsOpt = None,
    tenant_max_running: TenantMaxRunningOpt = None,
    trace: TraceOpt = None,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Serve the agents of an app from a shared store until SIGINT/SIGTERM.

    Start as many as you like, on as many machines as you like, against one PostgreSQL
    database: each leases tasks, runs them, and drains on SIGTERM (running tasks finish
    or go back to the queue). LLM limits (--rpm/--tpm) are shared by all the workers
    that use the same provider and model: together they stay under them.
    """
    from legion.cli.llm_options import ExecutorOptions
    from legion.cli.wiring import RuntimeOptions, llm_options
    from legion.cli.worker import (
        WorkerOptions,
        child_argv,
        follow_supervisor,
        load_agents,
        processes_from,
        serve,
        supervise,
    )

    _setup_logging(verbose, log_format)
    as_log = log_format is LogFormat.json
    _refuse_private_store(store, "legion worker needs a store that what submits tasks can reach")
    if worker_process and not follow_supervisor():
        print("legion worker: the supervisor is gone; not starting", file=sys.stderr)
        raise typer.Exit(0)
    try:
        n = None if processes is None or worker_process else processes_from(processes)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    executors = ExecutorOptions(executor, ray_address, pool_size, memory_limit)
    try:
        agents = load_agents(tuple(app_ref))
        if deadline is not None:
            agents = [a.with_deadline(deadline) for a in agents]
        executors.check(agents)
    except LegionError as exc:
        raise _fail(str(exc)) from None
    from legion.resources import parse_offer

    try:
        offered = parse_offer(offer) if offer is not None else {}
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if autoscale is not None and not worker_process:
        if n is not None:
            raise _fail("--autoscale and --processes cannot be used together")
        from functools import partial

        from legion.cli.wiring import open_store
        from legion.provision.autoscaler import run_autoscaler

        console = stderr_console(as_log=as_log)  # (a line per event, never wrapped)
        opener = partial(
            open_store, store, lease_seconds=lease_seconds, wait=store_wait, console=console
        )
        try:
            code = run_autoscaler(
                sys.argv[2:],
                autoscale,
                cooldown,
                concurrency,
                console=console,
                opener=opener,
                agents=[a.name for a in agents],
            )
        except (ValueError, LegionError) as exc:
            raise _fail(str(exc)) from None
        raise typer.Exit(code)
    if n is not None:
        raise typer.Exit(supervise(child_argv(sys.argv[2:]), n, stderr_console(as_log=as_log)))
    runtime = RuntimeOptions(
        store=store,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        llm=llm_options(llm, rpm, tpm, max_in_flight, config),
        strict=strict,
        executors=executors,
        budget=_budget(max_cost, max_tokens, max_calls),
        tenant_budget=_budget(tenant_max_cost, tenant_max_tokens, tenant_max_calls),
        drain_timeout=drain_timeout,
        max_loop_lag=max_loop_lag,
        max_memory_mb=max_memory,
        offer=offered,
        lease_ahead=lease_ahead,
        tenant_max_running=tenant_max_running,
    )
    opts = WorkerOptions(
        apps=tuple(app_ref), runtime=runtime, store_wait=store_wait, max_freezes=max_freezes
    )
    with _tracing(trace):
        code = _run(serve(opts, agents, stderr_console(as_log=as_log)))
    raise typer.Exit(code)


@app.command()
def status(
    store: StoreOpt = DEFAULT_STORE,
    errors: Annotated[
        int, typer.Option(min=0, max=INT64_MAX, help="How many of the latest errors to show.")
    ] = 10,
    waiting: Annotated[
        int,
        typer.Option(
            min=0,
            max=INT64_MAX,
            help="How many waiting tasks to list (newest first), with what each waits for: "
            "the ids `legion signal` takes.",
        ),
    ] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    advice: Annotated[
        bool,
        typer.Option(
            "--advice",
            help="Also show the async pitfalls found in the latest tasks: event-loop blocks, "
            "un-awaited steps, escaped exceptions, steps that ctx.gather would speed up.",
        ),
    ] = False,
) -> None:
    """Show tasks per status and agent, live workers and the latest errors."""
    from legion.cli.status import show_status

    _run(show_status(store, errors=errors, waiting=waiting, as_json=as_json, advice=advice))


@app.command()
def retry(
    task_ids: Annotated[
        list[int] | None,
        typer.Argument(min=1, max=TASK_ID_MAX, help="Task ids to queue again."),
    ] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Queue every dead task again.")] = False,
    failed: Annotated[
        bool, typer.Option("--failed", help="Queue every failed task again.")
    ] = False,
    cancelled: Annotated[
        bool, typer.Option("--cancelled", help="Queue every cancelled task again.")
    ] = False,
    agent: Annotated[
        str | None,
        typer.Option(help="With --dead, --failed or --cancelled: only tasks of this agent."),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant",
            help="With --dead, --failed or --cancelled: only tasks of this tenant (as "
            "`legion keys` names it; `default` for the server's own).",
        ),
    ] = None,
    children: Annotated[
        bool,
        typer.Option(
            "--children",
            help="With task ids: their descendants that ended dead, failed or cancelled "
            "too (the child tasks each started with ctx.spawn or ctx.map, theirs, ...), "
            "queued before it. A parent retried alone finds its children by their keys, "
            "and one cancelled or failed with it fails it again.",
        ),
    ] = False,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Queue dead, failed or cancelled tasks again, with a fresh attempt budget."""
    from legion.cli.status import requeue

    if not (task_ids or dead or failed or cancelled):
        raise _fail("name task ids, or --dead, --failed or --cancelled")
    if children and not task_ids:
        raise _fail("--children goes with task ids: the tasks whose descendants to retry")
    for name, given in (("--agent", agent), ("--tenant", tenant)):
        if given is not None and not (dead or failed or cancelled):  # (it filtered nothing)
            raise _fail(f"{name} goes with --dead, --failed or --cancelled: task ids name theirs")
    n, refused = _run(
        requeue(
            store,
            task_ids or [],
            dead=dead,
            failed=failed,
            cancelled=cancelled,
            agent=agent,
            children=children,
            tenant=tenant,
        )
    )
    console = stderr_console()
    for reason in refused:
        console.print(error_text(reason))
    if n:
        console.print(
            f"queued again: {n} task(s); run a worker (or the same `legion run`) to process them"
        )
    elif not refused:  # a filter that matched nothing: no worker has anything to do
        kinds = " or ".join(
            k for k, on in (("dead", dead), ("failed", failed), ("cancelled", cancelled)) if on
        )
        of = f" of agent {agent!r}" if agent else ""
        of += f" of tenant {tenant!r}" if tenant else ""
        console.print(f"nothing to queue again: no {kinds} tasks{of}", highlight=False)
    if refused:
        raise typer.Exit(1)


@app.command()
def cancel(
    task_ids: Annotated[
        list[int] | None,
        typer.Argument(min=1, max=TASK_ID_MAX, help="Task ids to cancel (or --tenant)."),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant",
            help="Instead of ids: every queued, waiting and running task of this tenant (as "
            "`legion keys` names it; `default` for the server's own), e.g. after revoking "
            "its key, which refuses its requests but stops none of its tasks.",
        ),
    ] = None,
    agent: Annotated[
        str | None, typer.Option(help="With --tenant: only that tenant's tasks of this agent.")
    ] = None,
    children: Annotated[
        bool,
        typer.Option(
            "--children",
            help="Cancel their unfinished descendants too: the child tasks each started "
            "(ctx.spawn, ctx.map), theirs, and so on; a line each. Without it they run on, "
            "and `legion retry` of the task picks them up again.",
        ),
    ] = False,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Cancel tasks: queued ones at once, running ones when their worker next checks in.

    Prints each task's status after the request (a running one stays running until its
    worker stops it), a thousand at a time as they are done; says on stderr which tasks
    it could not cancel and why (not found, already ended) and exits 1 if there was one.
    With --tenant, a task that ended on its own while the command ran is no refusal: it
    is counted, and the command exits 0.
    """
    from legion.cli.status import CANCEL_CHUNK, CancelTally, cancel_tasks, tenant_tasks

    if agent is not None and tenant is None:  # (first: it was told "give task ids")
        raise _fail(
            "--agent goes with --tenant: cancel one agent's tasks with --tenant NAME "
            "--agent AGENT (a single user's tenant is 'default')"
        )
    if (tenant is None) == (not task_ids):
        raise _fail("give task ids, or --tenant NAME (not both)")
    console = stderr_console()
    if tenant is not None:
        task_ids = _run(tenant_tasks(store, tenant, agent))
        if task_ids is None:  # (after a revocation, a mistyped name is no success)
            raise _fail(
                f"tenant {tenant!r} has no tasks in this store: is its name right? "
                "(`legion keys list` shows the tenants)",
                code=1,
            )
        if not task_ids:
            of = f" of agent {agent!r}" if agent else ""
            console.print(
                f"nothing to cancel: tenant {tenant!r} has no unfinished tasks{of}",
                highlight=False,
            )
            return
        if len(task_ids) > CANCEL_CHUNK:
            console.print(
                f"cancelling {len(task_ids):,} tasks of tenant {tenant!r}, "
                f"{CANCEL_CHUNK:,} at a time (a line each as they are done)",
                highlight=False,
            )
    assert task_ids is not None
    tally = CancelTally(by_tenant=tenant is not None)
    _run(cancel_tasks(store, task_ids, tally.each, children=children))
    for line in tally.notes():
        console.print(line, highlight=False)
    for reason in tally.refused:
        console.print(error_text(reason))
    if tally.refused:
        raise typer.Exit(1)


_register_serve(app)
_register_bench(app)
_register_sim(app)
_register_vectors(app)
_register_signal(app)
_register_purge(app)
_register_forget(app)
_register_schedule(app)
_register_gateway(app)


def main() -> None:
    """The ``legion`` command, with what no command handles itself: an argument that is
    not UTF-8 text, a standard output that cannot be written (a full disk, a closed pipe),
    and Ctrl-C while it starts."""
    if sys.stdout is not None:
        sys.stdout = _Stdout(sys.stdout)
    raise_open_files()
    try:
        for i, arg in enumerate(sys.argv[1:], 1):
            try:
                arg.encode()
            except UnicodeEncodeError:
                shown = os.fsencode(arg).decode("utf-8", "backslashreplace")
                print(f"error: argument {i} is not UTF-8 text: {shown}", file=sys.stderr)
                raise SystemExit(2) from None
        try:
            app()
        except SystemExit as done:
            exit_past_threads(done.code if isinstance(done.code, int) else int(bool(done.code)))
            raise
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except OSError as exc:
        out = sys.stdout
        if not isinstance(out, _Stdout) or out.failed is not exc:
            raise
        with contextlib.suppress(OSError):  # (the interpreter's own flush at exit fails too)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
        print(f"error: cannot write standard output: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None


class _Stdout:
    """Standard output, as it was, that remembers the error a write to it raised (a full
    disk, a closed pipe): `main` says so in a line, where a traceback came."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.failed: OSError | None = None

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except OSError as exc:
            self.failed = exc
            raise

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self.failed = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
