"""Waiting routes: signal a task (``POST /v1/tasks/{id}:signal``), list waiting tasks.

A signal queues a task that waits for it (``ctx.wait_for``, ``ctx.approval``) again, or is
kept for its next wait. The dashboard lists waiting tasks with their prompts, and answers
an approval with the ``approval`` signal.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from legion.errors import NotAwaited, OutputError
from legion.server.body import json_body
from legion.server.deps import KeyDep, StateDep, known_query, require_key
from legion.server.schemas import SignalIn, StatusOut
from legion.server.tasks_api import _ERRORS, _NOT_FOUND, TaskDep, _body, _error, _model

log = logging.getLogger("legion.server")

router = APIRouter(
    prefix="/v1", tags=["waiting"], dependencies=[Depends(require_key), Depends(known_query)]
)


class WaitingOut(BaseModel):
    """A waiting task and what it waits for."""

    id: int
    agent: str
    tenant: str
    event: str | None = Field(None, description="The signal it waits for.")
    count: int | None = Field(
        None,
        description="Which signal of that name it waits for, counting from 1 (a signal's "
        "`waiting`, to answer this wait alone).",
    )
    children: int | None = Field(
        None,
        description="A parent waiting on its children: it wakes once at most this many of "
        "them are unfinished (0: all have ended). Not a count of its children: "
        "`GET /v1/tasks?parent={id}` lists them.",
    )
    wake_at: float | None = Field(None, description="Its timer, or its wait's timeout (epoch s).")
    prompt: str | None = Field(None, description="An approval's question.")
    since: float | None = Field(None, description="When it began to wait (epoch s).")


class WaitingPage(BaseModel):
    tasks: list[WaitingOut]
    next: str | None = None  # the cursor of the next page; None on the last one


@router.post(
    "/tasks/{task_id}:signal",
    operation_id="signal_task",
    responses={
        **_ERRORS,
        **_NOT_FOUND,
        409: {
            "description": "The task has finished: it takes no more signals; or, given "
            "`waiting`, it does not wait for that signal now."
        },
    },
    openapi_extra=_body("SignalIn"),
)
async def signal_task(request: Request, task: TaskDep, state: StateDep) -> StatusOut:
    """Send a signal to a task; a task waiting for it is queued again."""
    body = _model(SignalIn, await json_body(request))  # strict JSON, any content type
    try:
        status = await state.runtime.signal(task.id, body.event, body.data, waiting=body.waiting)
    except NotAwaited as exc:
        raise HTTPException(409, str(exc)) from None
    except OutputError as exc:  # data JSON cannot store (nested past orjson's depth)
        raise RequestValidationError([_error("json", ("body", "data"), str(exc))]) from None
    if status is None:
        raise HTTPException(404, f"no task {task.id}")
    if status.terminal:
        raise HTTPException(409, f"task {task.id} is {status}: it takes no more signals")
    log.info("task %d: signal %r", task.id, body.event, extra={"task_id": task.id})
    return StatusOut(id=task.id, status=status)


@router.get("/waiting", operation_id="list_waiting", responses=_ERRORS)
async def list_waiting(
    state: StateDep,
    key: KeyDep,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(
        None,
        pattern=r"^[1-9][0-9]{0,17}$",
        description="`next` of the previous page (waiting tasks below that id).",
    ),
) -> WaitingPage:
    """The waiting tasks (of the key's tenant; every tenant's for an admin key), newest
    first, a page at a time (`next`, while there are more)."""
    tenant = None if key.admin else key.tenant
    before = int(cursor) if cursor is not None else None
    # (one more than asked: whether another page follows, not a last one empty)
    found = await state.runtime.store.waiting_tasks(tenant=tenant, limit=limit + 1, before=before)
    more = len(found) > limit
    found = found[:limit]
    return WaitingPage(
        next=str(found[-1].id) if more else None,
        tasks=[
            WaitingOut(
                id=w.id,
                agent=w.agent,
                tenant=w.tenant,
                event=w.event,
                count=w.count if w.event is not None else None,
                children=w.children,
                wake_at=w.wake_at,
                prompt=w.info.get("prompt") if isinstance(w.info, dict) else None,
                since=w.since,
            )
            for w in found
        ],
    )


__all__ = ["router"]
