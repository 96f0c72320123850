"""Rows to values: both stores select tasks and events in the same column order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from legion import codec
from legion.store.tenancy import DEFAULT_TENANT, unscoped_key
from legion.store.types import AttemptRecord, Event, EventDetail
from legion.store.waiting import ChildInfo, WaitingInfo
from legion.task import NO_STEPS, ErrorInfo, Lease, TaskInfo, TaskStatus


def leases(rows: Sequence[Sequence[Any]], steps: Mapping[int, Mapping[str, bytes]]) -> list[Lease]:
    """Leases from leased rows, ``id, agent, input, key, session, attempt, max_attempts,
    priority, tenant``, each with its task's recorded ``steps``. A lease lives as long as
    its instance: the rows of a batch share one string for each agent and tenant name
    rather than a copy per row."""
    names: dict[str, str] = {}
    return [
        Lease(
            r[0],
            names.setdefault(r[1], r[1]),
            r[2],
            unscoped_key(r[3]),
            r[4],
            r[5],
            r[6],
            steps.get(r[0], NO_STEPS),
            r[7],
            names.setdefault(r[8], r[8]),
        )
        for r in rows
    ]


def attempt_record(task_id: int, row: Sequence[Any]) -> AttemptRecord:
    """An ended attempt from ``attempt, worker, outcome, started_at, finished_at, running,
    waited, error``."""
    attempt, worker, outcome, started, finished, running, waited, error = row
    return AttemptRecord(
        task_id=task_id,
        attempt=attempt,
        worker=worker,
        outcome=outcome,
        started_at=started,
        finished_at=finished,
        running=running,
        waited=waited,
        error=ErrorInfo.from_json(error),
    )


def task_info(row: Sequence[Any]) -> TaskInfo:
    """A task from ``id, agent, key, session, status, attempt, max_attempts, input, output,
    error, created_at, started_at, finished_at, lease_owner, usage[, tenant[, parent_id,
    cancel_requested]]``. A query that leaves the input out selects NULL for it (the
    task's ``input`` is then None)."""
    (tid, agent, key, session, status, attempt, max_attempts, inp, out, err) = row[:10]
    created, started, finished, owner, usage = row[10:15]
    tenant = row[15] if len(row) > 15 else DEFAULT_TENANT
    parent, cancel = row[16:18] if len(row) > 17 else (None, False)
    return TaskInfo(
        id=tid,
        agent=agent,
        key=unscoped_key(key),
        session=session,
        status=TaskStatus(status),
        attempt=attempt,
        max_attempts=max_attempts,
        input=codec.loads(inp) if inp is not None else None,
        output=codec.loads(out) if out is not None else None,
        error=ErrorInfo.from_json(err),
        created_at=created,
        started_at=started,
        finished_at=finished,
        lease_owner=owner,
        usage=codec.loads(usage) if usage is not None else None,
        tenant=tenant,
        parent_id=parent,
        cancel_requested=bool(cancel),
    )


def event_detail(row: Sequence[Any]) -> EventDetail:
    """An event with its task's timings from ``id, task_id, at, status, attempt, worker,
    agent, started_at, finished_at, usage, tenant``."""
    event_id, task_id, at, status, attempt, worker, agent, started, finished, usage, tenant = row
    return EventDetail(
        event=Event(event_id, task_id, at, TaskStatus(status), attempt, worker),
        agent=agent,
        started_at=started,
        finished_at=finished,
        usage=codec.loads(usage) if usage is not None else None,
        tenant=tenant,
    )


def waiting_info(row: Sequence[Any]) -> WaitingInfo:
    """A waiting task from ``id, agent, tenant, wait_event, wait_count, wait_children,
    wake_at, wait_info, started_at``."""
    tid, agent, tenant, event, count, children, wake_at, info, since = row
    return WaitingInfo(
        tid,
        agent,
        tenant,
        event,
        count,
        children,
        wake_at,
        codec.loads(info) if info is not None else None,
        since,
    )


def child_info(row: Sequence[Any]) -> ChildInfo:
    """A child task from ``id, key, status, output, error, input_hash``."""
    tid, key, status, output, error, fingerprint = row
    return ChildInfo(
        tid,
        unscoped_key(key),
        TaskStatus(status),
        codec.loads(output) if output is not None else None,
        ErrorInfo.from_json(error),
        bytes(fingerprint) if fingerprint is not None else None,
    )
