"""What tasks spent on LLM calls: where a budget starts (`legion run`'s, from what the
earlier runs of its lines spent; an agent's or a tenant's, see
`legion.llm.budget.Budgets.history`).

A task's spend is the usage its last attempt's end recorded on it. A task whose last
attempt never ended (its worker killed, its lease lost) has none for that attempt, or an
older one: its spend is read from the calls its steps recorded, which were paid for all
the same (read so, a run killed with its calls in flight and run again started its
budget at $0, and each kill overspent the limit again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from legion.llm.budget import Spend
from legion.store.base import TaskReader
from legion.store.paging import all_tasks
from legion.store.types import TaskQuery
from legion.task import TaskInfo, TaskStatus, TaskUsage, paid_call

_ENDED_OR_KEPT = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.WAITING}
)
"""Statuses whose usage the last attempt's end wrote (a cancelled task's since it is
written at a cancel too; one cancelled before that, or killed, is read from its steps)."""


def spend_of(usage: Mapping[str, Any] | None) -> Spend:
    """The calls, tokens and cost of a task's recorded usage."""
    usage = usage or {}
    return Spend(
        int(usage.get("llm_calls", 0)),
        int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
        float(usage.get("cost_usd", 0.0)),
    )


async def task_spend(store: TaskReader, info: TaskInfo) -> Spend:
    """What ``info``'s task paid for (see the module)."""
    if info.status in _ENDED_OR_KEPT or info.attempt == 0:
        return spend_of(info.usage)
    usage = TaskUsage()
    for step in await store.steps(info.id):
        paid = paid_call(step.key, step.output)
        if paid is not None:
            usage.add(paid)
    steps = Spend(usage.llm_calls, usage.prompt_tokens + usage.completion_tokens, usage.cost_usd)
    recorded = spend_of(info.usage)  # (an earlier attempt's end: its calls are steps too)
    return steps if steps.calls >= recorded.calls else recorded


async def tasks_spend(store: TaskReader, task_ids: Sequence[int]) -> Spend:
    """What these tasks paid for, together."""
    total = Spend()
    for start in range(0, len(task_ids), 1000):
        for info in await store.get_many(task_ids[start : start + 1000]):
            total = total + await task_spend(store, info)
    return total


async def recorded_spend(store: TaskReader, scope: str, name: str) -> Spend:
    """What every task of agent ``name`` (``scope`` ``"agent"``) or of tenant ``name``
    (``"tenant"``) paid for, and its tasks purged since (`TaskReader.purged_spend`)."""
    if scope not in ("agent", "tenant"):
        raise ValueError(f"no recorded spend for scope {scope!r}")
    query = TaskQuery(agent=name) if scope == "agent" else TaskQuery(tenant=name)
    total = Spend()
    async for info in all_tasks(store, query):
        total = total + await task_spend(store, info)
    # and what its purged tasks had recorded (`legion purge` kept it)
    return total + Spend(*await store.purged_spend(scope, name))
