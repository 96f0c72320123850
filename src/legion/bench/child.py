"""Run one measurement in a fresh child process, so that no measurement inherits what an
earlier one left behind in the process (heap, caches, event-loop settings, threads)."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


def _entry(fn: Callable[..., Any], args: tuple[Any, ...], conn: Connection) -> None:
    """The child's body: the result, or what went wrong in one line, goes to the parent,
    which says it; the child exits without a traceback of its own (1, or 130 for a
    Ctrl-C, which the terminal sends the child too)."""
    try:
        reply = ("ok", fn(*args))
    except BaseException as exc:  # (said by the parent)
        reply = ("error", f"{type(exc).__name__}: {exc}")
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    else:
        code = 0
    try:
        conn.send(reply)
    except OSError:  # the parent is gone (it was interrupted too)
        pass
    finally:
        conn.close()
    if code:
        raise SystemExit(code)


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_entry, args=(fn, args, send), name="legion-bench-child")
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        status, value = "error", f"the child process died (exit code {process.exitcode})"
    finally:
        process.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)}: {value}")
    return value


async def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` (a picklable, top-level function) in a fresh spawned process; its
    result must be picklable too. The calling event loop keeps running meanwhile."""
    return await asyncio.to_thread(_call, fn, args)
