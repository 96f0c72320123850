"""What every benchmark scenario writes, and how it measures the machine it runs on.

A scenario returns a `BenchResult`: plain JSON data, one or more markdown tables,
notes, and plots (callables drawing on a matplotlib figure, imported only when drawn).
`write_result` writes ``NAME.json``, ``NAME.md`` and ``NAME-*.png`` to a folder.

`Meter` measures one run in this process: wall time, CPU time (this process, all
threads) and peak resident memory, sampled from ``/proc/self/statm`` in a background
thread so a run's own peak can be told from the process's lifetime peak.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from legion.store.urls import redact_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Progress = Callable[[str], None]
"""Where a scenario reports what it is doing (one line at a time)."""

Draw = Callable[["Figure"], None]
"""Draws one plot on an empty matplotlib figure."""


def quiet(message: str) -> None:
    """A `Progress` that prints nothing."""


@dataclass(frozen=True, slots=True)
class Table:
    """A markdown table: a title, column headers and rows of already formatted cells."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def markdown(self) -> str:
        aligns = ["---" if i == 0 else "---:" for i in range(len(self.columns))]
        lines = [
            f"**{self.title}**",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join(aligns) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Plot:
    """One PNG: ``NAME-<slug>.png``, drawn by ``draw``."""

    slug: str
    draw: Draw


@dataclass(slots=True)
class BenchResult:
    """What one scenario measured."""

    name: str
    title: str
    data: dict[str, Any]
    """Everything measured, as JSON (written to ``NAME.json``)."""
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Lines under the tables: how things were measured, targets met or missed."""
    plots: list[Plot] = field(default_factory=list)
    command: str = ""
    """The command line that produced it (recorded in the markdown)."""
    load_before: float | None = None
    """The machine's 1-minute load average before the run (how busy others kept it)."""

    def markdown(self) -> str:
        parts = [f"# {self.name}: {self.title}", ""]
        if self.command:
            parts += [f"`{self.command}`", ""]
        parts.append(f"Machine: {describe_machine(self.load_before)}")
        parts.append("")
        for table in self.tables:
            parts += [table.markdown(), ""]
        for note in self.notes:
            parts.append(f"- {note}")
        if self.notes:
            parts.append("")
        return redact_text("\n".join(parts))


def write_result(result: BenchResult, folder: Path, *, plots: bool = True) -> list[Path]:
    """Write ``NAME.json``, ``NAME.md`` and (with ``plots``) ``NAME-*.png`` into ``folder``;
    answer the paths written. Plotting needs matplotlib (``pip install 'legion-runtime[bench]'``);
    without it the plots are skipped with a note in the markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if plots and result.plots:
        try:
            written += _draw_all(result, folder)
        except ImportError:
            result.notes.append(
                "plots skipped: matplotlib is not installed (extra legion-runtime[bench])"
            )
    payload = {
        "benchmark": result.name,
        "title": result.title,
        "command": result.command,
        "machine": {**machine_info(), "load_average_1m_before": result.load_before},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **result.data,
        "notes": result.notes,
    }
    # (no password of a --postgres URL goes into files made to be committed)
    json_path = folder / f"{result.name}.json"
    text = redact_text(json.dumps(payload, indent=2, default=_json_default)) + "\n"
    write_whole(json_path, text.encode())
    md_path = folder / f"{result.name}.md"
    images = [p for p in written if p.suffix == ".png"]
    md = result.markdown()
    if images:
        md += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n"
    write_whole(md_path, md.encode())
    return [json_path, md_path, *written]


def write_whole(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a full disk left a results file, or a report,
    cut short in place of a whole one): a file beside it, renamed over it."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _draw_all(result: BenchResult, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    paths = []
    for plot in result.plots:
        fig = Figure(figsize=(7.5, 4.2), dpi=100, layout="constrained")
        plot.draw(fig)
        path = folder / f"{result.name}-{plot.slug}.png"
        image = io.BytesIO()
        fig.savefig(image, format="png")
        write_whole(path, image.getvalue())
        paths.append(path)
    return paths


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# -- the machine -------------------------------------------------------------------------


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": cpu_count(),
        "platform": platform.platform(),
        "load_average_1m": load_average(),
    }


def describe_machine(load_before: float | None = None) -> str:
    """CPUs, Python, system, and the 1-minute load average (before the run when known,
    which tells how busy other work kept the machine; at the end it counts the run)."""
    text = f"{cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"
    if load_before is not None:
        return text + f", load {load_before:.2f} before the run (1-minute average)"
    load = load_average()
    return text + (f", load {load:.2f} at the end (this run included)" if load is not None else "")


# -- measuring ---------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident memory now (its lifetime peak where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True, slots=True)
class Measured:
    """Wall time, CPU time and memory of one measured span."""

    wall: float
    cpu: float
    """CPU seconds of this process (every thread) during the span."""
    rss_start: int
    rss_peak: int
    """Highest resident memory seen during the span, in bytes (sampled)."""

    @property
    def rss_growth(self) -> int:
        return max(0, self.rss_peak - self.rss_start)

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "rss_start_mb": self.rss_start / 2**20,
            "rss_peak_mb": self.rss_peak / 2**20,
            "rss_growth_mb": self.rss_growth / 2**20,
        }


class Meter:
    """Measure a span: ``with Meter() as m: ...`` then ``m.result``.

    A daemon thread samples the resident memory every ``interval`` seconds (it wakes
    rarely and reads one small file, so it barely costs the measured code anything).
    """

    def __init__(self, interval: float = 0.02) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._peak = 0
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._rss0 = 0
        self.result: Measured | None = None

    def __enter__(self) -> Meter:
        self._rss0 = self._peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, name="legion-bench-rss", daemon=True)
        self._thread.start()
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def sample(self) -> None:
        """Take one sample now (call it where the peak is expected)."""
        self._peak = max(self._peak, rss_bytes())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        wall = time.perf_counter() - self._t0
        cpu = time.process_time() - self._cpu0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        self.result = Measured(wall, cpu, self._rss0, self._peak)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank), ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def fmt_num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    """``1,234.5`` style, ``-`` for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def fmt_pct(fraction: float | None, digits: int = 1) -> str:
    return "-" if fraction is None else f"{fraction * 100:.{digits}f} %"
