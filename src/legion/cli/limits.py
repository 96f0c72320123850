"""The process's limit on open files, as the commands need it.

A worker at ``--concurrency 1000`` holds a socket or a file for many of its instances at
once, besides its store's and its routes' connections; a soft limit of 1,024 (Linux's
default) or 256 (macOS's) made them fail with "Too many open files", and an in-process
simulator logged its failed accepts by the hundred thousand. The commands raise the soft
limit to the hard one, as the kernel allows any process to, and say so when even that is
short of what the concurrency asks.
"""

from __future__ import annotations

import resource

OPEN_FILES_MAX = 1 << 20
"""The most a command raises its soft limit to (the hard one is often "unlimited")."""


def raise_open_files() -> int:
    """Raise the soft limit on open files to the hard one (at most `OPEN_FILES_MAX`);
    answer the soft limit now."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return -1
    wanted = OPEN_FILES_MAX if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_MAX)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            return int(soft)
        return wanted
    return int(soft) if soft != resource.RLIM_INFINITY else OPEN_FILES_MAX


def open_files_note(concurrency: int) -> str | None:
    """A line to say when the limit on open files is short of ``concurrency`` instances
    each holding one (and the worker's own), else ``None``."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft >= concurrency + 64:
        return None
    return (
        f"warning: --concurrency {concurrency:,} with at most {soft:,} open files (ulimit -n): "
        "tasks that open a file or a connection each will fail with 'Too many open files'; "
        "raise the limit (its hard limit too) or lower --concurrency"
    )
