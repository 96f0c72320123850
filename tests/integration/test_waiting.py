"""Durable waiting through the runtime, on SQLite and on PostgreSQL: wait_for, signals,
approval, durable sleep, child tasks, schedules' tick claims."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

import legion
from legion import codec
from legion.errors import ChildFailed, NotAwaited, WaitTimeout
from legion.store import Store, WriteBatch, store_from_url
from legion.task import Completion, NewTask, Outcome, TaskStatus
from legion.testing import FakeClock
from legion.waiting.schedules import run_due, schedule, tick_key

LEDGER: list[str] = []


@legion.agent(retries=0)
async def waiter(ctx: Any, x: int) -> Any:
    def note() -> int:
        LEDGER.append(f"{ctx.task_id}:before")
        return x

    before = await ctx.step("before", note)
    got = await ctx.wait_for("go")
    second = await ctx.wait_for("go")
    await ctx.step("after", lambda: LEDGER.append(f"{ctx.task_id}:after"))
    return {"before": before, "got": got, "second": second}


@legion.agent(retries=0)
async def quick(ctx: Any, i: int) -> int:
    return i


@legion.agent(retries=0)
async def impatient(ctx: Any) -> str:
    try:
        await ctx.wait_for("never", timeout=10)
    except WaitTimeout:
        return "timed out"
    return "signalled"


@legion.agent(retries=0)
async def sleeper(ctx: Any) -> str:
    await ctx.step("before", lambda: LEDGER.append(f"{ctx.task_id}:before"))
    await ctx.sleep(3600)
    await ctx.step("after", lambda: LEDGER.append(f"{ctx.task_id}:after"))
    return "rested"


@legion.agent(retries=2, backoff=0)
async def odd_sleeper(ctx: Any, seconds: str) -> str:
    await ctx.sleep(float(seconds))
    return "rested"


@legion.agent(retries=2, backoff=0)
async def odd_waiter(ctx: Any, seconds: str) -> str:
    timeout = seconds.strip("'") if seconds.startswith("'") else float(seconds)
    await ctx.wait_for("never", timeout=timeout)
    return "signalled"


@legion.agent(retries=0)
async def long_event_waiter(ctx: Any, length: int) -> str:
    await ctx.wait_for("e" * length)
    return "signalled"


@legion.agent(retries=0)
async def gate(ctx: Any, amount: int) -> Any:
    answer = await ctx.approval(f"pay {amount} EUR?")
    return {"approved": answer.approved, "by": answer.data.get("by")}


@legion.agent(retries=0)
async def judge(ctx: legion.Context) -> bool:
    return (await ctx.approval("go ahead?")).approved


@legion.agent(retries=0)
async def double(ctx: Any, i: int) -> int:
    if i < 0:
        raise legion.Permanent(f"negative {i}")
    return 2 * i


@legion.agent(retries=0)
async def fan_out(ctx: Any, n: int, limit: int) -> Any:
    outs = await ctx.map(double, list(range(n)), concurrency=limit)
    one = await ctx.spawn(double, {"i": 100})
    return {"sum": sum(outs), "first": outs[:3], "one": one}


@legion.agent(retries=0)
async def fan_out_failing(ctx: Any) -> Any:
    return await ctx.map(double, [{"i": 1}, {"i": -1}, {"i": 2}], concurrency=2)


@legion.agent(retries=0)
async def fan_out_caught(ctx: Any) -> Any:
    try:
        await ctx.map(double, [{"i": 1}, {"i": -1}, {"i": 2}], concurrency=2)
    except ChildFailed as exc:
        return {"outputs": exc.outputs, "said": str(exc), "failed": list(exc.failed.values())}
    return None


async def _until(rt: legion.Runtime, task_id: int, status: TaskStatus) -> None:
    async def reached() -> bool:
        info = await rt.get(task_id)
        return info is not None and info.status is status

    import asyncio

    for _ in range(2000):
        if await reached():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} never became {status}")


async def test_a_waiting_task_holds_no_slot_and_a_signal_resumes_it_where_it_was(
    store_url: str,
) -> None:
    LEDGER.clear()
    async with legion.Runtime(store_url, concurrency=1, agents=[waiter, quick]) as rt:
        (w,) = [await rt.submit(waiter, {"x": 7})]
        await _until(rt, w.id, TaskStatus.WAITING)
        # One slot, taken by nothing: another task runs while the first one waits.
        other = await rt.result((await rt.submit(quick, {"i": 3})).id)
        assert other.output == 3
        assert await rt.signal(w.id, "go", {"n": 1}) is TaskStatus.QUEUED
        await _until(rt, w.id, TaskStatus.WAITING)  # the second wait for "go"
        await rt.signal(w.id, "go", {"n": 2})
        result = await rt.result(w.id)
    assert result.ok, result.error
    assert result.output == {"before": 7, "got": {"n": 1}, "second": {"n": 2}}
    assert [f"{w.id}:before", f"{w.id}:after"] == LEDGER  # recorded steps never ran twice


async def test_a_signal_sent_before_the_wait_is_kept(store_url: str) -> None:
    async with legion.Runtime(store_url, worker=False) as rt:
        w = await rt.submit(waiter, {"x": 1})
        assert await rt.signal(w.id, "go", "early") is TaskStatus.QUEUED
        assert await rt.signal(w.id, "go", "early too") is TaskStatus.QUEUED
    async with legion.Runtime(store_url, agents=[waiter]) as rt:
        result = await rt.result(w.id)
    assert result.output["got"] == "early" and result.output["second"] == "early too"


async def test_a_finished_or_unknown_task_takes_no_signal(store_url: str) -> None:
    async with legion.Runtime(store_url, agents=[quick]) as rt:
        done = await rt.result((await rt.submit(quick, {"i": 1})).id)
        assert await rt.signal(done.id, "go") is TaskStatus.SUCCEEDED
        assert await rt.signal(10_000, "go") is None
        assert await rt.store.signal_data(done.id, "go", 0) is None


async def test_wait_for_times_out_on_the_clock(store_url: str) -> None:
    clock = FakeClock()
    async with legion.Runtime(store_url, clock=clock, agents=[impatient]) as rt:
        t = await rt.submit(impatient, {})
        await _until(rt, t.id, TaskStatus.WAITING)
        (info,) = await rt.store.waiting_tasks()
        assert info.event == "never" and info.wake_at is not None
        await clock.advance(10)
        assert rt.worker is not None
        await rt.worker.reap()  # the timers' pass, as the reaper loop makes it
        result = await rt.result(t.id)
    assert result.output == "timed out"


async def test_a_sleep_or_timeout_json_cannot_record_fails_with_what_is_wrong(
    store_url: str,
) -> None:
    async with legion.Runtime(store_url, agents=[odd_sleeper, odd_waiter]) as rt:
        cases = [
            (odd_sleeper, "nan", "seconds must be a finite number, not nan"),
            (odd_sleeper, "inf", "seconds must be a finite number, not inf"),
            (odd_waiter, "nan", "timeout must be a number of seconds, not nan"),
            (odd_waiter, "'5'", "timeout must be a number of seconds, not '5'"),
        ]
        for agent, seconds, message in cases:
            result = await rt.result((await rt.submit(agent, {"seconds": seconds})).id)
            assert result.status is TaskStatus.FAILED, (seconds, result)  # not left waiting
            assert result.error is not None
            # A WaitError (a ValueError no retry mends): failed at its first attempt.
            assert (result.error.type, result.error.message) == ("WaitError", message)
            assert result.attempt == 1
        # A time already past (a deadline a moment late) returns at once, as a wait's
        # timeout does: it failed the task for good.
        late = await rt.result((await rt.submit(odd_sleeper, {"seconds": "-0.2"})).id)
        assert late.status is TaskStatus.SUCCEEDED, late


async def test_only_a_json_true_approves(store_url: str) -> None:
    answers = [
        ({"approved": True, "by": "ana"}, True),
        (True, True),
        ({"approved": "false", "by": "a form"}, False),
        ({"approved": "no"}, False),
        ({"approved": 1}, False),
        ("yes", False),
        ({"by": "bob"}, False),
    ]
    async with legion.Runtime(store_url, agents=[judge]) as rt:
        for data, approved in answers:
            t = await rt.submit(judge, {})
            await _until(rt, t.id, TaskStatus.WAITING)
            await rt.signal(t.id, "approval", data)
            result = await rt.result(t.id)
            assert result.ok, result.error
            assert result.output is approved, data


async def test_durable_sleep_survives_a_restart(store_url: str) -> None:
    LEDGER.clear()
    clock = FakeClock()
    async with legion.Runtime(store_url, clock=clock, agents=[sleeper]) as rt:
        t = await rt.submit(sleeper, {})
        await _until(rt, t.id, TaskStatus.WAITING)
    # A new process an hour later (the runtime above is gone: nothing held the task).
    await clock.advance(3600)
    async with legion.Runtime(store_url, clock=clock, agents=[sleeper]) as rt:
        result = await rt.result(t.id)
    assert result.output == "rested"
    assert [f"{t.id}:before", f"{t.id}:after"] == LEDGER


async def test_an_early_restart_does_not_end_a_durable_sleep(store_url: str) -> None:
    clock = FakeClock()
    async with legion.Runtime(store_url, clock=clock, agents=[sleeper]) as rt:
        t = await rt.submit(sleeper, {})
        await _until(rt, t.id, TaskStatus.WAITING)
    await clock.advance(1800)  # half the sleep
    async with legion.Runtime(store_url, clock=clock, agents=[sleeper]) as rt:
        assert rt.worker is not None
        await rt.worker.reap()
        info = await rt.get(t.id)
    assert info is not None and info.status is TaskStatus.WAITING


async def test_an_approval_shows_its_prompt_and_ends_with_the_answer(store_url: str) -> None:
    async with legion.Runtime(store_url, agents=[gate]) as rt:
        t = await rt.submit(gate, {"amount": 40})
        await _until(rt, t.id, TaskStatus.WAITING)
        (info,) = await rt.store.waiting_tasks()
        assert info.id == t.id and info.info == {"kind": "approval", "prompt": "pay 40 EUR?"}
        await rt.signal(t.id, "approval", {"approved": True, "by": "ana"})
        result = await rt.result(t.id)
    assert result.output == {"approved": True, "by": "ana"}


async def test_a_waiting_task_can_be_cancelled(store_url: str) -> None:
    async with legion.Runtime(store_url, agents=[gate]) as rt:
        t = await rt.submit(gate, {"amount": 1})
        await _until(rt, t.id, TaskStatus.WAITING)
        assert await rt.cancel(t.id) is TaskStatus.CANCELLED
        assert await rt.store.waiting_tasks() == []


async def test_children_fan_out_within_their_limit_and_answer_in_order(store_url: str) -> None:
    async with legion.Runtime(store_url, agents=[fan_out, double]) as rt:
        t = await rt.submit(fan_out, {"n": 60, "limit": 8})
        result = await rt.result(t.id)
        children = await rt.store.children(t.id)
    assert result.ok, result.error
    assert result.output == {"sum": 2 * sum(range(60)), "first": [0, 2, 4], "one": 200}
    assert len(children) == 61 and {c.status for c in children} == {TaskStatus.SUCCEEDED}


@legion.agent(retries=0)
async def gathered_children(ctx: Any, n: int) -> Any:
    spawned = await ctx.gather(*(ctx.spawn(double, {"i": i}) for i in range(n)))
    same = await ctx.gather(*(ctx.spawn(double, {"i": 7}) for _ in range(3)))
    mapped = await ctx.gather(ctx.map(double, [1, 2]), ctx.map(double, [3, 4, 5]))
    return {"spawned": spawned, "same": same, "mapped": mapped}


async def test_spawns_and_maps_gathered_together_each_start_their_own_children(
    store_url: str,
) -> None:
    # Their place was counted when their outputs were recorded, at their end: gathered
    # calls all took the first one's children (one child for five spawns of one input;
    # IdempotencyConflict, the task dead, for other inputs).
    async with legion.Runtime(store_url, agents=[gathered_children, double]) as rt:
        t = await rt.submit(gathered_children, {"n": 5})
        result = await rt.result(t.id)
        children = await rt.store.children(t.id)
    assert result.ok, result.error
    assert result.output == {
        "spawned": [0, 2, 4, 6, 8],
        "same": [14, 14, 14],
        "mapped": [[2, 4], [6, 8, 10]],
    }
    assert len(children) == 5 + 3 + 5


async def test_a_child_agent_the_runtime_was_not_given_runs_all_the_same(store_url: str) -> None:
    # `submit` registers the agent it is given; `ctx.spawn` and `ctx.map` did not: the
    # children stayed queued, served by no one, and the parent waited for good.
    async with legion.Runtime(store_url) as rt:
        t = await rt.submit(fan_out, {"n": 5, "limit": 2})
        async with asyncio.timeout(60):
            result = await rt.result(t.id)
    assert result.ok, result.error
    assert result.output == {"sum": 2 * sum(range(5)), "first": [0, 2, 4], "one": 200}


async def test_a_failed_child_fails_its_parent(store_url: str) -> None:
    async with legion.Runtime(store_url, agents=[fan_out_failing, double]) as rt:
        result = await rt.result((await rt.submit(fan_out_failing, {})).id)
    assert result.status is TaskStatus.FAILED
    assert result.error is not None and result.error.type == ChildFailed.__name__
    assert "1 of 3 child tasks did not succeed" in result.error.message


async def test_a_failed_map_names_its_inputs_and_keeps_the_others_outputs(store_url: str) -> None:
    """It named the failed children by task id ("5 (dead)", read as input 5) and gave no
    way to the outputs of the others, which succeeded."""
    async with legion.Runtime(store_url, agents=[fan_out_caught, double]) as rt:
        result = await rt.result((await rt.submit(fan_out_caught, {})).id)
    assert result.ok, result.error
    caught = result.output
    assert caught["outputs"] == [2, None, 4] and caught["failed"] == ["failed"]
    assert "did not succeed: input 1 (task " in caught["said"], caught["said"]
    assert ", failed: Permanent: negative -1)" in caught["said"], caught["said"]


async def test_a_schedule_tick_is_claimed_once(store_url: str) -> None:
    store = store_from_url(store_url)
    await store.open()
    try:
        now = 1_800_000_000.0
        s = schedule("hourly", "0 * * * *", "quick", codec.dumps({"i": 1}), now - 7200)
        await store.add_schedule(s, now)
        # Two workers saw the same due tick; one claim wins.
        (due,) = await store.due_schedules(now)
        task = NewTask("quick", codec.dumps({"i": 1}), "schedule:hourly:t")
        assert await store.claim_tick(due, now + 60, task, now)
        assert not await store.claim_tick(due, now + 60, task, now)
        # Missed ticks run once: the next pass finds nothing due until the next tick.
        assert await run_due(store, now, {"quick": quick}) == 0
        later = await run_due(store, now + 3600, {"quick": quick})
        assert later == 1
        counts = await store.counts()
        assert counts == {TaskStatus.QUEUED: 2}
        assert [x.name for x in await store.schedules()] == ["hourly"]
        assert await store.remove_schedule("hourly") and not await store.remove_schedule("hourly")
    finally:
        await store.aclose()


async def test_a_cron_that_no_longer_matches_for_years_stops_no_other_schedule(
    store: Store,
) -> None:
    """Feb 1 on a Monday: 2027, then 2038. Past 2027 its next tick is beyond the five
    years a cron is searched, and every schedule pass failed on it."""
    added = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    later = datetime(2027, 3, 1, tzinfo=UTC).timestamp()
    await store.add_schedule(schedule("rare", "0 0 */29 2 1", "quick", b"{}", added), added)
    await store.add_schedule(schedule("often", "* * * * *", "quick", b"{}", added), added)
    assert await run_due(store, later, {"quick": quick}) == 1  # often's (rare's is 2027-02-01)
    assert await run_due(store, later + 61, {"quick": quick}) == 1


async def test_a_tick_set_by_a_clock_that_ran_ahead_is_moved_back(store: Store) -> None:
    """A worker whose clock ran two hours ahead ran a tick and set the next one two hours
    on: once the clock is right again, the schedule runs on its cron, not two hours on."""
    now = 1_800_000_000.0  # (on a minute)
    agents = {"quick": quick}
    await store.add_schedule(schedule("every", "* * * * *", "quick", b"{}", now), now)
    assert await run_due(store, now + 7200 + 1, agents) == 1  # the clock ahead
    (ahead,) = await store.schedules()
    assert ahead.next_tick == now + 7260
    assert await run_due(store, now + 30, agents) == 0  # the clock stepped back: moved
    (back,) = await store.schedules()
    assert back.next_tick == now + 60
    # That tick ran already (the run ahead was of the first tick missed): moved on.
    assert await run_due(store, now + 61, agents) == 0
    (on,) = await store.schedules()
    assert on.next_tick == now + 120
    # Within a minute of skew, a next tick is left as it is.
    assert await run_due(store, now + 70, agents) == 0
    assert (await store.schedules())[0].next_tick == now + 120
    assert await run_due(store, now + 121, agents) == 1  # and the next runs at its minute
    assert (await store.counts()) == {TaskStatus.QUEUED: 2}


@legion.agent(retries=0, resources={"gpu": 1})
async def once_on_a_gpu(ctx: Any, i: int) -> int:
    return i


async def test_a_tick_is_run_as_its_agent_makes_tasks_by_a_worker_that_serves_it(
    store: Store,
) -> None:
    # Every tick's task had 4 attempts (an agent of retries=0 ran four times), no
    # resources (a GPU agent ran on any worker), and was queued by whichever worker saw
    # the tick first, served or not.
    now = 1_800_000_000.0
    made = schedule("gpu", "0 * * * *", "once_on_a_gpu", codec.dumps({"i": 1}), now - 7200)
    await store.add_schedule(made, now)
    assert await run_due(store, now, {"quick": quick}) == 0  # not this worker's agent
    assert await run_due(store, now, {"once_on_a_gpu": once_on_a_gpu}) == 1
    key = tick_key("gpu", made.next_tick)
    task = (await store.find_keys([key]))[key]
    assert task.max_attempts == 1 and task.agent == "once_on_a_gpu"
    wants = {"once_on_a_gpu": 10}
    assert await store.lease("w", wants, 10, now + 31, now + 1) == []  # offers no GPU
    offered = await store.lease("w", wants, 10, now + 31, now + 1, offer={"gpu": 1})
    assert [t.id for t in offered] == [task.id]


async def test_a_schedule_added_again_keeps_the_tick_that_is_due(store: Store) -> None:
    # A deploy that adds its schedules again (unchanged) while a tick was due and not yet
    # claimed skipped that tick: the next tick after now replaced it.
    now = 1_800_000_000.0
    hourly = schedule("hourly", "0 * * * *", "quick", codec.dumps({"i": 1}), now - 7200)
    await store.add_schedule(hourly, now - 7200)
    again = schedule("hourly", "0 * * * *", "quick", codec.dumps({"i": 2}), now)
    await store.add_schedule(again, now)  # (its input changed: the due tick takes it)
    assert [s.next_tick for s in await store.schedules()] == [hourly.next_tick]
    assert await run_due(store, now, {"quick": quick}) == 1
    (ran,) = (await store.find_keys([tick_key("hourly", hourly.next_tick)])).values()
    assert ran.input == {"i": 2}
    other_cron = schedule("hourly", "30 * * * *", "quick", codec.dumps({"i": 2}), now)
    await store.add_schedule(other_cron, now)  # another cron: its own next tick
    assert [s.next_tick for s in await store.schedules()] == [other_cron.next_tick]


async def test_a_tick_already_run_moves_on_and_other_schedules_go_on(store: Store) -> None:
    # On SQLite, a tick whose key a task of the schedule's earlier definition held (it was
    # replaced, by a host whose clock was behind) failed every reaper pass, for good, and
    # stopped every other schedule with it.
    now = 1_800_000_000.0
    first = schedule("a", "0 * * * *", "quick", codec.dumps({"i": 1}), now - 7200)
    await store.add_schedule(first, now - 7200)
    key = tick_key("a", first.next_tick)
    await store.submit([NewTask("quick", codec.dumps({"i": 1}), key)], now - 3600)
    await store.add_schedule(dataclasses.replace(first, input=codec.dumps({"i": 2})), now)
    other = schedule("b", "0 * * * *", "quick", codec.dumps({"i": 3}), now - 7200)
    await store.add_schedule(other, now)
    assert await run_due(store, now, {"quick": quick}) == 1  # b's; a's ran before
    assert {s.name: s.next_tick > now for s in await store.schedules()} == {
        "a": True,
        "b": True,
    }
    ran = (await store.find_keys([key]))[key]
    assert ran.input == {"i": 1}


async def test_a_schedule_that_skips_overlaps_passes_ticks_while_its_last_task_runs(
    store: Store,
) -> None:
    """A task that outlasts its period: with ``overlap="skip"`` the ticks while it runs
    are passed over (by default every tick runs beside it); each tick run is the
    schedule's last task, and the next tick after its end runs again."""
    now = 1_800_000_000.0  # (on a minute)
    agents = {"quick": quick}
    for name, overlap in (("stacks", "allow"), ("skips", "skip")):
        made = schedule(name, "* * * * *", "quick", b"{}", now - 1, overlap=overlap)
        await store.add_schedule(made, now - 1)
    assert await run_due(store, now, agents) == 2
    first = {s.name: s for s in await store.schedules()}
    assert first["skips"].overlap == "skip" and first["stacks"].overlap == "allow"
    ran = (await store.find_keys([tick_key("skips", now)]))[tick_key("skips", now)]
    assert first["skips"].last_task == ran.id
    assert await run_due(store, now + 60, agents) == 1  # stacks runs; skips' task is queued
    assert await run_due(store, now + 120, agents) == 1
    skips = {s.name: s for s in await store.schedules()}["skips"]
    assert skips.next_tick == now + 180 and skips.last_task == ran.id  # passed over twice
    # Its task ends: the next tick runs again.
    leases = await store.lease("w", {"quick": 10}, 10, now + 600, now + 130)
    (mine,) = [lease for lease in leases if lease.id == ran.id]
    ended = Completion(
        mine.id, mine.attempt, "w", Outcome.SUCCEEDED, started_at=now + 130, finished_at=now + 131
    )
    assert await store.write(WriteBatch(completions=[ended]), now + 131) == [True]
    assert await run_due(store, now + 180, agents) == 2
    skips = {s.name: s for s in await store.schedules()}["skips"]
    assert skips.last_task not in (None, ran.id) and skips.next_tick == now + 240


@legion.agent(retries=0)
async def patient(ctx: Any) -> Any:
    with contextlib.suppress(WaitTimeout):
        await ctx.wait_for("late", timeout=5)
    return await ctx.wait_for("late")  # the signal that came after the timeout


async def test_a_wait_that_timed_out_takes_no_signal_from_the_next(store_url: str) -> None:
    clock = FakeClock()
    async with legion.Runtime(store_url, clock=clock, agents=[patient]) as rt:
        t = await rt.submit(patient, {})
        await _until(rt, t.id, TaskStatus.WAITING)
        await clock.advance(5)
        assert rt.worker is not None
        await rt.worker.reap()
        # The second wait (the reaper's own pass may end the first one a moment later).
        for _ in range(2000):
            waiting = await rt.store.waiting_tasks()
            if waiting and waiting[0].wake_at is None:
                break
            await asyncio.sleep(0.01)
        (info,) = await rt.store.waiting_tasks()
        # The wait that timed out kept its place in the count: this one is the second
        # (both were numbered 1, and an answer meant for the first, a click on a row
        # shown before it timed out, was taken for this one).
        assert (info.event, info.count, info.wake_at) == ("late", 2, None)
        with pytest.raises(NotAwaited):
            await rt.signal(t.id, "late", "stale", waiting=1)
        await rt.signal(t.id, "late", "here", waiting=2)
        result = await rt.result(t.id)
    assert result.output == "here"


@legion.agent(retries=0)
async def asks_twice(ctx: Any) -> Any:
    asked = []
    for k in range(2):
        try:
            answer = await ctx.approval(f"ask {k}?", timeout=5)
        except WaitTimeout:
            asked.append({"ask": k, "timeout": True})
        else:
            asked.append({"ask": k, "approved": answer.approved})
    return asked


async def test_an_approval_shown_before_it_timed_out_is_not_the_answer_to_the_next(
    store_url: str,
) -> None:
    clock = FakeClock()
    async with legion.Runtime(store_url, clock=clock, agents=[asks_twice]) as rt:
        t = await rt.submit(asks_twice, {})
        await _until(rt, t.id, TaskStatus.WAITING)
        (shown,) = await rt.store.waiting_tasks()
        assert (shown.count, shown.info["prompt"]) == (1, "ask 0?")
        await clock.advance(5)
        assert rt.worker is not None
        await rt.worker.reap()
        for _ in range(2000):
            waiting = await rt.store.waiting_tasks()
            if waiting and waiting[0].info["prompt"] == "ask 1?":
                break
            await asyncio.sleep(0.01)
        # The dashboard's button for the row shown first sends its count.
        with pytest.raises(NotAwaited):
            await rt.signal(t.id, "approval", {"approved": True}, waiting=shown.count)
        (now,) = await rt.store.waiting_tasks()
        await rt.signal(t.id, "approval", {"approved": False}, waiting=now.count)
        result = await rt.result(t.id)
    assert result.output == [{"ask": 0, "timeout": True}, {"ask": 1, "approved": False}]


@legion.agent(retries=0)
async def gathers(ctx: Any) -> Any:
    a, b = await ctx.gather(ctx.step("a", lambda: 1), ctx.wait_for("b"), return_exceptions=True)
    return [a, b]


async def test_a_wait_inside_gather_suspends_the_task(store_url: str) -> None:
    async with legion.Runtime(store_url, agents=[gathers]) as rt:
        t = await rt.submit(gathers, {})
        await _until(rt, t.id, TaskStatus.WAITING)
        await rt.signal(t.id, "b", 2)
        result = await rt.result(t.id)
    assert result.output == [1, 2]


async def test_a_wait_for_an_event_no_signal_can_name_fails_at_once(store_url: str) -> None:
    # The HTTP API and `legion signal` take event names of up to 200 characters: a task
    # waiting for a longer one could never be woken.
    async with legion.Runtime(store_url, agents=[long_event_waiter]) as rt:
        long = await rt.result((await rt.submit(long_event_waiter, {"length": 201})).id)
        fits = await rt.submit(long_event_waiter, {"length": 200})
        await _until(rt, fits.id, TaskStatus.WAITING)
        assert await rt.signal(fits.id, "e" * 200) is TaskStatus.QUEUED
        assert (await rt.result(fits.id)).output == "signalled"
    assert long.status is TaskStatus.FAILED
    assert long.error is not None
    assert long.error.message == "an event name is at most 200 characters (a signal's), not 201"


@legion.agent(retries=0)
async def minute_sleeper(ctx: Any) -> str:
    await ctx.sleep(60)
    return "rested"


async def test_a_durable_sleep_is_timed_on_the_databases_clock_not_a_skewed_workers(
    postgres_url: str,
) -> None:
    # A worker 5 minutes behind the database woke a 20 s sleep after 12 s (and one ahead,
    # after 322 s); with both clocks, the task bounced between them until one agreed.
    import time

    store = store_from_url(postgres_url)  # on the database's clock
    await store.open()
    behind = FakeClock(wall=time.time() - 300)
    try:
        async with legion.Runtime(store, clock=behind, agents=[minute_sleeper]) as rt:
            t = await rt.submit(minute_sleeper, {})
            await _until(rt, t.id, TaskStatus.WAITING)
            database_now = await store.now()
            (wake_at,) = [s.output for s in await store.steps(t.id) if s.key == "legion.sleep"]
            assert database_now < wake_at <= database_now + 60
            await behind.advance(120)  # past the wake-up time the worker's clock would set
            assert rt.worker is not None
            await rt.worker.reap()  # the timers' pass
            info = await rt.get(t.id)
    finally:
        await store.aclose()
    assert info is not None and info.status is TaskStatus.WAITING  # not woken early


@legion.agent(retries=0)
async def inbox(ctx: Any) -> Any:
    first = await ctx.wait_for("x", timeout=3)  # its signal is there: answered at once
    await ctx.sleep(5)  # the task suspends; the next attempt replays the wait above
    try:
        return [first, await ctx.wait_for("x", timeout=60)]
    except WaitTimeout as exc:
        return [first, str(exc)]


async def test_a_later_wait_with_a_timeout_keeps_its_own_deadline_after_a_replay(
    store_url: str,
) -> None:
    # The replayed first wait did not replay its deadline: the second wait took the
    # first's (5 s past) as its own and timed out at once, saying it waited 60 s.
    clock = FakeClock()
    async with legion.Runtime(store_url, clock=clock, agents=[inbox]) as rt:
        t = await rt.submit(inbox, {})
        await rt.signal(t.id, "x", "first")
        await _until(rt, t.id, TaskStatus.WAITING)  # the sleep
        await clock.advance(5)
        assert rt.worker is not None
        await rt.worker.reap()
        for _ in range(2000):  # the second wait, with its own 60 s
            waiting = await rt.store.waiting_tasks()
            if waiting and waiting[0].event == "x":
                break
            await asyncio.sleep(0.01)
        (info,) = await rt.store.waiting_tasks()
        assert (info.event, info.count) == ("x", 2)
        assert info.wake_at is not None and info.wake_at >= clock.wall() + 59
        await rt.signal(t.id, "x", "second")
        result = await rt.result(t.id)
    assert result.output == ["first", "second"]


@legion.agent(retries=2, backoff=0)
async def two_at_once(ctx: Any) -> Any:
    return await ctx.gather(ctx.wait_for("a"), ctx.wait_for("a"))


@legion.agent(retries=0)
async def for_ever(ctx: Any) -> Any:
    return await ctx.wait_for("late", timeout=float("inf"))


async def test_two_waits_for_one_event_at_once_are_refused(store_url: str) -> None:
    # Both read the same count of signals taken: they received one signal twice.
    async with legion.Runtime(store_url, agents=[two_at_once]) as rt:
        t = await rt.submit(two_at_once, {})
        await rt.signal(t.id, "a", "only one")
        result = await rt.result(t.id)
    assert result.status is TaskStatus.FAILED and result.attempt == 1
    assert result.error is not None and result.error.type == "WaitError"
    assert "already waits for 'a'" in result.error.message


async def test_an_infinite_timeout_waits_as_no_timeout(store_url: str) -> None:
    async with legion.Runtime(store_url, agents=[for_ever]) as rt:
        t = await rt.submit(for_ever, {})
        await _until(rt, t.id, TaskStatus.WAITING)
        (info,) = await rt.store.waiting_tasks()
        assert (info.event, info.wake_at) == ("late", None)
        await rt.signal(t.id, "late", 1)
        assert (await rt.result(t.id)).output == 1


async def test_the_runtime_refuses_a_signal_no_wait_can_receive(store_url: str) -> None:
    async with legion.Runtime(store_url, agents=[for_ever]) as rt:
        t = await rt.submit(for_ever, {})
        for event, message in [
            ("", "non-empty"),
            ("e" * 201, "at most 200 characters"),
            ("e\x00", "no NUL"),
        ]:
            try:
                await rt.signal(t.id, event)
            except ValueError as exc:
                assert message in str(exc)
            else:
                raise AssertionError(f"a signal {event[:10]!r} was taken")
        # Data nested 254 levels deep was taken ("queued"), and the task failed where it
        # received it: its record of the signal, one level more, could not be stored.
        deep: Any = 1
        for _ in range(254):
            deep = [deep]
        for data, message in [
            (deep, "nested deeper than 200 levels"),
            (float("nan"), "cannot be sent as JSON: value is NaN or infinite"),
            (b"raw", "cannot be sent as JSON: Type is not JSON serializable: bytes"),
        ]:
            try:
                await rt.signal(t.id, "go", data)
            except ValueError as exc:
                assert message in str(exc), exc
            else:
                raise AssertionError(f"the data {str(data)[:10]!r} was taken")
        assert await rt.store.signal_data(t.id, "go", 0) is None  # (nothing kept)
        await rt.cancel(t.id)


@legion.agent(retries=0)
async def stays(ctx: Any, i: int) -> int:
    return int(await ctx.wait_for("never"))


@legion.agent(retries=0)
async def brood(ctx: Any, n: int) -> Any:
    return await ctx.map(stays, list(range(n)), concurrency=n)


async def test_a_cancel_with_children_cancels_the_unfinished_descendants(store_url: str) -> None:
    # A cancelled parent left its children waiting (running ones ran on): they could be
    # reached only one by one.
    async with legion.Runtime(store_url, agents=[brood, stays]) as rt:
        kept, ended = (await rt.submit(brood, {"n": 2})).id, (await rt.submit(brood, {"n": 3})).id
        for parent, n in ((kept, 2), (ended, 3)):
            await _until(rt, parent, TaskStatus.WAITING)
            for child in (c.id for c in await rt.store.children(parent)):
                await _until(rt, child, TaskStatus.WAITING)
            assert len(await rt.store.children(parent)) == n
        assert await rt.cancel(kept) is TaskStatus.CANCELLED
        assert await rt.cancel(ended, children=True) is TaskStatus.CANCELLED
        left = {c.status for c in await rt.store.children(kept)}
        gone = {c.status for c in await rt.store.children(ended)}
    assert left == {TaskStatus.WAITING}  # (a retry of the parent picks them up again)
    assert gone == {TaskStatus.CANCELLED}


@legion.agent(retries=0)
async def bumps_memory(ctx: Any) -> list[int]:
    count = await ctx.memory.get("outside", 0)  # not a step: runs again at each resume
    await ctx.memory.set("outside", count + 1)

    async def bump() -> None:
        await ctx.memory.set("inside", await ctx.memory.get("inside", 0) + 1)

    await ctx.step("bump", bump)  # a step: once
    await ctx.wait_for("one")
    await ctx.wait_for("two")
    return [await ctx.memory.get("outside"), await ctx.memory.get("inside")]


async def test_a_memory_write_outside_a_step_runs_again_at_each_resume(store_url: str) -> None:
    # What docs/semantics.md ("Where a side effect may repeat") and docs/waiting.md say.
    async with legion.Runtime(store_url, agents=[bumps_memory]) as rt:
        t = await rt.submit(bumps_memory, {})
        for event in ("one", "two"):
            for _ in range(2000):
                waits = await rt.store.waiting_tasks(limit=10)
                if [w.event for w in waits if w.id == t.id] == [event]:
                    break
                await asyncio.sleep(0.01)
            await rt.signal(t.id, event)
        result = await rt.result(t.id)
    assert result.output == [3, 1] and result.attempt == 1


@legion.agent(retries=0)
async def approves_and_maps(ctx: Any, n: int) -> Any:
    go, done = await ctx.gather(
        ctx.wait_for("go"), ctx.map(quick, [{"i": i} for i in range(n)], concurrency=4)
    )
    return [go, sum(done)]


async def _succeeded(rt: legion.Runtime, agent: str) -> int:
    return (await rt.store.counts_by_agent()).get(agent, {}).get(TaskStatus.SUCCEEDED, 0)


async def test_a_map_gathered_after_a_wait_goes_on_while_the_wait_does(store_url: str) -> None:
    """The gather suspended at its first awaitable's wait alone: the map ran its first 4
    children, then stood still until the signal came (for good, had the signal waited
    for the map's results, as an approval of the work does)."""
    async with legion.Runtime(store_url, agents=[approves_and_maps, quick]) as rt:
        parent = await rt.submit(approves_and_maps, {"n": 40})
        async with asyncio.timeout(60):  # (a bound on a broken test: the map stood still)
            while await _succeeded(rt, "quick") < 40:  # noqa: ASYNC110 - the store's counts
                await asyncio.sleep(0.05)
            # (woken by the last child's end, it replays and waits for "go" alone)
            await _until(rt, parent.id, TaskStatus.WAITING)
        await rt.signal(parent.id, "go", "yes")
        result = await rt.result(parent.id)
    assert result.output == ["yes", sum(range(40))]
