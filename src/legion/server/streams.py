"""Server-sent event streams: one task's progress, and the whole run's.

``GET /v1/tasks/{id}/events``: ``task`` (its status, attempts, timings; again whenever
they change), ``step`` (each recorded step, once), then ``end`` (the finished task with
its output and steps) and the stream closes. The task is read every
``task_poll_interval`` seconds (by primary key: cheap, and it leaves the hot path's
tables without extra indexes).

``GET /v1/progress``: ``history`` (the samples kept so far, for charts), then
``progress`` (a `legion.server.snapshot.Snapshot`) after every sample; a key that is
not an admin's sees its tenant's (see `legion.server.monitor.Monitor.for_tenant`). Every
client reads the monitor's latest sample: clients cost the store nothing.

Both end when the server stops. FastAPI sends keep-alive comments while they are quiet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.sse import EventSourceResponse, ServerSentEvent

from legion.server.deps import KeyDep, ServerState, StateDep, known_query, require_key
from legion.server.schemas import TaskDetail, TaskOut, step_out
from legion.server.snapshot import Snapshot
from legion.server.tasks_api import existing_task
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
    task: Annotated[TaskInfo, Depends(existing_task)], state: StateDep, key: KeyDep
) -> AsyncIterable[ServerSentEvent]:
    """A task's changes and steps as they happen, until it finishes (or its key is
    revoked: an ``error`` event, then the end)."""
    store = state.runtime.store
    sent_steps: set[str] = set()
    last: tuple[object, ...] | None = None
    info: TaskInfo | None = task
    while info is not None:
        current = (info.status, info.attempt, info.started_at, info.finished_at)
        if current != last:
            last = current
            yield ServerSentEvent(event="task", data=TaskOut.of(info))
        steps = await store.steps(info.id)
        for s in steps:
            if s.key not in sent_steps:
                sent_steps.add(s.key)
                yield ServerSentEvent(event="step", data=step_out(s))
        if info.status.terminal:
            detail = TaskDetail.with_steps(info, steps, traceback=key.admin)
            yield ServerSentEvent(event="end", data=detail)
            return
        if await _closing(state, state.settings.task_poll_interval):
            return
        if await state.auth.revoked(key):
            yield _revoked()
            return
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
    yield ServerSentEvent(event="history", data=history)
    yield ServerSentEvent(event="progress", data=seen(monitor.snapshot))
    while not monitor.closed:
        snapshot = await monitor.next_snapshot()
        if monitor.closed:
            return
        if await state.auth.revoked(key):
            yield _revoked()
            return
        yield ServerSentEvent(event="progress", data=seen(snapshot))


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
