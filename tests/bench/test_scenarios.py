"""Every benchmark scenario at a tiny size: the results files are written and well formed.

No timing is asserted here: numbers on a shared, busy machine say nothing; the
benchmarks themselves (``legion bench ...``) report them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from legion.bench import autoscale, capacity, concurrency, overhead, scale_out, steps
from legion.bench.capacity_scenarios import ScenarioOptions, run_scenarios
from legion.bench.results import BenchResult, write_result
from legion.demo import sequential
from legion.demo.compare import DemoConfig
from tests.conftest import POSTGRES_URL

FAST_DEMO = DemoConfig(
    rpm=60_000, tpm=10_000_000, latency=0.01, latency_jitter=0.0, tokens_per_second=100_000
)


def check_written(result: BenchResult, folder: Path) -> dict[str, object]:
    """Write the result; check the JSON, the markdown table and the plots; answer the JSON."""
    paths = write_result(result, folder)
    data = json.loads((folder / f"{result.name}.json").read_text())
    assert data["benchmark"] == result.name
    assert data["machine"]["cpus"] >= 1
    markdown = (folder / f"{result.name}.md").read_text()
    assert markdown.startswith(f"# {result.name}: ")
    assert "|---|" in markdown
    for table in result.tables:
        assert len(table.rows) >= 1 and all(len(r) == len(table.columns) for r in table.rows)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == len(result.plots)
    for png in pngs:
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"]({png.name})" in markdown
    return data  # type: ignore[no-any-return]


async def test_overhead(tmp_path: Path, postgres_server: str) -> None:
    opts = overhead.OverheadOptions(tasks=200, concurrency=50, repeat=1, postgres=postgres_server)
    data = check_written(await overhead.run(opts, workdir=tmp_path), tmp_path)
    rates = data["tasks_per_second"]
    assert isinstance(rates, dict)
    assert set(rates) == {
        overhead.BARE,
        overhead.QUEUE_SQLITE,
        overhead.SQLITE,
        overhead.QUEUE_POSTGRES,
        overhead.POSTGRES,
    }
    ratios = data["legion_vs_queue"]
    assert isinstance(ratios, dict)
    assert set(ratios) == {overhead.SQLITE, overhead.POSTGRES}
    assert all(set(r) == {"tasks_per_second", "cpu_per_task"} for r in ratios.values())
    # The ratio is legion's against the queue's in the same round (one round here).
    by_round = data["legion_vs_queue_rounds"]
    assert isinstance(by_round, dict)
    for name, ref in (
        (overhead.SQLITE, overhead.QUEUE_SQLITE),
        (overhead.POSTGRES, overhead.QUEUE_POSTGRES),
    ):
        (same_round,) = by_round[name]["tasks_per_second"]
        assert same_round == pytest.approx(rates[name]["all"][0] / rates[ref]["all"][0])
        assert ratios[name]["tasks_per_second"] == pytest.approx(same_round)
    io = data["io"]
    assert isinstance(io, dict)
    # 200 I/O agents at 50 at once: four rounds of 50 ms at the least.
    assert io["tasks"] == 200 and io["floor_s"] == pytest.approx(0.2)
    assert io["makespan_s"]["best"] >= io["floor_s"]
    # The same waits through bare asyncio, in the same run: the floor at the least, and
    # legion's makespan as a ratio to it.
    assert io["bare_makespan_s"]["best"] >= io["floor_s"]
    assert io["vs_bare"] == pytest.approx(io["makespan_s"]["best"] / io["bare_makespan_s"]["best"])


async def test_steps(tmp_path: Path, postgres_server: str) -> None:
    opts = steps.StepsOptions(tasks=50, concurrency=20, repeat=1, postgres=postgres_server)
    data = check_written(await steps.run(opts, workdir=tmp_path), tmp_path)
    rates = data["steps_per_second"]
    assert isinstance(rates, dict)
    assert set(rates) == {steps.SQLITE, steps.POSTGRES, steps.LLM}
    assert all(rate["best"] > 0 for rate in rates.values())


async def test_capacity(tmp_path: Path) -> None:
    opts = capacity.CapacityOptions(
        tasks=15, rpm=60_000, tpm=6_000_000, latency=0.01, latency_jitter=0.0
    )
    result = await capacity.run(opts, workdir=tmp_path)
    data = check_written(result, tmp_path)
    runs = data["runs"]
    assert isinstance(runs, list)
    assert [(r["limit"], r["client"]) for r in runs] == [
        ("rpm", "legion"),
        ("rpm", "fixed concurrency"),
        ("tpm", "legion"),
        ("tpm", "fixed concurrency"),
    ]
    for r in runs:
        assert r["tasks"] == 15 and r["attempts"] >= 30
        assert {"steady_pct_of_limit", "goodput_pct_of_limit", "rate_limited"} <= set(r)


@pytest.mark.slow
async def test_concurrency(tmp_path: Path) -> None:
    opts = concurrency.ConcurrencyOptions(instances=100, delay=0.2)
    data = check_written(await concurrency.run(opts, workdir=tmp_path), tmp_path)
    results = data["results"]
    assert isinstance(results, dict)
    assert set(results) == set(concurrency.VARIANTS)
    for r in results.values():
        assert r["max_in_flight"] == 100 and r["failed"] == 0 and r["bytes_per_instance"] >= 0
    for kind in ("legion", "legion-gc"):
        r = results[kind]
        assert 0 <= r["gc_full_s"] <= r["gc_s"] and r["gc_full_passes"] >= 0


async def test_sequential_vs_scaled(tmp_path: Path) -> None:
    # (the 4 are extrapolated from the run of 2, under the limit of 3: the note said
    # "from the first 3 tasks")
    opts = sequential.SequentialOptions(sizes=(2, 4), sequential_limit=3, demo=FAST_DEMO)
    result = await sequential.run(opts, workdir=tmp_path)
    assert "* extrapolated from 2 tasks run sequentially" in result.markdown()
    data = check_written(result, tmp_path)
    comparisons = data["comparisons"]
    assert isinstance(comparisons, list) and len(comparisons) == 2
    first, second = comparisons
    assert first["sequential"]["extrapolated"] is False
    assert second["sequential"]["extrapolated"] is True  # 4 tasks from the 2 run
    for c in comparisons:
        assert c["scaled"]["failed"] == 0 and c["ideal"]["speedup"] > 0


@pytest.mark.slow
async def test_scale_out(tmp_path: Path, postgres_server: str) -> None:
    opts = scale_out.ScaleOutOptions(
        tasks=12, work=1000, postgres=postgres_server, processes=(1, 2)
    )
    data = check_written(await scale_out.run(opts, workdir=tmp_path), tmp_path)
    makespans = data["makespan_s"]
    assert isinstance(makespans, dict)
    assert list(makespans) == [
        "SQLite, 1 process",
        "PostgreSQL, 1 worker process",
        "PostgreSQL, 2 worker processes",
    ]
    assert data["speedup_2_vs_1"] is not None


async def test_autoscale(tmp_path: Path) -> None:
    opts = autoscale.AutoscaleOptions(tasks=20, calls=1, rpm=6000, latency=0.05, maximum=2)
    data = check_written(await autoscale.run(opts, workdir=tmp_path), tmp_path)
    runs = data["runs"]
    assert isinstance(runs, dict)
    assert list(runs) == ["fixed pool of 2", "autoscaled 1:2"]
    for run in runs.values():
        assert run["makespan"] > 0 and run["worker_seconds"] > 0 and run["series"]
        assert run["requests"] >= 20
    assert runs["fixed pool of 2"]["peak_workers"] == 2
    assert 1 <= runs["autoscaled 1:2"]["peak_workers"] <= 2
    assert data["makespan_ratio"] is not None


def test_postgres_url_is_the_test_server() -> None:
    assert POSTGRES_URL.startswith("postgresql://")


async def test_capacity_two_keys_and_priority_scenarios(tmp_path: Path) -> None:
    opts = ScenarioOptions(
        tasks=10,
        rpm=60_000,
        error_rate=0.0,
        latency=0.01,
        latency_jitter=0.0,
        interactive_tasks=3,
        interactive_every=0.01,
        fill_seconds=0.1,
    )
    rows = await run_scenarios(opts, ("two-keys", "priority"), tmp_path, lambda _: None)
    two, lanes = rows
    assert two["statuses"] == {"succeeded": 10} and two["per_key_rpm"] == 30_000
    assert set(two["served_by"]) == {"default#1", "default#2"}
    assert "one_key_of_the_sum" in two
    assert {"alone", "lanes", "no_lanes"} <= set(lanes)
    assert lanes["batch_tasks"] == 50 and lanes["lanes"]["priority"] == 10
    notes = capacity._scenario_notes(rows)
    assert any(n.startswith("two-keys:") for n in notes)
    assert any(n.startswith("priority:") for n in notes)


def test_the_steady_rate_is_measured_over_whole_windows() -> None:
    # A burst admitted at the start of each 1 s window, 100 a window (6,000 rpm), over
    # 2.5 windows: counted from the first start to part-way into the third window, the
    # rate read 3 windows' bursts over 2.x s: more than the limit allows.
    from legion.bench.capacity import CapacityOptions, ClientRun, summarize
    from legion.bench.recording import Attempt

    attempts = [
        Attempt(window + i * 1e-4, window + 0.2, "ok", 10)
        for window in (0.0, 1.0, 2.0)
        for i in range(100)
    ]
    run = ClientRun("legion", "rpm", 2.5, 300, 0, attempts)
    figures = summarize(run, CapacityOptions(rpm=6000, window_seconds=1.0))
    assert figures["steady_pct_of_limit"] is not None
    assert figures["steady_pct_of_limit"] <= 1.0, figures["steady_pct_of_limit"]
