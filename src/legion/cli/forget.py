"""``legion forget --session NAME``: delete what a session kept (its memory and its
session-scoped vectors), as a request to forget a user asks."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from legion.cli.options import DEFAULT_STORE, StoreOpt, _fail, _run
from legion.cli.progress import stderr_console
from legion.errors import ConfigError, VectorError
from legion.store.tenancy import DEFAULT_TENANT, check_tenant, scoped_key


def register(app: typer.Typer) -> None:
    """Add the ``forget`` command to ``app``."""

    @app.command("forget")
    def forget_cmd(
        session: Annotated[
            list[str],
            typer.Option(
                "--session",
                metavar="NAME",
                help="The session to forget, as tasks named it (repeat it for more).",
            ),
        ],
        tenant: Annotated[
            str,
            typer.Option(help="The sessions' tenant (as `legion keys` names it)."),
        ] = DEFAULT_TENANT,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")
        ] = False,
        store: StoreOpt = DEFAULT_STORE,
    ) -> None:
        """Delete a session's memory (`ctx.memory`) and its items in every session-scoped
        vector collection, now, whatever their age (`legion purge --sessions` deletes
        idle sessions' memory alone).

        Refused while a queued, running or waiting task names the session: it would write
        again what was deleted (cancel it first: `legion cancel`). The tasks that ran in
        the session are kept, with their inputs, steps and outputs: `legion purge`
        deletes those by age. Shared collections are not a session's: `legion vectors`
        deletes from them."""
        try:
            check_tenant(tenant)  # (a misspelt one matched nothing, and said so as success)
            stored = [scoped_key(tenant, name, "a session") or name for name in session]
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        if any(not name for name in session):
            raise _fail("--session names no session (an empty name)")

        async def main() -> None:
            from legion.cli.status import opened
            from legion.vectors.backend import drop_sessions

            async with opened(store) as s:
                live = await s.live_sessions()
                busy = [name for name, key in zip(session, stored, strict=True) if key in live]
                if busy:
                    raise _fail(
                        f"a queued, running or waiting task names session {busy[0]!r}: it "
                        "would write its memory again; cancel its tasks first (`legion "
                        "cancel`), then forget it",
                        code=1,
                    )
                if dry_run:
                    keys = sum([len(await s.memory_items(key)) for key in stored])
                    print(f"{keys}\tmemory keys of {len(stored)} sessions would go (dry run)")
                    try:
                        vectors = await drop_sessions(s, stored, dry_run=True)
                    except VectorError as exc:
                        raise _fail(f"the sessions' vectors were not counted: {exc}") from None
                    print(f"{vectors}\tsession-scoped vectors would go (dry run)")
                    if not keys and not vectors:
                        _nothing_kept(session, tenant, "memory nor session-scoped vectors")
                    return
                # (every key, whatever the clock of the worker that wrote it said)
                gone = await s.drop_memory(stored, math.inf)
                print(f"{gone}\tmemory keys deleted")
                try:
                    vectors = await drop_sessions(s, stored)
                except VectorError as exc:
                    raise _fail(f"the sessions' vectors were not deleted: {exc}", code=1) from None
                print(f"{vectors}\tsession-scoped vectors deleted")
                if not gone and not vectors:
                    _nothing_kept(session, tenant, "memory nor session-scoped vectors")

        _run(main())


def _nothing_kept(sessions: list[str], tenant: str, what: str) -> None:
    """Say that nothing matched: a misspelt session (names are case-sensitive) or the
    wrong tenant reads as done otherwise."""
    names = ", ".join(map(repr, sessions))
    stderr_console().print(
        f"note: no {what} kept for session {names} of tenant {tenant!r}: check the name "
        "(sessions are case-sensitive) and --tenant; `legion purge --sessions --dry-run` "
        "lists the idle ones"
    )
