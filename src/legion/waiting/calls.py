"""The waiting calls of the context: ``wait_for``, ``sleep``, ``approval``, ``spawn``, ``map``.

Each is deterministic on replay. What it received is recorded as a step (so a replay
returns the same value), and where it must wait it raises
`legion.waiting.suspend.Suspended` with what it waits for; the task is queued again
once that holds, and its next attempt replays to the same call, which then finds it.

- ``wait_for(event)``: the n-th wait for ``event`` that receives a signal receives the
  n-th signal of that name sent to the task, whenever it was sent (a signal sent before
  the wait is kept; a wait that timed out took none).
- ``sleep(seconds)``: the wake-up time is recorded on the first run, so the sleep ends at
  the same time however often the task is replayed or moved.
- ``spawn`` / ``map``: child tasks get idempotency keys derived from the parent's id and
  the call's position, so a replay finds the children it submitted before. ``map`` keeps
  at most ``concurrency`` children unfinished, submitting more each time the parent wakes
  (when half of them ended); the parent waits suspended, holding no slot.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from legion import codec
from legion.errors import ChildFailed, ReplayMismatch, WaitError, WaitTimeout
from legion.steps import scoped
from legion.store.tenancy import matches
from legion.store.waiting import TIMED_OUT
from legion.task import NewTask, TaskInfo, TaskStatus, Wait
from legion.waiting.suspend import Suspended

if TYPE_CHECKING:
    from legion.agent import Agent
    from legion.clock import Clock
    from legion.steps import Waiter
    from legion.store.base import ContextStore
    from legion.store.waiting import ChildInfo


CHILD_AGENTS: contextvars.ContextVar[Callable[[Agent], None] | None] = contextvars.ContextVar(
    "legion_child_agents", default=None
)
"""Set by a worker for the instances it runs: an agent object given to ``ctx.spawn`` or
``ctx.map`` is offered to it, so that the worker that has the child's code runs it (in a
`legion.Runtime` that never registered the child, its tasks waited, queued, for good)."""

APPROVAL_EVENT = "approval"
MAX_EVENT = 200
"""The longest event name (characters): what every way of sending a signal takes (the HTTP
API, `legion signal`), so that a task never waits for one it cannot be sent."""


@dataclass(frozen=True, slots=True)
class Approval:
    """The answer to ``ctx.approval``: ``approved`` (the signal's data was
    ``{"approved": true, ...}`` or ``true``: anything else is a no), and the whole data."""

    approved: bool
    data: Any = field(default=None)


def event_problem(event: object) -> str | None:
    """What is wrong with ``event`` as an event name (a signal's, a wait's), if anything."""
    if not isinstance(event, str) or not event:
        return "an event name is a non-empty string"
    if len(event) > MAX_EVENT:
        return f"an event name is at most {MAX_EVENT} characters (a signal's), not {len(event)}"
    if "\x00" in event:
        return "an event name holds no NUL character (a store's text cannot)"
    return None


def _seconds(value: object, what: str) -> float:
    """``value`` as a number of seconds, or `WaitError` (a bool, a string, NaN)."""
    if not isinstance(value, bool) and isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # (an int past a float's range: longer than any wait)
            seconds = math.inf if value > 0 else -math.inf
        if not math.isnan(seconds):
            return seconds
    raise WaitError(f"{what} must be a number of seconds, not {value!r}"[:300])


_LONGEST = 1e300  # (seconds: past it a wake-up time would not be a finite float)


def _step_key(ctx: Waiter, name: str) -> str:
    """The key `Context.record` will give the next step named ``name`` (in the current
    branch of a gather, as `legion.steps.step_key` counts)."""
    n = ctx.step_count(name) + 1
    name = scoped(name)
    return name if n == 1 else f"{name}#{n}"


async def _recorded(ctx: Waiter, name: str, value: Callable[[], Any]) -> Any:
    """Record ``value()`` as the next step named ``name`` (or replay it)."""
    return await ctx.record(name, value, (), {}, None)


async def wait_for(
    ctx: Waiter,
    store: ContextStore,
    clock: Clock,
    event: str,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - a durable wait
    info: Any = None,
) -> Any:
    if problem := event_problem(event):
        raise WaitError(problem)
    if timeout is not None:
        timeout = _seconds(timeout, "timeout")
        if math.isinf(timeout):
            timeout = None if timeout > 0 else 0.0  # (for ever: as None; -inf: at once)
    waits = ctx.waits_out
    if event in waits:
        raise WaitError(
            f"this task already waits for {event!r}: two waits for one event at once "
            "(ctx.gather) would receive the same signal; wait for its signals one after "
            "the other"
        )
    waits.add(event)
    try:
        return await _wait_for(ctx, store, event, timeout, info)
    finally:
        waits.discard(event)


async def _wait_for(
    ctx: Waiter,
    store: ContextStore,
    event: str,
    timeout: float | None,  # noqa: ASYNC109 - a durable wait
    info: Any,
) -> Any:
    name = f"legion.wait:{event}"
    until_name = f"legion.wait-until:{event}"
    # The signals of this event that earlier waits received (a wait that timed out took
    # none): this wait receives the next one.
    index = ctx.signals_taken.get(event, 0)
    if _step_key(ctx, name) in ctx.recorded_steps:
        if timeout is not None and _step_key(ctx, until_name) in ctx.recorded_steps:
            # Its deadline was recorded before it: replayed too, so that the next wait
            # with a timeout for this event finds its own deadline, not this one's.
            await _recorded(ctx, until_name, _never)
        got = await _recorded(ctx, name, _never)
        return _received(ctx, event, got)
    wake_at = None
    now = 0.0
    if timeout is not None:
        now = await store.now()  # (the timers' clock: the database's on PostgreSQL)
        until = now + timeout
        wake_at = await _recorded(ctx, until_name, lambda: until)
    data = await store.signal_data(ctx.task_id, event, index)
    if data is None and wake_at is not None and now >= wake_at:
        # Its time is up: its place in the count is kept for it, unless a signal came
        # meanwhile (then it receives that one).
        data = await store.time_out_wait(ctx.task_id, ctx.attempt, event, index, now)
    if data == TIMED_OUT:  # (this wait's place, kept by an attempt that did not record it)
        got = await _recorded(ctx, name, lambda: {"timeout": timeout, "taken": True})
        return _received(ctx, event, got)
    if data is not None:
        got = await _recorded(ctx, name, lambda: {"signal": codec.loads(data)})
        return _received(ctx, event, got)
    shown = codec.dumps(info) if info is not None else None
    raise Suspended(Wait(event=event, count=index + 1, wake_at=wake_at, info=shown))


def _received(ctx: Waiter, event: str, got: Any) -> Any:
    # A wait that timed out took its place in the count too ("taken"; one recorded before
    # places were kept for timed-out waits did not).
    if "signal" in got or got.get("taken"):
        ctx.signals_taken[event] = ctx.signals_taken.get(event, 0) + 1
    if "signal" in got:
        return got["signal"]
    raise WaitTimeout(f"no signal {event!r} came within {got['timeout']:g}s")


def _never() -> Any:
    raise AssertionError("a recorded step was asked to run")


async def sleep(ctx: Waiter, store: ContextStore, seconds: float) -> None:
    # The wake-up time is recorded as JSON, which has no NaN or infinity.
    number = not isinstance(seconds, bool) and isinstance(seconds, int | float)
    if number and seconds < 0:
        seconds = 0.0  # (before `isnan`: an int past a float's range, -10**400, is past)
    if not number or seconds > _LONGEST or math.isnan(seconds):
        raise WaitError(f"seconds must be a finite number, not {seconds!r}"[:300])
    # A time already past ("sleep until" a deadline a moment late) returns at once, as
    # `asyncio.sleep` does and a wait's timeout does: it failed the task for good.
    seconds = max(0.0, seconds)
    # Set and checked on the store's clock (the database's on PostgreSQL), as the timers
    # that wake the task are: a worker whose clock is ahead or behind wakes it on time.
    now = await store.now()
    until = now + seconds
    wake_at = await _recorded(ctx, "legion.sleep", lambda: until)
    if now >= wake_at:
        return
    raise Suspended(Wait(wake_at=wake_at))


async def approval(
    ctx: Waiter,
    store: ContextStore,
    clock: Clock,
    prompt: str,
    *,
    timeout: float | None = None,  # noqa: ASYNC109
) -> Approval:
    info = {"kind": "approval", "prompt": prompt}
    data = await wait_for(ctx, store, clock, APPROVAL_EVENT, timeout=timeout, info=info)
    # Only JSON true approves: a rejection sent as "false", "no" or 0 must not read as a
    # yes (as Python's truth would have it).
    answer = data.get("approved") if isinstance(data, dict) else data
    return Approval(answer is True, data)


async def map_children(
    ctx: Waiter,
    store: ContextStore,
    clock: Clock,
    agent: Agent | str,
    inputs: Iterable[Any],
    *,
    concurrency: int | None = None,
    max_attempts: int | None = None,
) -> list[Any]:
    items = list(inputs)
    limit = concurrency if concurrency is not None else max(1, len(items))
    if limit < 1:
        raise ValueError("concurrency must be >= 1")
    name = "legion.children"
    # The key `ctx.record` gives this call, taken before anything awaits: calls gathered
    # together get their own (and their own children) in the order they were made. (It
    # was counted when a call's outputs were recorded, at its end: gathered spawns all
    # took the first call's children.)
    group = ctx.step_count(name) + 1
    prefix = f"legion.child:{ctx.task_id}:{scoped(str(group))}:"

    async def run() -> list[Any]:
        mine = {
            c.key: c
            for c in await store.children(ctx.task_id)
            if c.key and c.key.startswith(prefix)
        }
        unfinished = sum(1 for c in mine.values() if not c.status.terminal)
        fresh = [i for i in range(len(items)) if f"{prefix}{i}" not in mine]
        room = max(0, limit - unfinished)
        if fresh and room:
            offer = CHILD_AGENTS.get()
            if offer is not None and not isinstance(agent, str):
                offer(agent)
            agent_name, attempts = _agent(agent, max_attempts)
            me = await store.get(ctx.task_id)
            _stop_if_cancelled(me)
            tenant = me.tenant if me is not None else "default"
            batch = fresh[:room]
            tasks = [
                NewTask(
                    agent_name,
                    codec.dumps(items[i])
                    if isinstance(agent, str)
                    else agent.encode_input(items[i]),
                    f"{prefix}{i}",
                    None,
                    0,
                    attempts,
                    0.0,
                    tenant,
                )
                for i in batch
            ]
            started = await store.submit_children(ctx.task_id, tasks, clock.wall())
            me = await store.get(ctx.task_id)
            if me is not None and me.cancel_requested:
                # Asked while they were submitted: a cancel with children that walked them
                # before they were linked missed them. They are cancelled here (a cancel
                # that saw them cancelled them already: nothing changes).
                for s in started:
                    await store.cancel(s.id, clock.wall())
            _stop_if_cancelled(me)
            unfinished += len(batch)
            fresh = fresh[room:]
        if not fresh and unfinished == 0:
            _same_calls(agent, items, prefix, mine)
            return _outputs(prefix, len(items), mine)
        # Wake when half the window is free (or, with nothing left to submit, when all
        # ended).
        threshold = (limit - max(1, limit // 2)) if fresh else 0
        raise Suspended(Wait(children=threshold))

    outputs = list(await ctx.record(name, run, (), {}, None))
    if len(outputs) != len(items):  # (replayed: recorded for another number of inputs)
        raise ReplayMismatch(
            f"this task's call {scoped(str(group))} to ctx.spawn or ctx.map recorded the "
            f"outputs of {len(outputs)} child tasks, and this run gives it {len(items)} "
            "inputs: the agent's code changed after the call had ended. Its outputs are "
            "replayed as recorded (as a step's are), so a call changed then must keep its "
            "inputs; retry the task once its code asks what it asked before"
        )
    return outputs


def _same_calls(
    agent: Agent | str, items: list[Any], prefix: str, children: dict[str, ChildInfo]
) -> None:
    """Refuse children started for another agent or input than this run gives them.

    A child is found by its place (the call's count, the input's index), so code changed
    while its parent was in flight (a call added before it, inputs reordered, another
    agent) would find another call's child and hand on its output. Checked once, before
    the outputs are used: a child started by a mismatched call only makes the parent wait
    for it first."""
    agent_name = agent if isinstance(agent, str) else agent.name
    for i, item in enumerate(items):
        c = children[f"{prefix}{i}"]
        sent = codec.dumps(item)
        if not matches(c.fingerprint, agent_name, sent):
            shown = sent.decode("utf-8", "replace")
            shown = shown if len(shown) <= 200 else shown[:200] + "..."
            raise ReplayMismatch(
                f"child task {c.id} was started at this place (input {i} of this task's "
                f"call {prefix.split(':')[2]} to ctx.spawn or ctx.map) for another agent or "
                f"input than this run gives it ({agent_name!r}, {shown}): the agent's code "
                "changed while the task ran, or computed the input from what a replay does "
                "not see again (a time, a random number, a memory read). Its output would be "
                "another call's: retry the task once its code asks what it asked before"
            )


def _outputs(prefix: str, n: int, children: dict[str, ChildInfo]) -> list[Any]:
    failed = {}
    said: list[str] = []  # (the input's place first: a task id read as an input's number)
    out: list[Any] = []
    for i in range(n):
        c = children[f"{prefix}{i}"]
        if c.status is not TaskStatus.SUCCEEDED:
            failed[c.id] = str(c.status)
            why = f": {c.error}" if c.error is not None and len(said) < 3 else ""
            said.append(f"input {i} (task {c.id}, {c.status}{why[:200]})")
            out.append(None)
        else:
            out.append(c.output)
    if failed:
        shown = ", ".join(said[:10]) + (f" and {len(said) - 10} more" if len(said) > 10 else "")
        raise ChildFailed(f"{len(failed)} of {n} child tasks did not succeed: {shown}", failed, out)
    return out


def _agent(agent: Agent | str, max_attempts: int | None) -> tuple[str, int]:
    if isinstance(agent, str):
        return agent, max_attempts or 4
    return agent.name, max_attempts or agent.options.retry.max_attempts


def _stop_if_cancelled(me: TaskInfo | None) -> None:
    """A parent whose cancel was asked starts no more children: it ends its attempt by
    suspending (its completion, finding the cancel asked, ends it cancelled), rather than
    starting children a cancel with children, walked before, would not see."""
    if me is not None and me.cancel_requested:
        raise Suspended(Wait(children=0))


async def spawn(
    ctx: Waiter, store: ContextStore, clock: Clock, agent: Agent | str, input: Any, **kw: Any
) -> Any:
    (out,) = await map_children(ctx, store, clock, agent, [input], concurrency=1, **kw)
    return out
