"""Agents for the autoscaling tests (loaded by real worker processes)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import legion


@legion.agent(timeout=120)
async def gated(ctx: legion.Context, input: dict[str, Any]) -> int:
    """Waits until its gate file exists, then writes one ledger line."""
    gate = Path(input["gates"]) / str(input["i"])
    while not gate.exists():  # noqa: ASYNC110 - another process creates it
        await asyncio.sleep(0.02)
    with open(os.environ["LEDGER"], "a") as f:  # noqa: ASYNC230 - one short line
        f.write(f"{input['i']} {ctx.attempt}\n")
    return int(input["i"])


@legion.agent(timeout=300)
async def chatty(ctx: legion.Context, input: dict[str, Any]) -> int:
    """Calls the LLM over and over: a route kept at its limit."""
    for n in range(int(input.get("calls", 50))):
        await ctx.llm.chat([{"role": "user", "content": f"{input['i']} {n}"}], max_tokens=4)
    return int(input["i"])


@legion.agent(resources=["gpu"])
async def on_gpu(ctx: legion.Context, input: dict[str, Any]) -> int:
    """Needs a worker that offers a gpu; says which process ran it."""
    return os.getpid()


@legion.agent
async def anywhere(ctx: legion.Context, input: dict[str, Any]) -> int:
    return os.getpid()
