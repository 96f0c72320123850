"""Task routes: submit (one or a batch), get, list, cancel, retry.

Inputs are checked against the agent's schema before anything is stored: a task that
could never run is refused with 422 and the fields at fault, not queued to fail later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.exceptions import HTTPException, RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

from legion import codec
from legion.errors import IdempotencyConflict, InputError, OutputError, StillStopping
from legion.inputs import KEY_MAX
from legion.server.body import json_body
from legion.server.deps import KeyDep, ServerState, StateDep, known_query, require_key
from legion.server.schemas import (
    KEY,
    TEXT,
    AttemptsOut,
    BatchIn,
    BatchOut,
    StatusOut,
    SubmittedOut,
    TaskDetail,
    TaskIn,
    TaskOut,
    TaskPage,
)
from legion.server.schemas import Key as KeyText
from legion.store.tenancy import TENANT_PATTERN, scoped_key
from legion.store.types import ApiKey, TaskQuery
from legion.task import NewTask, TaskInfo, TaskStatus

log = logging.getLogger("legion.server")
M = TypeVar("M", bound=BaseModel)

TaskId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The task's id.")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No API key, or an unknown one."},
    403: {"description": "A revoked API key, or a cross-origin change."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such task (or another tenant's)."}
}
_INVALID = {
    "model": None,
    "description": "The body is not JSON (``json_invalid``), not UTF-8 (``utf8``), or does not "
    "fit the schema or the agent's input; or an idempotency key was used before with another "
    "agent or input (``idempotency_conflict``). ``detail`` lists the fields at fault.",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}
_SHED: dict[int | str, dict[str, Any]] = {
    413: {"description": "The body is too large."},
    422: _INVALID,
    429: {"description": "The tenant is over its submit rate or queued tasks (Retry-After)."},
    503: {"description": "The server is saturated, or the store unavailable (Retry-After)."},
}


def _body(schema: str) -> dict[str, Any]:
    """The request body of a submit or signal route, for the OpenAPI document: the route
    reads and checks the body itself (see `legion.server.body`)."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


_FOLLOW = {"task_id": "$response.body#/id"}
# OpenAPI links: where a submitted task's id leads (clients and API fuzzers follow them).
_LINKS = {
    name: {"operationId": name, "parameters": _FOLLOW}
    for name in ("get_task", "cancel_task", "retry_task", "task_events")
}

router = APIRouter(
    prefix="/v1", tags=["tasks"], dependencies=[Depends(require_key), Depends(known_query)]
)


async def existing_task(task_id: TaskId, state: StateDep, key: KeyDep) -> TaskInfo:
    """The task named in the path, or 404: another tenant's task is answered exactly like
    a missing one (an admin key sees every tenant's)."""
    info = await state.runtime.get(task_id)
    if info is None or not _visible(key, info):
        raise HTTPException(404, f"no task {task_id}")
    return info


def _visible(key: ApiKey, info: TaskInfo) -> bool:
    return key.admin or info.tenant == key.tenant


TaskDep = Annotated[TaskInfo, Depends(existing_task)]


@router.post(
    "/tasks",
    status_code=201,
    operation_id="submit_task",
    responses={
        **_ERRORS,
        200: {
            "model": SubmittedOut,
            "description": "The key named an existing task of this tenant, submitted with "
            "the same agent and input.",
            "links": _LINKS,
        },
        201: {"description": "Queued.", "links": _LINKS},
        **_SHED,
    },
    openapi_extra=_body("TaskIn"),
)
async def submit_task(
    request: Request,
    response: Response,
    state: StateDep,
    key: KeyDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            # (checked in `_header_key`, once its bytes are read as UTF-8: FastAPI would
            # count the bytes of a non-ASCII key, 2,000 at most for 500 characters)
            json_schema_extra={"minLength": 1, "maxLength": KEY_MAX, "pattern": KEY},
            description="The idempotency key, as the body's `key`, with the same rules (the "
            "header wins when both are sent).",
        ),
    ] = None,
) -> SubmittedOut:
    """Queue one task (201); a known idempotency key answers its first task (200), unless
    it was sent with another agent or input (422, ``idempotency_conflict``)."""
    state.limits.check_rate(key.tenant)
    body = _model(TaskIn, await json_body(request))
    loc: tuple[str | int, ...] = ("body", "key")
    if idempotency_key is not None:
        loc = _HEADER_LOC
        body = body.model_copy(update={"key": _header_key(idempotency_key)})
    (done,) = await _submit(state, key, [body], [("body",)], key_locs=[loc])
    if not done.created:
        response.status_code = 200
    return done


@router.post(
    "/tasks:batch",
    status_code=200,
    operation_id="submit_batch",
    responses={**_ERRORS, **_SHED},
    openapi_extra=_body("BatchIn"),
)
async def submit_batch(request: Request, state: StateDep, key: KeyDep) -> BatchOut:
    """Queue many tasks; nothing is queued if any of them is invalid (422). Each task
    names its own idempotency `key`: an `Idempotency-Key` header is refused (422)."""
    if "idempotency-key" in request.headers:
        # Taken for the whole batch, it would make a retried batch look new: each task of
        # it would be queued again.
        raise RequestValidationError(
            [
                _error(
                    "not_for_batches",
                    _HEADER_LOC,
                    "an Idempotency-Key names one task; give each task of a batch its own "
                    "`key` in the body instead",
                )
            ]
        )
    state.limits.check_rate(key.tenant)
    body = _model(BatchIn, await json_body(request))
    if len(body.tasks) > state.settings.max_batch:
        raise RequestValidationError(
            [_error("too_long", ("body", "tasks"), f"at most {state.settings.max_batch} tasks")]
        )
    locs = [("body", "tasks", i) for i in range(len(body.tasks))]
    return BatchOut(tasks=await _submit(state, key, body.tasks, locs))


@router.get(
    "/tasks",
    operation_id="list_tasks",
    responses={
        **_ERRORS,
        403: {
            "description": "A revoked API key, a cross-origin change, or a `tenant` filter "
            "naming another tenant without an admin key."
        },
    },
)
async def list_tasks(
    state: StateDep,
    key: KeyDep,
    status: Annotated[list[TaskStatus] | None, Query(description="Any of these.")] = None,
    agent: Annotated[str | None, Query(max_length=200, pattern=TEXT)] = None,
    since: Annotated[
        float | None, Query(allow_inf_nan=False, description="Created at or after (epoch s).")
    ] = None,
    until: Annotated[
        float | None, Query(allow_inf_nan=False, description="Created before (epoch s).")
    ] = None,
    cursor: Annotated[
        str | None,
        Query(
            pattern=r"^[1-9][0-9]{0,17}$",
            description="`next` of the previous page (tasks below that id).",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    tenant: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=TENANT_PATTERN,
            description="Only this tenant's (an admin key's filter; any other key may name "
            "its own tenant alone).",
        ),
    ] = None,
    parent: Annotated[
        int | None,
        Query(
            ge=1,
            le=2**63 - 1,
            description="Only the children of this task (those it started with ctx.spawn "
            "or ctx.map; their own children are listed by their ids in turn).",
        ),
    ] = None,
) -> TaskPage:
    """This tenant's tasks (an admin key's: every tenant's), newest first, a page at a
    time."""
    if not key.admin:
        if tenant is not None and tenant != key.tenant:
            raise HTTPException(
                403,
                f"the tenant filter needs an admin key: this key sees tenant {key.tenant!r} alone",
            )
        tenant = key.tenant
    query = TaskQuery(
        statuses=tuple(status or ()),
        agent=agent,
        created_from=since,
        created_to=until,
        before=int(cursor) if cursor is not None else None,
        limit=limit + 1,  # (one more: whether another page follows, not a last one empty)
        tenant=tenant,
        parent=parent,
    )
    found = await state.runtime.store.list_tasks(query)
    more = len(found) > limit
    found = found[:limit]
    return TaskPage(
        tasks=[TaskOut.of(t) for t in found],
        next=_encode_cursor(found[-1].id) if more else None,
    )


@router.post(
    "/tasks/{task_id}:cancel",
    operation_id="cancel_task",
    responses={
        **_ERRORS,
        **_NOT_FOUND,
        409: {"description": "The task has finished already: succeeded, failed or dead."},
    },
)
async def cancel_task(
    task: TaskDep,
    state: StateDep,
    children: bool = Query(
        False,
        description="Cancel its unfinished descendants too: the child tasks it started "
        "(ctx.spawn, ctx.map), theirs, and so on. Without it they run on, and a retry of "
        "the task picks them up again.",
    ),
) -> StatusOut:
    """Cancel a task: a queued (or waiting) one at once, a running one when its worker
    next checks; a cancelled one stays so (200). One that finished otherwise: 409, and
    nothing is changed (its children neither: cancel them by their ids)."""
    task_id = task.id
    status = await state.runtime.cancel(task_id, children=children)
    if status is None:
        raise HTTPException(404, f"no task {task_id}")
    if status.terminal and status is not TaskStatus.CANCELLED:
        raise HTTPException(
            409,
            f"task {task_id} is {status}: only queued, waiting or running tasks can be cancelled",
        )
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
async def retry_task(
    task: TaskDep,
    state: StateDep,
    children: bool = Query(
        False,
        description="Queue its descendants that ended dead, failed or cancelled too, "
        "before it (the child tasks it started, theirs, and so on): a parent retried "
        "alone finds its children by their keys, and one cancelled or failed with it "
        "fails it again. Nothing is queued if the task itself cannot be retried (409).",
    ),
) -> StatusOut:
    """Queue a dead (or failed, or cancelled) task again with a fresh attempt budget."""
    try:
        retried = await state.runtime.retry(task.id, children=children)
    except StillStopping as exc:  # (its descendants' cancel not yet taken: nothing queued)
        raise HTTPException(409, str(exc)) from None
    if not retried:
        current = await state.runtime.get(task.id)
        status = current.status if current is not None else task.status
        raise HTTPException(
            409, f"task {task.id} is {status}: only dead, failed or cancelled tasks can be retried"
        )
    log.info("task %d: queued again", task.id, extra={"task_id": task.id})
    return StatusOut(id=task.id, status=TaskStatus.QUEUED)


_ACTIONS = ("cancel", "retry", "signal")  # (:signal is `signals_api`'s)
_NO_ACTION = "no action :{} on a task (there are :cancel, :retry and :signal)"


@router.api_route(
    "/tasks/{task_id}:{action}",
    methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
async def only_post(task_id: str, action: str) -> None:
    """The task actions take POST alone: any other method is 405 (without this, a GET
    would reach the task route below, whose path matches too). An action there is not
    is 404, whatever the method."""
    if action not in _ACTIONS:
        raise HTTPException(404, _NO_ACTION.format(action))
    raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})


unknown_actions = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])
"""A POST of an action there is not: included after every router with actions."""


@unknown_actions.post("/tasks/{task_id}:{action}", include_in_schema=False)
async def no_such_action(task_id: str, action: str) -> None:
    raise HTTPException(404, _NO_ACTION.format(action))


# Declared after the :cancel and :retry routes, which its path would match too: an OPTIONS
# (or GET) on those then answers their own Allow.
@router.get("/tasks/{task_id}", operation_id="get_task", responses={**_ERRORS, **_NOT_FOUND})
async def get_task(
    task: TaskDep,
    state: StateDep,
    key: KeyDep,
    steps: Annotated[
        bool,
        Query(
            description="With its recorded steps and their outputs (a task of 10,000 steps: "
            "a body of that size); false to poll its status without them."
        ),
    ] = True,
) -> TaskDetail:
    """A task: status, output or error (with its traceback, for an admin key), attempts,
    usage and its recorded steps (``?steps=false``: without them)."""
    recorded = await state.runtime.store.steps(task.id) if steps else None
    return TaskDetail.with_steps(task, recorded, traceback=key.admin)


@router.get(
    "/tasks/{task_id}/attempts",
    operation_id="get_task_attempts",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def get_task_attempts(task: TaskDep, state: StateDep) -> AttemptsOut:
    """A task's ended attempts, oldest first: when each started and ended, on which
    worker, how it ended, its error, and its time running and waiting for capacity."""
    return AttemptsOut.of(await state.runtime.store.attempts(task.id))


# -- helpers ---------------------------------------------------------------------------


async def _submit(
    state: ServerState,
    caller: ApiKey,
    tasks: Sequence[TaskIn],
    locs: Sequence[tuple[str | int, ...]],
    *,
    key_locs: Sequence[tuple[str | int, ...]] | None = None,
) -> list[SubmittedOut]:
    """Check every task (``locs``: where each is in the body), then queue them in one
    transaction, for the caller's tenant. Each input is encoded once, here, and that
    encoding is what the store keeps."""
    new: list[NewTask] = []
    errors: list[dict[str, Any]] = []
    for n, (task, loc) in enumerate(zip(tasks, locs, strict=True)):
        encoded, problems = _check(state, caller, task, loc)
        errors.extend(problems)
        if len(errors) > ERRORS_AT_MOST:  # nothing is queued: the rest need no look
            errors = errors[:ERRORS_AT_MOST]
            errors.append(
                _error(
                    "too_many_errors",
                    ("body",),
                    f"{ERRORS_AT_MOST} errors shown, in the first {n + 1} of "
                    f"{len(tasks)} tasks; the rest were not checked",
                )
            )
            break
        if encoded is not None:
            agent = state.agents[task.agent]
            new.append(
                NewTask(
                    agent.name,
                    encoded,
                    task.key,
                    task.session,
                    task.priority,
                    agent.options.retry.max_attempts,
                    tenant=caller.tenant,
                    needs=agent.needs,
                )
            )
    if errors:
        raise RequestValidationError(errors)
    fresh = await _fresh(state, caller.tenant, new)
    await state.limits.admit(caller.tenant, fresh)
    try:
        submitted = await state.runtime.submit_tasks(new)
    except IdempotencyConflict as exc:
        state.limits.release(caller.tenant, fresh)
        where = key_locs or [(*loc, "key") for loc in locs]
        conflicts = set(exc.keys)
        raise RequestValidationError(
            [
                _error("idempotency_conflict", loc, str(IdempotencyConflict((t.key,))))
                for t, loc in zip(tasks, where, strict=True)
                if t.key in conflicts
            ]
        ) from None
    except BaseException:
        state.limits.release(caller.tenant, fresh)
        raise
    state.limits.queued(caller.tenant, sum(s.created for s in submitted), fresh)
    out = []
    for task, s in zip(tasks, submitted, strict=True):
        if s.created:
            log.info(
                "task %d: submitted (%s)",
                s.id,
                task.agent,
                extra={"task_id": s.id, "agent": task.agent, "tenant": caller.tenant},
            )
        out.append(SubmittedOut(id=s.id, status=s.status, key=s.key, created=s.created))
    return out


async def _fresh(state: ServerState, tenant: str, new: Sequence[NewTask]) -> int:
    """How many of ``new`` a tenant's limits count: a task whose key is stored already
    is answered, not queued again (a client retrying an acknowledged submission got 429
    from a tenant at its queued limit, instead of its task)."""
    limits = state.limits
    keys = [scoped_key(tenant, t.key) for t in new if t.key is not None]
    if not keys or (limits.rate is None and limits.max_queued is None):
        return len(new)
    known = await state.runtime.store.find_keys([k for k in keys if k is not None])
    return len(new) - len(known)


ERRORS_AT_MOST = 100
"""The errors a refused submission answers, at most: a batch of 8,000 bad tasks answered
32 MB of them, and four such stalled the server for seconds."""


def _model(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or 422 with the fields at fault (under ``body``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                _error(e["type"], ("body", *e["loc"]), e["msg"])
                for e in exc.errors(include_url=False)
            ]
        ) from None


def _check(
    state: ServerState, caller: ApiKey, task: TaskIn, loc: tuple[str | int, ...]
) -> tuple[bytes | None, list[dict[str, Any]]]:
    """The task's input as stored JSON, or what is wrong with the task (for ``caller``)."""
    agent = state.agents.get(task.agent)
    if agent is None:
        served = ", ".join(sorted(state.agents)) or "none"
        message = f"no agent named {task.agent!r} here (this server runs: {served})"
        return None, [_error("unknown_agent", (*loc, "agent"), message)]
    cap = state.settings.tenant_max_priority
    if cap is not None and task.priority > cap and not caller.admin:
        message = (
            f"priority {task.priority} is above {cap}, the highest this server lets a "
            "tenant's key give a task (--tenant-max-priority); an admin key may give any"
        )
        return None, [_error("priority_not_allowed", (*loc, "priority"), message)]
    try:
        encoded = codec.dumps(task.input)
        agent.check_json(task.input, encoded)
    except OutputError as exc:
        return None, [_error("json", (*loc, "input"), str(exc))]
    except InputError as exc:
        return None, _input_errors(exc, (*loc, "input"))
    return encoded, []


def _input_errors(exc: InputError, loc: tuple[str | int, ...]) -> list[dict[str, Any]]:
    """The fields at fault. An input that names fields the agent does not take, or lacks
    some, answers the whole message (as the command line says it), then each such field
    (``fields``). ``Agent.arguments`` raises its other InputErrors while handling
    pydantic's ValidationError, which stays their ``__context__``; without one, the
    message itself says what does not fit."""
    if exc.fields:
        each = [_error(kind, (*loc, name), message) for kind, name, message in exc.fields]
        return [_error("agent_input", loc, str(exc)), *each]
    cause = exc.__context__
    if isinstance(cause, ValidationError):
        return [
            _error(e["type"], (*loc, *e["loc"]), e["msg"]) for e in cause.errors(include_url=False)
        ]
    return [_error("agent_input", loc, str(exc))]


_HEADER_LOC = ("header", "Idempotency-Key")
_KEY_TEXT: TypeAdapter[str] = TypeAdapter(KeyText)


def _header_key(raw: str) -> str:
    """The ``Idempotency-Key`` header as the key it names, held to the body's ``key``'s
    rules (its characters counted, not its bytes), or 422."""
    try:  # HTTP hands a header over as Latin-1: its bytes, read as UTF-8 as the body is
        text = raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise RequestValidationError(
            [_error("utf8", _HEADER_LOC, "the key is not UTF-8 text")]
        ) from None
    try:
        return _KEY_TEXT.validate_python(text)
    except ValidationError as exc:
        raise RequestValidationError(
            [_error(e["type"], _HEADER_LOC, e["msg"]) for e in exc.errors(include_url=False)]
        ) from None


def _error(kind: str, loc: Sequence[str | int], message: str) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": message}


def _encode_cursor(task_id: int) -> str:
    return str(task_id)
