"""Run one agent instance for one leased attempt, and decide what its end means.

The runner is where isolation happens: whatever the agent does — raise, hang past its
timeout, raise ``SystemExit`` — ends as a `legion.task.Completion` of that one
task, never as an exception in the worker.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import sys
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from legion import attempt, codec, telemetry
from legion.agent import Agent
from legion.clock import Clock, system_clock
from legion.context import BeforeStep, Context
from legion.diagnostics import tracking
from legion.diagnostics.lookback import escaped_exception, look_back
from legion.diagnostics.report import Diagnostic, Kind
from legion.diagnostics.unawaited import SiteRef, callers_line
from legion.diagnostics.watchdog import Capture
from legion.errors import (
    AgentCrash,
    AgentLoadError,
    BudgetExceeded,
    DeadlineExceeded,
    LeaseLost,
    RetryAfterTooLong,
    TaskTimeout,
    UnawaitedWork,
    is_fatal,
    is_retryable,
    is_unspent,
    legion_cause,
)
from legion.journal import Journal
from legion.record import record
from legion.store.base import ContextStore
from legion.task import Completion, ErrorInfo, Lease, Outcome, Wait
from legion.waiting.suspend import Suspended

if TYPE_CHECKING:
    from legion.executors import Executor
    from legion.llm.client import LLMClient


log = logging.getLogger("legion.runner")


class StopReason(enum.Enum):
    CANCELLED = "cancelled"  # a user cancelled the task: record it cancelled
    RELEASED = "released"  # the worker is shutting down: give the task back untouched
    TIMEOUT = "timeout"  # the attempt ran past its agent's timeout: a retryable failure
    LOST = "lost"  # the lease is gone (taken back, leased again): stop, write nothing


class Instance(attempt.AttemptTime):
    """One running attempt: its time (a `legion.attempt.AttemptTime`, which the LLM
    layer reads as the current attempt) and what the worker keeps of it, in one object.
    The worker keeps these by task id."""

    __slots__ = (
        "abandoned",
        "agent",
        "children",
        "ctx",
        "diagnostics",
        "entered",
        "expiry",
        "fatal",
        "lease",
        "made_at",
        "pending_block",
        "stop_reason",
        "task",
    )

    def __init__(self, lease: Lease, agent: Agent, clock: Clock = system_clock) -> None:
        # Running and waiting time of this attempt: waits for capacity pause its timeout.
        options = agent.options
        attempt.AttemptTime.__init__(
            self,
            options.timeout,
            options.deadline,
            now=clock.monotonic,
            priority=lease.priority,
            tenant=lease.tenant,
            agent=agent.name,
            budget=agent.budget,
        )
        self.lease = lease
        self.agent = agent
        self.stop_reason: StopReason | None = None
        self.task: asyncio.Task[None] | None = None
        # Whether its task has begun to run `run_instance` (see `stop`).
        self.entered = False
        # An error that every other task would meet too (a rejected API key): the
        # worker stops leasing when an instance ends with one.
        self.fatal: BaseException | None = None
        # Tasks the agent's code created, and what the diagnostics found while it ran:
        # made when there is one (most attempts have neither).
        self.children: list[asyncio.Task[Any]] | None = None
        self.made_at: list[SiteRef | None] | None = None  # (each child's creating line)
        self.diagnostics: list[Diagnostic] | None = None
        # A block of the event loop by this instance that is going on, seen by the watchdog.
        self.pending_block: Capture | None = None
        # The worker's timer bucket that holds this instance until its time is up.
        self.expiry: dict[int, Instance] | None = None
        # Its context while `run_instance` runs it (see `abandon`).
        self.ctx: Context | None = None
        # Ended by the worker while its agent ran on (see `abandon`): nothing it does after
        # that is written.
        self.abandoned = False

    # -- what the diagnostics learn about this instance (see legion.diagnostics) --------

    def spawned(self, task: asyncio.Task[Any]) -> None:
        if self.children is None or self.made_at is None:
            self.children, self.made_at = [], []
        self.children.append(task)
        self.made_at.append(callers_line(sys._getframe(1)))

    def found(self, diagnostic: Diagnostic) -> None:
        """What the diagnostics saw while it runs, to go with its attempt's record."""
        if self.diagnostics is None:
            self.diagnostics = []
        self.diagnostics.append(diagnostic)

    def escaped(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        """An exception in a task the agent spawned that nobody retrieved."""
        found = escaped_exception(self.agent.name, task, exc, self._made_at(task))
        if self.task is not None and not self.task.done():
            self.found(found)
        else:  # too late to go with the attempt's record: say it in the log
            log.warning("task %s: %s", self.lease.id, found.message)

    def never_awaited(self, coroutine: Coroutine[Any, Any, Any], frame: FrameType) -> None:
        """A coroutine its code let go without awaiting it (at ``frame``'s line, or up
        from it): what it would have done never happened."""
        made = callers_line(frame)
        where = f" let go at {made.site()}" if made is not None else ""
        self.found(
            Diagnostic(
                Kind.UNAWAITED,
                f"agent `{self.agent.name}`: coroutine {_name(coroutine)!r}{where} was "
                "never awaited, so it never ran: `await` it, or pass it to `ctx.gather`",
                made.site() if made is not None else None,
            )
        )

    def _made_at(self, task: asyncio.Task[Any]) -> SiteRef | None:
        """The agent's line that created ``task``, one of its children."""
        children, sites = self.children or (), self.made_at or ()
        return next(
            (site for child, site in zip(children, sites, strict=True) if child is task), None
        )

    def stop(self, reason: StopReason) -> None:
        if self.task is not None and not self.task.done():
            self.stop_reason = reason
            # A task cancelled before its first step never runs its coroutine, so it
            # would end without the completion its reason calls for (a cancel arriving
            # in the same turn of the loop as the lease: the task stayed leased until
            # its lease ran out). Not yet begun, it finds the reason as it begins.
            if self.entered:
                self.task.cancel()


@record
class Services:
    """What every instance of one worker runs with: made once per worker, so that starting
    an instance passes one object rather than a dozen arguments.

    ``strict``: a step or call the agent never awaited fails the task (by default it is
    reported on the task and the task goes on). ``before_step``: asked before each step
    runs (see `legion.context.BeforeStep`). ``on_end``: told by `run_instance` as its last
    act, the instance's task about to be done (the worker frees its slot then, instead of
    in a done callback: one turn of the loop and one callback less per task).
    """

    owner: str
    store: ContextStore
    journal: Journal
    clock: Clock
    rng: random.Random
    llm: LLMClient | None = None
    strict: bool = False
    before_step: BeforeStep | None = None
    on_end: Callable[[Instance], None] | None = None


async def run_instance(
    instance: Instance, services: Services, executor: Executor | None = None
) -> None:
    """Run one attempt to its end and hand the outcome to the journal; never raises.

    ``executor`` runs the agent's code elsewhere (a subprocess, a Ray cluster); by
    default it runs right here, in this task.

    An instance whose lease is lost (its writes refused with `LeaseLost`, or
    stopped for it) ends without a completion: the lease is someone else's now.
    """
    instance.entered = True
    lease, agent = instance.lease, instance.agent
    owner, journal, clock = services.owner, services.journal, services.clock
    ctx = Context(
        agent.name,
        lease,
        store=services.store,
        journal=journal,
        clock=clock,
        llm=services.llm,
        owner=owner,
        before_step=services.before_step,
    )
    instance.ctx = ctx
    # The attempt's span (while tracing), ended with what the attempt's end was.
    span = telemetry.start_task(lease, agent.name) if telemetry.tracing else None
    done: Completion | None = None
    try:
        tracking.CURRENT.set(instance)  # tasks the agent creates are known to be its own
        # Waits for capacity report to this attempt's time; an LLM call asks it how long it
        # may wait (legion.deadline).
        attempt.CURRENT.set(instance)
        started = clock.wall()
        output: bytes | None = None
        error: BaseException | None = None
        try:
            if instance.stop_reason is not None:  # stopped before it began
                raise asyncio.CancelledError
            kwargs = agent.arguments(codec.loads(lease.input))
            call = agent.fn(ctx, **kwargs) if executor is None else executor.run(agent, ctx, kwargs)
            # The agent's frame holds what it needs of its arguments for as long as it runs;
            # this frame keeps no copy of them through the instance's life.
            del kwargs
            result = await (call if span is None else telemetry.within(span, call))
            output = agent.encode_output(result)
        except asyncio.CancelledError as exc:
            # The worker cancelled this instance (timeouts are timers the worker owns, one per
            # lease batch rather than one per task); the reason says what it means.
            reason = instance.stop_reason or StopReason.RELEASED
            if reason is StopReason.LOST:
                return
            if instance.stop_reason is None and _raised_by_the_agent():
                # Nobody cancelled this task: the agent's own code raised it (it awaited
                # a future something else cancelled). An attempt that failed, counted as
                # one: given back uncounted, it would run again at once, without end.
                error = AgentCrash(exc)
            elif reason is StopReason.TIMEOUT:
                error = _timed_out(agent, instance)
            else:
                outcome = Outcome.CANCELLED if reason is StopReason.CANCELLED else Outcome.RELEASED
                _give_back(instance, journal, ctx, outcome, owner, started, clock.wall())
                return
        except LeaseLost:
            instance.stop_reason = StopReason.LOST
            return
        except Suspended as suspended:  # a wait: the task waits without a slot or a lease
            done = _completion(
                lease,
                owner,
                Outcome.WAITING,
                started,
                clock.wall(),
                usage=ctx.usage_json(),
                wait=suspended.wait,
                time_=instance,
            )
            _hand_in(instance, journal, done)
            return
        except Exception as exc:
            error = exc
        except KeyboardInterrupt:
            # Ctrl-C: Python raises it wherever the main thread is, often in an agent's code
            # (a loop run by `run_until_complete`, asyncio.run's second SIGINT). It is the
            # program's, not the task's: it was recorded as the task's failure, dead at
            # retries=0, and with retries left the program went on. The attempt is given
            # back uncounted, and the interrupt goes on to stop the program.
            _give_back(instance, journal, ctx, Outcome.RELEASED, owner, started, clock.wall())
            raise
        except BaseException as exc:  # SystemExit, GeneratorExit, ...: this task's, not ours
            error = AgentCrash(exc)
        if instance.stop_reason is StopReason.LOST or instance.abandoned:
            return  # (the agent swallowed the stop; abandoned: its end is written already)
        if error is None and (
            instance.stop_reason is StopReason.TIMEOUT or instance.due() <= clock.monotonic()
        ):
            # It caught the timeout's cancellation and returned anyway, or it ran past its
            # time before the timer could stop it (it blocked the event loop, or returned
            # within the timers' 50 ms grain): the timeout stands.
            error = _timed_out(agent, instance)
            if instance.stop_reason is StopReason.TIMEOUT:  # (said: no report names it)
                error = type(error)(
                    f"{error}; it caught the cancellation that stopped it "
                    "(asyncio.CancelledError) and returned after it: let it propagate"
                )
        finished = clock.wall()
        usage = ctx.usage_json()
        found = _look_back(instance, ctx)
        if services.strict and error is None and any(d.kind is Kind.UNAWAITED for d in found):
            error = UnawaitedWork(
                "; ".join(d.message for d in found if d.kind is Kind.UNAWAITED) + " (--strict)"
            )
        if error is None:
            done = _completion(
                lease,
                owner,
                Outcome.SUCCEEDED,
                started,
                finished,
                output=output,
                usage=usage,
                diagnostics=tuple(found),
                time_=instance,
            )
        else:
            if is_fatal(error):
                instance.fatal = error
            done = _failure(
                lease,
                owner,
                agent,
                error,
                started,
                finished,
                services.rng,
                usage,
                instance,
                tuple(found),
            )
        _hand_in(instance, journal, done)
    finally:
        # The error's traceback holds this frame, which held the error: a cycle that kept
        # every failed attempt's context, lease and steps until the cyclic GC ran.
        error = None
        instance.ctx = None
        try:
            if span is not None:  # (abandoned: its end was written by the worker, see abandon)
                telemetry.end_task(span, None if instance.abandoned else done, instance.abandoned)
            ctx.ended(abandoned=instance.abandoned)
        finally:
            if services.on_end is not None and not instance.abandoned:
                services.on_end(instance)  # (abandoned: the worker freed its slot then)


FATAL_HOLD = 1.0
"""Seconds a task given back by a worker that a fatal error stops is held from the queue
(the worker stops at once: a second is far past the moment it could lease it again)."""


def _name(coroutine: Coroutine[Any, Any, Any]) -> str:
    return str(getattr(coroutine, "__qualname__", coroutine))


def _hand_in(instance: Instance, journal: Journal, done: Completion) -> None:
    """Give the journal the end of an attempt, unless the worker gave one already: it
    abandoned the instance (see `abandon`), and the task has moved on since."""
    if not instance.abandoned:
        journal.complete(instance.lease, done)


def abandon(instance: Instance, services: Services) -> None:
    """End an instance that runs on after it was stopped: its agent catches
    `asyncio.CancelledError` and carries on (a ``while True`` around a ``try`` that
    swallows it). Its end is written as its stop calls for, as if it had ended now - a
    timeout a failed attempt, a cancel cancelled, a release given back, a lost lease
    nothing - and it is fenced off: its steps and calls raise before they run, and nothing
    it returns or raises is written. The caller frees its slot and stops its code."""
    instance.abandoned = True
    ctx, reason = instance.ctx, instance.stop_reason
    if ctx is not None:
        ctx.ended(abandoned=True)
    if reason is StopReason.LOST or reason is None:
        return
    lease, agent, clock = instance.lease, instance.agent, services.clock
    finished = clock.wall()
    started = finished - (clock.monotonic() - instance.started)
    usage = ctx.usage_json() if ctx is not None else None
    if reason is StopReason.TIMEOUT:
        timed_out = _timed_out(agent, instance)
        error = type(timed_out)(
            f"{timed_out}; it ran on after it was stopped (it catches "
            "asyncio.CancelledError) and was abandoned"
        )
        done = _failure(
            lease, services.owner, agent, error, started, finished, services.rng, usage, instance
        )
    else:
        outcome = Outcome.CANCELLED if reason is StopReason.CANCELLED else Outcome.RELEASED
        done = _completion(
            lease, services.owner, outcome, started, finished, usage=usage, time_=instance
        )
    services.journal.complete(lease, done)


def _raised_by_the_agent() -> bool:
    """In an ``except CancelledError`` of the instance's own task: whether no one asked
    to cancel that task (`asyncio.Task.cancelling`), so the error came from the agent."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


TENANT_PARK = 60.0
"""Seconds a task whose tenant's LLM budget is spent waits in the queue before a worker
leases it again (to find the budget raised, or still spent)."""


def _timed_out(agent: Agent, time_: attempt.AttemptTime) -> TaskTimeout:
    """The error of an attempt whose time is up: its deadline or its timeout, with what
    it did with its time."""
    if time_.past_deadline():
        assert time_.deadline is not None
        return DeadlineExceeded(
            f"agent {agent.name!r} reached its deadline of {time_.deadline:g}s: {time_.explain()}"
        )
    return TaskTimeout(
        f"agent {agent.name!r} ran past its timeout of {agent.options.timeout:g}s "
        f"({time_.explain()})"
    )


def _look_back(instance: Instance, ctx: Context) -> Sequence[Diagnostic]:
    """What the attempt left behind (see `legion.diagnostics.lookback.look_back`)."""
    capture, instance.pending_block = instance.pending_block, None
    agent = instance.agent
    children, instance.children = instance.children, None
    made_at, instance.made_at = instance.made_at, None
    found = look_back(
        agent.name, agent.fn, instance.diagnostics, children, capture, ctx, made_at or ()
    )
    instance.diagnostics = None
    return found


def _failure(
    lease: Lease,
    owner: str,
    agent: Agent,
    error: BaseException,
    started: float,
    finished: float,
    rng: random.Random,
    usage: bytes | None,
    time_: attempt.AttemptTime | None = None,
    diagnostics: tuple[Diagnostic, ...] = (),
) -> Completion:
    cause = legion_cause(error)
    if isinstance(cause, (BudgetExceeded, RetryAfterTooLong)):
        # The SDK's error for a call legion stopped (``ctx.llm.openai()``): the task ends as
        # legion's own error would end it, without spending an attempt.
        error = cause
    info = ErrorInfo.from_exception(error)
    more: dict[str, Any] = {"usage": usage, "time_": time_, "diagnostics": diagnostics}

    def ended(outcome: Outcome, not_before: float = 0.0) -> Completion:
        """The attempt's end, its error kept (``not_before``: not leased again until then)."""
        return _completion(
            lease, owner, outcome, started, finished, error=info, not_before=not_before, **more
        )

    if isinstance(error, BudgetExceeded):
        # Parked: back to the queue with its recorded calls, for a run with more budget.
        # A tenant's task waits a while first: the worker still leases other tenants'
        # tasks, and would otherwise lease it again at once (an agent's spent budget
        # keeps the worker from leasing its tasks, a run's stops the run).
        park = TENANT_PARK if error.scope == "tenant" else 0.0
        return ended(Outcome.RELEASED, finished + park if park else 0.0)
    if is_unspent(error) or is_fatal(error):
        # The agent's file changed under this worker, or its executor died (Ray), or every
        # task would fail the same way (the provider refused the key, nothing serves the
        # route's URL, an extra is missing): the task is not at fault, and the worker
        # stops on it (``fatal``). Back to the queue, its error kept to say why, for a
        # worker started anew (once the key is fixed), no attempt spent: the same command
        # run again finishes the work. Not before `FATAL_HOLD`: this worker, stopping, could
        # otherwise lease it again in the write that gives it back, and run it once more.
        return ended(Outcome.RELEASED, finished + FATAL_HOLD)
    if isinstance(error, AgentLoadError):
        # Its code does not import in a process of this worker (the process executor's
        # children): no retry changes that.
        return ended(Outcome.FAILED)
    if isinstance(error, RetryAfterTooLong) and error.retry_after is not None:
        # The provider said when to come back: back to the queue until then, the error kept
        # on the task to say why, and no attempt spent on waiting that was not allowed.
        return ended(Outcome.RELEASED, finished + error.retry_after)
    if not is_retryable(error):
        return ended(Outcome.FAILED)
    if lease.attempt >= lease.max_attempts:
        return ended(Outcome.DEAD)
    return ended(Outcome.RETRY, finished + agent.options.retry.delay(lease.attempt, rng))


def _give_back(
    instance: Instance,
    journal: Journal,
    ctx: Context,
    outcome: Outcome,
    owner: str,
    started: float,
    finished: float,
) -> None:
    """Hand in an attempt given back (released) or cancelled before its end, with what
    its calls cost: a budget counts such a task's spend from its usage, and the calls
    were paid for all the same."""
    done = _completion(
        instance.lease,
        owner,
        outcome,
        started,
        finished,
        usage=ctx.usage_json(),
        time_=instance,
    )
    _hand_in(instance, journal, done)


def _completion(
    lease: Lease,
    owner: str,
    outcome: Outcome,
    started: float,
    finished: float,
    *,
    output: bytes | None = None,
    error: ErrorInfo | None = None,
    not_before: float = 0.0,
    usage: bytes | None = None,
    diagnostics: tuple[Diagnostic, ...] = (),
    wait: Wait | None = None,
    time_: attempt.AttemptTime | None = None,
) -> Completion:
    """The completion of an attempt, with its time split into running and waiting
    (``time_``: the attempt's clock), built once."""
    running, waited = time_.split() if time_ is not None else (0.0, 0.0)
    return Completion(
        lease.id,
        lease.attempt,
        owner,
        outcome,
        output,
        error,
        not_before,
        started,
        finished,
        usage,
        diagnostics,
        wait,
        running,
        waited,
        lease.tenant,
        lease.agent,
    )
