"""LLM configuration: provider specs from the command line, ``[llm]`` tables
from ``legion.toml``, and building an `LLMClient` from them.

Provider specs (``--provider``):

* ``sim`` or ``sim:MODEL``: an in-process provider simulator
  (`SimulatedProvider`), free and unlimited unless configured.
* ``openai:MODEL``: OpenAI, key from ``OPENAI_API_KEY``, base URL from
  ``OPENAI_BASE_URL`` or OpenAI's.
* ``openai:MODEL@URL``: any OpenAI-compatible server (vLLM, llama.cpp,
  Ollama...); ``OPENAI_API_KEY`` is sent if set, and not required.
* ``anthropic:MODEL`` (``anthropic:MODEL@URL``): Anthropic's Messages API,
  key from ``ANTHROPIC_API_KEY``, base URL from ``ANTHROPIC_BASE_URL`` or
  Anthropic's.
* ``local``: the Gemma 3 270M model that the ``local`` extra ships, run in
  this process (`legion.llm.local.LocalProvider`); ``local:/path/model.gguf``:
  any GGUF file. In a route table, ``provider = "local"`` and, for a file,
  ``model = "/path/model.gguf"``.

A key is required only by the providers' own endpoints. Options, as keyword
arguments or keys of a route table: ``rpm``, ``tpm``, ``itpm`` and ``otpm`` (input and
output tokens per minute, for providers that limit them apart: Anthropic, Groq; on an
Anthropic route prompt tokens read from its cache do not count), ``max_in_flight``
(also the size of the connection pool), ``timeout`` (seconds per attempt),
``stream``, ``stream_idle_timeout``, ``input_price`` and ``output_price``
(USD per million tokens; they override every other price source, see
`legion.llm.pricing`), with ``cache_read_price`` and ``cache_write_price`` for
prompt tokens read from or written to the provider's cache, ``base_url``,
``api_key_env`` (the variable holding the key), ``fallback`` (route names to use, in
order, while every deployment of this one is out: breaker open, failing, or paused by a
429), and for ``sim`` routes a ``simulator`` table of `legion.sim.SimConfig` settings.

A pool: the same route name given several times on the command line
(``--llm main=openai:gpt-4o-mini --llm main=openai:gpt-4o-mini@https://eu.example/v1``),
or ``deployments`` in its table (each a table of the settings that differ: another key,
region or provider), is one route whose calls go to the deployment where they start
soonest (the most headroom), before a 429; each call records the deployment that served
it (``main#2``).

Hung calls and large answers (see `legion.llm.transport`): ``ttfb_timeout``
(seconds until the answer's headers; 30 on streams and none on plain calls
unless set, then both), ``max_response_bytes`` (32 MiB) and
``max_event_bytes`` (8 MiB). The circuit breaker (`legion.llm.breaker`):
``breaker_failures`` (transient failures in a row that open it; 5, 0 turns
it off), ``breaker_open`` (first open period, 1 s) and ``breaker_max_open``
(longest, 30 s). Hedging (`legion.llm.hedge`, off unless set):
``hedge_percentile`` (e.g. 95: a call slower than that percentile of the
route's recent calls gets a second copy) and ``hedge_min_delay`` (1 s).

A ``local`` route's capacity is the machine, not a rate limit: it takes no
``rpm``, ``tpm`` or ``max_in_flight``. It takes ``instances`` (copies of the
model serving calls side by side; 2 on a machine with 2 cores or more),
``threads`` (CPU threads per instance; by default the cores shared out, less
one for the rest of the process, at least one) and ``context`` (context
length in tokens; 2048). Its `Capacity` admits one call per instance; the
others queue there, with no timeout running, until a model is free. Routes
on the same model file share one provider, configured by the first of them.

``legion.toml``::

    [llm]
    default = "cheap"          # the route used when a call names none
    retries = 4                # retry policy of transient errors
    backoff = 0.5
    max_backoff = 30
    batch_window = 0.5         # the batch tier: seconds collecting calls into one job
    batch_poll_interval = 2    # and between two polls of a job (legion.waiting.batch)

    [llm.cheap]
    provider = "openai"
    model = "gpt-4o-mini"
    rpm = 500
    tpm = 200000

    [llm.strong]
    provider = "anthropic"
    model = "claude-3-5-haiku-latest"
    itpm = 50000               # input and output tokens per minute, counted apart
    otpm = 10000
    fallback = ["cheap"]       # while every deployment of "strong" is out

    [llm.pooled]               # one route, two keys: the sum of their limits
    provider = "openai"
    model = "gpt-4o-mini"
    rpm = 500
    [[llm.pooled.deployments]]
    api_key_env = "OPENAI_KEY_A"
    [[llm.pooled.deployments]]
    api_key_env = "OPENAI_KEY_B"

Configuration is read once, here, into frozen values: environment variables
are not read anywhere else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import random
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from legion.errors import ConfigError
from legion.llm import anthropic, openai
from legion.llm.anthropic import AnthropicProvider
from legion.llm.breaker import Breaker, BreakerSettings
from legion.llm.budget import Budget, BudgetLimits
from legion.llm.capacity import Capacity
from legion.llm.client import DEFAULT_RETRY, LLMClient, Route
from legion.llm.hedge import HedgeSettings
from legion.llm.local import (
    DEFAULT_CONTEXT,
    PACKAGED_MODEL,
    LocalProvider,
    default_instances,
    require_extra,
)
from legion.llm.openai import OpenAIProvider
from legion.llm.pricing import FREE, Price, PriceTable
from legion.llm.provider import Provider
from legion.llm.simulated import SimulatedProvider
from legion.llm.timer import Timer
from legion.llm.transport import DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_RESPONSE_BYTES
from legion.retry import RetryPolicy

if TYPE_CHECKING:
    from legion.sim import SimConfig

log = logging.getLogger("legion.llm")

ProviderKind = Literal["sim", "openai", "anthropic", "local"]
_KINDS: tuple[ProviderKind, ...] = ("sim", "openai", "anthropic", "local")
_KEY_ENV: dict[str, str] = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_URL_ENV: dict[str, str] = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
_DEFAULT_URL: dict[str, str] = {
    "openai": openai.DEFAULT_BASE_URL,
    "anthropic": anthropic.DEFAULT_BASE_URL,
}
_SIM_MODEL = "sim-model"
_ROUTE_OPTIONS = frozenset(
    {
        "base_url",
        "api_key_env",
        "rpm",
        "tpm",
        "itpm",
        "otpm",
        "max_in_flight",
        "timeout",
        "stream",
        "stream_idle_timeout",
        "input_price",
        "output_price",
        "cache_read_price",
        "cache_write_price",
        "simulator",
        "instances",
        "threads",
        "context",
        "ttfb_timeout",
        "max_response_bytes",
        "max_event_bytes",
        "breaker_failures",
        "breaker_open",
        "breaker_max_open",
        "hedge_percentile",
        "hedge_min_delay",
        "fallback",
    }
)
_LOCAL_OPTIONS = (("instances", 1), ("threads", 1), ("context", 16))
"""A local route's own options, with their least values."""
_RETRY_OPTIONS = ("retries", "backoff", "max_backoff")
_BATCH_OPTIONS = ("batch_window", "batch_poll_interval")


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One route: which provider and model, with which limits."""

    name: str
    provider: ProviderKind
    model: str
    base_url: str | None = None
    """``None`` for the simulator, which picks its own port."""
    api_key: str | None = field(default=None, repr=False)
    key_env: str | None = None
    """The environment variable the key came from (named in error messages)."""
    rpm: int | None = None
    tpm: int | None = None
    itpm: int | None = None
    """Input tokens per minute, for a provider that limits them apart (Anthropic, Groq)."""
    otpm: int | None = None
    """Output tokens per minute, likewise."""
    max_in_flight: int | None = None
    timeout: float = 60.0
    stream: bool = False
    stream_idle_timeout: float = 30.0
    price: Price | None = None
    """Overrides the price table for this route's model."""
    simulator: SimConfig | None = None
    """Settings of a ``sim`` route's simulator."""
    model_path: str | None = None
    """A ``local`` route's GGUF file (``None``: the packaged model)."""
    instances: int | None = None
    """A ``local`` route's model instances (also its ``max_in_flight``)."""
    threads: int | None = None
    """A ``local`` route's CPU threads per generation (``None``: llama.cpp's choice)."""
    context: int | None = None
    """A ``local`` route's context length in tokens (``None``: the provider's default)."""
    ttfb_timeout: float | None = None
    """Seconds until the answer's headers (``None``: 30 on streams, none on plain calls)."""
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    """The route's circuit breaker (``failures = 0``: none)."""
    hedge: HedgeSettings | None = None
    """When slow calls get a hedged copy (``None``: never)."""
    fallback: tuple[str, ...] = ()
    """Routes to use, in order, while every deployment of this one is out."""


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """Every route, the default one, and the retry policy of transient errors."""

    routes: tuple[RouteConfig, ...]
    default: str
    retry: RetryPolicy = DEFAULT_RETRY
    batch_window: float = 0.5
    """Seconds a worker collects batch-tier calls into one job (`legion.waiting.batch`)."""
    batch_poll_interval: float = 2.0
    """Seconds between two polls of a provider's batch job."""


def parse_provider_spec(
    spec: str,
    *,
    name: str = "default",
    options: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> RouteConfig:
    """The route described by a provider spec (``sim``, ``openai:MODEL``,
    ``openai:MODEL@URL``, ``anthropic:MODEL``, ``local``, ``local:PATH``) and
    ``options``, reading keys and base URLs from ``env`` (the process
    environment by default)."""
    kind, _, rest = spec.partition(":")
    model, url = rest, ""
    if kind != "local":  # a path may hold an "@"
        model, _, url = rest.partition("@")
    settings = dict(options or {})
    if url:
        settings["base_url"] = url
    return _route(name, kind, model, settings, os.environ if env is None else env, spec)


def parse_config(table: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> LLMConfig:
    """The configuration in an ``[llm]`` table (see the module's documentation)."""
    environ = os.environ if env is None else env
    routes = []
    for name, value in table.items():
        if isinstance(value, Mapping):
            settings = dict(value)
            deployments = settings.pop("deployments", None)
            if deployments is None:
                routes.append(_table_route(name, settings, environ, f"[llm.{name}]"))
                continue
            # A pool: [[llm.NAME.deployments]] tables, each a route of its own, with the
            # pool's own settings (fallback, limits...) as their defaults.
            if not isinstance(deployments, list) or not all(
                isinstance(d, Mapping) for d in deployments
            ):
                raise ConfigError(f"[llm.{name}] deployments must be a list of tables")
            for i, deployment in enumerate(deployments, start=1):
                source = f"[llm.{name}] deployment {i}"
                routes.append(_table_route(name, {**settings, **deployment}, environ, source))
        elif name not in ("default", *_RETRY_OPTIONS, *_BATCH_OPTIONS):
            raise ConfigError(f"[llm] has an unknown setting {name!r}")
    if not routes:
        raise ConfigError("[llm] defines no route: add a table such as [llm.default]")
    default = table.get("default", routes[0].name)
    if isinstance(default, Mapping):  # a route table named [llm.default]
        default = "default"
    if not isinstance(default, str) or default not in {route.name for route in routes}:
        raise ConfigError(f"[llm] default = {default!r} names no [llm.*] route")
    check_fallbacks(routes)
    retry = {key: table[key] for key in _RETRY_OPTIONS if key in table}
    try:
        policy = RetryPolicy(**{**_retry_fields(DEFAULT_RETRY), **retry})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[llm] retry settings: {exc}") from exc
    batch = {key: table[key] for key in _BATCH_OPTIONS if key in table}
    for key, value in batch.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"[llm] {key} must be a number of seconds > 0, got {value!r}")
    return LLMConfig(tuple(routes), default, policy, **{k: float(v) for k, v in batch.items()})


def _table_route(
    name: str, settings: dict[str, Any], env: Mapping[str, str], source: str
) -> RouteConfig:
    kind = settings.pop("provider", None)
    model = settings.pop("model", "")
    if not isinstance(kind, str) or not isinstance(model, str):
        unknown = sorted(set(settings) - _ROUTE_OPTIONS)
        also = f" (unknown option(s) {', '.join(unknown)})" if unknown else ""
        raise ConfigError(f"{source} needs provider = one of {', '.join(_KINDS)}{also}")
    return _route(name, kind, model, settings, env, source)


def check_fallbacks(routes: Sequence[RouteConfig]) -> None:
    """`ConfigError` unless every fallback names another route, and the deployments of a
    pool agree on theirs (a pool's fallbacks are the pool's: another list on its second
    deployment was taken and never used)."""
    names = {route.name for route in routes}
    first: dict[str, RouteConfig] = {}
    for route in routes:
        pool = first.setdefault(route.name, route)
        if route.fallback != pool.fallback:
            raise ConfigError(
                f"the deployments of route {route.name!r} name different fallbacks "
                f"({list(pool.fallback)} and {list(route.fallback)}): a route's fallbacks are "
                "its pool's, give them once, the same on each deployment"
            )
        for fallback in route.fallback:
            if fallback not in names or fallback == route.name:
                raise ConfigError(
                    f"route {route.name!r} falls back to {fallback!r}, which is not another "
                    f"route (routes: {', '.join(sorted(names))})"
                )


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> LLMConfig:
    """The ``[llm]`` table of the TOML file at ``path``."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text
        raise ConfigError(
            f"cannot read {path}: it is not UTF-8 text (byte {exc.start}: "
            f"{exc.object[exc.start : exc.start + 1]!r})"
        ) from exc
    table = document.get("llm")
    if not isinstance(table, dict):
        raise ConfigError(f"{path} has no [llm] table")
    return parse_config(table, env=env)


async def build_client(
    config: LLMConfig,
    *,
    timer: Timer | None = None,
    rng: random.Random | None = None,
    budget: Budget | None = None,
    tenant_budget: BudgetLimits | None = None,
    max_outage: float = 120.0,
) -> LLMClient:
    """An `LLMClient` for ``config``, with its simulators started; close it
    with ``aclose()`` (or ``async with``). ``budget``: the run's spending limits;
    ``tenant_budget``: each tenant's; a cost limit needs a price for every route's model.
    ``max_outage``: how long a call waits for a route that fails every call (see
    `legion.llm.client`).

    Routes on the same provider endpoint and key share one provider (one
    connection pool); routes on the same endpoint and model share one
    `Capacity`, and must then agree on its limits.
    """
    providers: dict[tuple[Any, ...], Provider] = {}
    capacities: dict[tuple[Any, ...], tuple[Capacity, RouteConfig]] = {}
    routes = []
    sizes: dict[str, int] = {}
    for route in config.routes:
        sizes[route.name] = sizes.get(route.name, 0) + 1
    seen: dict[str, int] = {}
    try:
        for route in config.routes:
            index = seen[route.name] = seen.get(route.name, 0) + 1
            pooled = sizes[route.name] > 1
            endpoint = _endpoint(route, index)
            provider = providers.get(endpoint)
            if provider is None:
                provider = providers[endpoint] = await _start_provider(route, config.routes)
            key_id = _key_id(route) if pooled else ""
            capacity = _capacity(route, capacities, timer, rng, index, key_id)
            breaker = Breaker(route.breaker, timer=timer) if route.breaker.enabled else None
            routes.append(
                Route(
                    route.name,
                    provider,
                    route.model,
                    capacity,
                    route.timeout,
                    route.stream,
                    breaker=breaker,
                    hedge=route.hedge,
                    deployment=f"{route.name}#{index}" if pooled else "",
                    fallback=route.fallback,
                    key_id=key_id,
                    price=_price(route),
                )
            )
    except BaseException:
        for provider in providers.values():
            await provider.aclose()
        raise
    prices = PriceTable()  # (a route's own price is its deployment's: `Route.price`)
    cost_limited = (budget is not None and budget.limits.max_cost is not None) or (
        tenant_budget is not None and tenant_budget.max_cost is not None
    )
    for route in config.routes:  # look prices up now, not on the event loop's first call
        if _price(route) is None and prices.price(route.model) is None and cost_limited:
            for provider in providers.values():
                await provider.aclose()
            option = (
                "--max-cost"
                if budget is not None and budget.limits.max_cost is not None
                else "--tenant-max-cost"
            )
            raise ConfigError(
                f"{option} needs a price for every route, and model {route.model!r} (route "
                f"{route.name!r}) has none: set input_price and output_price (USD per million "
                f"tokens) in its [llm.*] table{_or_install_prices()}"
            )
    if cost_limited and all(
        _free(_price(route) or prices.price(route.model)) for route in config.routes
    ):
        # (the simulator's and local models' price: a budget rehearsed on them passed)
        log.warning(
            "the cost limit cannot bind: every route is free (%s); to rehearse a budget, give "
            "the route a price (input_price and output_price in its [llm.*] table)",
            ", ".join(sorted({route.model for route in config.routes})),
        )
    client = LLMClient(
        routes,
        default=config.default,
        retry=config.retry,
        prices=prices,
        timer=timer,
        rng=rng,
        budget=budget,
        tenant_budget=tenant_budget,
        max_outage=max_outage,
    )
    client.batch_window = config.batch_window
    client.batch_poll_interval = config.batch_poll_interval
    return client


def _free(price: Price | None) -> bool:
    return price is not None and price.input == 0 and price.output == 0


def _price(route: RouteConfig) -> Price | None:
    """A route's own price: the configured one; free on the simulator and a local model."""
    if route.price is not None:
        return route.price
    return FREE if route.provider in ("sim", "local") else None


# -- routes ---------------------------------------------------------------------


def _route(
    name: str,
    kind: str,
    model: str,
    settings: dict[str, Any],
    env: Mapping[str, str],
    source: str,
) -> RouteConfig:
    provider = _kind(kind, source)
    unknown = sorted(set(settings) - _ROUTE_OPTIONS)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
    if provider == "sim":
        return _sim_route(name, model or _SIM_MODEL, settings, source)
    if provider == "local":
        return _local_route(name, model, settings, source)
    for option, _ in _LOCAL_OPTIONS:
        if option in settings:
            raise ConfigError(f"{source}: only local routes take {option}")
    if not model:
        raise ConfigError(f"{source}: name a model, e.g. {kind}:MODEL")
    key_env = _string(settings, "api_key_env", source) or _KEY_ENV[kind]
    explicit_url = _string(settings, "base_url", source)
    base_url = explicit_url or env.get(_URL_ENV[kind]) or _DEFAULT_URL[kind]
    _check_url(base_url, explicit_url is None and bool(env.get(_URL_ENV[kind])), kind, source)
    api_key = env.get(key_env) or None
    if api_key is None and base_url.rstrip("/") == _DEFAULT_URL[kind]:
        raise ConfigError(
            f"{key_env} is not set: {source} needs it (or use {kind}:{model}@URL for a "
            "server that needs no key)"
        )
    if "simulator" in settings:
        raise ConfigError(f"{source}: only sim routes take a simulator table")
    return RouteConfig(
        name=name,
        provider=provider,
        model=model,
        base_url=base_url,
        api_key=api_key,
        key_env=key_env,
        **_common(settings, source),
    )


def _kind(kind: str, source: str) -> ProviderKind:
    for known in _KINDS:
        if kind == known:
            return known
    raise ConfigError(f"{source}: unknown provider {kind!r}; use one of {', '.join(_KINDS)}")


def _sim_route(name: str, model: str, settings: dict[str, Any], source: str) -> RouteConfig:
    for option in ("base_url", "api_key_env"):
        if option in settings:
            raise ConfigError(f"{source}: a sim route takes no {option}")
    simulator = settings.get("simulator", {})
    if not isinstance(simulator, Mapping):
        raise ConfigError(f"{source}: simulator must be a table of simulator settings")
    # Imported here: the simulator's package brings its aiohttp server, which only a sim
    # route needs.
    from legion.sim import SimConfig

    try:
        sim = SimConfig.from_mapping({"models": [model], **simulator})
    except ValueError as exc:
        raise ConfigError(f"{source}: simulator: {exc}") from exc
    if model not in sim.models:
        raise ConfigError(f"{source}: the simulator does not serve model {model!r}")
    return RouteConfig(
        name=name,
        provider="sim",
        model=model,
        api_key=sim.api_key,
        simulator=sim,
        **_common(settings, source),
    )


def _local_route(name: str, path: str, settings: dict[str, Any], source: str) -> RouteConfig:
    for option in ("base_url", "api_key_env", "simulator"):
        if option in settings:
            raise ConfigError(f"{source}: a local route takes no {option}")
    limits = [
        option for option in ("rpm", "tpm", "itpm", "otpm", "max_in_flight") if option in settings
    ]
    if limits:
        raise ConfigError(
            f"{source}: a local route takes no {', '.join(limits)}: its capacity is the "
            "machine (one call per model instance; the others queue for a model)"
        )
    try:
        require_extra(packaged=not path)
    except ConfigError:
        # `[local-embed]` alone: the route embeds offline (all-MiniLM-L6-v2); a chat on it
        # is refused when it is made, naming the extra it needs.
        if path or not _embeddings_alone():
            raise
    model_path = None
    if path:
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise ConfigError(f"{source}: no such model file: {file}")
        model_path = str(file)
    sizes: dict[str, Any] = {}
    for option, least in _LOCAL_OPTIONS:
        if option in settings:
            value = settings[option]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(
                    f"{source}: {option} must be an integer >= {least}, got {value!r}"
                )
            sizes[option] = value
    instances = sizes.setdefault("instances", default_instances())
    return RouteConfig(
        name=name,
        provider="local",
        model=Path(model_path).name.removesuffix(".gguf") if model_path else PACKAGED_MODEL,
        model_path=model_path,
        **sizes,
        **{**_common(settings, source), "max_in_flight": instances},
    )


def _embeddings_alone() -> bool:
    """Whether the ``local-embed`` extra is installed (its model and what runs it)."""
    return all(find_spec(name) is not None for name in ("all_minilm_l6_v2", "numpy", "tokenizers"))


def _common(settings: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The options every provider takes, checked."""
    values: dict[str, Any] = {}
    for option in ("rpm", "tpm", "itpm", "otpm", "max_in_flight"):
        if option in settings:
            value = settings[option]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{source}: {option} must be a positive integer, got {value!r}")
            values[option] = value
    for option in ("timeout", "stream_idle_timeout"):
        if option in settings:
            values[option] = _number(settings, option, source, positive=True)
    if "stream" in settings:
        if not isinstance(settings["stream"], bool):
            raise ConfigError(f"{source}: stream must be true or false")
        values["stream"] = settings["stream"]
    if ("input_price" in settings) != ("output_price" in settings):
        given, missing = (
            ("input_price", "output_price")
            if "input_price" in settings
            else ("output_price", "input_price")
        )
        # (the other half was $0: a route's completions, or its prompts, counted as free
        # under --max-cost)
        raise ConfigError(
            f"{source}: {given} without {missing}: give both (USD per million tokens; "
            f"{missing} = 0 where that half is free)"
        )
    if "input_price" in settings:
        cache = {
            key: _number(settings, f"{key}_price", source)
            for key in ("cache_read", "cache_write")
            if f"{key}_price" in settings
        }
        values["price"] = Price(
            _number(settings, "input_price", source),
            _number(settings, "output_price", source),
            **cache,
        )
    elif "cache_read_price" in settings or "cache_write_price" in settings:
        raise ConfigError(f"{source}: cache prices go with input_price and output_price")
    if "ttfb_timeout" in settings:
        values["ttfb_timeout"] = _number(settings, "ttfb_timeout", source, positive=True)
    for option in ("max_response_bytes", "max_event_bytes"):
        if option in settings:
            value = settings[option]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise ConfigError(f"{source}: {option} must be an integer >= 1024, got {value!r}")
            values[option] = value
    values.update(_resilience(settings, source))
    if "fallback" in settings:
        fallback = settings["fallback"]
        if isinstance(fallback, str):
            fallback = [fallback]
        if not isinstance(fallback, list) or not all(isinstance(f, str) and f for f in fallback):
            raise ConfigError(f"{source}: fallback must be a list of route names")
        values["fallback"] = tuple(fallback)
    return values


def _resilience(settings: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The breaker and hedging options, checked."""
    values: dict[str, Any] = {}
    breaker: dict[str, Any] = {}
    if "breaker_failures" in settings:
        value = settings["breaker_failures"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"{source}: breaker_failures must be an integer >= 0 (0: no breaker), got {value!r}"
            )
        breaker["failures"] = value
    for option, name in (("breaker_open", "open_for"), ("breaker_max_open", "max_open_for")):
        if option in settings:
            breaker[name] = _number(settings, option, source, positive=True)
    if breaker:
        try:
            values["breaker"] = BreakerSettings(**breaker)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    if "hedge_min_delay" in settings and "hedge_percentile" not in settings:
        raise ConfigError(f"{source}: hedge_min_delay needs hedge_percentile (hedging is off)")
    if "hedge_percentile" in settings:
        hedge: dict[str, Any] = {"percentile": _number(settings, "hedge_percentile", source)}
        if "hedge_min_delay" in settings:
            hedge["min_delay"] = _number(settings, "hedge_min_delay", source)
        try:
            values["hedge"] = HedgeSettings(**hedge)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    return values


def _or_install_prices() -> str:
    """ ", or install legion-runtime[prices]" where that package is not installed."""
    return "" if importlib.util.find_spec("genai_prices") else ", or install legion-runtime[prices]"


def _number(
    settings: Mapping[str, Any], option: str, source: str, *, positive: bool = False
) -> float:
    value = settings.get(option, 0.0)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        kind = "positive" if positive else "non-negative"
        raise ConfigError(f"{source}: {option} must be a {kind} number, got {value!r}")
    return float(value)


def _string(settings: Mapping[str, Any], option: str, source: str) -> str | None:
    value = settings.get(option)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{source}: {option} must be a non-empty string")
    return value


def _retry_fields(policy: RetryPolicy) -> dict[str, Any]:
    return {"retries": policy.retries, "backoff": policy.backoff, "max_backoff": policy.max_backoff}


# -- building -------------------------------------------------------------------


async def _start_provider(route: RouteConfig, every: tuple[RouteConfig, ...]) -> Provider:
    """The provider of ``route``, its pool sized for every route sharing it."""
    pool = _pool_size(route, every)
    if route.provider == "sim":
        simulated = SimulatedProvider(
            route.simulator,
            max_connections=pool,
            stream_idle_timeout=route.stream_idle_timeout,
            **_http_options(route),
        )
        await simulated.start()
        return simulated
    if route.provider == "local":
        return LocalProvider(
            route.model_path,
            model=route.model,
            instances=route.instances,
            threads=route.threads,
            stream_idle_timeout=route.stream_idle_timeout,
            context=route.context or DEFAULT_CONTEXT,
        )
    assert route.base_url is not None and route.key_env is not None
    if route.provider == "anthropic":
        return AnthropicProvider(
            api_key=route.api_key,
            base_url=route.base_url,
            max_connections=pool,
            stream_idle_timeout=route.stream_idle_timeout,
            key_env=route.key_env,
            **_http_options(route),
        )
    return OpenAIProvider(
        base_url=route.base_url,
        api_key=route.api_key,
        max_connections=pool,
        stream_idle_timeout=route.stream_idle_timeout,
        key_env=route.key_env,
        **_http_options(route),
    )


def _http_options(route: RouteConfig) -> dict[str, Any]:
    return {
        "ttfb_timeout": route.ttfb_timeout,
        "max_response_bytes": route.max_response_bytes,
        "max_event_bytes": route.max_event_bytes,
    }


_NO_USERINFO = re.compile(r"//[^/?#]*@")


def _check_url(url: str, from_env: bool, kind: str, source: str) -> None:
    """A provider's base URL must be http(s) and name a host: one without a scheme
    (``127.0.0.1:8000/v1``) was taken, then every call failed as an outage, for two
    minutes, before a task said why."""
    where = f"${_URL_ENV[kind]}" if from_env else source
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        shown = _NO_USERINFO.sub("//", url)  # (said without what precedes an '@')
        raise ConfigError(f"{where.replace(url, shown)}: bad base URL {shown!r}: {exc}") from None
    if "@" in parts.netloc:
        # (said without the URL: it holds a secret. Taken, its password was printed with
        # the URL in errors, or every call failed: a key and URL credentials together)
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        raise ConfigError(
            f"{where.replace(url, shown)}: the base URL {shown} holds credentials "
            "(user:password@): give the "
            "provider's key in its variable (OPENAI_API_KEY, ANTHROPIC_API_KEY, or a "
            "route's api_key_env), not in the URL"
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{where}: bad base URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}: the base URL {url!r} needs http:// or https:// and a host "
            f"(e.g. http://127.0.0.1:8000/v1)"
        )


def _endpoint(route: RouteConfig, index: int = 1) -> tuple[Any, ...]:
    """What routes sharing a provider have in common (each sim route, and each sim
    deployment of a pool, has its own)."""
    if route.provider == "sim":
        return ("sim", route.name, index)
    if route.provider == "local":
        return ("local", route.model_path)
    return (route.provider, route.base_url, route.api_key)


def _key_id(route: RouteConfig) -> str:
    """A short digest of a deployment's key (never the key itself)."""
    if not route.api_key:
        return ""
    return hashlib.sha256(route.api_key.encode()).hexdigest()[:12]


def _pool_size(route: RouteConfig, every: tuple[RouteConfig, ...]) -> int:
    """The sum of ``max_in_flight`` of the routes sharing ``route``'s provider,
    or 0 (unbounded) if one of them sets none."""
    endpoint = _endpoint(route)
    sizes = [other.max_in_flight for other in every if _endpoint(other) == endpoint]
    return 0 if None in sizes else sum(size for size in sizes if size is not None)


def _capacity(
    route: RouteConfig,
    capacities: dict[tuple[Any, ...], tuple[Capacity, RouteConfig]],
    timer: Timer | None,
    rng: random.Random | None,
    index: int = 1,
    key_id: str = "",
) -> Capacity:
    # One capacity per endpoint, model and key: a pool's deployments each have their own.
    key = (
        *_endpoint(route, index)[:2],
        route.model,
        key_id,
        index if route.provider == "sim" else 0,
    )
    shared = capacities.get(key)
    if shared is not None:
        capacity, first = shared
        limits = (route.rpm, route.tpm, route.itpm, route.otpm, route.max_in_flight)
        if limits != (first.rpm, first.tpm, first.itpm, first.otpm, first.max_in_flight):
            raise ConfigError(
                f"routes {first.name!r} and {route.name!r} share {route.provider}:{route.model} "
                "but set different rpm, tpm, itpm, otpm or max_in_flight"
            )
        return capacity
    capacity = Capacity(
        f"{route.provider}:{route.model}" + (f"#{index}" if key_id or index > 1 else ""),
        rpm=route.rpm,
        tpm=route.tpm,
        itpm=route.itpm,
        otpm=route.otpm,
        max_in_flight=route.max_in_flight,
        timer=timer,
        rng=rng,
        # Anthropic does not count prompt tokens read from its cache against the input
        # limit (on most models); OpenAI counts every prompt token.
        cache_exempt=route.provider == "anthropic",
        # A real host told no limit: find it (slow start, then AIMD) instead of sending
        # every caller at once. The built-in simulator and a local model need not.
        discover=route.provider in ("openai", "anthropic"),
    )
    capacities[key] = (capacity, route)
    return capacity
