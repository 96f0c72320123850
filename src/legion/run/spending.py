"""What the tasks of an agent or a tenant spent on LLM calls, read from the usage the
store recorded on them: where an agent's or a tenant's budget starts (see
`legion.llm.budget.Budgets.history`)."""

from __future__ import annotations

from legion.llm.budget import Spend
from legion.store.base import TaskReader
from legion.store.paging import all_tasks
from legion.store.types import TaskQuery


async def recorded_spend(store: TaskReader, scope: str, name: str) -> Spend:
    """The calls, tokens and cost recorded on every task of agent ``name`` (``scope``
    ``"agent"``) or of tenant ``name`` (``"tenant"``), and on its tasks purged since
    (`TaskReader.purged_spend`)."""
    if scope not in ("agent", "tenant"):
        raise ValueError(f"no recorded spend for scope {scope!r}")
    query = TaskQuery(agent=name) if scope == "agent" else TaskQuery(tenant=name)
    total = Spend()
    async for info in all_tasks(store, query):
        usage = info.usage or {}
        total = total + Spend(
            int(usage.get("llm_calls", 0)),
            int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
            float(usage.get("cost_usd", 0.0)),
        )
    # and what its purged tasks had recorded (`legion purge` kept it)
    return total + Spend(*await store.purged_spend(scope, name))
