"""``legion bench`` (named benchmark scenarios) and ``legion demo`` (sequential vs
scaled on the example agent). Both only parse options and call `legion.bench` and
`legion.demo`; they print progress on stderr and results on stdout."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from legion.cli.options import _quiet_failures
from legion.cli.progress import error_text, stderr_console
from legion.errors import LegionError

if TYPE_CHECKING:
    # rich loads where something is printed: `legion --help` never needs it.
    from rich.console import Console

    from legion.bench.results import BenchResult
    from legion.demo.compare import Comparison

DEFAULT_OUT = Path("legion-bench")
"""Under the current folder: a run never overwrites the tables committed in a clone
(``benchmarks/results``) unless ``--out`` names them."""


class VectorData(StrEnum):
    clustered = "clustered"
    random = "random"


DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1/test"

OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Folder for NAME.json, NAME.md and NAME-*.png (created if missing). Default: "
        "legion-bench/ in the current folder; the tables committed in a clone are "
        "benchmarks/results/ (write there with --out benchmarks/results).",
    ),
]
PlotsOpt = Annotated[
    bool, typer.Option(help="Draw PNG plots (needs matplotlib: extra legion-runtime[bench]).")
]
NoPlotsOpt = Annotated[
    bool,
    typer.Option(
        help="Taken as by the other scenarios; this one draws no plot (its table is its result)."
    ),
]
PostgresOpt = Annotated[
    str,
    typer.Option(
        "--postgres",
        envvar="LEGION_BENCH_POSTGRES",
        help="PostgreSQL server for the PostgreSQL runs: a libpq URL whose database exists. "
        "Each run makes a schema of its own there and drops it afterwards.",
    ),
]
RepeatOpt = Annotated[int, typer.Option(min=1, help="Runs of each path; the best counts.")]
SqliteOnlyOpt = Annotated[bool, typer.Option("--sqlite-only", help="Skip the PostgreSQL runs.")]


def _progress(console: Console) -> Callable[[str], None]:
    from rich.text import Text

    start = time.monotonic()

    def say(message: str) -> None:
        console.print(Text.assemble((f"{time.monotonic() - start:7.1f}s", "dim"), " ", message))

    return say


def _command() -> str:
    return "legion " + shlex.join(sys.argv[1:])


Scenario = Callable[[Callable[[str], None]], Coroutine[Any, Any, "BenchResult"]]
"""A benchmark run: given where to say its progress, the coroutine that measures."""

T = TypeVar("T")


def _options(build: Callable[[], T]) -> T:
    """A scenario's options, built from the command line's: a value they refuse is a
    usage error (exit 2), said in one line, before anything runs."""
    try:
        return build()
    except (LegionError, ValueError) as exc:
        raise _bad(str(exc)) from None


def _bench(make: Scenario, out: Path, plots: bool) -> None:
    """Check ``out`` can take the results, run the scenario, print its table and write
    its files."""
    _check_out(out)
    _quiet_failures()  # (the tables count them)
    _finish(_run_scenario(make), out, plots)


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written before the benchmark runs (a run can
    take many minutes): a file, or a folder that cannot be made or written to."""
    if out.exists() and not out.is_dir():
        raise _bad(f"--out {out} is a file, not a folder: name a folder for the results")
    existing = out
    while not existing.exists():  # the nearest folder that exists: the new ones go there
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise _bad(f"--out {out}: cannot write in {existing}")


def _finish(result: BenchResult, out: Path, plots: bool) -> None:
    from legion.bench.results import write_result

    result.command = _command()
    print(result.markdown())  # first: a folder that fails now loses no measurement
    try:
        paths = write_result(result, out, plots=plots)
    except OSError as exc:
        stderr_console().print(
            error_text(f"could not write the results to {out}: {exc.strerror or exc}")
        )
        raise typer.Exit(1) from None
    stderr_console().print("wrote " + ", ".join(str(p) for p in paths), highlight=False)
    for note in result.notes:  # (added as the files were written, after the table)
        if note.startswith("plots skipped"):
            stderr_console().print(f"{note}; --no-plots for none", style="yellow", highlight=False)


def _run_scenario(make: Scenario) -> BenchResult:
    from rich.text import Text

    from legion.bench.results import cpu_count, load_average

    console = stderr_console()
    load = load_average()
    if load is not None and load > cpu_count() / 2:
        console.print(
            Text.assemble(
                ("note:", "yellow"),
                f" the machine is busy (load {load:.1f} on {cpu_count()} CPUs): "
                "absolute numbers will be low; the ratios measured in one run hold better",
            )
        )
    try:
        result = asyncio.run(_until_sigterm(make, _progress(console)))
    except _Terminated:
        raise typer.Exit(128 + signal.SIGTERM) from None
    except (LegionError, RuntimeError, ValueError) as exc:
        console.print(error_text(str(exc)))
        raise typer.Exit(2) from None
    result.load_before = load
    return result


class _Terminated(Exception):
    """The run was stopped by SIGTERM (after its clean-up)."""


async def _until_sigterm(make: Scenario, say: Callable[[str], None]) -> BenchResult:
    """The scenario, stopped on SIGTERM as on Ctrl-C: cancelled, so that what it started
    (worker processes, a child, a PostgreSQL schema, temporary folders) is stopped and
    removed on the way out (a `timeout`, a CI's cancel or systemd left them behind)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated = False

    def stop() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        return await make(say)
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


bench = typer.Typer(
    name="bench",
    help="Measured benchmarks, each next to a baseline in the same run. Results go to "
    "--out as JSON, a markdown table and PNG plots; the table is also printed.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@bench.command("overhead")
def overhead_cmd(
    tasks: Annotated[int, typer.Option(min=1, help="No-op tasks per run.")] = 50_000,
    concurrency: Annotated[int, typer.Option(min=1, help="Instances at once.")] = 1000,
    repeat: RepeatOpt = 3,
    postgres: PostgresOpt = DEFAULT_POSTGRES,
    sqlite_only: SqliteOnlyOpt = False,
    out: OutOpt = DEFAULT_OUT,
    plots: PlotsOpt = True,
) -> None:
    """No-op agents through the durable path (SQLite, PostgreSQL) vs the reference batched
    queue on the same store and bare asyncio.gather; then agents waiting 50 ms on I/O vs
    the floor and bare asyncio over the same waits."""
    from legion.bench import overhead

    opts = _options(
        lambda: overhead.OverheadOptions(
            tasks=tasks,
            concurrency=concurrency,
            repeat=repeat,
            postgres=None if sqlite_only else postgres,
        )
    )
    _bench(lambda say: overhead.run(opts, progress=say), out, plots)


@bench.command("steps")
def steps_cmd(
    tasks: Annotated[int, typer.Option(min=1, help="Five-step tasks per run.")] = 10_000,
    concurrency: Annotated[int, typer.Option(min=1, help="Instances at once.")] = 1000,
    repeat: RepeatOpt = 3,
    postgres: PostgresOpt = DEFAULT_POSTGRES,
    sqlite_only: SqliteOnlyOpt = False,
    out: OutOpt = DEFAULT_OUT,
    plots: NoPlotsOpt = True,
) -> None:
    """Agents of five recorded steps through the durable path (SQLite, PostgreSQL):
    steps per second and CPU per step; next to them, on SQLite, five LLM calls through
    ctx.llm.chat to an in-process provider that answers at once."""
    from legion.bench import steps

    opts = _options(
        lambda: steps.StepsOptions(
            tasks=tasks,
            concurrency=concurrency,
            repeat=repeat,
            postgres=None if sqlite_only else postgres,
        )
    )
    _bench(lambda say: steps.run(opts, progress=say), out, plots)


@bench.command("capacity")
def capacity_cmd(
    tasks: Annotated[int, typer.Option(min=1, help="Tasks per run.")] = 2000,
    calls: Annotated[int, typer.Option(min=1, help="LLM calls per task, in sequence.")] = 2,
    rpm: Annotated[int, typer.Option(min=1, help="The request limit (per minute).")] = 6000,
    tpm: Annotated[int, typer.Option(min=1, help="The token limit (per minute).")] = 1_200_000,
    limit: Annotated[
        list[str] | None,
        typer.Option(help="Which limit to run against: rpm, tpm (repeat; default both)."),
    ] = None,
    window: Annotated[
        float,
        typer.Option(min=0.01, max=60, help="Seconds of the windows enforcing the limits."),
    ] = 1.0,
    error_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of requests answered 500/503.")
    ] = 0.05,
    latency: Annotated[float, typer.Option(min=0, help="Simulator latency (s).")] = 0.4,
    jitter: Annotated[
        float, typer.Option(min=0, help="Uniform extra latency, up to this (s).")
    ] = 0.4,
    baseline_concurrency: Annotated[
        int, typer.Option(min=1, help="The fixed-concurrency client's semaphore.")
    ] = 100,
    baseline_retries: Annotated[
        int, typer.Option(min=0, help="The fixed-concurrency client's retries per call.")
    ] = 3,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="Hard cases to run too: untold-headers, untold-no-headers, storm, outage, "
            "low-rpm, two-keys, priority, or none (repeat; default all). They run at their "
            "own sizes and limits (--quick scales them down); the options above set the "
            "two clients' runs only."
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(help="Scale the hard cases down (a 10 s storm and outage, fewer tasks)."),
    ] = False,
    out: OutOpt = DEFAULT_OUT,
    plots: PlotsOpt = True,
) -> None:
    """Achieved % of an RPM and of a TPM limit, 429s and failures: legion vs a
    fixed-concurrency asyncio.gather + semaphore client with naive retries; then the
    hard cases (an untold limit, a 429 storm, an outage, a low limit)."""
    from legion.bench import capacity
    from legion.bench.capacity_scenarios import SCENARIOS

    kinds = tuple(limit or ("rpm", "tpm"))
    if any(k not in ("rpm", "tpm") for k in kinds):
        raise _bad("--limit takes rpm or tpm")
    names = tuple(scenario or SCENARIOS)
    if names == ("none",):
        names = ()
    if any(n not in SCENARIOS for n in names):
        raise _bad(f"--scenario takes {', '.join(SCENARIOS)} or none")
    opts = _options(
        lambda: capacity.CapacityOptions(
            tasks=tasks,
            calls=calls,
            rpm=rpm,
            tpm=tpm,
            limits=kinds,  # type: ignore[arg-type]
            window_seconds=window,
            error_rate=error_rate,
            latency=latency,
            latency_jitter=jitter,
            baseline_concurrency=baseline_concurrency,
            baseline_retries=baseline_retries,
            scenarios=names,
            quick=quick,
        )
    )
    _bench(lambda say: capacity.run(opts, progress=say), out, plots)


@bench.command("concurrency")
def concurrency_cmd(
    instances: Annotated[int, typer.Option(min=1, help="Instances in flight at once.")] = 10_000,
    delay: Annotated[float, typer.Option(min=0.001, help="Seconds each call takes.")] = 2.0,
    out: OutOpt = DEFAULT_OUT,
    plots: PlotsOpt = True,
) -> None:
    """Many instances in flight in one process, each waiting on a slow call: makespan vs
    ideal, peak memory, memory per in-flight instance."""
    from legion.bench import concurrency

    opts = _options(lambda: concurrency.ConcurrencyOptions(instances=instances, delay=delay))
    _bench(lambda say: concurrency.run(opts, progress=say), out, plots)


@bench.command("sequential-vs-scaled")
def sequential_cmd(
    sizes: Annotated[
        str, typer.Option(help="Comma-separated task counts to compare at.")
    ] = "10,100,1000",
    sequential_limit: Annotated[
        int,
        typer.Option(min=1, help="Run at most this many tasks sequentially; extrapolate beyond."),
    ] = 100,
    rpm: Annotated[int, typer.Option(min=1, help="Provider request limit.")] = 3000,
    tpm: Annotated[int, typer.Option(min=1, help="Provider token limit.")] = 2_000_000,
    out: OutOpt = DEFAULT_OUT,
    plots: PlotsOpt = True,
) -> None:
    """The demo's comparison (sequential vs scaled) over N tasks: speed-up vs ideal."""
    from legion.demo import sequential
    from legion.demo.compare import DemoConfig

    try:
        counts = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        raise _bad(f"--sizes takes comma-separated integers, got {sizes!r}") from None
    opts = _options(
        lambda: sequential.SequentialOptions(
            sizes=counts, sequential_limit=sequential_limit, demo=DemoConfig(rpm=rpm, tpm=tpm)
        )
    )
    _bench(lambda say: sequential.run(opts, progress=say), out, plots)


@bench.command("scale-out")
def scale_out_cmd(
    tasks: Annotated[int, typer.Option(min=1, help="Tasks per run.")] = 1000,
    work: Annotated[
        int, typer.Option(min=1, help="Iterations of CPU work per step (3 steps a task).")
    ] = 100_000,
    processes: Annotated[
        str, typer.Option(help="Comma-separated worker process counts to compare.")
    ] = "1,2",
    concurrency: Annotated[int, typer.Option(min=1, help="Instances per worker process.")] = 16,
    postgres: PostgresOpt = DEFAULT_POSTGRES,
    out: OutOpt = DEFAULT_OUT,
    plots: PlotsOpt = True,
) -> None:
    """1 vs 2 `legion worker` processes on PostgreSQL (CPU-bound steps), next to SQLite in
    one process."""
    from legion.bench import scale_out

    try:
        counts = tuple(int(s) for s in processes.split(",") if s.strip())
    except ValueError:
        raise _bad(f"--processes takes comma-separated integers, got {processes!r}") from None
    opts = _options(
        lambda: scale_out.ScaleOutOptions(
            tasks=tasks, work=work, processes=counts, concurrency=concurrency, postgres=postgres
        )
    )
    _bench(lambda say: scale_out.run(opts, progress=say), out, plots)


@bench.command("autoscale")
def autoscale_cmd(
    tasks: Annotated[int, typer.Option(min=1, help="Tasks in the burst.")] = 300,
    calls: Annotated[int, typer.Option(min=1, help="Chat calls per task, in a row.")] = 3,
    rpm: Annotated[int, typer.Option(min=1, help="The simulator's request limit.")] = 1200,
    latency: Annotated[float, typer.Option(min=0, help="Seconds per simulated completion.")] = 0.3,
    autoscale: Annotated[
        str, typer.Option(metavar="MIN:MAX", help="Bounds; the fixed pool runs MAX.")
    ] = "1:4",
    concurrency: Annotated[int, typer.Option(min=1, help="Instances per worker.")] = 4,
    cooldown: Annotated[
        float, typer.Option(min=0, help="The autoscaler's --cooldown (seconds).")
    ] = 5.0,
    out: OutOpt = DEFAULT_OUT,
    plots: PlotsOpt = True,
) -> None:
    """A burst against a rate-limited simulator: `legion worker --autoscale MIN:MAX`
    next to a fixed pool of MAX workers (makespan, worker-seconds, 429s, workers and
    throughput over time)."""
    from legion.bench import autoscale as scenario
    from legion.provision.policy import parse_bounds

    try:
        low, high = parse_bounds(autoscale)
        opts = scenario.AutoscaleOptions(
            tasks=tasks,
            calls=calls,
            rpm=rpm,
            latency=latency,
            minimum=low,
            maximum=high,
            concurrency=concurrency,
            cooldown=cooldown,
        )
    except ValueError as exc:
        raise _bad(str(exc)) from None
    _bench(lambda say: scenario.run(opts, progress=say), out, plots)


@bench.command("vectors")
def vectors_cmd(
    vectors: Annotated[int, typer.Option(min=100, help="Vectors to insert.")] = 10_000,
    dims: Annotated[int, typer.Option(min=2, max=2000, help="Dimensions.")] = 384,
    queries: Annotated[int, typer.Option(min=1, help="Searches to time.")] = 200,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="Neighbours per search.")] = 10,
    data: Annotated[
        VectorData,
        typer.Option(
            help="clustered: around 1,000 centres, like embeddings of texts on topics; "
            "random: uniform on the sphere, the worst case of an approximate index."
        ),
    ] = VectorData.clustered,
    postgres: PostgresOpt = DEFAULT_POSTGRES,
    out: OutOpt = DEFAULT_OUT,
    plots: NoPlotsOpt = True,
) -> None:
    """Vector collections: insert and query throughput, p95, recall and size on SQLite
    (sqlite-vec) and PostgreSQL (pgvector HNSW), next to brute-force numpy."""
    from legion.bench import vectors as vector_bench

    opts = _options(
        lambda: vector_bench.VectorBenchOptions(
            vectors=vectors, dims=dims, queries=queries, k=k, postgres=postgres, data=data.value
        )
    )
    _bench(lambda say: vector_bench.run(opts, progress=say), out, plots)


@bench.command("all")
def all_cmd(
    postgres: PostgresOpt = DEFAULT_POSTGRES,
    sqlite_only: Annotated[
        bool,
        typer.Option(
            "--sqlite-only",
            help="Skip the PostgreSQL runs (and the scale-out scenario, which is all on "
            "PostgreSQL).",
        ),
    ] = False,
    out: OutOpt = DEFAULT_OUT,
    plots: PlotsOpt = True,
) -> None:
    """Every scenario at its default size, one after the other (about 20 minutes; the
    capacity scenario without its hard cases: `legion bench capacity` runs them)."""
    from legion.bench import autoscale, capacity, concurrency, overhead, scale_out, steps
    from legion.bench import vectors as vector_bench
    from legion.demo import sequential

    _check_out(out)

    pg = None if sqlite_only else postgres
    makers: list[Callable[[Callable[[str], None]], Coroutine[Any, Any, BenchResult]]] = [
        lambda say: overhead.run(overhead.OverheadOptions(postgres=pg), progress=say),
        lambda say: steps.run(steps.StepsOptions(postgres=pg), progress=say),
        lambda say: capacity.run(progress=say),
        lambda say: concurrency.run(progress=say),
        lambda say: sequential.run(progress=say),
        lambda say: autoscale.run(progress=say),
        lambda say: vector_bench.run(vector_bench.VectorBenchOptions(postgres=pg), say),
    ]
    if not sqlite_only:
        makers.insert(
            5,
            lambda say: scale_out.run(scale_out.ScaleOutOptions(postgres=postgres), progress=say),
        )
    for make in makers:
        _finish(_run_scenario(make), out, plots)


def register(app: typer.Typer) -> None:
    """Add ``bench`` (a group of scenario commands) and ``demo`` to ``app``."""
    app.add_typer(bench, name="bench")
    app.command("demo")(demo)


def _bad(message: str) -> typer.Exit:
    stderr_console().print(error_text(message))
    return typer.Exit(2)


def demo(
    tasks: Annotated[
        int, typer.Option(min=1, help="Questions to answer (the 40 shipped ones, repeated).")
    ] = 40,
    faults: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Share of LLM requests that fail: three in four with a server error, one "
            "in four hangs until the call timeout. Shows isolation: a hang stalls the "
            "sequential run, the scaled one finishes the rest.",
        ),
    ] = 0.0,
    rpm: Annotated[int, typer.Option(min=1, help="The provider's requests per minute.")] = 3000,
    tpm: Annotated[int, typer.Option(min=1, help="The provider's tokens per minute.")] = 2_000_000,
    latency: Annotated[
        float, typer.Option(min=0, help="Seconds before a simulated answer starts.")
    ] = 0.25,
    jitter: Annotated[
        float, typer.Option(min=0, help="Uniform extra latency, up to this many seconds.")
    ] = 0.15,
    tokens_per_second: Annotated[
        float, typer.Option(min=1, help="Simulated generation speed.")
    ] = 250.0,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds allowed per LLM call attempt.")
    ] = 10.0,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Most instances at once in the scaled run.")
    ] = 1000,
    sequential_limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Run at most this many tasks sequentially and extrapolate (the sequential "
            "run takes about 2 s a task).",
        ),
    ] = None,
    scaled_only: Annotated[
        bool, typer.Option("--scaled-only", help="Skip the sequential run.")
    ] = False,
    report: Annotated[
        Path, typer.Option(help="Where to write the self-contained HTML report.")
    ] = Path("legion-demo.html"),
    no_report: Annotated[bool, typer.Option("--no-report", help="Write no HTML report.")] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures as JSON here.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulator's faults and jitter.")] = 1,
) -> None:
    """Sequential vs throughput scaling, side by side, on the example agent.

    The agent searches a local SQLite FTS5 index of Python's own documentation, summarizes
    the top three hits with parallel LLM calls, combines them and saves the answer. It
    runs against the in-process provider simulator (realistic latency, rate limits over
    1 s windows): first the legacy way (one task at a time, each step awaited in turn),
    then scaled (every task at once, steps gathered, calls paced by legion's capacity).
    Prints makespan, throughput, latency percentiles, CPU, memory, requests, 429s and
    failures, with the ideal speed-up for the limits; writes an HTML report.
    """
    from legion.demo.compare import DemoConfig, compare

    _quiet_failures()  # (the comparison counts them)
    console = stderr_console()
    # Refused before the demo runs, not after: a folder, a missing folder, or a file that
    # is not an earlier output of the demo (a --report naming the agent's code replaced it).
    if not no_report:
        _check_output(report, _REPORT_MARK, "--report", "a legion demo report")
    if json_out is not None:
        _check_output(json_out, _JSON_MARK, "--json", "a legion demo's JSON")
        if not no_report and json_out.resolve() == report.resolve():  # (one would be lost)
            raise _bad(f"--json and --report both name {json_out}: give each its own file")
    try:
        cfg = DemoConfig(
            tasks=tasks,
            rpm=rpm,
            tpm=tpm,
            latency=latency,
            latency_jitter=jitter,
            tokens_per_second=tokens_per_second,
            faults=faults,
            call_timeout=timeout,
            concurrency=concurrency,
            seed=seed,
            sequential_limit=sequential_limit,
        )
        comparison = asyncio.run(
            compare(cfg, sequential=not scaled_only, progress=_progress(console))
        )
    except (LegionError, ValueError) as exc:
        raise _bad(str(exc)) from None
    _print_comparison(comparison)
    if json_out is not None:
        import orjson

        from legion.demo.compare import as_dict

        data = orjson.dumps(as_dict(comparison), option=orjson.OPT_INDENT_2)
        _write_whole(json_out, data)
        console.print(f"json: {json_out.resolve()}", highlight=False)
    if not no_report:
        from legion.demo.report import render

        _write_whole(report, render(comparison).encode())
        console.print(f"report: {report.resolve()}", highlight=False)


_REPORT_MARK = b"<title>legion demo: sequential vs scaled</title>"
_JSON_MARK = b'"ideal_formula"'


def _check_output(path: Path, mark: bytes, option: str, what: str) -> None:
    """Refuse ``path`` as the demo's output unless it is new or holds ``what`` already
    (recognised by ``mark`` in its first 4 KB)."""
    if path.is_dir():
        raise _bad(f"cannot write {option} {path}: it is a folder")
    if not path.parent.is_dir():
        raise _bad(f"cannot write {option} {path}: {path.parent} does not exist")
    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(4096)
        except OSError as exc:
            raise _bad(f"cannot write {option} {path}: {exc.strerror}") from None
        if mark not in head:
            raise _bad(
                f"{option} {path} exists and is not {what}: it would be replaced; give "
                "another path (or remove the file)"
            )


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (`legion.bench.results.write_whole`)."""
    from legion.bench.results import write_whole

    try:
        write_whole(path, data)
    except OSError as exc:
        raise _bad(f"cannot write {path}: {exc.strerror or exc}") from None


def _print_comparison(c: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    from legion.demo.compare import ideal_lines, rows

    out = Console(highlight=False, markup=False)
    table = Table(title="legion demo: sequential vs scaled", title_justify="left")
    table.add_column("")
    table.add_column("sequential (legacy)", justify="right")
    table.add_column("scaled (legion)", justify="right")
    for label, a, b in rows(c):
        table.add_row(label, a, b)
    out.print(table)
    for line in ideal_lines(c):
        out.print(f"  {line}")
