"""Helpers that drive the ``legion`` command as a user would: real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

LEGION = [sys.executable, "-m", "legion"]


def legion(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEGION, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def start_legion(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LEGION, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for(
    condition: Callable[[], bool], *, timeout: float = 60.0, what: str = "condition"
) -> None:
    """Poll a condition (a file growing, a row appearing) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_sim(*args: str) -> tuple[subprocess.Popen[str], str]:
    """A `legion sim` process on a free port, and its base URL once it is ready."""
    proc = subprocess.Popen(
        [*LEGION, "sim", "--port", "0", *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "ready at" in line, line
    return proc, line.rsplit(" ", 1)[1].strip()


def sim_stats(url: str) -> dict[str, Any]:
    """The simulator's counters (its /stats route)."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats") as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def agents_file(tmp_path: Path) -> Path:
    """A module of test agents; each step appends "task:step" to $STEP_LOG when it runs."""
    path = tmp_path / "agents.py"
    path.write_text(
        """
import asyncio
import os

import legion


def _record(task_id, name):
    with open(os.environ["STEP_LOG"], "a") as f:
        f.write(f"{task_id}:{name}\\n")


@legion.agent(timeout=60, retries=2, backoff=0)
async def work(ctx, i: int):
    async def step(name):
        _record(ctx.task_id, name)
        await asyncio.sleep(0.005)
        return name

    a = await ctx.step("a", step, "a")
    b = await ctx.gather(ctx.step("b1", step, "b1"), ctx.step("b2", step, "b2"))
    return [a, *b, i]


@legion.agent(timeout=60)
async def slow(ctx, i: int):
    _record(ctx.task_id, "run")
    await asyncio.sleep(0.2)
    return i


@legion.agent(retries=0)
async def doomed(ctx, i: int):
    raise RuntimeError(f"doomed {i}")


@legion.agent
async def typed(ctx, n: int):
    return n + 1
"""
    )
    return path
