"""Steps and calls that an agent created but never awaited.

``ctx.step(...)``, ``ctx.llm.chat(...)`` and ``ctx.memory.set(...)`` answer a
`Pending`: nothing runs until it is awaited (or handed to ``ctx.gather``). The
context keeps the ones it made; those still pending when the instance ends are reported
with the line that made them — the work silently never happened.
"""

from __future__ import annotations

import linecache
import sys
from collections.abc import Awaitable, Callable, Generator
from types import CodeType
from typing import Any, Generic, NamedTuple, TypeVar

from legion.diagnostics.report import Site

T = TypeVar("T")


class SiteRef(NamedTuple):
    """A line of code, cheap to take; `site` reads its text when reported."""

    code: CodeType
    line: int

    def site(self) -> Site:
        file = self.code.co_filename
        return Site(file, self.line, self.code.co_name, linecache.getline(file, self.line).strip())


def _used() -> Any:
    raise RuntimeError("a step or call was awaited twice")


class Pending(Awaitable[T], Generic[T]):
    """A step or call that runs when awaited. ``what`` names it in reports."""

    __slots__ = ("_factory", "awaited", "site_ref", "what")

    def __init__(self, what: str, factory: Callable[[], Awaitable[T]], depth: int = 2) -> None:
        self.what = what
        self._factory = factory
        self.awaited = False
        frame = sys._getframe(depth)  # the caller of ctx.step & co: the agent's line
        self.site_ref = SiteRef(frame.f_code, frame.f_lineno)

    def __await__(self) -> Generator[Any, None, T]:
        if self.awaited:
            raise RuntimeError(f"{self.what} was awaited twice")
        self.awaited = True
        # Dropped once used: a factory is often a closure over this very object, a cycle
        # that would otherwise keep every step of a finished task for the cyclic GC.
        factory, self._factory = self._factory, _used
        return factory().__await__()

    @property
    def site(self) -> Site:
        return self.site_ref.site()
