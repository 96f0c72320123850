"""Pydantic AI on legion (extra ``pydantic-ai``)::

    result = await agent.run(prompt, model=legion.integrations.pydantic_ai.model(ctx))

Every request of the run (tool rounds, output validation retries, structured output)
is a ``ctx.llm`` call of the task: paced by the route's capacity, retried by legion's
policy, recorded, so a task that runs again after a crash does not buy the completions
it already has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

if TYPE_CHECKING:
    from legion.context import Context


def model(ctx: Context, name: str = "default", *, route: str | None = None) -> OpenAIChatModel:
    """An ``OpenAIChatModel`` on ``ctx.llm.openai(route)``. ``name`` is the model the
    requests name: a route, a route's model, or any other name (then ``route``, else
    the default route, answers it)."""
    return OpenAIChatModel(name, provider=OpenAIProvider(openai_client=ctx.llm.openai(route)))
