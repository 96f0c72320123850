"""An `LLMClient` from provider specs, in one line: what ``Runtime(llm="sim")`` uses.

A spec is what ``legion run --llm`` takes: ``sim``, ``openai:gpt-4o-mini``,
``openai:MODEL@URL``, ``anthropic:MODEL``, ``local``, ``local:/path/model.gguf``,
each optionally named (``strong=openai:gpt-4o``). A list of specs makes one route
each; the first is the default route. ``sim`` is the built-in provider simulator
with the latency and limits of a typical hosted model, started in this process and
stopped when the client closes::

    client = await legion.llm.open_client("sim")
    try:
        response = await client.chat([{"role": "user", "content": "Hi"}])
    finally:
        await client.aclose()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from legion.errors import ConfigError
from legion.llm.client import LLMClient
from legion.llm.config import LLMConfig, RouteConfig, build_client, parse_provider_spec

LLMSpecs = str | Sequence[str]
"""One provider spec, or several (one route each, the first the default)."""

SIM_DEFAULTS: Mapping[str, Any] = {
    "latency": 0.25,
    "latency_jitter": 0.15,
    "tokens_per_second": 250.0,
    "rpm": 3000,
    "tpm": 2_000_000,
}
"""The simulator behind a bare ``sim`` spec: a typical hosted model's latency and limits."""


def config_from_specs(specs: LLMSpecs) -> LLMConfig:
    """The routes named by ``specs`` (``ConfigError`` for a bad spec)."""
    items = [specs] if isinstance(specs, str) else list(specs)
    if not items or not all(isinstance(spec, str) and spec for spec in items):
        raise ConfigError(
            f"llm= takes a provider spec such as 'sim' or 'openai:gpt-4o-mini', a list of "
            f"them, or an LLMClient; got {specs!r}"
        )
    routes = tuple(_route(spec, index) for index, spec in enumerate(items))
    names = [route.name for route in routes]
    if len(set(names)) != len(names):
        raise ConfigError("two LLM routes have the same name; name them NAME=SPEC")
    return LLMConfig(routes, routes[0].name)


async def open_client(specs: LLMSpecs) -> LLMClient:
    """A started `LLMClient` for ``specs``; the caller closes it (``aclose``)."""
    return await build_client(config_from_specs(specs))


def _route(spec: str, index: int) -> RouteConfig:
    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = ("default" if index == 0 else f"llm{index + 1}"), spec
    options: dict[str, Any] = {}
    if rest == "sim" or rest.startswith("sim:"):
        sim = dict(SIM_DEFAULTS)
        options = {"rpm": sim["rpm"], "tpm": sim["tpm"], "simulator": sim}
    return parse_provider_spec(rest, name=name, options=options)
