"""The JSON of the HTTP API: what requests carry and responses answer.

These models are the JSON edge (and the OpenAPI document); inside, legion's own frozen
values travel (`legion.task.TaskInfo` and friends), converted here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from legion.agent import AGENT_NAME_MAX
from legion.inputs import KEY_MAX, PRIORITY_MAX, PRIORITY_MIN
from legion.store.types import AttemptRecord, StepInfo
from legion.task import TaskInfo, TaskStatus
from legion.waiting.calls import MAX_EVENT

# Text the stores can hold in every dialect (PostgreSQL text cannot hold NUL).
TEXT = r"^[^\x00]*$"
# An idempotency key or a session: text, not starting with U+001F (the store's mark for
# tenants' keys and sessions).
KEY = r"^[^\x00\x1f][^\x00]*$"
Name = Annotated[str, Field(min_length=1, max_length=AGENT_NAME_MAX, pattern=TEXT)]
Key = Annotated[str, Field(min_length=1, max_length=KEY_MAX, pattern=KEY)]
Session = Annotated[str, Field(min_length=1, max_length=KEY_MAX, pattern=KEY)]


def _number(value: Any) -> Any:
    """JSON numbers only: ``true`` and ``"5"`` are not priorities (``5.0`` is)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


Priority = Annotated[int, BeforeValidator(_number), Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)]


class TaskIn(BaseModel):
    """A task to submit."""

    model_config = ConfigDict(extra="forbid")

    agent: Name = Field(description="The agent's name.")
    input: Any = Field(
        None,
        description="The agent's input: a JSON object of its parameters (any JSON value "
        "for an agent with one parameter). Checked against the agent's schema (422).",
    )
    key: Key | None = Field(
        None,
        description="Idempotency key, unique per tenant: submitting it again with the same "
        "agent and input answers the first task; with another, 422 (idempotency_conflict).",
    )
    session: Session | None = Field(None, description="The session of the agent's ctx.memory.")
    priority: Priority = Field(
        0,
        description="Higher runs first, and its LLM calls are served first at a shared "
        "route (a lower priority keeps a guaranteed share of the calls). A server may cap "
        "what a tenant's key gives (legion serve --tenant-max-priority: above it, 422).",
    )


class BatchIn(BaseModel):
    """Tasks to submit together, in one transaction."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskIn] = Field(min_length=1)


class SubmittedOut(BaseModel):
    id: int
    status: TaskStatus
    key: str | None = None
    created: bool = Field(description="False when the key named an existing task.")


class BatchOut(BaseModel):
    tasks: list[SubmittedOut] = Field(description="One per submitted task, in order.")


class ErrorOut(BaseModel):
    """Why a task's last attempt failed."""

    type: str
    message: str
    traceback: str | None = Field(
        None,
        description="The formatted traceback, for an admin key, in `GET /v1/tasks/{id}` and "
        "a task's `end` event (null in lists, and for a tenant's key: it shows the agents' "
        "code).",
    )


class UsageOut(BaseModel):
    """What a task's LLM calls used."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    llm_calls: int = 0


class StepOut(BaseModel):
    key: str
    attempt: int = Field(description="The attempt that recorded it.")
    output: Any
    started_at: float
    finished_at: float


class AttemptOut(BaseModel):
    """One ended attempt of a task."""

    attempt: int = Field(
        description=(
            "Its number (a released or suspended attempt is not counted: the next one "
            "has the same number)."
        )
    )
    worker: str = Field(description="The worker that ran it.")
    outcome: str = Field(
        description=(
            "How it ended: succeeded, retry, failed, dead, cancelled, released, waiting, "
            "or lost (its worker stopped or its lease expired, and the reaper ended it)."
        )
    )
    started_at: float
    finished_at: float
    running_seconds: float = Field(description="Time spent running (what its timeout bounds).")
    waiting_seconds: float = Field(
        description="Time spent waiting for capacity (a route's pace, a 429 pause, a process)."
    )
    error: ErrorOut | None = Field(description="Why it failed; null if it did not.")


class AttemptsOut(BaseModel):
    """A task's ended attempts."""

    attempts: list[AttemptOut] = Field(description="Oldest first.")

    @classmethod
    def of(cls, records: list[AttemptRecord]) -> AttemptsOut:
        return cls(
            attempts=[
                AttemptOut(
                    attempt=r.attempt,
                    worker=r.worker,
                    outcome=r.outcome,
                    started_at=r.started_at,
                    finished_at=r.finished_at,
                    running_seconds=r.running,
                    waiting_seconds=r.waited,
                    error=ErrorOut(type=r.error.type, message=r.error.message, traceback=None)
                    if r.error
                    else None,
                )
                for r in records
            ]
        )


class TaskOut(BaseModel):
    """A task as the list shows it."""

    id: int
    agent: str
    key: str | None
    session: str | None
    tenant: str = Field(description="Whose task it is (the submitting key's tenant).")
    status: TaskStatus
    parent: int | None = Field(
        description="The task that started it (ctx.spawn, ctx.map); null for one submitted. "
        "`GET /v1/tasks?parent={id}` lists a task's children."
    )
    cancel_requested: bool = Field(
        description="A cancel was asked and the task has not stopped yet: a running task "
        "stops when its worker next checks in (within a few seconds); an attempt that ends "
        "first ends as it ended."
    )
    attempts: int = Field(
        description="Attempts counted against `max_attempts`: a run that ended by waiting "
        "(for children, a signal, a timer) or was given back uncharged is not counted "
        "(`/attempts` lists every run)."
    )
    max_attempts: int
    created_at: float
    started_at: float | None = Field(description="Start of the latest attempt.")
    finished_at: float | None
    error: ErrorOut | None = Field(
        description="Why its last attempt failed; null once it succeeded (the failed "
        "attempts before stay in `/attempts`). A list shows the first 2,000 characters of "
        "its message; `GET /v1/tasks/{id}` the whole."
    )
    usage: UsageOut | None

    @classmethod
    def of(cls, t: TaskInfo) -> TaskOut:
        """``t`` as a list shows it: its error's message cut to `BRIEF_MESSAGE`."""
        return cls(**_task_fields(t, brief=True))


class TaskDetail(TaskOut):
    """A task with its input, output and recorded steps."""

    input: Any
    output: Any
    steps: list[StepOut] | None = Field(
        description="Its recorded steps, with their outputs; null when asked without "
        "(`?steps=false`: a poll of its status need not carry them all)."
    )

    @classmethod
    def with_steps(
        cls, t: TaskInfo, steps: list[StepInfo] | None, *, traceback: bool = False
    ) -> TaskDetail:
        """``traceback``: with its error's traceback (for an admin key)."""
        return cls(
            **_task_fields(t, traceback=traceback),
            input=t.input,
            output=t.output,
            steps=None if steps is None else [step_out(s) for s in steps],
        )


class SignalIn(BaseModel):
    """A signal: its event name and any JSON data (``ctx.wait_for`` answers the data)."""

    model_config = ConfigDict(extra="forbid")  # (a typo, "dat", sent null data)

    event: str = Field(min_length=1, max_length=MAX_EVENT, pattern=TEXT)
    data: Any = None
    waiting: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="Answer one wait alone: the task's wait number `waiting` for this event "
        "(its `count` in `GET /v1/waiting`; a wait that timed out keeps its number, and "
        "the next wait has the next one). Unless the task waits for it now, "
        "nothing is kept and the answer is 409: a second click of an approval button must "
        "not answer the task's next approval.",
    )

    @field_validator("waiting", mode="before")
    @classmethod
    def _a_json_integer(cls, value: Any) -> Any:
        # `true` and `"1"` were taken for wait number 1 (pydantic's lax mode); a JSON
        # number with no fraction (2.0) is an integer as the schema counts them.
        if isinstance(value, bool | str):
            raise ValueError("a wait's number is a JSON integer")
        return value


class TaskPage(BaseModel):
    tasks: list[TaskOut] = Field(description="Newest first.")
    next: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class StatusOut(BaseModel):
    id: int
    status: TaskStatus


class KeyOut(BaseModel):
    """The API key a request was made with (never its secret)."""

    id: str
    name: str
    tenant: str = Field(description="Whose tasks the key submits and sees.")
    admin: bool = Field(description="Whether the key sees (and changes) every tenant's tasks.")


class HealthOut(BaseModel):
    status: str = Field(description="ok, or unavailable (store unreachable, worker stopped).")


def step_out(s: StepInfo) -> StepOut:
    return StepOut(
        key=s.key,
        attempt=s.attempt,
        output=s.output,
        started_at=s.started_at,
        finished_at=s.finished_at,
    )


BRIEF_MESSAGE = 2000
"""Characters of an error's message a list of tasks (and a task's ``task`` event) shows:
the task itself shows it whole (a list of 50 tasks whose agents raised 5 MB messages was
250 MB)."""


def _task_fields(t: TaskInfo, *, traceback: bool = False, brief: bool = False) -> dict[str, Any]:
    error = None
    if t.error is not None and t.status is not TaskStatus.SUCCEEDED:
        # (a task that succeeded after a failed attempt: that error is history, not state)
        shown = (t.error.traceback or None) if traceback else None
        message = t.error.message
        if brief and len(message) > BRIEF_MESSAGE:
            more = len(message) - BRIEF_MESSAGE
            message = f"{message[:BRIEF_MESSAGE]}... ({more:,} more characters: the task has it)"
        error = ErrorOut(type=t.error.type, message=message, traceback=shown)
    return {
        "id": t.id,
        "agent": t.agent,
        "key": t.key,
        "session": t.session,
        "tenant": t.tenant,
        "status": t.status,
        "parent": t.parent_id,
        "cancel_requested": t.cancel_requested and not t.status.terminal,
        "attempts": t.attempt,
        "max_attempts": t.max_attempts,
        "created_at": t.created_at,
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        "error": error,
        "usage": UsageOut.model_validate(t.usage) if t.usage else None,
    }
