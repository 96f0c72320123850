"""Run one agent instance for one leased attempt, and decide what its end means.

The runner is where isolation happens: whatever the agent does — raise, hang past its
timeout, raise ``SystemExit`` — ends as a :class:`~legion.task.Completion` of that one
task, never as an exception in the worker.
"""

from __future__ import annotations

import asyncio
import enum
import random
from typing import TYPE_CHECKING

from . import codec
from .agent import Agent
from .clock import Clock
from .context import Context
from .errors import AgentCrash, TaskTimeout, is_retryable
from .journal import Journal
from .store.base import Store
from .task import Completion, ErrorInfo, Lease, Outcome

if TYPE_CHECKING:
    from .executors import Executor
    from .llm.client import LLMClient


class StopReason(enum.Enum):
    CANCELLED = "cancelled"  # a user cancelled the task: record it cancelled
    RELEASED = "released"  # the worker is shutting down: give the task back untouched
    TIMEOUT = "timeout"  # the attempt ran past its agent's timeout: a retryable failure


class Instance:
    """One running attempt; the worker keeps these by task id."""

    __slots__ = ("agent", "fatal", "lease", "stop_reason", "task")

    def __init__(self, lease: Lease, agent: Agent) -> None:
        self.lease = lease
        self.agent = agent
        self.stop_reason: StopReason | None = None
        self.task: asyncio.Task[None] | None = None
        # An error that every other task would meet too (a rejected API key): the
        # worker stops leasing when an instance ends with one.
        self.fatal: BaseException | None = None

    def stop(self, reason: StopReason) -> None:
        if self.task is not None and not self.task.done():
            self.stop_reason = reason
            self.task.cancel()


async def run_instance(
    instance: Instance,
    *,
    owner: str,
    store: Store,
    journal: Journal,
    clock: Clock,
    rng: random.Random,
    llm: LLMClient | None = None,
    executor: Executor | None = None,
) -> None:
    """Run one attempt to its end and hand the outcome to the journal; never raises.

    ``executor`` runs the agent's code elsewhere (a subprocess, a Ray cluster); by
    default it runs right here, in this task.
    """
    lease, agent = instance.lease, instance.agent
    ctx = Context(agent.name, lease, store=store, journal=journal, clock=clock, llm=llm)
    started = clock()
    output: bytes | None = None
    error: BaseException | None = None
    try:
        kwargs = agent.arguments(codec.loads(lease.input))
        if executor is None:
            result = await agent.fn(ctx, **kwargs)
        else:
            result = await executor.run(agent, ctx, kwargs)
        output = agent.encode_output(result)
    except asyncio.CancelledError:
        # The worker cancelled this instance (timeouts are timers the worker owns, one per
        # lease batch rather than one per task); the reason says what it means.
        reason = instance.stop_reason or StopReason.RELEASED
        if reason is StopReason.TIMEOUT:
            error = TaskTimeout(
                f"agent {agent.name!r} ran past its timeout of {agent.options.timeout:g}s"
            )
        else:
            outcome = Outcome.CANCELLED if reason is StopReason.CANCELLED else Outcome.RELEASED
            journal.complete(lease, _completion(lease, owner, outcome, started, clock()))
            return
    except Exception as exc:
        error = exc
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, ...: this task's, not ours
        error = AgentCrash(exc)
    finished = clock()
    usage = ctx.usage.to_json()
    if error is None:
        done = _completion(
            lease, owner, Outcome.SUCCEEDED, started, finished, output=output, usage=usage
        )
    else:
        if getattr(error, "fatal", False):
            instance.fatal = error
        done = _failure(lease, owner, agent, error, started, finished, rng, usage)
    journal.complete(lease, done)


def _failure(
    lease: Lease,
    owner: str,
    agent: Agent,
    error: BaseException,
    started: float,
    finished: float,
    rng: random.Random,
    usage: bytes | None,
) -> Completion:
    info = ErrorInfo.from_exception(error)
    if not is_retryable(error):
        return _completion(lease, owner, Outcome.FAILED, started, finished, error=info, usage=usage)
    if lease.attempt >= lease.max_attempts:
        return _completion(lease, owner, Outcome.DEAD, started, finished, error=info, usage=usage)
    delay = agent.options.retry.delay(lease.attempt, rng)
    return _completion(
        lease,
        owner,
        Outcome.RETRY,
        started,
        finished,
        error=info,
        not_before=finished + delay,
        usage=usage,
    )


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
) -> Completion:
    return Completion(
        id=lease.id,
        attempt=lease.attempt,
        owner=owner,
        outcome=outcome,
        output=output,
        error=error,
        not_before=not_before,
        started_at=started,
        finished_at=finished,
        usage=usage,
    )
