"""Diagnostics: what legion noticed about how an agent instance used the event loop."""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import itertools
import linecache
import os
import re
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    return _relative(file, os.getcwd())


@functools.lru_cache(maxsize=1024)
def _relative(file: str, cwd: str) -> str:
    # (kept: a report names the same few files thousands of times in a run)
    try:
        rel = os.path.relpath(file, cwd)
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
        # (spelled out: `dataclasses.asdict` copies deeply, ~10x the cost, once per finding)
        return {
            "kind": str(self.kind),
            "message": self.message,
            "site": _site_json(self.site) if self.site is not None else None,
            "seconds": self.seconds,
            "stack": [_site_json(s) for s in self.stack],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Diagnostic:
        site = Site(**d["site"]) if d.get("site") else None
        stack = tuple(Site(**s) for s in d.get("stack") or ())
        return cls(Kind(d["kind"]), d["message"], site, d.get("seconds"), stack)


def _site_json(site: Site) -> dict[str, Any]:
    return {"file": site.file, "line": site.line, "function": site.function, "code": site.code}


_STDLIB = os.path.realpath(sysconfig.get_paths()["stdlib"])
_LEGION = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_ASYNCIO = os.path.join(_STDLIB, "asyncio") + os.sep


def is_library_file(file: str) -> bool:
    """Whether ``file`` is legion's, the standard library's or an installed package's:
    code that no agent owns (``<frozen ...>`` and other unreal files included)."""
    if file.startswith("<"):
        return True
    path = os.path.realpath(file)
    return (
        path.startswith(_LEGION + os.sep)
        or path.startswith(_STDLIB + os.sep)
        or any(part in _INSTALLED for part in path.split(os.sep))
    )


_INSTALLED = frozenset({"site-packages", "dist-packages"})
"""Folders that hold installed packages (a user's own ``team-packages`` is not one)."""


def in_callback(stack: Sequence[Site]) -> Sequence[Site]:
    """The frames of ``stack`` (innermost first) that run inside the event loop's current
    callback: up to asyncio's ``Handle._run``. The frames beyond it (the loop, and the
    program that started it: ``bin/legion``, the command line) block nothing themselves."""
    for index, site in enumerate(stack):
        if site.function == "_run" and os.path.realpath(site.file).startswith(_ASYNCIO):
            return stack[:index]
    return stack


def user_site(stack: Sequence[Site], own_files: Sequence[str] = ()) -> Site | None:
    """The innermost site of the user's code in ``stack`` (innermost first), within the
    loop's current callback: a file of ``own_files`` (the agent's module), or any file
    that is not legion's, the standard library's or an installed package's. ``None``
    when there is none: the code running was not the user's."""
    own = {os.path.realpath(file) for file in own_files}
    for site in in_callback(stack):
        if site.file.startswith("<"):
            continue
        if os.path.realpath(site.file) in own or not is_library_file(site.file):
            return site
    return None


_FRAME = re.compile(r'^[ |]*File "(.+)", line (\d+), in (.+)$', re.MULTILINE)  # (groups: "|")


def raised_at(traceback_text: str) -> str | None:
    """Where the agent's own code raised, from an error's formatted traceback: the
    innermost frame outside legion, the standard library and installed packages
    (``app.py:12 in parse``); ``None`` when no frame is the user's."""
    for file, line, function in reversed(_FRAME.findall(traceback_text)):
        if not is_library_file(file):
            return f"{os.path.basename(file)}:{line} in {function}"
    return None


def with_code(site: Site) -> Site:
    """``site`` with its line of code (a deep frame of a captured stack has none yet)."""
    if site.code or site.file.startswith("<"):
        return site
    return dataclasses.replace(site, code=linecache.getline(site.file, site.line).strip())


def blocked_loop(agent: str, block: Any, own_files: Sequence[str] = ()) -> Diagnostic | None:
    """The report of one block of the event loop (``block``: a watchdog ``Block``), or
    ``None`` when no frame of the agent's own code (``own_files``, or any file outside
    legion, the standard library and installed packages) was running: then the block is
    the worker's own lag (legion's bookkeeping, the HTTP client, the garbage collector),
    not the agent's doing, and it counts in the worker's loop health only. So is a block
    that no one call held (``block.held`` false: many short callbacks under load, or a
    loop thread that waited for a core)."""
    site = user_site(block.stack, own_files)
    if site is None or not getattr(block, "held", True):
        return None  # legion's own work, or no one call's (a busy or starved loop)
    below = _below(block.stack, site)
    if _importing_an_sdk(below) or _imported_by_legion(below):
        return None  # (legion's, once a process: the README says so; not the agent's doing)
    site = with_code(site)
    who = f"agent `{agent}`"
    busy = getattr(block, "busy", False)
    # The call on the agent's line, when the loop was inside it (below the line) or asleep
    # in it (a call into C: `time.sleep`); not when the line itself was computing (a loop
    # whose condition calls `time.monotonic()` is not blocked by that call).
    call = _call_in(site.code) if below or not busy else None
    advice = "use an async call or `await asyncio.to_thread(...)`"
    if busy and not any(is_library_file(f.file) for f in below):
        # Python computing in the agent's own code holds the interpreter: in a thread it
        # would hold it there too (4 CPU-bound tasks took as long with to_thread; 1.4-1.7x
        # less in processes).
        advice = (
            "it was computing in Python, which a thread would not free (the interpreter "
            "runs one thread at a time): run the agent in a process, "
            '`@legion.agent(executor="process")` or `--executor process`'
        )
    elif any(_legion_codec(f) for f in below):
        # legion encoding or decoding what the agent gave it to store (a memory value, a
        # step's result): an async call already, which no thread of the agent's frees.
        advice = (
            "legion was encoding or decoding a large value for the store there (a memory "
            "value, a step's result): keep what a task stores small, a large blob in a file "
            "or an object store with its path or key in the task"
        )
    elif any(f.file.startswith("<frozen importlib") for f in below):
        # An import on first use (the agent's own, or a library's inside the call): the
        # cure is to pay it as the worker starts, not a thread.
        imported = [
            f.code.removeprefix("import ")
            for f in below
            if f.function == "_find_and_load" and f.code.startswith("import ")
        ]
        # (the outermost import is the one the call made: the rest are what it imports)
        which = f" `{imported[-1]}`" if imported and imported[-1] != "?" else " a module"
        advice = (
            f"it was importing{which} on first use: import it at the top of the agent's "
            "module (the worker then pays it once, as it starts)"
        )
    return Diagnostic(
        Kind.BLOCKED_LOOP,
        f"{who} blocked the event loop for {block.seconds * 1000:.0f} ms at {site}"
        + (f" ({call})" if call else "")
        + f": every other instance waited; {advice}",
        site,
        block.seconds,
        tuple(block.stack[:8]),
    )


_SDK_CLIENTS = ("openai", "anthropic")

_CODEC = os.path.join("legion", "codec.py")


def _legion_codec(frame: Site) -> bool:
    """Whether ``frame`` is legion's JSON codec (`legion.codec`) at work."""
    return frame.file.endswith(_CODEC)


def _below(stack: Sequence[Site], site: Site) -> list[Site]:
    """The frames of the blocking callback deeper than ``site`` (what it was calling)."""
    inner = list(in_callback(stack))
    return inner[: inner.index(site)] if site in inner else inner


def _importing_an_sdk(below: Sequence[Site]) -> bool:
    """Whether the block is ``ctx.llm.openai()`` (or ``anthropic()``) importing its SDK on
    its first use in the process: the README's one client line, which legion must not
    report as the agent blocking the loop."""
    return any(
        f.function in _SDK_CLIENTS and f.file.endswith(os.path.join("legion", "llm", "calls.py"))
        for f in below
    )


def _imported_by_legion(below: Sequence[Site]) -> bool:
    """Whether the block is an import that legion's own code made on its first use (a
    store's vector module, from ``ctx.vectors``): not the agent's, whose advice to import
    it at the top of its module would name a module it never imports."""
    outer = list(reversed(below))  # (outermost first: the call the agent made)
    for caller, callee in itertools.pairwise(outer):
        if callee.file.startswith("<frozen importlib"):
            path = os.path.realpath(caller.file)
            return path.startswith(_LEGION + os.sep)
    return False


def agent_files(fn: Any) -> tuple[str, ...]:
    """The file of an agent's function: its own code, wherever it is installed."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    return (code.co_filename,) if code is not None else ()


def _call_in(code: str) -> str | None:
    """The first call on a line of code: ``time.sleep`` in ``time.sleep(0.85)``."""
    m = re.search(r"([A-Za-z_][\w.]*)\s*\(", code)
    return m.group(1) if m else None
