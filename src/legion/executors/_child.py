"""A child process of the process executor: runs agent instances one at a time.

Started by `legion.executors.process.ProcessExecutor` as
``python -c "from legion.executors._child import main; main()" CRASH_FD LIMIT_MB PARENT``.
Frames (`legion.executors._pipe`) come on stdin and go out on stdout; the agent's
own ``print`` goes to stderr, so it cannot corrupt them. The child

- caps its address space at ``LIMIT_MB`` (``RLIMIT_AS``; 0: no cap), so a memory bomb
  raises ``MemoryError`` in the agent instead of growing the machine into swap;
- writes Python's traceback of a fatal signal (a segfault in native code) to
  ``CRASH_FD``, which the worker reads when it finds the child dead;
- dies with its parent (Linux), so a spinning child never outlives a killed worker;
- exits with `MEMORY_EXIT` when it runs out of memory outside the agent's code.
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import itertools
import os
import resource
import signal
import sys
import traceback
from typing import Any

from legion.executors import _pipe
from legion.executors import protocol as p
from legion.executors.remote import execute

MEMORY_EXIT = 86
"""Exit status of a child that ran out of memory where it could not report it."""
BROKEN_EXIT = 87
"""Exit status of a child that failed outside the agent's code (printed on stderr)."""

_PR_SET_PDEATHSIG = 1


_crash_fd: int | None = None
"""The file the worker reads when this process dies: faulthandler's reports, and what
made it fail outside the agent's code."""


def main() -> None:
    global _crash_fd
    crash_fd, limit_mb, parent = (int(arg) for arg in sys.argv[1:4])
    _crash_fd = crash_fd
    # Keep the pipes for frames; the agent's stdin is empty and its stdout is stderr.
    frames_in, frames_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    _die_with(parent)
    faulthandler.enable(file=crash_fd)
    if limit_mb:
        mapped = _mapped_mb()
        if mapped is not None and limit_mb < mapped + _HEADROOM_MB:
            # Below what this process maps already: every allocation to come would fail,
            # reading its pipe included (a loop of MemoryErrors, never an answer).
            os.write(
                crash_fd,
                f"--memory-limit {limit_mb} MB is below what the agent's process maps before "
                f"it runs anything ({mapped} MB, and {_HEADROOM_MB} MB to work in): raise "
                "it\n".encode(),
            )
            os._exit(BROKEN_EXIT)
        limit = limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        asyncio.run(_serve(frames_in, frames_out))
    except MemoryError:
        os._exit(MEMORY_EXIT)


_HEADROOM_MB = 16


def _mapped_mb() -> int | None:
    """The address space this process maps now, in MB (``None``: unknown here)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) // 1024 + 1
    except (OSError, ValueError, IndexError):
        return None
    return None


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent exits (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before we asked
        os._exit(1)


class _PipeLink:
    """The remote side's `legion.executors.remote.Link` over the child's pipes."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[tuple[bool, Any]]] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        self._transport.write(_pipe.frame(message))

    async def call(self, op: str, *args: Any) -> Any:
        call_id = next(self._ids)
        answer: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = answer
        try:
            self.send((_pipe.CALL, call_id, op, args))
            ok, value = await answer
        finally:
            self._pending.pop(call_id, None)
        if ok:
            return value
        raise p.unpack_error(value)

    def notify(self, op: str, *args: Any) -> None:
        self.send((_pipe.NOTIFY, op, args))

    def answer(self, call_id: int, ok: bool, value: Any) -> None:
        waiting = self._pending.get(call_id)
        if waiting is not None and not waiting.done():
            waiting.set_result((ok, value))


async def _serve(frames_in: int, frames_out: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(frames_in, "rb", buffering=0)
    )
    transport, _ = await loop.connect_write_pipe(
        asyncio.Protocol, os.fdopen(frames_out, "wb", buffering=0)
    )
    # Out of memory in the loop's own callbacks (reading the pipe): the limit leaves
    # this process nothing to answer with, so it ends as one over its limit does.
    loop.set_exception_handler(_out_of_memory_ends)
    link = _PipeLink(transport)
    link.send((_pipe.READY,))
    running: asyncio.Task[None] | None = None
    try:
        while (message := await _pipe.read_frame(reader)) is not None:
            if message[0] == _pipe.REPLY:
                link.answer(*message[1:])
            elif message[0] == _pipe.RUN:
                running = loop.create_task(_run(link, message[1]), name="legion-instance")
    finally:  # the worker closed the pipe: it wants this process gone
        if running is not None:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        transport.close()


def _out_of_memory_ends(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if isinstance(context.get("exception"), MemoryError):
        os._exit(MEMORY_EXIT)
    loop.default_exception_handler(context)


async def _run(link: _PipeLink, invocation: p.Invocation) -> None:
    try:
        link.send((_pipe.DONE, await execute(invocation, link)))
    except asyncio.CancelledError:
        raise
    except MemoryError:
        os._exit(MEMORY_EXIT)
    except BaseException:  # this process can no longer answer: let the worker see it die
        try:
            traceback.print_exc()
            if _crash_fd is not None:  # (the worker says why, with the task's error)
                os.write(_crash_fd, traceback.format_exc().encode("utf-8", "replace"))
        except BaseException:  # (out of memory even for that: the exit still comes)
            pass
        finally:
            os._exit(BROKEN_EXIT)
