"""What the tasks of an agent or a tenant spent on LLM calls, read from the usage the
store recorded on them: where an agent's or a tenant's budget starts (see
`legion.llm.budget.Budgets.history`)."""

from __future__ import annotations

from legion.llm.budget import Spend
from legion.store.base import TaskReader
from legion.store.types import TaskQuery

_PAGE = 1000


async def recorded_spend(store: TaskReader, scope: str, name: str) -> Spend:
    """The calls, tokens and cost recorded on every task of agent ``name`` (``scope``
    ``"agent"``) or of tenant ``name`` (``"tenant"``), read a page at a time, and on its
    tasks purged since (`TaskReader.purged_spend`)."""
    if scope not in ("agent", "tenant"):
        raise ValueError(f"no recorded spend for scope {scope!r}")
    total = Spend()
    before: int | None = None
    while True:
        query = (
            TaskQuery(agent=name, before=before, limit=_PAGE)
            if scope == "agent"
            else TaskQuery(tenant=name, before=before, limit=_PAGE)
        )
        page = await store.list_tasks(query)
        for info in page:
            usage = info.usage or {}
            total = total + Spend(
                int(usage.get("llm_calls", 0)),
                int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
                float(usage.get("cost_usd", 0.0)),
            )
        if len(page) < _PAGE:
            # and what its purged tasks had recorded (`legion purge` kept it)
            return total + Spend(*await store.purged_spend(scope, name))
        before = page[-1].id
