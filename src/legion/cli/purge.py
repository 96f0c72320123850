"""``legion purge --older-than 30d``: delete the tasks that ended long ago.

A store keeps every task, its steps, attempts, diagnostics and signals, and the change
feed's rows, until they are purged: without it a fleet's store grows for ever. The
purge goes a chunk at a time (a transaction each), oldest first, so the workers that
share the store wait for no long lock.
"""

from __future__ import annotations

import asyncio
import math
import re
import signal
import weakref
from datetime import UTC, datetime
from typing import Annotated

import typer

from legion.cli.options import DEFAULT_STORE, StoreOpt, _fail, _run
from legion.cli.progress import stderr_console
from legion.errors import VectorError
from legion.store import Store
from legion.store.tenancy import tenant_of
from legion.task import TaskStatus

ENDED = tuple(s.value for s in TaskStatus if s.terminal)  # succeeded, failed, dead, cancelled
CHUNK = 1000
_AGE_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}


def parse_age(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``1d12h`` or a bare number of
    seconds; `ValueError` for anything else."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = list(_AGE_PART.finditer(value))
        if not parts or "".join(p.group(0) for p in parts) != value:
            raise ValueError(
                f"--older-than takes an age such as 30d, 12h, 90m or 1d12h (or seconds), "
                f"not {text!r}"
            ) from None
        seconds = sum(float(p[1]) * _UNIT[p[2]] for p in parts)
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_AGE:
        raise ValueError(f"--older-than must be an age from 0 to 100 years (36500d), not {text!r}")
    return seconds


MAX_AGE = 36_500 * 86_400.0
"""The oldest cut: a hundred years (an older one has no date)."""


async def drop_vectors(store: Store, sessions: tuple[str, ...]) -> int:
    """The session-scoped vectors of the purged tasks' own sessions (as their memory):
    how many went. A store whose vectors this install cannot open (no vectors extra)
    keeps them, said once."""
    if not sessions:
        return 0
    from legion.vectors.backend import drop_sessions

    try:
        return await drop_sessions(store, sessions)
    except VectorError as exc:
        if store not in _SAID:
            _SAID.add(store)
            stderr_console().print(f"the purged tasks' vectors are kept: {exc}", highlight=False)
        return 0


_SAID: weakref.WeakSet[Store] = weakref.WeakSet()


async def purge_sessions(
    store: Store, before: float, tenant: str | None, *, dry_run: bool
) -> tuple[int, int]:
    """``--sessions``: the memory of the sessions none of whose keys was written since
    ``before`` and that no queued, running or waiting task names (of ``tenant``'s alone
    if given); answers the sessions and keys that went (the sessions alone on a dry run).
    Their session-scoped vectors stay (a vector's age is not kept). A task submitted
    naming such a session while this runs may find its memory gone."""
    live = await store.live_sessions()
    after, sessions, keys = "", 0, 0
    while page := await store.idle_sessions(before, after, CHUNK):
        after = page[-1]
        idle = [x for x in page if x not in live and (tenant is None or tenant_of(x) == tenant)]
        sessions += len(idle)
        if idle and not dry_run:
            keys += await store.drop_memory(idle, before)
    return sessions, keys


def register(app: typer.Typer) -> None:
    """Add the ``purge`` command to ``app``."""

    @app.command("purge")
    def purge_cmd(
        older_than: Annotated[
            str,
            typer.Option(
                "--older-than",
                help="Delete tasks that ended at least this long ago: 30d, 12h, 90m, 1d12h, "
                "or seconds (on the store's clock).",
            ),
        ],
        status: Annotated[
            list[str] | None,
            typer.Option(
                "--status",
                metavar="STATUS",
                help="Only tasks that ended so (repeat it, or commas): succeeded, failed, "
                "dead, cancelled. Default: all four.",
            ),
        ] = None,
        agent: Annotated[str | None, typer.Option(help="Only tasks of this agent.")] = None,
        tenant: Annotated[
            str | None,
            typer.Option(
                help="Only tasks of this tenant (as `legion keys` names it; `default` for "
                "the server's own)."
            ),
        ] = None,
        sessions: Annotated[
            bool,
            typer.Option(
                "--sessions",
                help="Also delete the memory of the sessions none of whose keys was "
                "written for --older-than and that no queued, running or waiting task names "
                "(of --tenant's alone if given; --status and --agent do not apply): named "
                "sessions' memory is kept otherwise. Their session-scoped vectors stay.",
            ),
        ] = False,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")
        ] = False,
        store: StoreOpt = DEFAULT_STORE,
    ) -> None:
        """Delete tasks that ended long ago, with their steps, attempts, diagnostics,
        signals and change-feed rows: a store keeps them all until then.

        Queued, running and waiting tasks are never deleted, nor a child task whose parent
        is kept and has not succeeded (it reads its children's ends; a failed one may be
        retried, which would run purged children again). A deleted task's idempotency key is
        free again: submitted anew (a `legion run` of the same file again, a client's
        retry), it runs again; its id never is. The memory and session-scoped vectors of a
        task that ran without a session (its own session, `task-<id>`) go with it; named
        sessions' (unless --sessions) and shared collections are kept. What they spent on
        LLM calls stays counted by their agent's and tenant's budgets. Goes a chunk of
        1,000 at a time, oldest first, so the workers sharing the store go on.

        The space freed is reused by new tasks; the files keep their size. To give it
        back: `sqlite3 FILE VACUUM` with the workers stopped (it rewrites the file holding
        its write lock: a worker that cannot write for longer than its lease gives up its
        tasks, whose unrecorded steps then run again); on PostgreSQL autovacuum reuses
        the space and `VACUUM FULL` gives it back (locking the tables).
        """
        try:
            age = parse_age(older_than)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        names = [n.strip() for given in status or ENDED for n in given.split(",") if n.strip()]
        wrong = [n for n in names if n not in ENDED]
        if wrong or not names:
            raise _fail(
                f"--status takes ended statuses ({', '.join(ENDED)}), not {', '.join(wrong)}"
                if wrong
                else "--status names no status"
            )
        statuses = [TaskStatus(n) for n in dict.fromkeys(names)]
        console = stderr_console()

        async def main() -> None:
            from legion.cli.status import opened

            async with opened(store) as s:
                if tenant is not None and not sessions:  # (a misspelt one purged nothing,
                    # said as success; with --sessions, its idle sessions may outlive them)
                    tenants = sorted(await s.counts_by_tenant())
                    if tenant not in tenants:
                        console.print(
                            f"note: no tasks of tenant {tenant!r} in the store (its tenants: "
                            f"{', '.join(tenants) or 'none'}): check the name",
                            highlight=False,
                        )
                before = await s.now() - age
                when = datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                which = (
                    f"{'/'.join(map(str, statuses))} tasks"
                    + (f" of agent {agent!r}" if agent else "")
                    + (f" of tenant {tenant!r}" if tenant else "")
                )
                if dry_run:
                    n = await s.purgeable(before, statuses, agent=agent, tenant=tenant)
                    print(f"{n}\t{which} ended before {when} would be purged (dry run)")
                    if sessions:
                        n, _ = await purge_sessions(s, before, tenant, dry_run=True)
                        print(f"{n}\tsessions idle since {when} would be purged (dry run)")
                    return
                tasks = events = chunks = vectors = 0
                loop = asyncio.get_running_loop()
                me = asyncio.current_task()
                assert me is not None
                loop.add_signal_handler(signal.SIGTERM, me.cancel)  # (as Ctrl-C: a line said)
                try:
                    # The tasks, a chunk at a time, each from where the last stopped (the
                    # tasks kept are read once); then the feed's rows of those gone.
                    last = 0
                    while True:
                        purged = await s.purge(
                            before,
                            statuses,
                            agent=agent,
                            tenant=tenant,
                            limit=CHUNK,
                            after=last,
                            feed=False,
                        )
                        tasks += purged.tasks
                        vectors += await drop_vectors(s, purged.sessions)
                        if not purged.tasks:
                            break
                        last = purged.last
                        chunks += 1
                        if chunks % 10 == 0:
                            console.print(f"purged {tasks:,} tasks so far...", highlight=False)
                    last = 0
                    while True:
                        feed = await s.purge_feed(before, after=last, limit=CHUNK)
                        events += feed.events
                        if not feed.events:
                            break
                        last = feed.last
                except asyncio.CancelledError:
                    # Each chunk is a transaction of its own: what was purged stays purged.
                    console.print(
                        f"interrupted: purged {tasks:,} {which} that ended before {when}; "
                        "the same command goes on with the rest",
                        highlight=False,
                    )
                    raise
                finally:
                    loop.remove_signal_handler(signal.SIGTERM)
                print(f"{tasks}\t{which} ended before {when} purged")
                console.print(
                    f"purged {tasks:,} {which} that ended before {when}, with their steps, "
                    f"attempts, diagnostics, signals, own memory, {vectors:,} vectors of "
                    f"their own sessions and {events:,} change-feed rows (the space is reused "
                    "by new tasks: see --help to give it back)",
                    highlight=False,
                )
                if sessions:
                    idle, keys = await purge_sessions(s, before, tenant, dry_run=False)
                    print(f"{idle}\tsessions idle since {when} purged")
                    console.print(
                        f"purged {idle:,} sessions idle since {when}: {keys:,} memory keys "
                        "(their session-scoped vectors stay)",
                        highlight=False,
                    )

        try:
            _run(main())
        except asyncio.CancelledError:  # SIGTERM (its line said what was done)
            raise typer.Exit(128 + signal.SIGTERM) from None
        except KeyboardInterrupt:
            raise typer.Exit(128 + signal.SIGINT) from None
