"""``legion status`` shows each LLM route's use, added up over the workers' heartbeats."""

from __future__ import annotations

import json

import pytest

import legion
from legion import Runtime
from legion.cli.status import show_status
from legion.errors import RateLimited
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.types import ChatResponse, Usage
from legion.testing import ScriptedProvider


@legion.agent(retries=0)
async def ask(ctx: legion.Context, question: str) -> str:
    response = await ctx.llm.chat([{"role": "user", "content": question}])
    return response.text


def answer(text: str) -> ChatResponse:
    return ChatResponse(text, (), "stop", Usage(7, 3), "m-1", "scripted")


async def test_status_shows_each_routes_requests_429s_and_tokens_from_the_heartbeats(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    limited = RateLimited("slow down", provider="scripted", status=429, retry_after=0.0)
    script: list[ChatResponse | BaseException] = [answer("a"), limited, answer("b"), answer("c")]
    provider = ScriptedProvider(script)
    client = LLMClient([Route("main", provider, "m-1", Capacity("main"), timeout=30)])
    async with Runtime(db_url, llm=client) as rt:
        results = [r async for r in rt.map(ask, ["one?", "two?", "three?"])]
        assert [r.status for r in results] == ["succeeded"] * 3
        worker = rt.worker
        assert worker is not None
        await worker.heartbeat()  # (publishes what the worker's routes did so far)

        await show_status(db_url, errors=0, as_json=True)
        doc = json.loads(capsys.readouterr().out)
        route = doc["llm"]["main"]
        assert (route["model"], route["requests"], route["rate_limited"]) == ("m-1", 4, 1)
        assert route["tokens"] == 3 * (7 + 3)

        await show_status(db_url, errors=0, as_json=False)
        text = capsys.readouterr().out
    assert "LLM routes" in text
    (row,) = [line for line in text.splitlines() if "main" in line and "m-1" in line]
    cells = [c.strip() for c in row.split("│")]
    assert cells[3:7] == ["4", "1", "0", "30"]  # requests, 429s, failed, tokens


async def test_status_without_llm_routes_shows_no_routes_table(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    @legion.agent
    async def plain(ctx: legion.Context, x: int) -> int:
        return x

    async with Runtime(db_url) as rt:
        [r async for r in rt.map(plain, [1])]
        await show_status(db_url, errors=0, as_json=True)
        assert json.loads(capsys.readouterr().out)["llm"] == {}
        await show_status(db_url, errors=0, as_json=False)
        assert "LLM routes" not in capsys.readouterr().out


async def test_status_counts_the_tasks_of_each_tenant(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # An operator had no view of one tenant's queue but through that tenant's own key.
    @legion.agent
    async def plain(ctx: legion.Context, x: int) -> int:
        return x

    async with Runtime(db_url, worker=False) as rt:
        await rt.submit_many(plain, [1, 2, 3], tenant="acme")
        await rt.submit(plain, 4, tenant="tiny")
        await show_status(db_url, errors=0, as_json=True)
        doc = json.loads(capsys.readouterr().out)
        assert doc["tenants"] == {"acme": {"queued": 3}, "tiny": {"queued": 1}}
        await show_status(db_url, errors=0, as_json=False)
        text = capsys.readouterr().out
    assert "tasks by tenant" in text
    (row,) = [line for line in text.splitlines() if "acme" in line]
    assert [c.strip() for c in row.split("│")][1:3] == ["acme", "3"]  # queued first
