"""The OpenAI Agents SDK on legion (extra ``openai-agents``)::

    result = await Runner.run(agent, prompt, run_config=run_config(ctx))

Every agent of the run (handoffs included) answers through ``ctx.llm.openai()`` with
the Chat Completions model, so its calls are recorded, paced and counted as the task's.
The SDK's tracing export is off: it would send traces to OpenAI with the route's key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents import Model, ModelProvider, OpenAIChatCompletionsModel, RunConfig

if TYPE_CHECKING:
    from legion.context import Context


class LegionModelProvider(ModelProvider):
    """Models on ``ctx.llm.openai(route)``, whatever name an agent gives."""

    def __init__(self, ctx: Context, default: str, route: str | None) -> None:
        self._client = ctx.llm.openai(route)
        self._default = default

    def get_model(self, model_name: str | None) -> Model:
        return OpenAIChatCompletionsModel(model_name or self._default, self._client)


def model(ctx: Context, name: str = "default", *, route: str | None = None) -> Model:
    """One agent's model on ``ctx.llm.openai(route)`` (``Agent(model=...)``)."""
    return OpenAIChatCompletionsModel(name, ctx.llm.openai(route))


def run_config(
    ctx: Context, name: str = "default", *, route: str | None = None, **settings: Any
) -> RunConfig:
    """A ``RunConfig`` whose agents all answer through ``ctx.llm``; ``settings`` pass to
    ``RunConfig``."""
    return RunConfig(
        model_provider=LegionModelProvider(ctx, name, route),
        tracing_disabled=True,
        **settings,
    )
