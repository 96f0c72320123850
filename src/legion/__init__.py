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

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from legion.agent import Agent, agent
from legion.context import AgentContext, Context, Memory
from legion.errors import (
    AgentChanged,
    AgentCrash,
    AgentError,
    AgentLoadError,
    BudgetExceeded,
    ChildFailed,
    ConfigError,
    ConnectionRefused,
    DeadlineExceeded,
    EmptyCompletion,
    EndpointNotFound,
    HostNotFound,
    IdempotencyConflict,
    InputError,
    LegionError,
    MalformedResponse,
    MessagesError,
    NotAwaited,
    NothingListens,
    OutputError,
    Permanent,
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    ReplayMismatch,
    ResponseTooLarge,
    RetryAfterTooLong,
    StepFunctionError,
    StepNameError,
    StillStopping,
    StorageFull,
    StoreError,
    StoreUnavailable,
    TaskFailed,
    TaskTimeout,
    VectorError,
    WaitTimeout,
    WorkerStopped,
)
from legion.retry import RetryPolicy
from legion.run.runtime import Runtime
from legion.run.worker import Worker, WorkerConfig
from legion.stats import Statistics
from legion.store import Store, store_from_url
from legion.task import ErrorInfo, Submitted, TaskInfo, TaskResult, TaskStatus

if TYPE_CHECKING:
    from legion.llm.client import LLMClient
    from legion.store.sqlite import SQLiteStore
from legion.waiting import Approval

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentChanged",
    "AgentContext",
    "AgentCrash",
    "AgentError",
    "AgentLoadError",
    "Approval",
    "BudgetExceeded",
    "ChildFailed",
    "ConfigError",
    "ConnectionRefused",
    "Context",
    "DeadlineExceeded",
    "EmptyCompletion",
    "EndpointNotFound",
    "ErrorInfo",
    "HostNotFound",
    "IdempotencyConflict",
    "InputError",
    "LLMClient",
    "LegionError",
    "MalformedResponse",
    "Memory",
    "MessagesError",
    "NotAwaited",
    "NothingListens",
    "OutputError",
    "Permanent",
    "ProviderAuthError",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "RateLimited",
    "ReplayMismatch",
    "ResponseTooLarge",
    "RetryAfterTooLong",
    "RetryPolicy",
    "Runtime",
    "SQLiteStore",
    "Statistics",
    "StepFunctionError",
    "StepNameError",
    "StillStopping",
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
    "VectorError",
    "WaitTimeout",
    "Worker",
    "WorkerConfig",
    "WorkerStopped",
    "__version__",
    "agent",
    "store_from_url",
]


if not TYPE_CHECKING:  # (seen by a type checker, it made every misspelt name `Any`)

    def __getattr__(name: str) -> Any:
        # The LLM client loads its HTTP stack (aiohttp) when first named, not with legion.
        if name == "LLMClient":
            from legion.llm.client import LLMClient

            return LLMClient
        if name == "SQLiteStore":  # made by store_from_url, which loads it then
            from legion.store.sqlite import SQLiteStore

            return SQLiteStore
        # A subpackage (legion.llm, legion.sim, legion.integrations...) loads when first named,
        # as `import legion.llm` would: `import legion` alone stays light.
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
