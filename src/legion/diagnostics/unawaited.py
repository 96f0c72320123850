"""Steps and calls that an agent created but never awaited.

``ctx.step(...)``, ``ctx.llm.chat(...)`` and ``ctx.memory.set(...)`` answer a
`Pending`: nothing runs until it is awaited (or handed to ``ctx.gather``). The
context keeps the ones it made; those still pending when the instance ends are reported
with the line that made them — the work silently never happened.
"""

from __future__ import annotations

import asyncio
import linecache
import os
import sys
import sysconfig
from collections.abc import Awaitable, Callable, Generator
from types import CodeType, FrameType
from typing import Any, Generic, NamedTuple, TypeVar

from legion.diagnostics import tracking
from legion.diagnostics.report import Site

T = TypeVar("T")


class SiteRef(NamedTuple):
    """A line of code, cheap to take; `site` reads its text when reported."""

    code: CodeType
    line: int

    def site(self) -> Site:
        file = self.code.co_filename
        return Site(file, self.line, self.code.co_name, linecache.getline(file, self.line).strip())


LEGION_CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
"""Where legion's own code is: a frame whose file starts with it is not the agent's."""

_LIBRARIES = tuple(
    {
        LEGION_CODE,
        *(sysconfig.get_paths()[k] + os.sep for k in ("purelib", "platlib", "stdlib")),
    }
)
"""Where the code that is not the agent's lives: legion's, the installed packages' and
the standard library's."""

_LEGIONS_AGENTS = tuple(LEGION_CODE + folder + os.sep for folder in ("bench", "demo"))
"""legion's own agents (its benchmarks', its demo's): agents' code, as a user's is (a
step they make is sited at their line without walking up the stack, which cost the
benchmarks what no user's agent pays)."""


def _agents_code(file: str) -> bool:
    return not file.startswith(_LIBRARIES) or file.startswith(_LEGIONS_AGENTS)


_ASYNCIO = os.path.dirname(asyncio.__file__) + os.sep
"""asyncio's code: a walk up the calling frames that reaches it has left the task the
call was made in (for the event loop that runs it)."""


def _agents_frame(frame: FrameType) -> FrameType:
    """``frame`` (a file under `_LIBRARIES`) if it is one of legion's own agents', else
    the first frame up from it (legion's or a library's code: an SDK's request turned
    into ``ctx.llm.chat`` by legion's transport, a framework's call) that is the agent's
    own line, which a report should name. A call made in a task of its own (an SDK's
    stream, ``asyncio.wait_for`` on Python 3.11) has no agent's frame above it: the
    line its instance waits at then (`_waiting_frame`), which made it; ``frame`` if
    none is found."""
    found: FrameType | None = frame
    for _ in range(64):
        if found is None:
            break
        file = found.f_code.co_filename
        if file.startswith(_ASYNCIO):
            # (up from here: the event loop, then whatever started it - a console
            # script, `asyncio.run(main())` - which is no line of the agent's)
            break
        if _agents_code(file):
            return found
        found = found.f_back
    return _waiting_frame() or frame


def _waiting_frame() -> FrameType | None:
    """The innermost frame of the agent's own code that the current instance's task
    waits in now (its chain of awaits, from the coroutine the task runs), if any."""
    owner = tracking.CURRENT.get()
    task = getattr(owner, "task", None)
    awaited: Any = task.get_coro() if isinstance(task, asyncio.Task) else None
    found = None
    for _ in range(64):
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        if _agents_code(frame.f_code.co_filename):
            found = frame
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return found


def callers_line(frame: FrameType | None) -> SiteRef | None:
    """The first line of the agent's own code up the calls from ``frame`` (the one that
    created a task, under asyncio's and legion's frames), if any."""
    for _ in range(64):
        if frame is None:
            return None
        if _agents_code(frame.f_code.co_filename):
            return SiteRef(frame.f_code, frame.f_lineno)
        frame = frame.f_back
    return None


def _used() -> Any:
    raise RuntimeError("a step or call was awaited twice")


class Pending(Awaitable[T], Generic[T]):
    """A step or call that runs when awaited: ``fn(*args, site_ref)``, where ``site_ref``
    is the line that made it. ``what`` names it in reports.

    The work is a function and its arguments rather than a closure: a lambda over the
    caller's arguments made each of them a cell of the caller's frame (making a
    ``ctx.llm.chat(...)`` took 3.1 µs that way, 1.4 µs this way)."""

    __slots__ = ("_args", "_fn", "awaited", "site_ref", "what")

    def __init__(
        self,
        what: str,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...] = (),
        depth: int = 2,
    ) -> None:
        self.what = what
        self._fn = fn
        self._args = args
        self.awaited = False
        frame = sys._getframe(depth)  # the caller of ctx.step & co: the agent's line
        if frame.f_code.co_filename.startswith(_LIBRARIES):
            frame = _agents_frame(frame)
        self.site_ref = SiteRef(frame.f_code, frame.f_lineno)

    def __await__(self) -> Generator[Any, None, T]:
        if self.awaited:
            raise RuntimeError(f"{self.what} was awaited twice")
        self.awaited = True
        # Let go of the work once it runs: the context keeps every `Pending` it made (to
        # report the unawaited ones) until the attempt ends.
        fn, args = self._fn, self._args
        self._fn, self._args = _used, ()
        return fn(*args, self.site_ref).__await__()

    @property
    def arguments(self) -> tuple[Any, ...]:
        """What it was made with (nothing once awaited: it lets go of its work then)."""
        return self._args

    @property
    def site(self) -> Site:
        return self.site_ref.site()
