"""Run one measurement in a fresh child process, so that no measurement inherits what an
earlier one left behind in the process (heap, caches, event-loop settings, threads)."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


def _entry(fn: Callable[..., Any], args: tuple[Any, ...], conn: Connection) -> None:
    """The child's body: the result, or what went wrong in one line, goes to the parent,
    which says it; the child exits without a traceback of its own (1, or 130 for a
    Ctrl-C, which the terminal sends the child too). The child starts with Ctrl-C ignored
    (a Ctrl-C while it imports printed a traceback): it takes it from here on."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
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


def _receive(receive: Connection, process: Any) -> tuple[str, Any]:
    try:
        reply: tuple[str, Any] = receive.recv()
    except EOFError:
        reply = ("error", f"the child process died (exit code {process.exitcode})")
    finally:
        process.join()
    return reply


async def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` (a picklable, top-level function) in a fresh spawned process; its
    result must be picklable too. The calling event loop keeps running meanwhile. When
    the wait is cancelled (Ctrl-C, SIGTERM), the child is stopped and waited for before
    the cancellation goes on: what the caller cleans up next (a PostgreSQL schema it
    drops) is no longer in use."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_entry, args=(fn, args, send), name="legion-bench-child")
    # Started with SIGINT ignored (a disposition a new program keeps; `_entry` takes it
    # back): from the main thread, where signal dispositions are set.
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        process.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, before)
    send.close()
    try:
        status, value = await asyncio.to_thread(_receive, receive, process)
    except BaseException:
        if process.is_alive():
            process.terminate()
        await asyncio.shield(asyncio.to_thread(process.join))
        raise
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)}: {value}")
    return value
