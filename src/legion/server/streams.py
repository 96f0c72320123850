"""Server-sent event streams: one task's progress, and the whole run's.

``GET /v1/tasks/{id}/events``: ``task`` (its status, attempts, timings; again whenever
they change), ``step`` (each recorded step, once, in the order they finished), then
``end`` (the finished task with its output and steps) and the stream closes. The task is
read every ``task_poll_interval`` seconds (by primary key: cheap, and it leaves the hot
path's tables without extra indexes). Each ``step`` event's ``id`` is its step's key
(percent-encoded): a client that reconnects with ``Last-Event-ID`` (as a browser's
``EventSource`` does by itself) is sent the steps after that one, not all again.

``GET /v1/progress``: ``history`` (the samples kept so far, for charts), then
``progress`` (a `legion.server.snapshot.Snapshot`) after every sample; a key that is
not an admin's sees its tenant's (see `legion.server.monitor.Monitor.for_tenant`). Every
client reads the monitor's latest sample: clients cost the store nothing.

Both end when the server stops, with a ``closing`` event first (an end with no ``end``
event is a connection lost). FastAPI sends keep-alive comments while they are quiet. A
store that does not answer ends neither: they read it again at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable
from typing import Annotated, Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent

from legion import codec
from legion.errors import StoreUnavailable
from legion.server.deps import KeyDep, ServerState, StateDep, known_query, require_key
from legion.server.schemas import TaskDetail, TaskOut, step_out
from legion.server.snapshot import Snapshot
from legion.server.tasks_api import existing_task
from legion.store.types import ApiKey, StepInfo
from legion.task import TaskInfo

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key), Depends(known_query)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No API key, or an unknown one."},
    403: {"description": "A revoked API key."},
}


@router.get(
    "/tasks/{task_id}/events",
    operation_id="task_events",
    response_class=EventSourceResponse,
    tags=["tasks"],
    responses={**_ERRORS, 404: {"description": "No such task."}},
)
async def task_events(
    task: Annotated[TaskInfo, Depends(existing_task)],
    state: StateDep,
    key: KeyDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=16_384,
            description="The ``id`` of the last ``step`` event received: the steps up to "
            "it are not sent again.",
        ),
    ] = None,
) -> AsyncIterable[ServerSentEvent]:
    """A task's changes and steps as they happen, until it finishes (or its key is
    revoked: an ``error`` event, then the end; or the server stops: a ``closing`` event,
    then the end)."""
    store = state.runtime.store
    sent_steps: set[str] = set()
    last: tuple[object, ...] | None = None
    info: TaskInfo | None = task
    resume = None if last_event_id is None else unquote(last_event_id)
    while info is not None:
        current = (info.status, info.attempt, info.started_at, info.finished_at)
        if current != last:
            last = current
            yield ServerSentEvent(event="task", data=TaskOut.of(info))
        try:
            # Read again only when there are steps it has not seen (or it has ended): a
            # follower of a long task read all its steps every poll, 200 of a 5,000-step
            # task slowed every other request of the server twentyfold.
            fresh = (
                resume is not None
                or info.status.terminal
                or await store.step_count(info.id) != len(sent_steps)
            )
            steps = in_order(await store.steps(info.id)) if fresh else []
        except StoreUnavailable:
            steps = None  # (read again at the next poll: the stream stays open meanwhile)
        if steps is not None:
            if resume is not None:
                sent_steps.update(_through(steps, resume))
                resume = None
            for s in steps:
                if s.key not in sent_steps:
                    sent_steps.add(s.key)
                    yield ServerSentEvent(event="step", data=step_out(s), id=quote(s.key, safe=""))
            if info.status.terminal:
                detail = TaskDetail.with_steps(info, steps, traceback=key.admin)
                yield ServerSentEvent(event="end", data=detail)
                return
        if await _closing(state, state.settings.task_poll_interval):
            yield _CLOSING
            return
        if await _revoked_now(state, key):
            yield _revoked()
            return
        with contextlib.suppress(StoreUnavailable):  # (the task as it was, read again next)
            info = await state.runtime.get(info.id)


@router.get(
    "/progress",
    operation_id="progress",
    response_class=EventSourceResponse,
    tags=["run"],
    responses=_ERRORS,
)
async def progress(state: StateDep, key: KeyDep) -> AsyncIterable[ServerSentEvent]:
    """The run's progress: the history so far, then a snapshot after every sample (as
    ``/v1/statistics`` answers it: the key's tenant's, or everyone's for an admin key),
    until the key is revoked (an ``error`` event, then the end)."""
    monitor = state.monitor

    def seen(snapshot: Snapshot) -> Snapshot:
        return snapshot if key.admin else monitor.for_tenant(snapshot, key.tenant)

    history = monitor.history(None if key.admin else key.tenant)
    yield ServerSentEvent(event="history", raw_data=event_json(history))
    yield ServerSentEvent(event="progress", raw_data=event_json(seen(monitor.snapshot)))
    while not monitor.closed:
        snapshot = await monitor.next_snapshot()
        if monitor.closed:
            break
        if await _revoked_now(state, key):
            yield _revoked()
            return
        yield ServerSentEvent(event="progress", raw_data=event_json(seen(snapshot)))
    yield _CLOSING


def event_json(value: object) -> str:
    """``value`` (dataclasses, lists, numbers) as an event's JSON data, NaN as null: what
    FastAPI's encoder writes for ``data=``, at about a thirtieth of its cost. The history,
    ~300 samples, took ~9 ms a follower that way, and 1,000 followers connecting together
    held the event loop for seconds, the server's own worker not leasing meanwhile."""
    return codec.dumps(value, finite=False).decode()


def in_order(steps: list[StepInfo]) -> list[StepInfo]:
    """``steps`` in the order they are sent: by attempt, then as they finished within it
    (one that started first and finished last comes last). An attempt's steps are all
    recorded before the next attempt's begin (a stale lease writes none), but each by its
    own worker's clock: ordered by time alone, the steps of a task taken over by a worker
    whose clock is behind came before those of the attempt before, and a client resumed
    with ``Last-Event-ID`` was never sent them."""
    return sorted(steps, key=_order)


def _order(step: StepInfo) -> tuple[int, float, str]:
    return step.attempt, step.finished_at, step.key


def _through(steps: list[StepInfo], last: str) -> list[str]:
    """The keys of ``steps`` up to the one keyed ``last``, which a client received before
    it reconnected; none where no step has that key (steps purged, or an id of another
    stream's)."""
    keys = [s.key for s in steps]
    return keys[: keys.index(last) + 1] if last in keys else []


_CLOSING = ServerSentEvent(
    event="closing",
    data={"detail": "the server is stopping: reconnect to follow on"},
)


async def _revoked_now(state: ServerState, key: ApiKey) -> bool:
    """Whether ``key`` was revoked since the stream began; while the store does not answer
    (down, or a SQLite file locked), not as far as anyone can tell: the stream goes on and
    asks again at its next sample or poll. (A stream that ended there with a 500 was not
    opened again by a browser's ``EventSource``: a dashboard stood still for good.)"""
    try:
        return await state.auth.revoked(key)
    except StoreUnavailable:
        return False


def _revoked() -> ServerSentEvent:
    return ServerSentEvent(event="error", data={"detail": "this API key was revoked"})


async def _closing(state: ServerState, seconds: float) -> bool:
    """Wait ``seconds``; True at once if the server is stopping."""
    try:
        async with asyncio.timeout(seconds):
            await state.closing.wait()
    except TimeoutError:
        return False
    return True
