"""legion: throughput scaling for AI agents.

Write an agent as one async function; legion runs one stateless instance per task,
thousands at once, with every piece of state in a store::

    import legion

    @legion.agent(timeout=30, retries=3)
    async def research(ctx: legion.Context, question: str) -> dict:
        hits = await ctx.step("search", search, question)
        notes = await ctx.gather(*(ctx.step(f"read-{i}", read, h) for i, h in enumerate(hits)))
        return {"question": question, "notes": notes}

    async with legion.Runtime("sqlite:///runs.db") as rt:
        async for result in rt.map(research, questions):
            ...
"""

from __future__ import annotations

from .agent import Agent, agent
from .context import Context, Memory
from .errors import (
    AgentCrash,
    AgentError,
    AgentLoadError,
    ChildFailed,
    ConfigError,
    DeadlineExceeded,
    InputError,
    LegionError,
    OutputError,
    Permanent,
    StorageFull,
    StoreError,
    StoreUnavailable,
    TaskFailed,
    TaskTimeout,
    WaitTimeout,
)
from .retry import RetryPolicy
from .runtime import Runtime
from .stats import Statistics
from .store import SQLiteStore, Store, store_from_url
from .task import ErrorInfo, Submitted, TaskInfo, TaskResult, TaskStatus
from .waiting import Approval
from .worker import Worker, WorkerConfig

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentCrash",
    "AgentError",
    "AgentLoadError",
    "Approval",
    "ChildFailed",
    "ConfigError",
    "Context",
    "DeadlineExceeded",
    "ErrorInfo",
    "InputError",
    "LegionError",
    "Memory",
    "OutputError",
    "Permanent",
    "RetryPolicy",
    "Runtime",
    "SQLiteStore",
    "Statistics",
    "StorageFull",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Submitted",
    "TaskFailed",
    "TaskInfo",
    "TaskResult",
    "TaskStatus",
    "TaskTimeout",
    "WaitTimeout",
    "Worker",
    "WorkerConfig",
    "__version__",
    "agent",
    "store_from_url",
]
