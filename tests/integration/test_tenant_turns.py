"""Tenants take turns at the store's queue, through a running worker: a tenant's backlog
does not hold back the few tasks another tenant submits after it (the lease's turns are
`legion.store.turns`; the store contract tests them lease by lease)."""

from __future__ import annotations

import asyncio

import legion
from legion import codec
from legion.store import store_from_url
from legion.task import NewTask

STARTED: list[str] = []


@legion.agent(name="turns-work")
async def work(ctx: legion.Context, who: str, n: int) -> str:
    STARTED.append(who)
    return f"{who} {n}"


async def test_a_quiet_tenants_tasks_run_between_a_noisy_tenants_backlog(
    store_url: str,
) -> None:
    STARTED.clear()
    store = store_from_url(store_url)
    await store.open()
    try:
        noisy = [NewTask(work.name, codec.dumps({"who": "noisy", "n": i}), tenant="noisy")
                 for i in range(40)]  # fmt: skip
        quiet = [NewTask(work.name, codec.dumps({"who": "quiet", "n": i}), tenant="quiet")
                 for i in range(4)]  # fmt: skip
        ids = [s.id for s in await store.submit(noisy, 1.0)]
        ids += [s.id for s in await store.submit(quiet, 2.0)]
    finally:
        await store.aclose()
    async with legion.Runtime(store_url, concurrency=2, agents=[work]) as rt:
        results = [r async for r in rt.results(ids)]
    assert all(r.ok for r in results) and len(STARTED) == 44
    # Submitted last, behind 40: the quiet tenant's four start among the first ten.
    quiet_at = [i for i, who in enumerate(STARTED) if who == "quiet"]
    assert len(quiet_at) == 4 and max(quiet_at) < 10, STARTED


GATE: dict[str, asyncio.Event] = {}


@legion.agent(name="turns-hang")
async def hang(ctx: legion.Context, who: str) -> str:
    if who == "stuck":
        await GATE["open"].wait()
    return who


async def test_a_tenant_at_its_cap_leaves_the_other_slots_to_others(store_url: str) -> None:
    """Its tasks hang: without a cap they would take every slot, and a tenant that comes
    later would wait for them."""
    GATE["open"] = asyncio.Event()
    async with legion.Runtime(store_url, concurrency=4, agents=[hang], tenant_max_running=1) as rt:
        stuck = await rt.submit_many(hang, [{"who": "stuck"}] * 3, tenant="stuck")
        quick = await rt.submit_many(hang, [{"who": "quick"}] * 3, tenant="quick")
        done = [r async for r in rt.results([s.id for s in quick])]
        assert all(r.ok for r in done)
        states = [await rt.store.get(s.id) for s in stuck]
        statuses = sorted(str(s.status) for s in states if s is not None)
        assert statuses == ["queued", "queued", "running"], statuses
        GATE["open"].set()
        ended = [r async for r in rt.results([s.id for s in stuck])]
    assert all(r.ok for r in ended)
