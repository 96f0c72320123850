"""`legion.cli.wiring.open_runtime`: the parts ``legion run``, ``legion worker`` and
``legion serve`` run on, opened on a real SQLite file with the built-in simulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from legion.cli.llm_options import ExecutorOptions
from legion.cli.progress import stderr_console
from legion.cli.wiring import RuntimeOptions, llm_options, open_runtime, open_store
from legion.errors import ConfigError
from legion.llm.budget import BudgetLimits


async def test_a_worker_gets_the_routes_budgets_executors_and_shape_of_its_options(
    db_url: str,
) -> None:
    opts = RuntimeOptions(
        store=db_url,
        concurrency=7,
        lease_seconds=12.0,
        llm=llm_options(["sim", "strong=sim"], 600, None, 3, None),
        strict=True,
        budget=BudgetLimits(max_calls=5),
        tenant_budget=BudgetLimits(max_tokens=1000),
        drain_timeout=4.0,
        max_loop_lag=0.25,
        max_memory_mb=512.0,
        offer={"gpu": 1.0},
    )
    notes: list[str] = []
    async with open_runtime(opts, on_routes=notes.append) as rt:
        assert rt.llm is not None and rt.worker is not None
        assert set(rt.llm.routes) == {"default", "strong"}
        assert rt.llm.routes["default"].capacity.statistics().max_in_flight == 3
        budgets = rt.llm.budgets
        assert budgets.run is not None and budgets.run.limits == opts.budget
        assert budgets.tenant_limits == opts.tenant_budget
        config = rt.worker.config
        assert (config.concurrency, config.lease_seconds, config.drain_timeout) == (7, 12.0, 4.0)
        assert (config.max_loop_lag, config.max_memory_mb, config.strict) == (0.25, 512.0, True)
        assert dict(config.offer) == {"gpu": 1.0}
        assert set(rt.worker.executors) == {"process"}
    routes = (
        "default=sim:sim-model (600 rpm, 2000000 tpm), strong=sim:sim-model (600 rpm, 2000000 tpm)"
    )
    assert notes == [f"llm: {routes}"]


async def test_without_budgets_the_client_has_none(db_url: str) -> None:
    async with open_runtime(RuntimeOptions(store=db_url)) as rt:
        assert rt.llm is not None
        assert rt.llm.budgets.run is None and rt.llm.budgets.tenant_limits is None


async def test_serve_s_options_give_its_worker_no_executor(db_url: str) -> None:
    async with open_runtime(RuntimeOptions(store=db_url, executors=None)) as rt:
        assert rt.worker is not None and rt.worker.executors == {}


async def test_without_a_worker_nothing_of_the_llm_is_built(db_url: str) -> None:
    notes: list[str] = []
    bad_routes = RuntimeOptions(
        store=db_url, worker=False, llm=llm_options(["nope:x"], *[None] * 4)
    )
    async with open_runtime(bad_routes, on_routes=notes.append) as rt:
        assert rt.worker is None and rt.llm is None
        assert await rt.store.counts() == {}
    assert notes == []
    with pytest.raises(ConfigError):  # the same routes refused where a worker needs them
        async with open_runtime(RuntimeOptions(store=db_url, llm=bad_routes.llm)):
            pass


async def test_a_store_given_stays_open_for_its_owner(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'given.db'}"
    store = await open_store(url, lease_seconds=30.0, wait=0.0, console=stderr_console())
    assert store is not None
    try:
        opts = RuntimeOptions(store=url, executors=ExecutorOptions())
        async with open_runtime(opts, store=store) as rt:
            assert rt.store is store
        assert await store.counts() == {}  # still open
    finally:
        await store.aclose()
