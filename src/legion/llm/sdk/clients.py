"""The SDK clients of ``ctx.llm.openai()`` and ``ctx.llm.anthropic()``.

The SDKs are optional: ``pip install 'legion-runtime[openai]'`` (or ``[anthropic]``).
Their own retries are off (``max_retries=0``) and their timeout is left to legion's
route (each attempt has the route's timeout; the SDK's would count the waits for
capacity too), so legion's policy is the only one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx2

from legion.errors import ConfigError
from legion.llm.sdk.transport import LegionTransport, LLMCalls

if TYPE_CHECKING:
    from legion.llm.client import LLMClient

_BASE_URL = "http://legion.invalid"  # never contacted: the transport answers every request
_KEY = "legion"  # the route holds the real key


def openai_client(calls: LLMCalls, client: LLMClient, route: str | None = None) -> Any:
    """An ``openai.AsyncOpenAI`` whose requests are ``ctx.llm`` calls."""
    try:
        import openai
    except ImportError as exc:
        raise ConfigError(
            "ctx.llm.openai() needs the openai package: pip install 'legion-runtime[openai]'"
        ) from exc
    transport = LegionTransport(calls, client, "openai", route)
    return openai.AsyncOpenAI(
        api_key=_KEY,
        base_url=f"{_BASE_URL}/v1",
        max_retries=0,
        timeout=None,
        http_client=httpx2.AsyncClient(transport=transport, timeout=None),
    )


def anthropic_client(calls: LLMCalls, client: LLMClient, route: str | None = None) -> Any:
    """An ``anthropic.AsyncAnthropic`` whose requests are ``ctx.llm`` calls."""
    try:
        import anthropic
    except ImportError as exc:
        raise ConfigError(
            "ctx.llm.anthropic() needs the anthropic package: "
            "pip install 'legion-runtime[anthropic]'"
        ) from exc
    transport = LegionTransport(calls, client, "anthropic", route)
    return anthropic.AsyncAnthropic(
        api_key=_KEY,
        base_url=_BASE_URL,
        max_retries=0,
        timeout=None,
        http_client=httpx2.AsyncClient(transport=transport, timeout=None),
    )
