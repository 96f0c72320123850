"""The runtime end to end on a real SQLite file: agents, steps, gather, memory, retries."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import re
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest

import legion
from legion import Runtime, TaskStatus, gil, heap
from legion.testing import FakeClock


async def running(rt: Runtime, task_id: int, attempt: int) -> None:
    """Wait until this runtime's worker runs attempt ``attempt`` of the task."""
    async with asyncio.timeout(30):
        while True:
            info = await rt.get(task_id)
            held = rt.worker is not None and rt.worker.holds(task_id)
            if held and info is not None and info.attempt == attempt:
                return
            await asyncio.sleep(0.002)


async def collect(
    rt: Runtime, agent: legion.Agent, inputs: list[object]
) -> list[legion.TaskResult]:
    """Submit ``inputs`` and answer their results in input order."""
    ids = [s.id for s in await rt.submit_many(agent, inputs)]
    by_id = {r.id: r async for r in rt.results(ids)}
    return [by_id[i] for i in ids]


async def test_map_streams_every_result(db_url: str) -> None:
    @legion.agent
    async def double(ctx: legion.Context, x: int) -> int:
        return 2 * x

    async with Runtime(db_url, concurrency=50) as rt:
        outputs = sorted([r.output async for r in rt.map(double, range(200))])
    assert outputs == [2 * x for x in range(200)]


async def test_map_reads_a_generator_as_the_tasks_go(db_url: str) -> None:
    # map read its inputs whole before submitting any: an endless generator blocked the
    # event loop until the process ran out of memory.
    @legion.agent
    async def double(ctx: legion.Context, x: int) -> int:
        return 2 * x

    read = 0

    def endless() -> Any:
        nonlocal read
        for x in itertools.count():
            read += 1
            yield x

    async with Runtime(db_url, concurrency=20) as rt:
        seen = []
        async for r in rt.map(double, endless(), chunk_size=10, window=40):
            seen.append(r.output)
            if len(seen) == 100:
                break
        queued = sum((await rt.store.counts()).values())
    assert len(seen) == 100 and set(seen) <= {2 * x for x in range(140)}
    assert read <= 100 + 40 and queued == read  # never more than the window ahead


async def test_results_read_a_page_at_a_time_lose_none_to_an_answer_before_its_page(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The results still to come were counted page by page: the follower's answer for a
    # task that is not there, taken before its page was read, counted one too many down
    # and the last real result was never yielded.
    from legion.run import delivery

    monkeypatch.setattr(delivery, "_READ_PAGE", 2)
    gate = asyncio.Event()

    @legion.agent
    async def held(ctx: legion.Context, x: int) -> int:
        if x == 3:
            await gate.wait()
        return x

    async with Runtime(db_url) as rt:
        ids = [(await rt.submit(held, x)).id for x in (1, 2, 3)]
        for task_id in ids[:2]:
            await rt.result(task_id)
        got = []
        async with asyncio.timeout(30):
            # (pages [1, 2] and [3, 4]: read in the order of a set of small ints)
            async for r in rt.results([*ids, max(ids) + 1]):  # (the last: no such task)
                got.append(r.output)
                if len(got) == 1:
                    await rt._delivery._check_all()  # the follower's look, as it comes
                    gate.set()
    assert sorted(got) == [1, 2, 3]


async def test_map_refills_its_window_a_chunk_at_a_time(db_url: str) -> None:
    # Once the window was full, each result read let one more task in: a transaction for
    # every task (80 submissions of one input among 167, for 6,000 inputs).
    @legion.agent
    async def double(ctx: legion.Context, x: int) -> int:
        return 2 * x

    async with Runtime(db_url) as rt:
        sizes: list[int] = []
        submit_many = rt.submit_many

        async def counted(agent: legion.Agent, inputs: list[Any], **kw: Any) -> Any:
            sizes.append(len(inputs))
            return await submit_many(agent, inputs, **kw)

        rt.submit_many = counted  # type: ignore[method-assign,assignment]
        outputs = [r.output async for r in rt.map(double, range(6000), window=2000)]
    assert sorted(outputs) == [2 * x for x in range(6000)]
    assert min(sizes) >= 1000 and len(sizes) <= 6, sizes


async def test_map_of_one_key_twice_answers_both_and_leaves_no_waiter(db_url: str) -> None:
    # Two inputs with the key of a task that had ended waited for ever (one read answered
    # one of them); a map of one key twice closed early left a waiter behind.
    gate = asyncio.Event()

    @legion.agent
    async def slow(ctx: legion.Context, x: int) -> int:
        if x == 2:
            await gate.wait()
        return x

    async with Runtime(db_url) as rt:
        await rt.result(await rt.submit(slow, 1, key="k"))
        async with asyncio.timeout(30):
            again = [r.output async for r in rt.map(slow, [1, 1], keys=["k", "k"])]
        assert again == [1, 1]
        mapped = rt.map(slow, [2, 2, 1], keys=["s", "s", "k"])
        assert isinstance(mapped, AsyncGenerator)
        async with contextlib.aclosing(mapped):
            assert (await anext(mapped)).output == 1
        assert rt._delivery._waiters == {}
        gate.set()


async def test_map_refuses_keys_of_another_length_before_queueing_any(db_url: str) -> None:
    # The first chunk's tasks were queued (and ran) before the mismatch was found.
    @legion.agent
    async def double(ctx: legion.Context, x: int) -> int:
        return 2 * x

    async with Runtime(db_url) as rt:
        with pytest.raises(legion.ConfigError, match="one entry per input"):
            async for _ in rt.map(
                double, range(30), keys=[f"k{i}" for i in range(20)], chunk_size=10
            ):
                pass
        assert sum((await rt.store.counts()).values()) == 0
        keys = (f"g{i}" for i in range(25))  # (an iterator: found short as it goes)
        with pytest.raises(legion.ConfigError, match="ran out"):
            async for _ in rt.map(double, range(30), keys=keys, chunk_size=10):
                pass


async def test_inputs_as_objects_or_bare_values(db_url: str) -> None:
    @legion.agent
    async def greet(ctx: legion.Context, name: str, punctuation: str = "!") -> str:
        return f"hi {name}{punctuation}"

    @legion.agent
    async def single(ctx: legion.Context, question: str) -> str:
        return question.upper()

    async with Runtime(db_url) as rt:
        multi = await collect(rt, greet, [{"name": "a"}, {"name": "b", "punctuation": "?"}])
        one = await collect(rt, single, ["x", {"question": "y"}])
    assert [r.output for r in multi] == ["hi a!", "hi b?"]
    assert [r.output for r in one] == ["X", "Y"]


@legion.agent(retries=0)
async def anything(ctx: legion.Context, value) -> object:  # type: ignore[no-untyped-def]
    return value


async def test_inputs_of_the_types_an_agent_takes_that_json_has_not(db_url: str) -> None:
    """A Decimal or bytes parameter took its value from JSON text, but a Decimal or bytes
    submitted from Python was refused: it is kept as the agent's input model writes it."""

    @legion.agent(retries=0)
    async def price(ctx: legion.Context, amount: Decimal, payload: bytes = b"") -> list[str]:
        return [str(amount * 2), payload.decode(), type(amount).__name__, type(payload).__name__]

    async with Runtime(db_url) as rt:
        got = await collect(rt, price, [{"amount": Decimal("9.99"), "payload": b"raw"}])
        with pytest.raises(legion.InputError) as refused:
            await rt.submit(price, {"amount": Decimal("1"), "payload": b"\x89PNG"})
        # An integer past a float's range for a parameter of any type: its model writes
        # it as a number JSON cannot read back (a bare orjson error came out of submit).
        with pytest.raises(legion.InputError) as huge:
            await rt.submit(anything, {"value": 10**400})
    assert [r.output for r in got] == [["19.98", "raw", "Decimal", "bytes"]]
    assert str(refused.value).startswith("the input cannot be stored as JSON (")
    assert "integer past 64 bits" in str(huge.value)
    assert str(refused.value).endswith("it was not queued")


async def test_a_recorded_step_is_replayed_not_run_again(db_url: str) -> None:
    runs: Counter[str] = Counter()

    def search(q: str) -> list[str]:
        runs["search"] += 1
        return [q, q + "!"]

    @legion.agent(retries=2, backoff=0)
    async def flaky(ctx: legion.Context, q: str) -> dict[str, object]:
        hits = await ctx.step("search", search, q)
        if ctx.attempt == 1:
            raise ConnectionError("the network blinked")
        return {"hits": hits, "attempt": ctx.attempt}

    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(flaky, "q")).id)
        steps = await rt.store.steps(r.id)
    assert r.status is TaskStatus.SUCCEEDED
    assert r.output == {"hits": ["q", "q!"], "attempt": 2}
    assert runs["search"] == 1
    assert [(s.key, s.attempt, s.output) for s in steps] == [("search", 1, ["q", "q!"])]


async def test_steps_with_the_same_name_are_numbered(db_url: str) -> None:
    @legion.agent
    async def loop(ctx: legion.Context, n: int) -> list[int]:
        return [await ctx.step("inc", lambda i=i: i + 1) for i in range(n)]

    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(loop, 3)).id)
        keys = [s.key for s in await rt.store.steps(r.id)]
    assert r.output == [1, 2, 3]
    assert sorted(keys) == ["inc", "inc#2", "inc#3"]


async def test_gather_runs_concurrently_and_keeps_order(db_url: str) -> None:
    @legion.agent
    async def fan(ctx: legion.Context, n: int) -> list[int]:
        gate = asyncio.Barrier(n)  # only passes if all n steps run at the same time

        async def part(i: int) -> int:
            await gate.wait()
            return i * i

        return await ctx.gather(*(ctx.step(f"part-{i}", part, i) for i in range(n)))

    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(fan, 5)).id)
    assert r.output == [0, 1, 4, 9, 16]


async def test_same_named_steps_of_gathered_branches_replay_to_their_own_branch(
    db_url: str,
) -> None:
    # Each branch fetches then parses; u2 parses first in the first run (u1's fetch waits
    # for it), then the attempt fails. Counted across branches, the replay (recorded
    # steps answer at once, in the branches' order) handed u1 the parse of u2's page.
    u2_parsed = asyncio.Event()

    async def handle(ctx: legion.Context, url: str) -> dict[str, Any]:
        async def fetch() -> str:
            if url == "u1":
                await u2_parsed.wait()
            return f"page of {url}"

        page = await ctx.step("fetch", fetch)
        parsed = await ctx.step("parse", lambda: {"parsed": page})
        if url == "u2":
            u2_parsed.set()
        return {"url": url, "parsed": parsed}

    @legion.agent(retries=1, backoff=0)
    async def pipeline(ctx: legion.Context, x: int) -> list[dict[str, Any]]:
        out = await ctx.gather(handle(ctx, "u1"), handle(ctx, "u2"))
        if ctx.attempt == 1:
            raise RuntimeError("transient, after every step was recorded")
        return out

    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(pipeline, 1)).id)
        keys = sorted(s.key for s in await rt.store.steps(r.id))
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 2, r
    assert r.output == [
        {"url": "u1", "parsed": {"parsed": "page of u1"}},
        {"url": "u2", "parsed": {"parsed": "page of u2"}},
    ]
    assert keys == ["fetch@0", "fetch@1", "parse@0", "parse@1"]


async def test_gather_fails_fast_and_cancels_siblings(db_url: str) -> None:
    cancelled = asyncio.Event()

    @legion.agent(retries=0)
    async def fan(ctx: legion.Context, x: int) -> None:
        async def forever() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async def boom() -> None:
            raise KeyError("no such thing")

        await ctx.gather(forever(), boom())

    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(fan, 1)).id)
    assert r.status is TaskStatus.DEAD
    assert r.error is not None and r.error.type == "KeyError"
    assert cancelled.is_set()


async def test_gather_can_collect_exceptions(db_url: str) -> None:
    @legion.agent
    async def fan(ctx: legion.Context, x: int) -> list[str]:
        async def ok() -> int:
            return 1

        async def bad() -> int:
            raise ValueError("nope")

        results = await ctx.gather(ok(), bad(), return_exceptions=True)
        return [type(r).__name__ for r in results]

    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(fan, 1)).id)
    assert r.output == ["int", "ValueError"]


async def test_memory_lives_in_the_store_per_session(db_url: str) -> None:
    @legion.agent
    async def remember(ctx: legion.Context, word: str) -> list[str]:
        seen = await ctx.memory.get("seen", [])
        await ctx.memory.set("seen", [*seen, word])
        return [*seen, word]

    async with Runtime(db_url) as rt:
        for w in ["a", "b"]:
            await rt.result((await rt.submit(remember, w, session="s1")).id)
        other = await rt.result((await rt.submit(remember, "z", session="s2")).id)
    # A fresh runtime (another process, in real life) sees the same memory.
    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(remember, "c", session="s1")).id)
        items = await rt.store.memory_items("s1")
    assert r.output == ["a", "b", "c"]
    assert other.output == ["z"]
    assert list(items) == ["seen"]


async def test_retries_then_dead_with_type_message_and_traceback(db_url: str) -> None:
    attempts = Counter[int]()

    @legion.agent(retries=2, backoff=0)
    async def always_fails(ctx: legion.Context, x: int) -> None:
        attempts[x] += 1
        raise RuntimeError(f"broken {x}")

    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(always_fails, 7)).id)
    assert r.status is TaskStatus.DEAD
    assert attempts[7] == 3 and r.attempt == 3
    assert r.error is not None
    assert (r.error.type, r.error.message) == ("RuntimeError", "broken 7")
    assert "always_fails" in r.error.traceback and "raise RuntimeError" in r.error.traceback


async def test_permanent_errors_are_not_retried(db_url: str) -> None:
    calls = Counter[str]()

    class Model(pydantic.BaseModel):
        n: int

    @legion.agent(retries=5, backoff=0)
    async def strict(ctx: legion.Context, kind: str) -> object:
        calls[kind] += 1
        if kind == "permanent":
            raise legion.Permanent("this document is unreadable")
        if kind == "validation":
            Model.model_validate({"n": "not a number"})
        if kind == "unstorable":
            return object()
        return kind

    async with Runtime(db_url) as rt:
        results = await collect(rt, strict, ["permanent", "validation", "unstorable"])
    assert [r.status for r in results] == [TaskStatus.FAILED] * 3
    assert [r.error.type if r.error else None for r in results] == [
        "Permanent",
        "ValidationError",
        "OutputError",
    ]
    assert calls == {"permanent": 1, "validation": 1, "unstorable": 1}


async def test_input_that_does_not_fit_the_schema_fails_with_the_reason(db_url: str) -> None:
    @legion.agent
    async def typed(ctx: legion.Context, n: int, name: str) -> int:
        return n

    async with Runtime(db_url) as rt:
        results = await collect(
            rt, typed, [{"n": "x", "name": "a"}, {"n": 1}, {"n": 1, "name": "a", "extra": 2}, 5]
        )
    messages = [r.error.message if r.error else "" for r in results]
    assert all(r.status is TaskStatus.FAILED for r in results)
    assert all(r.error is not None and r.error.type == "InputError" for r in results)
    assert "n: Input should be a valid integer" in messages[0]
    assert "name: Field required" in messages[1]
    assert "extra" in messages[2]
    assert "takes n, name" in messages[3]


class Doc(pydantic.BaseModel):
    title: str
    words: int


class Summary(pydantic.BaseModel):
    title: str
    long: bool


async def test_pydantic_models_as_input_and_output(db_url: str) -> None:
    @legion.agent(output=Summary)
    async def summarize(ctx: legion.Context, doc: Doc) -> Summary:
        return Summary(title=doc.title.upper(), long=doc.words > 100)

    async with Runtime(db_url) as rt:
        results = await collect(rt, summarize, [{"title": "a", "words": 500}, {"title": "b"}])
    good, bad = results
    assert good.output == {"title": "A", "long": True}
    assert (
        bad.status is TaskStatus.FAILED and bad.error is not None and "words" in bad.error.message
    )


async def test_an_output_that_does_not_fit_its_type_fails_at_once_as_an_output_error(
    db_url: str,
) -> None:
    runs: list[object] = []

    @legion.agent(output=int, retries=3, backoff=0)
    async def counts(ctx: legion.Context, x: str) -> int:
        runs.append(x)
        return x  # type: ignore[return-value]

    async with Runtime(db_url) as rt:
        (result,) = await collect(rt, counts, ["many"])
    assert result.status is TaskStatus.FAILED and result.error is not None
    assert result.error.type == "OutputError"  # (it was pydantic's ValidationError)
    assert result.error.message.startswith("the output of agent 'counts' does not fit its")
    assert runs == ["many"]  # not retried: the same answer would not fit the next time


async def test_a_task_is_named_by_its_id_or_by_what_submit_answered(db_url: str) -> None:
    @legion.agent
    async def double(ctx: legion.Context, x: int) -> int:
        return 2 * x

    async with Runtime(db_url) as rt:
        submitted = await rt.submit(double, 4)
        r = await rt.result(submitted)  # (TypeError: unhashable type: 'Submitted')
        assert r.output == 8 and r.id == submitted.id
        info = await rt.get(submitted)
        assert info is not None and info.id == submitted.id
        assert [x.output async for x in rt.results([submitted])] == [8]
        with pytest.raises(TypeError, match=r"named by its id .* not str '5'"):
            await rt.result("5")  # type: ignore[arg-type]


async def test_timeout_ends_a_hanging_instance(db_url: str) -> None:
    @legion.agent(timeout=0.05, retries=1, backoff=0)
    async def hang(ctx: legion.Context, x: int) -> None:
        await asyncio.Event().wait()

    clock = FakeClock()
    async with Runtime(db_url, clock=clock) as rt:
        submitted = await rt.submit(hang, 1)
        for attempt in (1, 2):
            await running(rt, submitted.id, attempt)
            await clock.advance(0.05)  # its time is up
        r = await rt.result(submitted.id)
    assert r.status is TaskStatus.DEAD and r.attempt == 2
    assert r.error is not None and r.error.type == "TaskTimeout" and "0.05s" in r.error.message


async def test_cancel_a_queued_and_a_running_task(db_url: str) -> None:
    started = asyncio.Event()

    @legion.agent
    async def wait_forever(ctx: legion.Context, x: int) -> None:
        started.set()
        await asyncio.Event().wait()

    @legion.agent
    async def never_served(ctx: legion.Context, x: int) -> None:
        raise AssertionError("a cancelled task ran")

    async with Runtime(db_url) as rt:
        running = await rt.submit(wait_forever, 1)
        await started.wait()
        assert await rt.cancel(running.id) in (TaskStatus.RUNNING, TaskStatus.CANCELLED)
        r = await rt.result(running.id)
        assert r.status is TaskStatus.CANCELLED
    async with Runtime(db_url, worker=False) as rt:
        queued = await rt.submit(never_served, 1)
        assert await rt.cancel(queued.id) is TaskStatus.CANCELLED
    async with Runtime(db_url, agents=[never_served]) as rt:
        assert (await rt.result(queued.id)).status is TaskStatus.CANCELLED


async def test_idempotency_key_returns_the_first_task(db_url: str) -> None:
    runs = Counter[str]()

    @legion.agent
    async def once(ctx: legion.Context, x: str) -> str:
        runs[x] += 1
        return x

    async with Runtime(db_url) as rt:
        a = await rt.submit(once, "a", key="k1")
        await rt.result(a.id)
        b = await rt.submit(once, "a", key="k1")
        assert (b.id, b.created, b.status) == (a.id, False, TaskStatus.SUCCEEDED)
        results = [r async for r in rt.map(once, ["a", "b"], keys=["k1", "k2"])]
    assert sorted(r.output for r in results) == ["a", "b"]
    assert runs == {"a": 1, "b": 1}


async def test_a_key_or_session_no_store_can_hold_is_refused_before_anything_is_queued(
    db_url: str,
) -> None:
    # key=123 was an AttributeError deep in the submit, session="" a session of its own
    # ("task-<id>") that shared nothing, a NUL a bare error of PostgreSQL's.
    @legion.agent
    async def echo(ctx: legion.Context, x: int) -> int:
        return x

    async with Runtime(db_url) as rt:
        for given, why in (
            ({"key": 123}, "an idempotency key is a non-empty str (or None), not 123"),
            ({"key": ""}, "an idempotency key is a non-empty str"),
            ({"key": "a\x00b"}, "an idempotency key cannot hold a NUL"),
            ({"key": "a\udcff"}, "an idempotency key 'a\\udcff' cannot be stored"),
            ({"session": 5}, "a session is a non-empty str (or None), not 5"),
            ({"session": ""}, "a session is a non-empty str"),
        ):
            with pytest.raises(legion.ConfigError, match=re.escape(why)):
                await rt.submit(echo, 1, **given)
        assert await rt.store.counts() == {}


async def test_concurrency_is_bounded_globally_and_per_agent(db_url: str) -> None:
    now = Counter[str]()
    peak = Counter[str]()

    def tracker(name: str, cap: int | None) -> legion.Agent:
        @legion.agent(name=name, concurrency=cap)
        async def work(ctx: legion.Context, x: int) -> None:
            now[name] += 1
            now["all"] += 1
            peak[name] = max(peak[name], now[name])
            peak["all"] = max(peak["all"], now["all"])
            for _ in range(3):
                await asyncio.sleep(0)
            now[name] -= 1
            now["all"] -= 1

        return work

    capped, free = tracker("capped", 2), tracker("free", None)
    async with Runtime(db_url, concurrency=6) as rt:
        ids = [s.id for s in await rt.submit_many(capped, range(30))]
        ids += [s.id for s in await rt.submit_many(free, range(30))]
        statuses = [r.status async for r in rt.results(ids)]
    assert statuses.count(TaskStatus.SUCCEEDED) == 60
    assert peak["capped"] == 2
    assert peak["all"] <= 6


class Meltdown(BaseException):
    """Not an Exception, not cancellation: the kind of thing that escapes `except Exception`."""


async def test_fault_isolation_2000_tasks(db_url: str) -> None:
    """10 % raise, 5 % hang past their timeout, 1 % raise a BaseException: all others succeed,
    every failure is recorded with its reason, and the process carries on."""

    @legion.agent(timeout=0.2, retries=1, backoff=0)
    async def chaos(ctx: legion.Context, i: int) -> int:
        if i % 100 == 0:
            raise Meltdown(f"meltdown {i}")
        if i % 20 == 1:
            await asyncio.Event().wait()  # hangs until the timeout
        if i % 10 == 2:
            raise ValueError(f"bad {i}")
        await asyncio.sleep(0)
        return i

    n = 2000
    melt = [i for i in range(n) if i % 100 == 0]
    hang = [i for i in range(n) if i % 20 == 1 and i % 100 != 0]
    bad = [i for i in range(n) if i % 10 == 2 and i % 20 != 1 and i % 100 != 0]
    clock = FakeClock()
    async with Runtime(db_url, concurrency=1000, clock=clock) as rt:
        mapping = asyncio.create_task(_collect_all(rt.map(chaos, range(n))))
        worker = rt.worker
        assert worker is not None

        def only_hanging(leased: int) -> bool:
            """Every other attempt was leased and is over: only the hanging ones run."""
            stats = worker.statistics()
            return (stats.leased, stats.in_flight) == (leased, len(hang))

        # Each attempt of the hanging tasks: once only they run, their time is up.
        for leased in (n + len(melt) + len(bad), n + len(melt) + len(bad) + len(hang)):
            async with asyncio.timeout(60):
                while not only_hanging(leased):  # noqa: ASYNC110 - counters, no event
                    await asyncio.sleep(0.005)
            await clock.advance(0.2)
        results = await mapping
        infos = await rt.store.get_many([r.id for r in results])
    assert len(results) == len(infos) == n
    by_input = {info.input: info for info in infos}  # bare values are stored as given
    fine = set(range(n)) - set(melt) - set(hang) - set(bad)
    assert len(melt) == 20 and len(hang) == 100 and len(bad) == 200
    assert all(by_input[i].status is TaskStatus.SUCCEEDED and by_input[i].output == i for i in fine)
    for group, err_type, text in (
        (melt, "Meltdown", "meltdown"),
        (hang, "TaskTimeout", "timeout"),
        (bad, "ValueError", "bad"),
    ):
        for i in group:
            info = by_input[i]
            assert info.status is TaskStatus.DEAD, (i, info.status)
            assert (
                info.error is not None
                and info.error.type == err_type
                and text in info.error.message
            )
            assert info.attempt == 2


async def _collect_all(results: AsyncIterator[legion.TaskResult]) -> list[legion.TaskResult]:
    return [r async for r in results]


async def test_system_exit_in_an_agent_or_a_gathered_step_is_contained(db_url: str) -> None:
    @legion.agent(retries=0)
    async def exits(ctx: legion.Context, where: str) -> None:
        async def child() -> None:
            raise SystemExit(3)

        if where == "body":
            raise SystemExit(2)
        await ctx.gather(child())

    async with Runtime(db_url) as rt:
        results = await collect(rt, exits, ["body", "gather"])
        # the runtime is still alive and serving
        ok = await collect(rt, legion.agent(name="after")(_identity), [1])
    assert [r.error.type if r.error else None for r in results] == ["SystemExit", "SystemExit"]
    assert ok[0].output == 1


async def _identity(ctx: legion.Context, x: int) -> int:
    return x


async def test_an_agent_that_raises_cancelled_error_itself_fails_its_attempts(
    db_url: str,
) -> None:
    """It awaited a future that something else cancelled: no one cancelled its task, so
    the error is the agent's, and each attempt counts. It used to be given back to the
    queue uncounted and run again at once, without end."""
    runs: Counter[str] = Counter()

    @legion.agent(retries=1, backoff=0.001)
    async def awaits_a_cancelled_future(ctx: legion.Context, x: str) -> str:
        runs[x] += 1
        if x == "cancelled":
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        return x

    async with Runtime(db_url) as rt, asyncio.timeout(60):
        ok, cancelled = await collect(rt, awaits_a_cancelled_future, ["ok", "cancelled"])
    assert (ok.status, ok.output) == (TaskStatus.SUCCEEDED, "ok")
    assert cancelled.status is TaskStatus.DEAD
    assert cancelled.error is not None and cancelled.error.type == "CancelledError"
    assert runs == {"ok": 1, "cancelled": 2}  # two attempts, as retries=1 allows


async def test_an_agent_that_swallows_its_timeout_and_returns_still_timed_out(
    db_url: str,
) -> None:
    @legion.agent(retries=0, timeout=0.05)
    async def stubborn(ctx: legion.Context, x: int) -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "a partial answer"  # (it used to be recorded as a success)
        return "never"

    async with Runtime(db_url) as rt, asyncio.timeout(60):
        (result,) = await collect(rt, stubborn, [1])
    assert result.status is TaskStatus.DEAD and result.output is None
    assert result.error is not None and result.error.type == "TaskTimeout"
    # What it did is said: nothing else (no report, no line) named it.
    assert "it caught the cancellation that stopped it" in result.error.message


async def test_a_step_made_after_the_agent_returned_does_not_run(db_url: str) -> None:
    """A task the agent started outlives it and makes a step: the step used to run its
    side effect and only then find its record refused (LeaseLost)."""
    effects: list[str] = []
    late: list[asyncio.Task[object]] = []
    returned = asyncio.Event()

    @legion.agent(retries=0)
    async def leaves_a_task_behind(ctx: legion.Context, x: int) -> int:
        async def after() -> object:
            await returned.wait()
            return await ctx.step("late", effects.append, "ran")

        late.append(asyncio.create_task(after()))
        return x

    async with Runtime(db_url) as rt, asyncio.timeout(60):
        (result,) = await collect(rt, leaves_a_task_behind, [1])
        returned.set()
        with pytest.raises(RuntimeError, match="its attempt has ended, so this step"):
            await late[0]
    assert result.status is TaskStatus.SUCCEEDED
    assert effects == []


async def test_an_agent_that_returns_past_its_timeout_before_its_timer_fires_timed_out(
    db_url: str,
) -> None:
    @legion.agent(timeout=0.2, retries=0)
    async def blocks(ctx: legion.Context, x: int) -> int:
        time.sleep(0.3)  # noqa: ASYNC251 - the loop blocked: no timer can fire meanwhile
        return x

    async with Runtime(db_url) as rt:
        (result,) = await collect(rt, blocks, [1])
    assert result.status is TaskStatus.DEAD and result.output is None  # (it succeeded)
    assert result.error is not None and result.error.type == "TaskTimeout"


async def test_nan_from_a_step_or_as_the_output_fails_the_task_saying_where(
    db_url: str,
) -> None:
    @legion.agent(retries=2, backoff=0)
    async def scores(ctx: legion.Context, where: str) -> dict[str, float]:
        if where == "step":
            await ctx.step("score", lambda: {"score": float("nan")})
        return {"score": float("inf") if where == "output" else 0.5}

    async with Runtime(db_url) as rt:
        step, output, fine = await collect(rt, scores, ["step", "output", "none"])
    assert fine.status is TaskStatus.SUCCEEDED and fine.output == {"score": 0.5}
    for r, place in ((step, "value['score']"), (output, "value['score']")):
        assert r.status is TaskStatus.FAILED and r.attempt == 1, r  # (not retried)
        assert r.error is not None and r.error.type == "OutputError"
        assert f"{place} is NaN or infinite" in r.error.message


async def test_an_agent_that_catches_every_stop_is_abandoned_after_the_grace(
    db_url: str,
) -> None:
    caught: list[int] = []
    closed: list[int] = []

    @legion.agent(timeout=0.05, retries=1, backoff=0)
    async def deaf(ctx: legion.Context, x: int) -> None:
        try:
            while True:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    caught.append(x)  # and goes on: it used to hold its task for ever
        finally:
            closed.append(x)

    clock = FakeClock()
    async with Runtime(db_url, clock=clock, stop_grace=5) as rt:
        submitted = await rt.submit(deaf, 1)
        for attempt in (1, 2):
            await running(rt, submitted.id, attempt)
            await clock.advance(0.2)  # its time is up: it catches the cancellation
            await clock.advance(5)  # and runs on: abandoned
        r = await rt.result(submitted.id)
        assert rt.worker is not None
        stats = rt.worker.statistics()
    assert r.status is TaskStatus.DEAD and r.attempt == 2
    assert r.error is not None and r.error.type == "TaskTimeout"
    assert "ran past its timeout of 0.05s" in r.error.message
    assert "was abandoned" in r.error.message
    assert caught == [1, 1] and closed == [1, 1]  # each attempt's code was stopped
    assert stats.abandoned == 2 and stats.in_flight == 0


# (Python itself reports the coroutine that ignored GeneratorExit, as it should.)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_agent_that_catches_even_generator_exit_is_abandoned_and_said_so(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    @legion.agent(timeout=0.05, retries=0)
    async def deafest(ctx: legion.Context, x: int) -> None:
        while True:
            with contextlib.suppress(BaseException):  # what is tested: it catches everything
                await asyncio.Event().wait()

    caplog.set_level(logging.WARNING, logger="legion.worker")
    clock = FakeClock()
    async with Runtime(db_url, clock=clock, stop_grace=5) as rt:
        submitted = await rt.submit(deafest, 1)
        await running(rt, submitted.id, 1)
        await clock.advance(0.2)
        await clock.advance(5)
        r = await rt.result(submitted.id)
    assert r.status is TaskStatus.DEAD and r.error is not None
    assert r.error.type == "TaskTimeout"
    said = [rec.getMessage() for rec in caplog.records]
    assert any("deafest caught GeneratorExit as well" in m for m in said), said


async def test_a_cancel_a_task_of_the_agent_catches_ends_it_and_that_task_after_the_grace(
    db_url: str,
) -> None:
    started = asyncio.Event()
    closed: list[str] = []
    helpers: list[asyncio.Task[None]] = []

    async def deaf_helper() -> None:
        try:
            while True:
                with contextlib.suppress(asyncio.CancelledError):  # it goes on
                    await asyncio.Event().wait()
        finally:
            closed.append("helper")

    @legion.agent(retries=3, backoff=0)
    async def waits_on_it(ctx: legion.Context, x: int) -> None:
        helpers.append(asyncio.create_task(deaf_helper()))
        started.set()
        await helpers[0]  # the cancel reaches the helper, which catches it

    clock = FakeClock()
    async with Runtime(db_url, clock=clock, stop_grace=5) as rt:
        submitted = await rt.submit(waits_on_it, 1)
        await started.wait()
        await rt.cancel(submitted.id)
        await clock.advance(5)  # abandoned: recorded cancelled, its slot free
        r = await rt.result(submitted.id)
        async with asyncio.timeout(30):
            await asyncio.gather(*helpers, return_exceptions=True)  # (it ran on for ever)
    assert r.status is TaskStatus.CANCELLED and r.attempt == 1
    assert closed == ["helper"]  # the helper, the agent's own task, was stopped too


class _EveryTaskWouldMeetIt(Exception):
    fatal = True  # as a rejected API key: the worker stops (see Worker.abort)


async def test_map_and_results_raise_once_the_local_worker_stops_on_an_error(
    db_url: str,
) -> None:
    """The worker gave the unfinished tasks back and ended; their results would never
    come, and `map` used to wait for them for good."""
    gate = asyncio.Event()

    @legion.agent(retries=0)
    async def stops(ctx: legion.Context, x: int) -> int:
        if x == 0:
            await gate.wait()
            raise _EveryTaskWouldMeetIt("the provider rejected the key")
        gate.set()
        await asyncio.Event().wait()  # until the worker gives it back
        return x

    async with Runtime(db_url) as rt, asyncio.timeout(60):
        ids = [s.id for s in await rt.submit_many(stops, [0, 1, 2])]
        with pytest.raises(legion.WorkerStopped, match="the provider rejected the key") as seen:
            async for _ in rt.map(stops, [3]):
                pass
        assert isinstance(seen.value.__cause__, _EveryTaskWouldMeetIt)
        with pytest.raises(legion.WorkerStopped):  # and for anyone who asks later
            [r async for r in rt.results(ids)]
        assert rt.fatal_error is seen.value.__cause__


async def _effect(x: str) -> str:
    return x


async def test_a_step_given_a_call_instead_of_a_function_fails_at_once(db_url: str) -> None:
    """``ctx.step("c", effect("x"))`` called the function already: a TypeError each
    attempt, retried until the task was dead, without a word of what to write."""

    @legion.agent(retries=3, backoff=0)
    async def called(ctx: legion.Context, case: str) -> object:
        if case == "coroutine":
            return await ctx.step("c", _effect("x"))  # type: ignore[arg-type]
        return await ctx.step("c", 42)  # type: ignore[arg-type]

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # (the coroutine is closed, not left)
        async with Runtime(db_url) as rt:
            results = await collect(rt, called, ["coroutine", "value"])
    assert [(r.status, r.attempt) for r in results] == [(TaskStatus.FAILED, 1)] * 2
    assert str(results[0].error) == (
        "StepFunctionError: ctx.step('c', ...) was given a coroutine, _effect(...): pass the "
        "function and its arguments, ctx.step('c', _effect, *args), not a call of it"
    )
    assert str(results[1].error).startswith("StepFunctionError: ctx.step('c', ...) was given int")


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("its __str__ fails")


async def test_what_the_store_cannot_hold_fails_its_own_task_and_the_others_finish(
    db_url: str,
) -> None:
    """A step's name or a memory key that is not text, or text with a lone surrogate, and
    an error whose message has one or cannot be made: each used to reach the store write
    that its batch shares with the other tasks, which then failed and was retried without
    end, every task of the batch left running."""

    @legion.agent(retries=0)
    async def odd(ctx: legion.Context, case: str) -> object:
        if case == "step-name":
            return await ctx.step(None, lambda: 1)  # type: ignore[arg-type]
        if case == "step-surrogate":
            return await ctx.step("s\udcff", lambda: 1)
        if case == "memory-key":
            await ctx.memory.set(("a",), 1)  # type: ignore[arg-type]
        if case == "memory-get":
            return await ctx.memory.get(5)  # type: ignore[arg-type]
        if case == "memory-surrogate":  # (a file name read with surrogateescape)
            return await ctx.memory.get("report-\udce9.txt")
        if case == "message-surrogate":
            raise ValueError("cannot parse file name \udcff")
        if case == "unprintable":
            raise _UnprintableError
        return case

    cases = [
        "step-name",
        "step-surrogate",
        "memory-key",
        "memory-get",
        "memory-surrogate",
        "message-surrogate",
        "unprintable",
    ]
    async with Runtime(db_url) as rt, asyncio.timeout(60):
        results = await collect(rt, odd, ["first", *cases, "last"])
    assert [r.output for r in results if r.ok] == ["first", "last"]
    errors = {case: r.error for case, r in zip(cases, results[1:-1], strict=True)}
    # (a step's name or a memory key no record can be kept under: the code's mistake, not
    # retried; a task with retries left would be retried for an error of its own)
    ended = {c: r.status for c, r in zip(cases, results[1:-1], strict=True)}
    failed, dead = TaskStatus.FAILED, TaskStatus.DEAD
    assert ended == {c: failed if c.startswith(("step", "memory")) else dead for c in cases}
    assert str(errors["step-name"]) == (
        "StepNameError: a step's name must be a str, not NoneType: None"
    )
    assert "surrogates not allowed" in str(errors["step-surrogate"])
    assert str(errors["memory-key"]).startswith(
        "OutputError: a memory key must be a str, not tuple"
    )
    assert str(errors["memory-get"]).startswith("OutputError: a memory key must be a str, not int")
    assert str(errors["memory-surrogate"]) == (
        "OutputError: a memory key 'report-\\udce9.txt' cannot be stored: surrogates not allowed"
    )
    assert str(errors["message-surrogate"]) == "ValueError: cannot parse file name \\udcff"
    assert (
        str(errors["unprintable"])
        == "_UnprintableError: <_UnprintableError.__str__ failed: RuntimeError>"
    )


async def test_closing_drains_running_tasks(db_url: str) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    @legion.agent
    async def slow(ctx: legion.Context, x: int) -> int:
        started.set()
        await release.wait()
        return x

    rt = Runtime(db_url)
    await rt.open()
    s = await rt.submit(slow, 1)
    await started.wait()
    asyncio.get_running_loop().call_soon(release.set)
    await rt.aclose()  # waits for the running task to finish
    async with Runtime(db_url, worker=False) as check:
        info = await check.get(s.id)
    assert info is not None and info.status is TaskStatus.SUCCEEDED


async def test_opening_an_open_runtime_starts_no_second_worker(db_url: str) -> None:
    # A start-up hook run twice, or `open()` and then `async with`: a second worker
    # started, which the close never stopped (its heartbeats failed on a closed store).
    @legion.agent
    async def echo(ctx: legion.Context, x: int) -> int:
        return x

    rt = Runtime(db_url, agents=[echo])
    await rt.open()
    worker = rt.worker
    async with rt:
        assert rt.worker is worker
        assert len(await rt.store.workers()) == 1
        assert (await rt.result(await rt.submit(echo, 7))).output == 7
    leftover = [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("legion-")]
    assert leftover == []


async def test_drain_timeout_releases_unfinished_tasks_without_losing_them(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()
    gate = asyncio.Event()

    @legion.agent
    async def stuck(ctx: legion.Context, x: int) -> int:
        started.set()
        await gate.wait()
        return ctx.attempt

    caplog.set_level(logging.INFO, logger="legion.worker")
    clock = FakeClock()
    rt = Runtime(db_url, drain_timeout=0.01, clock=clock)
    await rt.open()
    s = await rt.submit(stuck, 1)
    await started.wait()
    closing = asyncio.create_task(rt.aclose())
    async with asyncio.timeout(30):
        while not any("draining" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 - a log line, no event to wait on
            await asyncio.sleep(0.002)
    await clock.advance(0.01)  # the drain timeout
    await closing
    async with Runtime(db_url, worker=False) as check:
        info = await check.get(s.id)
        assert info is not None and (info.status, info.attempt) == (TaskStatus.QUEUED, 0)
    gate.set()
    async with Runtime(db_url, agents=[stuck]) as rt2:
        r = await rt2.result(s.id)
    assert (
        r.status is TaskStatus.SUCCEEDED and r.output == 1
    )  # the release did not use up an attempt


async def test_results_of_tasks_run_by_another_runtime_arrive_through_the_store(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"

    @legion.agent
    async def echo(ctx: legion.Context, x: int) -> int:
        return x

    async with Runtime(url, worker=False) as submitter, Runtime(url, agents=[echo]):
        outputs = sorted([r.output async for r in submitter.map(echo, range(20))])
    assert outputs == list(range(20))


async def test_a_value_that_is_not_an_agent_is_refused(db_url: str) -> None:
    async with Runtime(db_url) as rt:
        with pytest.raises(legion.ConfigError, match="not an agent"):
            await rt.submit(_identity, 1)  # type: ignore[arg-type]


async def test_an_input_json_cannot_hold_is_an_input_error_and_nothing_is_queued(
    db_url: str,
) -> None:
    async with Runtime(db_url) as rt:
        with pytest.raises(legion.InputError, match=r"input 1 of the 3 submitted together"):
            await rt.submit_many(legion.agent(name="ident")(_identity), [1, b"raw", 3])
        assert await rt.store.counts() == {}


@pytest.mark.parametrize("concurrency", [1.5, None, True, 0])
def test_a_concurrency_that_is_not_a_whole_number_is_refused(
    db_url: str, concurrency: object
) -> None:
    """1.5 used to be taken: every lease then failed in the store, retried for good."""
    with pytest.raises(ValueError, match="concurrency must be a whole number >= 1"):
        Runtime(db_url, concurrency=concurrency)  # type: ignore[arg-type]


async def test_gather_with_several_failures_raises_the_first_and_leaves_no_unretrieved_error(
    db_url: str,
) -> None:
    @legion.agent(retries=0)
    async def fan(ctx: legion.Context, x: int) -> None:
        async def bad(i: int) -> None:
            raise ValueError(f"bad {i}")

        await ctx.gather(bad(1), bad(2), bad(3))

    reported: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: reported.append(context)
    )
    async with Runtime(db_url) as rt:
        r = await rt.result((await rt.submit(fan, 1)).id)
    import gc

    gc.collect()
    assert r.error is not None and r.error.message == "bad 1"
    assert reported == []


async def test_closing_the_journal_while_a_commit_is_in_flight_returns(tmp_path: Path) -> None:
    from legion.journal import Journal
    from legion.store import MemoryWrite, SQLiteStore

    store = SQLiteStore(tmp_path / "j.db")
    await store.open()
    journal = Journal(store, clock=FakeClock(wall=0.0), on_committed=lambda batch: None)
    runner = asyncio.create_task(journal.run())
    durable = journal.write_memory(MemoryWrite("s", "k", b"1"))
    await asyncio.sleep(0)  # the flush starts
    journal.close()  # ...and close() lands while it is in flight
    await asyncio.wait_for(runner, timeout=30)
    await durable
    assert await store.memory_get("s", "k") == b"1"
    await store.aclose()


async def test_the_result_of_a_task_queued_again_is_its_new_run(db_url: str) -> None:
    runs = Counter[int]()

    @legion.agent(retries=0)
    async def flaky_once(ctx: legion.Context, x: int) -> int:
        runs[x] += 1
        if runs[x] == 1:
            raise RuntimeError("first run fails")
        return x

    async with Runtime(db_url) as rt:
        first = await rt.result((await rt.submit(flaky_once, 5)).id)
        assert first.status is TaskStatus.DEAD
        assert await rt.retry(first.id)
        second = await rt.result(first.id)
    assert second.status is TaskStatus.SUCCEEDED and second.output == 5


async def test_a_running_worker_hands_the_gil_over_sooner(db_url: str) -> None:
    """Its store's thread waits less for the GIL while the loop is busy (legion.gil)."""
    assert sys.getswitchinterval() == pytest.approx(gil.DEFAULT)
    async with Runtime(db_url):
        assert sys.getswitchinterval() == pytest.approx(gil.INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(gil.DEFAULT)


async def test_a_running_worker_collects_its_young_objects_less_often(db_url: str) -> None:
    """Each instance in flight holds objects the collector tracks: while a worker runs,
    the young generation's threshold is raised (legion.heap), and put back after."""

    @legion.agent
    async def double(ctx: legion.Context, x: int) -> int:
        return 2 * x

    assert gc.get_threshold()[0] == heap.DEFAULT
    async with Runtime(db_url) as rt:
        assert gc.get_threshold()[0] == heap.YOUNG
        assert (await rt.result((await rt.submit(double, 4)).id)).output == 8
    assert gc.get_threshold()[0] == heap.DEFAULT


@legion.agent
async def plus_one(ctx: legion.Context, x: int) -> int:
    return x + 1


def test_a_runtime_called_from_another_event_loop_says_so(tmp_path: Path) -> None:
    """A sync framework's handler calling `asyncio.run(rt.result(...))` on a runtime
    opened in a background thread's loop: the result was delivered in that loop and the
    caller's never woke (it hung for good)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    rt = Runtime(f"sqlite:///{tmp_path / 'loops.db'}")
    try:
        asyncio.run_coroutine_threadsafe(rt.open(), loop).result(30)
        submitted = asyncio.run_coroutine_threadsafe(rt.submit(plus_one, 1), loop).result(30)
        with pytest.raises(RuntimeError, match="opened in another event loop"):
            asyncio.run(rt.result(submitted))
        with pytest.raises(RuntimeError, match="run_coroutine_threadsafe"):
            asyncio.run(rt.submit(plus_one, 2))
        # cancel, retry and signal too: a cancel stopped the loop's task from this thread
        # (not thread-safe: under -X dev, an error for a cancel that had happened)
        for call in (rt.cancel(submitted), rt.retry(submitted), rt.signal(submitted, "go")):
            with pytest.raises(RuntimeError, match="opened in another event loop"):
                asyncio.run(call)
        # The way the message names works.
        done = asyncio.run_coroutine_threadsafe(rt.result(submitted), loop).result(30)
        assert done.output == 2
    finally:
        asyncio.run_coroutine_threadsafe(rt.aclose(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


async def test_each_failed_attempt_is_logged_with_its_task(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing in the log said a task failed, was retried or died: an operator reading a
    # worker's logs (JSON lines in a log store) saw no failure at all.
    @legion.agent(retries=1, backoff=0)
    async def flaky(ctx: legion.Context, x: int) -> int:
        raise ValueError(f"no {x}")

    caplog.set_level(logging.INFO, logger="legion.tasks")
    async with Runtime(db_url) as rt:
        (result,) = [r async for r in rt.map(flaky, [7])]
    assert result.status is TaskStatus.DEAD
    retried, dead = (r for r in caplog.records if r.name == "legion.tasks")
    assert retried.levelno == logging.INFO and dead.levelno == logging.WARNING
    assert retried.getMessage() == (
        f"task {result.id} (flaky): attempt 1 failed, retried in 0.0s: ValueError: no 7"
    )
    assert dead.getMessage() == f"task {result.id} (flaky): dead after attempt 2: ValueError: no 7"
    fields = {k: getattr(dead, k) for k in ("task_id", "agent", "attempt", "outcome")}
    assert fields == {"task_id": result.id, "agent": "flaky", "attempt": 2, "outcome": "dead"}


async def test_a_name_no_store_can_index_is_refused_in_the_agent_alike_on_every_store(
    store_url: str,
) -> None:
    # A NUL in a step's name or a memory key was kept by SQLite and, on PostgreSQL, failed
    # the store's write three times before its task failed; a 20,000-character name was
    # PostgreSQL's alone to refuse ("index row requires 20024 bytes").
    @legion.agent(retries=2)
    async def named(ctx: legion.Context, kind: str) -> str:
        name = {"nul": "a\x00b", "long": "x" * 3000}[kind[:-1]]
        if kind.endswith("s"):
            await ctx.step(name, lambda: 1)
        else:
            await ctx.memory.set(name, 1)
        return "stored"

    async with Runtime(store_url) as rt:
        results = [r async for r in rt.map(named, ["nuls", "nulm", "longs", "longm"])]
    for r in results:
        assert (r.status, r.attempt) == (TaskStatus.FAILED, 1), r
        assert r.error is not None and r.error.type == "OutputError", r.error
    messages = [r.error.message for r in results if r.error is not None]
    assert messages[0] == "a step's name 'a\\x00b' cannot be stored: it holds a NUL character"
    assert messages[1] == "a memory key 'a\\x00b' cannot be stored: it holds a NUL character"
    assert all("it is 3,000 bytes long, past the 2,048" in m for m in messages[2:])


async def test_a_memory_key_and_session_too_long_together_are_refused_alike_on_every_store(
    store_url: str,
) -> None:
    # Each passed its own check; PostgreSQL indexes them together and refused the write
    # after its retries ("index row size 4064 exceeds btree version 4 maximum 2704").
    @legion.agent(retries=2)
    async def remember(ctx: legion.Context, chars: int) -> str:
        await ctx.memory.set("\N{GRINNING FACE}" * chars, 1)
        return "stored"

    long_session = "\N{GRINNING FACE}" * 500  # 2,000 bytes, as long as a session may be
    async with Runtime(store_url) as rt:
        too_long = await rt.submit(remember, {"chars": 512}, session=long_session)
        fits = await rt.submit(remember, {"chars": 512}, session="s")  # a 2,048-byte key
        refused, stored = await rt.result(too_long.id), await rt.result(fits.id)
    assert (stored.status, stored.output) == (TaskStatus.SUCCEEDED, "stored"), stored.error
    assert (refused.status, refused.attempt) == (TaskStatus.FAILED, 1), refused
    assert refused.error is not None and refused.error.type == "OutputError"
    assert "bytes together, past the 2,560" in refused.error.message


async def test_a_step_name_no_record_can_be_kept_under_fails_the_task_at_once(
    db_url: str,
) -> None:
    # A ValueError, it was retried with backoff until the task was dead: a mistake of
    # the code, which no retry mends.
    @legion.agent(retries=3, backoff=0)
    async def misnamed(ctx: legion.Context) -> None:
        await ctx.step("item@1", lambda: 1)

    async with Runtime(db_url, agents=[misnamed]) as rt:
        result = await rt.result((await rt.submit(misnamed)).id)
    assert (result.status, result.attempt) == (TaskStatus.FAILED, 1)
    assert result.error is not None and result.error.type == "StepNameError"


async def test_submit_refuses_an_input_that_does_not_fit_and_queues_nothing(db_url: str) -> None:
    # It answered an id, and the task then failed on its worker: a service could not
    # answer its caller 4xx as the HTTP API does.
    @legion.agent
    async def typed_one(ctx: legion.Context, x: int) -> int:
        return x

    async with Runtime(db_url, agents=[typed_one]) as rt:
        with pytest.raises(legion.InputError, match="x: Input should be a valid integer"):
            await rt.submit(typed_one, "nope")
        with pytest.raises(legion.InputError, match="unknown field"):
            await rt.submit(typed_one, {"x": 1, "y": 2})
        ok = await rt.result((await rt.submit(typed_one, {"x": "5"})).id)  # (as JSON reads)
        assert ok.output == 5
        assert await rt.store.counts() == {TaskStatus.SUCCEEDED: 1}


async def test_a_runtime_cancelled_as_it_opens_leaves_nothing_running(store_url: str) -> None:
    """A Ctrl-C in the first second of `legion run` on PostgreSQL hung it for good: the
    open was cancelled with the store's pool open, and the pool's workers took the loop's
    cancellation at its shutdown for a failed connect and waited on. Cancelled at any point
    of its open, a runtime leaves no task of its own behind."""
    me = asyncio.current_task()
    before = asyncio.all_tasks()
    for ticks in range(0, 60, 3):
        rt = Runtime(store_url, concurrency=2)
        opening = asyncio.create_task(rt.open())
        for _ in range(ticks):
            await asyncio.sleep(0.005)
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
        if not opening.cancelled():  # (it was open already: closed as a user would)
            await rt.aclose()
        left = [t for t in asyncio.all_tasks() - before if t is not me and not t.done()]
        if left:  # (one told to stop ends at once; the pool's waited for ever)
            _, stuck = await asyncio.wait(left, timeout=10)
            assert not stuck, (ticks, stuck)
