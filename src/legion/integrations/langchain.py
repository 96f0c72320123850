"""LangChain and LangGraph on legion (extra ``langchain``)::

    llm = chat_model(ctx).bind_tools(tools)   # a ChatOpenAI

A graph whose nodes call this model runs as one legion agent: each model call is a
recorded, paced, counted ``ctx.llm`` call of the task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_openai import ChatOpenAI

if TYPE_CHECKING:
    from legion.context import Context


def chat_model(
    ctx: Context, name: str = "default", *, route: str | None = None, **settings: Any
) -> ChatOpenAI:
    """A ``ChatOpenAI`` on ``ctx.llm.openai(route)`` (async calls: ``ainvoke``,
    ``astream``...); ``settings`` pass to ``ChatOpenAI`` (``temperature``...)."""
    client = ctx.llm.openai(route)
    return ChatOpenAI(
        model=name,
        api_key="legion",  # type: ignore[arg-type]
        max_retries=0,
        root_async_client=client,
        async_client=client.chat.completions,
        **settings,
    )
