"""The SDK clients of ``ctx.llm.openai()`` and ``ctx.llm.anthropic()``.

The SDKs are optional: ``pip install 'legion-runtime[openai]'`` (or ``[anthropic]``).
Their own retries are off (``max_retries=0``) and their timeout is not used: each
attempt has the route's timeouts, so legion's policy is the only one. (The SDK's would
count the waits for capacity too; and a shorter one on one call, timing its attempts
out, made the route count as failing, which held every call on it for minutes.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from legion.errors import MissingExtra
from legion.extras import install_hint

if TYPE_CHECKING:
    from legion.llm.client import LLMClient
    from legion.llm.sdk.transport import Dialect, LLMCalls

_BASE_URL = "http://legion.invalid"  # never contacted: the transport answers every request
_KEY = "legion"  # the route holds the real key


def openai_client(calls: LLMCalls, client: LLMClient, route: str | None = None) -> Any:
    """An ``openai.AsyncOpenAI`` whose requests are ``ctx.llm`` calls."""
    try:
        import openai
    except ImportError as exc:
        raise MissingExtra(
            f"ctx.llm.openai() needs the openai SDK: {install_hint('openai')}"
        ) from exc
    return openai.AsyncOpenAI(
        api_key=_KEY,
        base_url=f"{_BASE_URL}/v1",
        max_retries=0,
        timeout=None,
        http_client=_http_client(calls, client, "openai", route),
    )


def anthropic_client(calls: LLMCalls, client: LLMClient, route: str | None = None) -> Any:
    """An ``anthropic.AsyncAnthropic`` whose requests are ``ctx.llm`` calls."""
    try:
        import anthropic
    except ImportError as exc:
        raise MissingExtra(
            f"ctx.llm.anthropic() needs the anthropic SDK: {install_hint('anthropic')}"
        ) from exc
    return anthropic.AsyncAnthropic(
        api_key=_KEY,
        base_url=_BASE_URL,
        max_retries=0,
        timeout=None,
        http_client=_http_client(calls, client, "anthropic", route),
    )


def _http_client(calls: LLMCalls, client: LLMClient, dialect: Dialect, route: str | None) -> Any:
    """The SDK's HTTP client, its transport legion's. Imported here, once the SDK is known
    to be installed: ``httpx2`` comes with it (openai 3 and anthropic 1 on), and a
    missing SDK must be said as such. An older SDK, on httpx, cannot take it: said with
    the version the extra installs (it was a bare ModuleNotFoundError, retried)."""
    try:
        import httpx2
    except ImportError as exc:
        least = "openai>=3.0" if dialect == "openai" else "anthropic>=1.0"
        raise MissingExtra(
            f"ctx.llm.{dialect}() needs {least} (its HTTP client, httpx2, is the one legion "
            f"speaks through); this one is older: {install_hint(dialect)}"
        ) from exc

    from legion.llm.sdk.transport import LegionTransport

    transport = LegionTransport(calls, client, dialect, route)
    return httpx2.AsyncClient(transport=transport, timeout=None)
