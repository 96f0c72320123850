"""``legion schedule add|list|remove``: run an agent on a cron schedule."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from legion import codec
from legion.cli.options import DEFAULT_STORE, StoreOpt, _fail, _run


def register(app: typer.Typer) -> None:
    """Add the ``schedule`` group to ``app``."""
    group = typer.Typer(
        name="schedule",
        help="Cron schedules: each tick submits one task, exactly once across all workers "
        "(a running worker submits them). Missed ticks run once, not as a backlog.",
        no_args_is_help=True,
        rich_markup_mode=None,
    )

    @group.command("add")
    def add_cmd(
        name: Annotated[
            str, typer.Argument(help="The schedule's name (adding it again replaces it).")
        ],
        agent: Annotated[str, typer.Argument(help="The agent's name, as its workers know it.")],
        cron: Annotated[
            str,
            typer.Option(
                "--cron",
                help="Five fields, in UTC: minute hour day-of-month month day-of-week, e.g. "
                '"*/15 * * * *" or "0 9 * * 1-5".',
            ),
        ],
        input: Annotated[
            str, typer.Option("--input", "-i", help="The task's input, a JSON object.")
        ] = "{}",
        attempts: Annotated[
            int, typer.Option("--max-attempts", min=1, help="Attempts per run.")
        ] = 4,
        store: StoreOpt = DEFAULT_STORE,
    ) -> None:
        """Add (or replace) a schedule; prints its next tick."""
        from legion.waiting.cron import CronError
        from legion.waiting.schedules import schedule

        try:
            value: Any = json.loads(input)
        except json.JSONDecodeError as exc:
            raise _fail(f"--input is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise _fail("--input must be a JSON object (the agent's keyword arguments)")
        try:
            made = schedule(
                name, cron, agent, codec.dumps(value), time.time(), max_attempts=attempts
            )
        except (CronError, ValueError) as exc:
            raise _fail(str(exc)) from None

        async def main() -> None:
            from legion.store import store_from_url

            s = store_from_url(store)  # a new store is made: a schedule may come first
            await s.open()
            try:
                await s.add_schedule(made, time.time())
            finally:
                await s.aclose()

        _run(main())
        print(f"{name}\tnext {_when(made.next_tick)}")

    @group.command("list")
    def list_cmd(
        store: StoreOpt = DEFAULT_STORE,
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    ) -> None:
        """List the schedules with their next tick."""

        async def main() -> list[Any]:
            from legion.cli.status import opened

            async with opened(store) as s:
                return await s.schedules()

        found = _run(main())
        if as_json:
            rows = [
                {
                    "name": s.name,
                    "cron": s.cron,
                    "agent": s.agent,
                    "input": codec.loads(s.input),
                    "next_tick": _when(s.next_tick),
                }
                for s in found
            ]
            print(json.dumps(rows, indent=2))
            return
        for s in found:
            print(f"{s.name}\t{s.cron}\t{s.agent}\tnext {_when(s.next_tick)}")

    @group.command("remove")
    def remove_cmd(
        name: Annotated[str, typer.Argument(help="The schedule to remove.")],
        store: StoreOpt = DEFAULT_STORE,
    ) -> None:
        """Remove a schedule (its tasks already submitted stay); exits 1 if unknown."""

        async def main() -> bool:
            from legion.cli.status import opened

            async with opened(store) as s:
                return await s.remove_schedule(name)

        if not _run(main()):
            raise _fail(f"no schedule named {name!r}", code=1)
        print(f"removed {name}")

    app.add_typer(group)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
