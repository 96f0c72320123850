"""Agents written with other frameworks, on legion: each adapter builds the framework's
model on ``ctx.llm.openai()``, so every LLM call the framework makes is a recorded,
paced, counted call of the task. The agent itself stays as it was.

* `legion.integrations.pydantic_ai` (extra ``pydantic-ai``): ``model(ctx)`` for
  ``Agent.run(..., model=...)``.
* `legion.integrations.openai_agents` (extra ``openai-agents``): ``run_config(ctx)``
  for ``Runner.run(..., run_config=...)``.
* `legion.integrations.langchain` (extra ``langchain``): ``chat_model(ctx)``, a
  ``ChatOpenAI`` for LangChain and LangGraph.
"""

import importlib
from types import ModuleType

_ADAPTERS = frozenset({"pydantic_ai", "openai_agents", "langchain"})


def __getattr__(name: str) -> ModuleType:
    # An adapter loads (with its framework) when first named, as an import of it would.
    if name in _ADAPTERS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
