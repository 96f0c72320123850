"""What the process's exit must skip.

A component that had to leave a thread stuck in a library's native code (Ray's shutdown,
its control store paused) says so here: the interpreter's finalization then crashed in
that library (SIGSEGV) as the process exited. legion's commands end such a process
without it (`os._exit`, after flushing), with the exit code they meant.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

_reasons: list[str] = []


def skip_finalization(reason: str) -> None:
    """The process should end without the interpreter's finalization (``reason``: why)."""
    _reasons.append(reason)


def finalization_unsafe() -> bool:
    """Whether a component asked for the exit to skip finalization."""
    return bool(_reasons)


def exit_now(code: int) -> None:
    """Flush the logs and the standard streams, then end the process with ``code``."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
