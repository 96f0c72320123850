"""Run one measurement in a fresh child process, so that no measurement inherits what an
earlier one left behind in the process (heap, caches, event-loop settings, threads)."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


def _entry(fn: Callable[..., Any], args: tuple[Any, ...], conn: Connection) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()


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
