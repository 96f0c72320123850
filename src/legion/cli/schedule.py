"""``legion schedule add|list|remove``: run an agent on a cron schedule."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from legion import codec
from legion.agent import MAX_RETRIES
from legion.cli.options import DEFAULT_STORE, StoreOpt, _fail, _run
from legion.cli.times import utc

if TYPE_CHECKING:
    from legion.store import Store
    from legion.store.waiting import Schedule


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
            int | None,
            typer.Option(
                "--max-attempts",
                min=1,
                max=MAX_RETRIES + 1,
                help="Attempts per run. Default: as many as the agent gives its tasks "
                "(its retries + 1).",
            ),
        ] = None,
        overlap: Annotated[
            str,
            typer.Option(
                "--overlap",
                help="When a tick comes while the task of the last tick run has not "
                "ended: allow (run beside it) or skip (pass the tick over; the schedule "
                "goes on from the next tick).",
            ),
        ] = "allow",
        store: StoreOpt = DEFAULT_STORE,
        app_ref: Annotated[
            list[str] | None,
            typer.Option(
                "--app",
                "-a",
                help="The agents its workers serve, as `legion worker --app` takes them: a "
                "file (myagents.py) or module (pkg.agents); repeatable. The schedule is "
                "refused unless AGENT is one of them and --input fits its parameters. "
                "Without it, a warning says when no live worker serves AGENT.",
            ),
        ] = None,
    ) -> None:
        """Add (or replace) a schedule; prints its next tick."""
        from legion.waiting.cron import CronError
        from legion.waiting.schedules import schedule

        if not agent.strip() or not agent.isprintable() or len(agent) > 200:
            raise _fail(f"AGENT takes an agent's name (1 to 200 characters), not {agent!r}")

        try:  # strict JSON, as input files are read: no NaN or Infinity, no integer past
            value: Any = codec.loads_given(input.encode())  # 64 bits (read as a float)
        except codec.JSONDecodeError as exc:
            raise _fail(f"--input is not JSON: {codec.json_error(exc)}") from None
        if not isinstance(value, dict):
            raise _fail("--input must be a JSON object (the agent's keyword arguments)")
        try:  # (checked before the store is opened, on this host's clock; and first: a
            # bad --cron was reported as the missing --input of the agent)
            schedule(name, cron, agent, b"{}", time.time(), overlap=overlap)
        except (CronError, ValueError) as exc:
            raise _fail(str(exc)) from None
        if app_ref:
            _check_agent(tuple(app_ref), agent, value)

        async def main() -> tuple[Schedule, str | None]:
            from legion.store import store_from_url

            s = store_from_url(store)  # a new store is made: a schedule may come first
            await s.open()
            try:
                # Its first tick on the store's clock, as workers see ticks due: a host
                # whose clock is behind would set a tick that has run already.
                now = await s.now()
                made = schedule(
                    name,
                    cron,
                    agent,
                    codec.dumps(value),
                    now,
                    max_attempts=attempts or 0,
                    overlap=overlap,
                )
                await s.add_schedule(made, now)
                kept = [found for found in await s.schedules() if found.name == name]
                made = kept[0] if kept else made  # (a next tick kept from before: see there)
                return made, None if app_ref else await _unserved(s, agent, store)
            finally:
                await s.aclose()

        made, warning = _run(main())
        print(f"{name}\tnext {utc(made.next_tick)}")
        if warning is not None:
            from rich.text import Text

            from legion.cli.progress import stderr_console

            stderr_console().print(Text.assemble(("warning:", "yellow"), " ", warning))

    @group.command("list")
    def list_cmd(
        store: StoreOpt = DEFAULT_STORE,
        as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    ) -> None:
        """List the schedules with their next tick, and the last task each ran with its
        status (a task purged since: "gone")."""

        async def main() -> tuple[list[Any], float, set[str], dict[int, str]]:
            from legion.cli.status import live_workers, opened

            async with opened(store) as s:
                live = await live_workers(s)
                served = {a for w in live for a in w.load.get("agents", ())}
                found = await s.schedules()
                last = [x.last_task for x in found if x.last_task is not None]
                statuses = {i: str(st) for i, st in (await s.statuses(last)).items()}
                return found, await s.now(), served, statuses

        found, now, served, statuses = _run(main())

        def last_status(s: Any) -> str | None:
            return None if s.last_task is None else statuses.get(s.last_task, "gone")

        def overdue(s: Any) -> bool:  # (a tick past by more than a worker's pass takes)
            return bool(s.next_tick < now - OVERDUE_AFTER)

        if as_json:
            rows = [
                {
                    "name": s.name,
                    "cron": s.cron,
                    "agent": s.agent,
                    "input": codec.loads(s.input),
                    "next_tick": utc(s.next_tick),
                    "max_attempts": s.max_attempts or None,  # (None: the agent's own)
                    "created_at": utc(s.created_at),
                    "served": s.agent in served,  # (by a live worker)
                    "overdue": overdue(s),
                    "overlap": s.overlap,
                    "last_task": s.last_task,
                    "last_status": last_status(s),
                }
                for s in found
            ]
            print(json.dumps(rows, indent=2))
            return
        if not found:
            print("no schedules (add one with `legion schedule add`)", file=sys.stderr)
        for s in found:
            late = ""
            if overdue(s):
                late = "\toverdue: " + (
                    "the workers run it at their next pass"
                    if s.agent in served
                    else f"no live worker serves {s.agent!r} (its ticks wait for one)"
                )
            last = "" if s.last_task is None else f"\tlast task {s.last_task} {last_status(s)}"
            skips = "\toverlap skip" if s.overlap == "skip" else ""
            print(f"{s.name}\t{s.cron}\t{s.agent}\tnext {utc(s.next_tick)}{last}{skips}{late}")

    @group.command("remove")
    def remove_cmd(
        name: Annotated[str, typer.Argument(help="The schedule to remove.")],
        store: StoreOpt = DEFAULT_STORE,
    ) -> None:
        """Remove a schedule (exit 1 if there is none).

        Its tasks already submitted stay, and run."""

        async def main() -> bool:
            from legion.cli.status import opened

            async with opened(store) as s:
                return await s.remove_schedule(name)

        if not _run(main()):
            raise _fail(f"no schedule named {name!r}", code=1)
        print(f"removed {name}")

    app.add_typer(group)


def _check_agent(apps: tuple[str, ...], name: str, value: dict[str, Any]) -> None:
    """Refuse (exit 2) an agent that ``apps`` do not define, or an input it does not take
    (as its worker would read the input of each tick's task)."""
    from legion.cli.worker import load_agents
    from legion.errors import InputError, LegionError

    try:
        agents = {a.name: a for a in load_agents(apps)}
    except LegionError as exc:
        raise _fail(str(exc)) from None
    found = agents.get(name)
    if found is None:
        raise _fail(
            f"{', '.join(apps)} defines no agent {name!r}; its agents: {', '.join(sorted(agents))}"
        )
    try:
        found.arguments(value)
    except InputError as exc:
        raise _fail(f"bad --input: {exc}") from None


async def _unserved(store: Store, agent: str, url: str) -> str | None:
    """Why the schedule's tasks would wait, when no live worker on ``store`` serves
    ``agent`` (a misspelt name, or an agent no worker runs); else None."""
    from legion.cli.status import live_workers
    from legion.store import redact_url

    live = await live_workers(store)
    if any(agent in w.load.get("agents", ()) for w in live):
        return None
    served = sorted({a for w in live for a in w.load.get("agents", ())})
    now = f"the live workers serve {', '.join(served)}" if served else "no worker is live"
    url = redact_url(url)
    return (
        f"no live worker serves agent {agent!r} on {url} ({now}): its ticks wait until one "
        f"does (then it runs once); start one with `legion worker --app FILE --store {url}`, "
        "or give --app FILE here to check the agent's name and input"
    )


OVERDUE_AFTER = 120.0
"""Seconds past its tick after which `schedule list` calls a schedule overdue."""
