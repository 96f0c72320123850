"""The look back at an attempt that ended: what it left behind.

The runner asks once per attempt, after the agent's function returned or raised: the
watchdog's block still going on, steps and calls never awaited, tasks the agent created
that failed unheard or still run, and steps that could have run together (the advisor).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from legion.diagnostics.advisor import StepTrace, advise
from legion.diagnostics.report import Diagnostic, Kind, Site, agent_files, blocked_loop, user_site
from legion.diagnostics.tracking import unretrieved_exception
from legion.diagnostics.unawaited import Pending, SiteRef
from legion.diagnostics.watchdog import Block, Capture


class Trail(Protocol):
    """What an attempt's context kept of it (a `legion.context.Context`)."""

    @property
    def traces(self) -> Sequence[StepTrace]: ...

    def made_any(self) -> bool: ...

    def unawaited(self) -> list[Pending[Any]]: ...


def look_back(
    name: str,
    fn: Callable[..., Any],
    found: list[Diagnostic] | None,
    children: Sequence[asyncio.Task[Any]] | None,
    capture: Capture | None,
    trail: Trail,
    made_at: Sequence[SiteRef | None] = (),
) -> Sequence[Diagnostic]:
    """What the attempt left behind: the watchdog's blocks, steps never awaited, tasks
    it spawned that failed unheard or still run, steps that could have run together.

    ``found``: what was seen while it ran (extended and answered), if anything;
    ``children``: the tasks the agent's code created, if any; ``capture``: a block of the
    loop still going on when it ended; ``fn``: the agent's function (its files are the
    agent's code); ``made_at``: the agent's line that created each of the children."""
    if not (found or children or capture or trail.made_any()) and len(trail.traces) < 2:
        return found or ()  # the common case: nothing to look at (and nothing made for it)
    found = found if found is not None else []
    children = children or ()
    if capture is not None:  # the agent blocked the loop and ended before the report
        block = Block(
            capture.seconds(time.monotonic()),
            None,
            user_site(capture.stack),
            capture.stack,
            capture.held,
            capture.busy,
        )
        blocked = blocked_loop(name, block, agent_files(fn))
        if blocked is not None:  # else no frame of the agent's code ran: the worker's lag
            found.append(blocked)
    for pending in trail.unawaited():
        site = pending.site
        found.append(
            Diagnostic(
                Kind.UNAWAITED,
                f"agent `{name}`: {pending.what} made at {site} was never awaited, so it never "
                + (
                    "ran: `await` it"
                    if pending.what == "ctx.gather(...)"
                    else "ran: `await` it, or pass it to `ctx.gather`"
                ),
                site,
            )
        )
    for child, made in itertools.zip_longest(children, made_at[: len(children)]):
        if not child.done():
            where = made.site() if made is not None else _origin(child)
            found.append(
                Diagnostic(
                    Kind.ESCAPED_EXCEPTION,
                    f"agent `{name}`: task {child.get_name()!r} that it created{_at(made)} is "
                    "still running after the agent returned; await the tasks you create (or "
                    "use ctx.gather)",
                    where,
                )
            )
        elif (exc := unretrieved_exception(child)) is not None:
            found.append(escaped_exception(name, child, exc, made))
    if len(trail.traces) > 1:
        found.extend(advise(name, trail.traces))
    return found


def escaped_exception(
    agent: str, task: asyncio.Task[Any], exc: BaseException, made: SiteRef | None = None
) -> Diagnostic:
    """The report of an exception in a task the agent created (at ``made``, its line, if
    known: the line to change) that nobody retrieved."""
    frames = traceback.extract_tb(exc.__traceback__)
    stack = tuple(Site(f.filename, f.lineno or 0, f.name, f.line or "") for f in reversed(frames))
    return Diagnostic(
        Kind.ESCAPED_EXCEPTION,
        f"agent `{agent}`: task {task.get_name()!r} that it created{_at(made)} raised "
        f"{type(exc).__name__}: {exc}, and nobody awaited it",
        made.site() if made is not None else user_site(stack) or _origin(task),
        None,
        stack,
    )


def _at(made: SiteRef | None) -> str:
    return f" at {made.site()}" if made is not None else ""


def _origin(task: asyncio.Task[Any]) -> Site | None:
    """Where a task's coroutine is defined."""
    code = getattr(task.get_coro(), "cr_code", None)
    if code is None:
        return None
    return Site(code.co_filename, code.co_firstlineno, code.co_name)
