"""Diagnostics: what legion noticed about how an agent instance used the event loop."""

from __future__ import annotations

import enum
import os
import re
import sysconfig
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


class Kind(enum.StrEnum):
    BLOCKED_LOOP = "blocked_loop"  # the instance held the event loop (time.sleep, sync I/O, CPU)
    UNAWAITED = "unawaited"  # a step or coroutine was created and never awaited
    ESCAPED_EXCEPTION = "escaped_exception"  # a task the agent spawned failed and nobody awaited it
    SEQUENTIAL_AWAIT = "sequential_await"  # independent steps awaited one after another


@dataclass(frozen=True, slots=True)
class Site:
    """A place in the user's code."""

    file: str
    line: int
    function: str
    code: str = ""

    def __str__(self) -> str:
        return f"{short_path(self.file)}:{self.line} in `{self.function}`"


def short_path(file: str) -> str:
    """``file`` relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(file)
    except ValueError:
        return file
    return file if rel.startswith("..") else rel


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding, attached to the task it concerns."""

    kind: Kind
    message: str
    site: Site | None = None
    seconds: float | None = None
    stack: tuple[Site, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = str(self.kind)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Diagnostic:
        site = Site(**d["site"]) if d.get("site") else None
        stack = tuple(Site(**s) for s in d.get("stack") or ())
        return cls(Kind(d["kind"]), d["message"], site, d.get("seconds"), stack)


_STDLIB = os.path.realpath(sysconfig.get_paths()["stdlib"])
_LEGION = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def user_site(stack: Sequence[Site]) -> Site | None:
    """The innermost site of the user's code in ``stack`` (innermost first): not the
    standard library, not legion, not a third-party package when there is a better one."""
    fallback = None
    for site in stack:
        if site.file.startswith("<"):
            continue
        path = os.path.realpath(site.file)
        if path.startswith(_LEGION) or (path.startswith(_STDLIB) and "-packages" not in path):
            continue
        if "-packages" in path:
            fallback = fallback or site
            continue
        return site
    return fallback or (stack[0] if stack else None)


def blocked_loop(agent: str, block: Any) -> Diagnostic:
    """The report of one block of the event loop (``block``: a watchdog ``Block``)."""
    who = f"agent `{agent}`"
    where = f" at {block.site}" if block.site else ""
    call = _call_in(block.site.code) if block.site else None
    return Diagnostic(
        Kind.BLOCKED_LOOP,
        f"{who} blocked the event loop for {block.seconds * 1000:.0f} ms{where}"
        + (f" ({call})" if call else "")
        + ": every other instance waited; use an async call or `await asyncio.to_thread(...)`",
        block.site,
        block.seconds,
        tuple(block.stack[:8]),
    )


def _call_in(code: str) -> str | None:
    """The first call on a line of code: ``time.sleep`` in ``time.sleep(0.85)``."""
    m = re.search(r"([A-Za-z_][\w.]*)\s*\(", code)
    return m.group(1) if m else None
