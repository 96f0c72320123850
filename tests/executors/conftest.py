"""Helpers for the executor tests: lines from a FIFO (how an agent in another process
tells a test that it got somewhere), and the processes a test leaves behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest


@contextlib.asynccontextmanager
async def fifo(path: Path) -> AsyncIterator[asyncio.StreamReader]:
    """A named pipe at ``path`` and a reader of the lines written to it. It is open before
    any writer, so an agent's ``open(path, "w")`` never blocks, and open for writing too,
    so it does not read as ended before the agent writes."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        yield reader
    finally:
        transport.close()


async def next_line(reader: asyncio.StreamReader) -> str:
    async with asyncio.timeout(20):  # a bound on a hung agent, not a synchronisation
        return (await reader.readline()).decode().strip()


async def exited(pid: int) -> None:
    """Wait until process ``pid`` (not ours) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # gone already (and reaped by its parent)
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, gone.set)
    try:
        async with asyncio.timeout(60):  # a bound on a hung test, not a synchronisation
            await gone.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def children() -> set[int]:
    """This process's child processes (zombies included: they are leaks too)."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def no_leaked_processes() -> Iterator[None]:
    before = children()
    yield None
    assert children() - before == set(), "the test left child processes behind"
