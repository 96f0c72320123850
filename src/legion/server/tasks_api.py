"""Task routes: submit (one or a batch), get, list, cancel, retry.

Inputs are checked against the agent's schema before anything is stored: a task that
could never run is refused with 422 and the fields at fault, not queued to fail later.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.exceptions import HTTPException, RequestValidationError
from pydantic import ValidationError

from .. import codec
from ..agent import Agent
from ..errors import InputError, OutputError
from ..store.base import TaskQuery
from ..task import Submitted, TaskInfo, TaskStatus
from .deps import ServerState, StateDep, require_key
from .schemas import (
    TEXT,
    BatchIn,
    BatchOut,
    StatusOut,
    SubmittedOut,
    TaskDetail,
    TaskIn,
    TaskOut,
    TaskPage,
)

log = logging.getLogger("legion.server")

TaskId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The task's id.")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No API key, or an unknown one."},
    403: {"description": "A revoked API key, or a cross-origin change."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such task."}}
_FOLLOW = {"task_id": "$response.body#/id"}
# OpenAPI links: where a submitted task's id leads (clients and API fuzzers follow them).
_LINKS = {
    name: {"operationId": name, "parameters": _FOLLOW}
    for name in ("get_task", "cancel_task", "retry_task", "task_events")
}
_CURSOR_PREFIX = "before:"

router = APIRouter(prefix="/v1", tags=["tasks"], dependencies=[Depends(require_key)])


async def existing_task(task_id: TaskId, state: StateDep) -> TaskInfo:
    """The task named in the path, or 404."""
    info = await state.runtime.get(task_id)
    if info is None:
        raise HTTPException(404, f"no task {task_id}")
    return info


TaskDep = Annotated[TaskInfo, Depends(existing_task)]


@router.post(
    "/tasks",
    status_code=201,
    operation_id="submit_task",
    responses={
        **_ERRORS,
        200: {
            "model": SubmittedOut,
            "description": "The key named an existing task.",
            "links": _LINKS,
        },
        201: {"description": "Queued.", "links": _LINKS},
        413: {"description": "The body is too large."},
    },
)
async def submit_task(body: TaskIn, response: Response, state: StateDep) -> SubmittedOut:
    """Queue one task (201); a known idempotency key answers its first task (200)."""
    (done,) = await _submit(state, [body], [("body",)])
    if not done.created:
        response.status_code = 200
    return done


@router.post(
    "/tasks:batch",
    status_code=200,
    operation_id="submit_batch",
    responses={**_ERRORS, 413: {"description": "The body is too large."}},
)
async def submit_batch(body: BatchIn, state: StateDep) -> BatchOut:
    """Queue many tasks; nothing is queued if any of them is invalid (422)."""
    if len(body.tasks) > state.settings.max_batch:
        raise RequestValidationError(
            [_error("too_long", ("body", "tasks"), f"at most {state.settings.max_batch} tasks")]
        )
    locs = [("body", "tasks", i) for i in range(len(body.tasks))]
    return BatchOut(tasks=await _submit(state, body.tasks, locs))


@router.get("/tasks", operation_id="list_tasks", responses=_ERRORS)
async def list_tasks(
    state: StateDep,
    status: Annotated[list[TaskStatus] | None, Query(description="Any of these.")] = None,
    agent: Annotated[str | None, Query(max_length=200, pattern=TEXT)] = None,
    since: Annotated[
        float | None, Query(allow_inf_nan=False, description="Created at or after (epoch s).")
    ] = None,
    until: Annotated[
        float | None, Query(allow_inf_nan=False, description="Created before (epoch s).")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=100, description="`next` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> TaskPage:
    """Tasks, newest first, a page at a time."""
    query = TaskQuery(
        statuses=tuple(status or ()),
        agent=agent,
        created_from=since,
        created_to=until,
        before=_decode_cursor(cursor) if cursor is not None else None,
        limit=limit,
    )
    found = await state.runtime.store.list_tasks(query)
    more = len(found) == limit
    return TaskPage(
        tasks=[TaskOut.of(t) for t in found],
        next=_encode_cursor(found[-1].id) if more else None,
    )


@router.get("/tasks/{task_id}", operation_id="get_task", responses={**_ERRORS, **_NOT_FOUND})
async def get_task(task: TaskDep, state: StateDep) -> TaskDetail:
    """A task: status, output or error, attempts, usage and its recorded steps."""
    return TaskDetail.with_steps(task, await state.runtime.store.steps(task.id))


@router.post(
    "/tasks/{task_id}:cancel", operation_id="cancel_task", responses={**_ERRORS, **_NOT_FOUND}
)
async def cancel_task(task_id: TaskId, state: StateDep) -> StatusOut:
    """Cancel a task: a queued one at once, a running one when its worker next checks."""
    status = await state.runtime.cancel(task_id)
    if status is None:
        raise HTTPException(404, f"no task {task_id}")
    log.info("task %d: cancel asked (%s)", task_id, status, extra={"task_id": task_id})
    return StatusOut(id=task_id, status=status)


@router.post(
    "/tasks/{task_id}:retry",
    operation_id="retry_task",
    responses={
        **_ERRORS,
        **_NOT_FOUND,
        409: {"description": "The task is not dead, failed or cancelled."},
    },
)
async def retry_task(task: TaskDep, state: StateDep) -> StatusOut:
    """Queue a dead (or failed, or cancelled) task again with a fresh attempt budget."""
    if not await state.runtime.retry(task.id):
        current = await state.runtime.get(task.id)
        status = current.status if current is not None else task.status
        raise HTTPException(
            409, f"task {task.id} is {status}: only dead, failed or cancelled tasks can be retried"
        )
    log.info("task %d: queued again", task.id, extra={"task_id": task.id})
    return StatusOut(id=task.id, status=TaskStatus.QUEUED)


# -- helpers ---------------------------------------------------------------------------


async def _submit(
    state: ServerState, tasks: Sequence[TaskIn], locs: Sequence[tuple[str | int, ...]]
) -> list[SubmittedOut]:
    """Check every task (``locs``: where each is in the body), then queue them: one
    transaction per agent and priority."""
    agents: list[Agent] = []
    errors: list[dict[str, Any]] = []
    for task, loc in zip(tasks, locs, strict=True):
        agent, problems = _check(state, task, loc)
        errors.extend(problems)
        if agent is not None:
            agents.append(agent)
    if errors:
        raise RequestValidationError(errors)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, task in enumerate(tasks):
        groups.setdefault((task.agent, task.priority), []).append(i)
    done: dict[int, Submitted] = {}
    for (_, priority), members in groups.items():
        submitted = await state.runtime.submit_many(
            agents[members[0]],
            [tasks[i].input for i in members],
            keys=[tasks[i].key for i in members],
            sessions=[tasks[i].session for i in members],
            priority=priority,
        )
        done.update(zip(members, submitted, strict=True))
    out = []
    for i in range(len(tasks)):
        s = done[i]
        if s.created:
            agent_name = tasks[i].agent
            log.info(
                "task %d: submitted (%s)",
                s.id,
                agent_name,
                extra={"task_id": s.id, "agent": agent_name},
            )
        out.append(SubmittedOut(id=s.id, status=s.status, key=s.key, created=s.created))
    return out


def _check(
    state: ServerState, task: TaskIn, loc: tuple[str | int, ...]
) -> tuple[Agent | None, list[dict[str, Any]]]:
    agent = state.agents.get(task.agent)
    if agent is None:
        served = ", ".join(sorted(state.agents)) or "none"
        message = f"no agent named {task.agent!r} here (this server runs: {served})"
        return None, [_error("unknown_agent", (*loc, "agent"), message)]
    try:
        codec.dumps(task.input)
        agent.arguments(task.input)
    except OutputError as exc:
        return agent, [_error("json", (*loc, "input"), str(exc))]
    except InputError as exc:
        return agent, _input_errors(exc, (*loc, "input"))
    return agent, []


def _input_errors(exc: InputError, loc: tuple[str | int, ...]) -> list[dict[str, Any]]:
    """The fields at fault. ``Agent.arguments`` raises its InputError while handling
    pydantic's ValidationError, which stays its ``__context__``; without one, the
    message itself says what does not fit."""
    cause = exc.__context__
    if isinstance(cause, ValidationError):
        return [
            _error(e["type"], (*loc, *e["loc"]), e["msg"]) for e in cause.errors(include_url=False)
        ]
    return [_error("agent_input", loc, str(exc))]


def _error(kind: str, loc: Sequence[str | int], message: str) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": message}


def _encode_cursor(task_id: int) -> str:
    raw = f"{_CURSOR_PREFIX}{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw.startswith(_CURSOR_PREFIX):
            value = int(raw.removeprefix(_CURSOR_PREFIX))
            if 1 <= value < 2**63:
                return value
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise RequestValidationError(
        [_error("cursor", ("query", "cursor"), "not a cursor from this API (use `next`)")]
    )
