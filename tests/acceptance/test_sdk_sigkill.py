"""``ctx.llm.openai()`` under ``legion run``: a run SIGKILLed mid-way and run again buys
no completion twice, plain or streamed, whether the agent calls the SDK itself or a
Pydantic AI agent does."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import (
    legion,
    read_jsonl,
    sim_stats,
    start_legion,
    start_sim,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow

AGENT = """
import asyncio

import legion


@legion.agent(timeout=60, retries=2, backoff=0)
async def ask(ctx, topic: str):
    client = ctx.llm.openai()

    async def part(i):
        r = await client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": f"{topic} part {i}"}],
            max_tokens=8,
        )
        return r.choices[0].message.content

    parts = await asyncio.gather(*(part(i) for i in range(2)))
    stream = await client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": " ".join(parts)}],
        max_tokens=8, stream=True,
    )
    text = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return "".join(text)
"""


@pytest.fixture
def simulator() -> Iterator[str]:
    proc, url = start_sim("--latency", "0.02")
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)


def test_sigkill_then_rerun_buys_only_what_was_not_recorded(tmp_path: Path, simulator: str) -> None:
    n, calls = 200, 3
    (tmp_path / "app.py").write_text(AGENT)
    db = tmp_path / "runs.db"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"topic": f"t{i}"} for i in range(n)])
    out = tmp_path / "out.jsonl"
    args = [
        "run",
        f"{tmp_path / 'app.py'}:ask",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        f"sqlite:///{db}",
        "-c",
        "40",
        "--lease-seconds",
        "600",
        "--llm",
        f"openai:sim-model@{simulator}",
    ]
    proc = start_legion(*args)
    wait_for(
        lambda: int(sim_stats(simulator)["requests_total"]) >= n,
        what="LLM calls of the first run",
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)

    con = sqlite3.connect(db)
    recorded = con.execute("SELECT count(*) FROM steps WHERE key LIKE 'llm.%'").fetchone()[0]
    con.close()
    paid_before = int(sim_stats(simulator)["requests_total"])
    assert 0 < recorded <= paid_before < n * calls

    second = legion(*args)
    assert second.returncode == 0, second.stderr
    rows = read_jsonl(out)
    # Ledger: every line answered exactly once (none lost, none twice).
    assert len(rows) == n and all(row["status"] == "succeeded" for row in rows)
    assert sorted(row["line"] for row in rows) == list(range(1, n + 1))
    assert all(row["usage"]["llm_calls"] == calls for row in rows)
    paid_after = int(sim_stats(simulator)["requests_total"])
    # Exactly the completions that were not recorded are bought again; no recorded one is.
    assert paid_after - paid_before == n * calls - recorded
