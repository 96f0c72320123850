"""``legion serve`` as a subprocess, as a user starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LEGION = [sys.executable, "-m", "legion"]

AGENTS = """
import asyncio

import legion


@legion.agent(timeout=30, retries=1, backoff=0)
async def work(ctx, n: int, delay: float = 0.0):
    async def step(name):
        await asyncio.sleep(delay)
        return name

    first = await ctx.step("a", step, "a")
    both = await ctx.gather(ctx.step("b1", step, "b1"), ctx.step("b2", step, "b2"))
    return {"n": n, "steps": [first, *both]}


@legion.agent(retries=0)
async def doomed(ctx, n: int):
    raise RuntimeError(f"doomed {n}")
"""


@dataclass
class Served:
    url: str
    key: str
    store: str
    process: subprocess.Popen[str]
    stderr: str = ""  # what the server wrote on stderr, once it stopped


def legion(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEGION, *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def write_agents(folder: Path, agents: str = AGENTS) -> Path:
    path = folder / "served_agents.py"
    path.write_text(agents)
    return path


def create_key(store: str, name: str = "test", *, admin: bool = False) -> str:
    made = legion("keys", "create", "--name", name, "--store", store, *(["--admin"] * admin))
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


@contextmanager
def serve(
    folder: Path, *args: str, with_key: bool = True, agents: str = AGENTS
) -> Iterator[Served]:
    """Start ``legion serve`` on a free port with the test agents (or ``agents``) and an
    API key in its store (unless told otherwise: then ``key`` is empty); SIGTERM it at
    exit and check that it stopped cleanly."""
    store = f"sqlite:///{folder / 'served.db'}"
    key = create_key(store) if with_key else ""
    app = write_agents(folder, agents)
    command = [*LEGION, "serve", "--store", store, "--app", str(app), "--port", "0", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the server prints its URL once it listens
        if "listening on" not in line:
            raise AssertionError(f"legion serve did not start: {line!r}")
        served = Served(line.split("listening on ", 1)[1].split()[0], key, store, process)
        yield served
    except BaseException:
        process.kill()
        _, err = process.communicate(timeout=30)
        print(err, file=sys.stderr)
        raise
    process.send_signal(signal.SIGTERM)
    _, served.stderr = process.communicate(timeout=60)
    assert process.returncode == 0, served.stderr
