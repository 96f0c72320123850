"""``Runtime(llm=...)``: a client built from provider specs is the runtime's to open and
close; a client given is the caller's."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import legion
from legion import Runtime
from legion.errors import ConfigError
from legion.llm import SimulatedProvider, open_client
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.testing import ScriptedProvider


@legion.agent
async def ask(ctx: legion.Context, question: str) -> str:
    response = await ctx.llm.chat([{"role": "user", "content": question}])
    return response.text


def accepts_connections(url: str) -> bool:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def simulator_url(client: legion.llm.LLMClient, route: str = "default") -> str:
    provider = client.routes[route].provider
    assert isinstance(provider, SimulatedProvider)
    return provider.simulator.base_url


async def test_a_spec_gives_a_client_that_the_runtime_starts_and_closes(db_url: str) -> None:
    rt = Runtime(db_url, llm="sim")
    assert rt.llm is None  # nothing runs before the runtime opens
    async with rt:
        assert rt.llm is not None
        url = simulator_url(rt.llm)
        results = [r async for r in rt.map(ask, ["one?", "two?"])]
        assert accepts_connections(url)
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    assert all(r.usage is not None and r.usage["llm_calls"] == 1 for r in results)
    assert rt.llm is None
    assert not accepts_connections(url)


async def test_a_list_of_specs_makes_named_routes(db_url: str) -> None:
    @legion.agent
    async def strong(ctx: legion.Context, question: str) -> str:
        response = await ctx.llm.chat([{"role": "user", "content": question}], model="strong")
        return response.text

    async with Runtime(db_url, llm=["sim", "strong=sim"]) as rt:
        assert rt.llm is not None and set(rt.llm.routes) == {"default", "strong"}
        (result,) = [r async for r in rt.map(strong, ["why?"])]
    assert result.ok, result.error


async def test_a_client_given_is_left_open_for_its_owner(db_url: str) -> None:
    client = await open_client("sim")
    try:
        async with Runtime(db_url, llm=client) as rt:
            (result,) = [r async for r in rt.map(ask, ["one?"])]
        assert result.ok
        assert accepts_connections(simulator_url(client))
        assert (await client.chat([{"role": "user", "content": "still there?"}])).text
    finally:
        await client.aclose()


@pytest.mark.parametrize("spec", ["nonsense:model", "", [], ["a=sim", "a=sim"], "openai:"])
def test_a_bad_spec_is_refused_before_anything_opens(spec: object, db_url: str) -> None:
    with pytest.raises(ConfigError):
        Runtime(db_url, llm=spec)  # type: ignore[arg-type]


async def test_a_failed_task_says_why(db_url: str) -> None:
    @legion.agent(retries=0)
    async def broken(ctx: legion.Context, question: str) -> str:
        raise ValueError(f"no answer to {question}")

    async with Runtime(db_url, llm="sim") as rt:
        (result,) = [r async for r in rt.map(broken, ["why?"])]
    assert str(result.error) == "ValueError: no answer to why?"


async def test_an_agent_that_calls_no_llm_is_not_held_to_the_routes_capacity(
    tmp_path: Path,
) -> None:
    # `legion run` gives every worker the simulator's route (3,000 rpm): an agent that
    # never called it was held to the ~150 instances that route serves in the admission
    # horizon (2,000 tasks of 2 s took 28.6 s at --concurrency 1000). Here a route of
    # 60 rpm would hold it to 3.
    release = asyncio.Event()
    waiting: set[int] = set()

    @legion.agent(retries=0)
    async def no_llm(ctx: legion.Context, i: int) -> int:
        if i >= 40:  # (the first 40 end at once: the worker learns they make no call)
            waiting.add(i)
            await release.wait()
        return i

    route = Route("r", ScriptedProvider([]), "m", Capacity("r", rpm=60))
    async with (
        LLMClient([route]) as llm,
        Runtime(f"sqlite:///{tmp_path / 'q.db'}", llm=llm, concurrency=1000) as rt,
    ):
        assert [r.ok async for r in rt.map(no_llm, range(40))] == [True] * 40
        ids = [s.id for s in await rt.submit_many(no_llm, range(40, 140))]
        async with asyncio.timeout(30):  # (a bound on a broken test)
            while True:
                if len(waiting) == 100:  # all in flight at once
                    break
                await asyncio.sleep(0.005)
        release.set()
        assert [r.ok async for r in rt.results(ids)] == [True] * 100


@legion.agent(retries=2, backoff=0.01, max_backoff=0.01)
async def ask_anew(ctx: legion.Context, question: str) -> str:
    """A new call each attempt (its prompt names the attempt), then a failure twice."""
    response = await ctx.llm.chat([{"role": "user", "content": f"{question} #{ctx.attempt}"}])
    if ctx.attempt < 3:
        raise RuntimeError("not yet")
    return response.text


@legion.agent(retries=1, backoff=0.01, max_backoff=0.01)
async def ask_again(ctx: legion.Context, question: str) -> str:
    """The same call each attempt: the retry replays it."""
    response = await ctx.llm.chat([{"role": "user", "content": question}])
    if ctx.attempt < 2:
        raise RuntimeError("not yet")
    return response.text


async def test_a_tasks_usage_counts_the_calls_of_every_attempt_once(db_url: str) -> None:
    """Budgets count a task's recorded usage: the calls its failed attempts made (and
    paid for) are in it, a call replayed by a retry is in it once."""
    async with Runtime(db_url, llm="sim") as rt:
        (anew,) = [r async for r in rt.map(ask_anew, ["one?"])]
        (again,) = [r async for r in rt.map(ask_again, ["two?"])]
    assert anew.ok and anew.usage is not None and anew.usage["llm_calls"] == 3
    assert again.ok and again.usage is not None and again.usage["llm_calls"] == 1


FIRST_CALL = """
import asyncio, sys
import legion
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.testing import ScriptedProvider

imported = []

@legion.agent
async def first(ctx, n):
    before = set(sys.modules)
    await ctx.llm.chat([{"role": "user", "content": "hi"}])
    imported.extend(sorted(set(sys.modules) - before))
    return 1

async def main():
    provider = ScriptedProvider(["hello"])
    client = LLMClient([Route("default", provider, "gpt-4o-mini", Capacity("default"))])
    async with legion.Runtime(sys.argv[1], llm=client) as rt:
        [result] = [r async for r in rt.map(first, [0])]
    assert result.ok, result.error
    assert result.usage["cost_usd"] > 0, result.usage  # (priced: the package's price)
    print("imported:", " ".join(imported))

asyncio.run(main())
"""


def test_the_first_llm_call_of_a_worker_imports_nothing(tmp_path: Path) -> None:
    """The LLM layer's modules and each route's price (the price package's import, ~0.1 s)
    load as the worker starts: the first call, with every instance waiting on the event
    loop behind it, loads nothing."""
    script = tmp_path / "first_call.py"
    script.write_text(FIRST_CALL)
    url = f"sqlite:///{tmp_path / 'first.db'}"
    done = subprocess.run(
        [sys.executable, str(script), url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported:", done.stdout


async def test_a_config_gives_routes_with_their_limits_that_the_runtime_opens_and_closes(
    db_url: str,
) -> None:
    # From Python, a route's limits had no way in but a client built by hand: the
    # README's `legion.toml` (rpm, prices) is what `legion run` reads.
    from legion.llm import parse_config

    rt = Runtime(db_url, llm=parse_config({"main": {"provider": "sim", "rpm": 600}}))
    assert rt.llm is None
    async with rt:
        assert rt.llm is not None
        assert rt.llm.routes["main"].capacity.statistics().limit_rpm == 600
        url = simulator_url(rt.llm, "main")
        results = [r async for r in rt.map(ask, ["one?"])]
    assert [r.status for r in results] == ["succeeded"]
    assert rt.llm is None and not accepts_connections(url)


@legion.agent(retries=3, backoff=0)
async def says_hi(ctx: legion.Context, how: str) -> str:
    messages: object = "hi" if how == "text" else ["hi"]
    response = await ctx.llm.chat(messages)  # type: ignore[arg-type]
    return response.text


async def test_messages_that_are_not_a_list_of_objects_fail_the_task_at_once(db_url: str) -> None:
    # `ctx.llm.chat("hi")` failed inside the client with an AttributeError, and the task
    # was retried until dead.
    async with Runtime(db_url, llm="sim") as rt:
        results = [r async for r in rt.map(says_hi, ["text", "list"])]
    assert [(r.status, r.attempt) for r in results] == [("failed", 1), ("failed", 1)]
    errors = sorted((r.error.type, r.error.message) for r in results if r.error is not None)
    assert [t for t, _ in errors] == ["MessagesError", "MessagesError"]
    assert "not str" in errors[0][1] and "message 0 is str" in errors[1][1]


@legion.agent(retries=0)
async def asks_then_waits(ctx: legion.Context, question: str) -> str:
    await ctx.llm.chat([{"role": "user", "content": question}])
    await asyncio.Event().wait()  # (until cancelled)
    return "never"


async def test_a_task_cancelled_mid_way_keeps_the_usage_of_the_calls_it_paid_for(
    db_url: str,
) -> None:
    # Usage was written only when an attempt ended on its own: a cancelled task (or one
    # a drain gave back) showed none, and budgets read its calls as free.
    async with Runtime(db_url, llm="sim") as rt:
        task = await rt.submit(asks_then_waits, "what did it cost?")
        async with asyncio.timeout(30):
            while not (await rt.store.steps(task.id)):  # noqa: ASYNC110 - a row to appear
                await asyncio.sleep(0.01)
        await rt.cancel(task.id)
        result = await rt.result(task)
    assert result.status == "cancelled"
    assert result.usage is not None and result.usage["llm_calls"] == 1, result.usage
