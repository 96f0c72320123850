"""LangChain and LangGraph on legion (extra ``langchain``)::

    llm = chat_model(ctx).bind_tools(tools)   # a ChatOpenAI

A graph whose nodes call this model runs as one legion agent: each model call is a
recorded, paced, counted ``ctx.llm`` call of the task. Its calls are the async ones
(``ainvoke``, ``astream``, ``abatch``): a sync call (``invoke``, a node written as a
plain ``def``) raises at once, rather than block the event loop every instance shares
and go around legion to OpenAI's own address.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_openai import ChatOpenAI

from legion.errors import Permanent

if TYPE_CHECKING:
    from legion.context import Context

SYNC_REFUSED = (
    "chat_model(ctx) answers async calls only: await llm.ainvoke(...) (astream, abatch), "
    "in an async node. A sync call (invoke, stream, batch) would block the event loop that "
    "every agent instance shares, and go around legion's capacity, retries and records"
)


class LegionChatOpenAI(ChatOpenAI):
    """A ``ChatOpenAI`` whose calls are ``ctx.llm`` calls: the async ones. A sync one
    raises `legion.errors.Permanent` (`SYNC_REFUSED`) before anything is sent: its own
    client would be OpenAI's default, at OpenAI's address."""

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        raise Permanent(SYNC_REFUSED)

    def _stream(self, *args: Any, **kwargs: Any) -> Any:
        raise Permanent(SYNC_REFUSED)


def chat_model(
    ctx: Context, name: str = "default", *, route: str | None = None, **settings: Any
) -> ChatOpenAI:
    """A ``ChatOpenAI`` on ``ctx.llm.openai(route)`` (async calls: ``ainvoke``,
    ``astream``...; a sync one raises at once); ``settings`` pass to ``ChatOpenAI``
    (``temperature``...), ``model=`` naming the model as ``name`` does. Its transport's
    settings (``max_retries``, ``timeout``, ``api_key``, ``base_url``...) are the route's:
    a `TypeError` says so (two of them failed as "got multiple values")."""
    name = settings.pop("model", None) or settings.pop("model_name", None) or name
    theirs = sorted(set(settings) & _THE_ROUTES)
    if theirs:
        raise TypeError(
            f"chat_model() takes no {', '.join(theirs)}: legion makes the calls, with the "
            "route's retries, timeouts, key and URL (its [llm.*] table, or --llm): drop them"
        )
    client = ctx.llm.openai(route)
    return LegionChatOpenAI(
        model=name,
        api_key="legion",  # type: ignore[arg-type]
        max_retries=0,
        root_async_client=client,
        async_client=client.chat.completions,
        **settings,
    )


_THE_ROUTES = frozenset(
    (
        "max_retries",
        "timeout",
        "request_timeout",
        "api_key",
        "openai_api_key",
        "base_url",
        "openai_api_base",
        "organization",
        "http_client",
        "http_async_client",
        "client",
        "async_client",
        "root_client",
        "root_async_client",
    )
)
"""``ChatOpenAI``'s settings of how calls are made: the route's, not the model's."""


def _load_what_a_model_loads_when_first_made() -> None:
    """The first ``ChatOpenAI`` made in a process imports its HTTP stack (httpx's
    transport, h11, anyio, ~0.1 s; more on a busy machine): made here, at the import of
    the agent's module (a worker's start), it is not the first task's, which stood the
    event loop every instance shares still while it loaded (reported as the agent's
    blocking call, at its line)."""
    ChatOpenAI(model="legion-warm-up", api_key="legion")  # type: ignore[arg-type]


_load_what_a_model_loads_when_first_made()
