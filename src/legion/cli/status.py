"""``legion status``, ``retry`` and ``cancel``: read and steer a store from the shell."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from legion import codec
from legion.cli.times import utc
from legion.diagnostics.report import Diagnostic, raised_at
from legion.diagnostics.summary import OVERLAP_NOTE, overlapping, summarize
from legion.store import Store, WorkerInfo, redact_url, store_from_url
from legion.store.types import SILENT_AFTER, served_agents
from legion.store.waiting import WaitingInfo
from legion.task import TaskStatus

AUTOSCALER_FRESH = 30.0  # seconds: an autoscaler that published longer ago has stopped
WORKER_FRESH = SILENT_AFTER  # seconds at most; a worker's own lease where it says it


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = store_from_url(url, create=False)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def live_workers(store: Store, fresh: float = WORKER_FRESH) -> list[WorkerInfo]:
    """The workers on ``store`` whose last heartbeat is under ``fresh`` seconds old (each
    names the agents it serves in ``load["agents"]``)."""
    now = await store.now()
    return [w for w in await store.workers() if w.live(now, fresh)]


async def show_status(
    url: str, *, errors: int, as_json: bool, advice: bool = False, waiting: int = 10
) -> None:
    async with opened(url) as store:
        counts = await store.counts()
        by_agent = await store.counts_by_agent()
        by_tenant = await store.counts_by_tenant()
        recent = await store.recent_errors(errors)
        waits = await store.waiting_tasks(limit=waiting) if waiting else []
        workers = await store.workers()
        store_now = await store.now()
        scalers = await store.autoscalers(store_now - AUTOSCALER_FRESH)
        found = await store.diagnostics(limit=5000) if advice else []
        schema = await store.schema_version()
    groups = summarize(Diagnostic.from_json(codec.loads(d.data)) for d in found)
    now = store_now  # (heartbeats are on the store's clock, not this host's)
    unserved = _unserved(by_agent, workers, store_now)
    routes = _routes(workers, store_now)
    if as_json:
        doc: dict[str, Any] = {
            "store": redact_url(url),
            "schema": schema,
            "counts": {str(s): counts.get(s, 0) for s in TaskStatus},
            "agents": {a: {str(s): n for s, n in c.items()} for a, c in by_agent.items()},
            "tenants": {t: {str(s): n for s, n in c.items()} for t, c in by_tenant.items()},
            "workers": [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "heartbeat_age": now - w.heartbeat_at,
                    "live": w.live(now),
                    **w.load,
                }
                for w in workers
            ],
            "autoscalers": [
                {
                    "id": a.id,
                    "host": a.host,
                    "pid": a.pid,
                    "desired": a.desired,
                    "running": a.running,
                    "minimum": a.minimum,
                    "maximum": a.maximum,
                    "reason": a.reason,
                    "age": store_now - a.at,
                }
                for a in scalers
            ],
            "unserved": unserved,
            "llm": routes,
            "waiting": [
                {
                    "id": w.id,
                    "agent": w.agent,
                    "tenant": w.tenant,
                    "event": w.event,
                    "count": w.count if w.event is not None else None,
                    "children": w.children,
                    "wake_at": w.wake_at,
                    "prompt": _prompt(w),
                }
                for w in waits
            ],
            "errors": [
                {
                    "id": t.id,
                    "agent": t.agent,
                    "key": t.key,
                    "status": str(t.status),
                    "attempt": t.attempt,
                    "error": t.error.brief() if t.error else None,
                    "traceback": (t.error.traceback or None) if t.error else None,
                }
                for t in recent
            ],
        }
        if advice:
            doc["advice"] = [
                {
                    "kind": str(g.example.kind),
                    "message": g.example.message,
                    "count": g.count,
                    "seconds": g.total_seconds,
                    "site": f"{g.example.site.file}:{g.example.site.line}"
                    if g.example.site
                    else None,
                }
                for g in groups
            ]
        print(codec.dumps(doc).decode())
        return

    # rich loads here, where the tables are drawn: `legion --help` never needs it.
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Into a pipe or a file the tables keep their width (rich would squeeze them into 80
    # columns, cutting worker ids and headers short).
    wide = None if sys.stdout.isatty() else 240
    console = Console(highlight=False, markup=False, width=wide)
    table = Table(title=f"tasks in {redact_url(url)}")
    table.add_column("agent")
    for s in TaskStatus:
        table.add_column(str(s), justify="right")
    for agent, c in sorted(by_agent.items()):
        table.add_row(agent, *(str(c.get(s, 0)) for s in TaskStatus))
    table.add_row(
        Text("all", style="bold"), *(Text(str(counts.get(s, 0)), style="bold") for s in TaskStatus)
    )
    console.print(table)
    if set(by_tenant) - {"default"}:  # (the API's tenants: one table more once there are any)
        tenants = Table(title="tasks by tenant")
        tenants.add_column("tenant")
        for s in TaskStatus:
            tenants.add_column(str(s), justify="right")
        for tenant, c in sorted(by_tenant.items()):
            tenants.add_row(tenant, *(str(c.get(s, 0)) for s in TaskStatus))
        console.print(tenants)

    if workers:
        wt = Table(title="workers")
        for col in ("id", "host", "pid", "in flight", "loop lag", "memory", "heartbeat", "state"):
            wt.add_column(col)
        for w in workers:
            load = w.load
            gone = w.gone()
            silent = gone or w.silent(now)
            state = (
                Text("gone: its process has ended", style="red")
                if gone
                else Text("silent: stopped or cut off?", style="red")
                if silent
                else str(load.get("overloaded") or _breakers(load.get("breakers_open")) or "ok")
            )
            wt.add_row(
                w.id,
                w.host,
                str(w.pid),
                "-" if silent else str(load.get("in_flight", "?")),  # (taken back)
                f"{load.get('loop_lag_ms', '?')} ms",
                f"{load.get('rss_mb', '?')} MB",
                f"{now - w.heartbeat_at:.0f} s ago",
                state,
            )
        console.print(wt)
    else:
        console.print("no live workers")

    if routes:
        rt = Table(title="LLM routes (the workers' own counts, since each started)")
        for col in ("route", "model", "requests", "429s", "failed", "tokens", "cost", "now"):
            rt.add_column(col, justify="left" if col in ("route", "model", "now") else "right")
        for name, r in sorted(routes.items()):
            rt.add_row(
                name,
                str(r.get("model") or ""),
                f"{r['requests']:,}",
                f"{r['rate_limited']:,}",
                f"{r['failed']:,}",
                f"{r['tokens']:,}",
                f"${r['cost_usd']:,.4f}" if r["cost_usd"] else "-",
                _route_now(r),
            )
        console.print(rt)

    for agent in unserved:
        queued = by_agent[agent].get(TaskStatus.QUEUED, 0)
        console.print(
            Text(
                f"agent {agent!r}: {queued} queued, and no live worker serves it: they wait "
                "until a `legion worker --app FILE` whose FILE defines it starts (with an "
                "--offer that covers the agent's resources=, if it has any), or the "
                "`legion run` that submitted them is run again",
                style="yellow",
            )
        )

    for a in scalers:  # (one that stopped publishing shows here for 30 s: its age says so)
        console.print(
            f"autoscaler {a.host} pid {a.pid} ({a.minimum}:{a.maximum}): desired {a.desired}, "
            f"running {a.running}; {a.reason} ({store_now - a.at:.0f} s ago)"
        )

    if waits:
        shown = "" if len(waits) == counts.get(TaskStatus.WAITING, 0) else f" (newest {len(waits)})"
        waiting_table = Table(title=f"waiting tasks{shown}")
        for col in ("task", "agent", "waits for", "until"):
            waiting_table.add_column(col)
        for wait in waits:
            until = "" if wait.wake_at is None else utc(wait.wake_at)
            waiting_table.add_row(str(wait.id), wait.agent, _waits_for(wait)[:200], until)
        console.print(waiting_table)

    if recent:
        et = Table(title="latest errors")
        for col in ("task", "agent", "status", "attempt", "error"):
            et.add_column(col)
        for t in recent:
            msg = f"{t.error.type}: {t.error.message}" if t.error else ""
            if t.error and (at := raised_at(t.error.traceback)):
                msg = f"{msg[:160]} (at {at})"
            et.add_row(
                str(t.id), t.agent, str(t.status), f"{t.attempt}/{t.max_attempts}", msg[:200]
            )
        console.print(et)

    if advice:
        if not groups:
            console.print("no async pitfalls found in the latest tasks")
        for g in groups:
            console.print(f"- {g.line()}", markup=False)
        if overlapping(groups):
            console.print(f"({OVERLAP_NOTE})", markup=False)


def _routes(workers: Sequence[WorkerInfo], now: float) -> dict[str, Any]:
    """Each LLM route's counts added up over the workers' heartbeats (a silent worker's
    totals count; what it has in flight now is not known)."""
    from legion.llm.fleet_routes import FleetRoutes

    return FleetRoutes().reports(workers, now - WORKER_FRESH) if workers else {}


def _route_now(r: dict[str, Any]) -> str:
    """A route's state now, in a few words."""
    said = [f"{r['in_flight']} in flight"] if r.get("in_flight") else []
    if r.get("waiting"):
        said.append(f"{r['waiting']} waiting")
    if r.get("paused_for"):
        said.append(f"paused {r['paused_for']:.0f} s (429)")
    if r.get("breaker") == 1:
        said.append("breaker open")
    elif r.get("breaker") == 2:
        said.append("breaker half-open")
    return ", ".join(said) or "idle"


def _prompt(w: WaitingInfo) -> str | None:
    return str(w.info["prompt"]) if isinstance(w.info, dict) and "prompt" in w.info else None


def _waits_for(w: WaitingInfo) -> str:
    """What a waiting task waits for, as `legion signal` would answer it."""
    if (prompt := _prompt(w)) is not None:
        return f"approval #{w.count}: {prompt}"
    if w.event is not None and w.event.startswith("legion.batch:"):
        return "an LLM batch job"
    if w.event is not None:
        return f"signal {w.event!r} #{w.count}"
    if w.children is not None:
        return "child tasks"
    return "its timer"


def _unserved(
    by_agent: dict[str, dict[TaskStatus, int]], workers: Sequence[WorkerInfo], now: float
) -> list[str]:
    """The agents with queued tasks that no live worker serves (none will run them): a
    worker that imports an agent whose ``resources=`` its ``--offer`` does not cover
    (``uncovered`` in its heartbeat) leases none of its tasks."""
    served = served_agents(workers, now)
    return sorted(a for a, c in by_agent.items() if c.get(TaskStatus.QUEUED) and a not in served)


async def requeue(
    url: str,
    ids: Sequence[int],
    *,
    dead: bool,
    failed: bool,
    cancelled: bool,
    agent: str | None,
    children: bool = False,
    tenant: str | None = None,
) -> tuple[int, list[str]]:
    """Queue tasks again; answer how many, and why each named task that was not could not be.
    ``children``: each named task's descendants that ended dead, failed or cancelled too,
    before it (none for a task that cannot be retried)."""
    from legion.errors import StillStopping
    from legion.waiting.family import requeue_descendants

    statuses = [
        s
        for s, on in (
            (TaskStatus.DEAD, dead),
            (TaskStatus.FAILED, failed),
            (TaskStatus.CANCELLED, cancelled),
        )
        if on
    ]
    refused: list[str] = []
    async with opened(url) as store:
        if agent is not None:
            known = sorted(await store.counts_by_agent())
            if agent not in known:  # a misspelt filter matches nothing, silently otherwise
                names = ", ".join(known) or "none"
                return 0, [f"no tasks of agent {agent!r} in the store (its agents: {names})"]
        if tenant is not None:
            tenants = sorted(await store.counts_by_tenant())
            if tenant not in tenants:  # (a mistyped name is no "nothing to queue again")
                names = ", ".join(tenants) or "none"
                return 0, [f"no tasks of tenant {tenant!r} in the store (its tenants: {names})"]
        # The named tasks first, each once: a task named twice, or also matched by --dead
        # (--failed, --cancelled), is queued again once and not then refused as queued.
        named = list(dict.fromkeys(ids))
        queued: set[int] = set()  # (by a walk: a child named beside its parent is no refusal)
        stopping: set[int] = set()
        if children:  # each task's descendants, then the task: one at a time
            for task_id in named:
                try:
                    below = await requeue_descendants(store, task_id) or []
                except StillStopping as exc:  # (nothing of it queued: said, and the next)
                    refused.append(str(exc))
                    stopping.add(task_id)
                    continue
                queued.update(below)
                if await store.requeue_one(task_id):
                    queued.add(task_id)
        else:  # in chunks, a transaction each (10,000 ids in about a second)
            queued.update(await store.requeue_many(named))
        left = [i for i in named if i not in queued and i not in stopping]
        found = await store.statuses(left) if left else {}
        for task_id in left:
            if task_id not in found:
                refused.append(f"task {task_id} not found")
            else:
                refused.append(
                    f"task {task_id} {found[task_id]}; only dead, failed or cancelled tasks "
                    "can be retried"
                )
        n = len(queued)
        if statuses:
            n += await store.requeue(statuses, agent=agent, tenant=tenant)
    return n, refused


async def tenant_tasks(url: str, tenant: str, agent: str | None) -> list[int] | None:
    """The ids of ``tenant``'s queued, waiting and running tasks (of ``agent``), oldest
    first; ``None`` if the store has no task of that tenant at all (its name mistyped?)."""
    from legion.store.paging import all_tasks
    from legion.store.types import TaskQuery

    unfinished = (TaskStatus.QUEUED, TaskStatus.WAITING, TaskStatus.RUNNING)
    async with opened(url) as store:
        if not await store.list_tasks(TaskQuery(limit=1, tenant=tenant)):
            return None
        query = TaskQuery(unfinished, agent, tenant=tenant)
        return sorted([t.id async for t in all_tasks(store, query)])


CANCEL_CHUNK = 1000
"""Tasks cancelled in one transaction by `cancel_tasks` (a write lock held that long on
SQLite, between workers' writes)."""


class CancelTally:
    """What `legion cancel` prints: a line per task on stdout as it is told (`each`), then
    on stderr the running ones asked to stop, the tasks that ended on their own, and the
    refusals. ``by_tenant``: the tasks were listed unfinished (``--tenant``), so one that
    ended since is counted, not refused."""

    def __init__(self, *, by_tenant: bool) -> None:
        self.by_tenant = by_tenant
        self.running: list[int] = []
        self.ended: dict[TaskStatus, int] = {}
        self.refused: list[str] = []

    def each(self, task_id: int, status: TaskStatus | None, parent: int | None) -> None:
        print(f"{task_id}\t{status or 'not found'}", flush=True)
        if status is TaskStatus.RUNNING:
            self.running.append(task_id)
        elif parent is not None:  # (a descendant that ended meanwhile is no refusal)
            return
        elif status is None:
            self.refused.append(f"task {task_id} not found")
        elif status.terminal and status is not TaskStatus.CANCELLED:
            if self.by_tenant:
                self.ended[status] = self.ended.get(status, 0) + 1
            else:
                self.refused.append(
                    f"task {task_id} {status}; only queued, waiting or running tasks can be "
                    "cancelled"
                )

    def notes(self) -> list[str]:
        out = []
        if self.running:
            shown = ", ".join(map(str, self.running[:10]))
            if len(self.running) > 10:
                shown += f" and {len(self.running) - 10:,} more"
            stop = (
                "it stops when its worker next checks in (`legion status` shows it)"
                if len(self.running) == 1
                else "they stop when their workers next check in (`legion status` shows them)"
            )
            out.append(f"cancel requested for running task {shown}: {stop}")
        if self.ended:
            counts = ", ".join(f"{n:,} {status}" for status, n in self.ended.items())
            out.append(f"ended on their own before the cancel reached them: {counts}")
        return out


async def cancel_tasks(
    url: str,
    ids: Sequence[int],
    each: Callable[[int, TaskStatus | None, int | None], None],
    *,
    children: bool = False,
) -> None:
    """Cancel each task (and, with ``children``, its unfinished descendants after it),
    `CANCEL_CHUNK` at a time; ``each`` is told (task, its status after, the task it was
    cancelled for: None for one named) as each chunk is done."""
    from legion.waiting.family import cascades, unfinished_descendants

    async with opened(url) as store:
        for lo in range(0, len(ids), CANCEL_CHUNK):
            chunk = ids[lo : lo + CANCEL_CHUNK]
            after = await store.cancel_many(chunk, time.time())
            for i in chunk:
                each(i, after.get(i), None)
                if children and cascades(after.get(i)):  # (a refused cancel changes nothing)
                    for child in await unfinished_descendants(store, i):
                        each(child, await store.cancel(child, time.time()), i)


def _breakers(routes: object) -> str:
    """``breaker open on route X`` for the routes a worker reports, else ``""``."""
    if not isinstance(routes, list) or not routes:
        return ""
    return "breaker open on route " + ", ".join(str(r) for r in routes)
