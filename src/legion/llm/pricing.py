"""What completions cost, in USD per million tokens.

Where a price comes from, first found first:

1. the route's own ``input_price`` / ``output_price`` (``legion.toml``, or
   `PriceTable.with_prices`), plus ``cache_read_price`` / ``cache_write_price``;
2. the ``genai-prices`` package when it is installed (``pip install 'legion-runtime[prices]'``):
   prices of several hundred models of every major provider, bundled with the package
   and read offline (no network at run time), cache reads and writes included;
3. a built-in table of common models (standard tier, no batch discount; prices change,
   check your provider's page), and zero for the simulator's and local models;

and a model found in none has **no price**: its cost is unknown (`PriceTable.cost`
answers ``None``), never silently $0. A dated or suffixed model name
(``gpt-4o-mini-2024-07-18``, ``claude-3-5-haiku-latest``) takes the price of the
longest built-in entry it extends.

Cached prompt tokens (``Usage.cached_tokens``) are priced at the cache-read price and
tokens written to a cache (``Usage.cache_write_tokens``) at the cache-write price, where
the price says them (else at the input price); both are part of ``prompt_tokens``.
Reasoning tokens are part of ``completion_tokens`` and priced as output, as providers
bill them.

Batch prices (the providers' batch APIs, `legion.llm.batch`): a route's own price times
`BATCH_DISCOUNT`; else ``genai-prices``' batch price where it has one; else the standard
price times `BATCH_DISCOUNT` (OpenAI and Anthropic both bill batches at half price).

A lookup in ``genai-prices`` costs about 0.1-0.3 ms (20 ms the first, and 0.2 s to
import the package); legion looks each model up once per process and keeps the price,
so a call's cost is a few multiplications.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from legion.llm.types import Usage

_PROBE = 1000
"""Tokens per probe of genai-prices: few enough to stay below every tier threshold."""
BATCH_DISCOUNT = 0.5
"""A batch call's price as a share of the standard price, where no batch price is known:
OpenAI's Batch API and Anthropic's Message Batches both bill 50%."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input (prompt) and output (completion) tokens, and per million
    prompt tokens read from or written to the provider's cache (``None``: as input)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def __post_init__(self) -> None:
        values = (self.input, self.output, self.cache_read, self.cache_write)
        if any(value is not None and value < 0 for value in values):
            raise ValueError(f"prices must be >= 0, got {self}")

    def scaled(self, factor: float) -> Price:
        """This price times ``factor`` (every part of it)."""
        return Price(
            self.input * factor,
            self.output * factor,
            None if self.cache_read is None else self.cache_read * factor,
            None if self.cache_write is None else self.cache_write * factor,
        )

    def cost(self, usage: Usage) -> float:
        """USD for ``usage`` at this price."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        plain = usage.prompt_tokens - cached - written
        read_price = self.input if self.cache_read is None else self.cache_read
        write_price = self.input if self.cache_write is None else self.cache_write
        return (
            plain * self.input
            + cached * read_price
            + written * write_price
            + usage.completion_tokens * self.output
        ) / 1e6


DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        "gpt-4o-mini": Price(0.15, 0.60, 0.075),
        "gpt-4o": Price(2.50, 10.00, 1.25),
        "gpt-4.1": Price(2.00, 8.00, 0.50),
        "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
        "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
        "gpt-5": Price(1.25, 10.00, 0.125),
        "gpt-5-mini": Price(0.25, 2.00, 0.025),
        "gpt-5-nano": Price(0.05, 0.40, 0.005),
        "o3": Price(2.00, 8.00, 0.50),
        "o3-mini": Price(1.10, 4.40, 0.55),
        "o4-mini": Price(1.10, 4.40, 0.275),
        "claude-3-haiku": Price(0.25, 1.25, 0.03, 0.30),
        "claude-3-5-haiku": Price(0.80, 4.00, 0.08, 1.00),
        "claude-3-5-sonnet": Price(3.00, 15.00, 0.30, 3.75),
        "claude-3-7-sonnet": Price(3.00, 15.00, 0.30, 3.75),
        "claude-sonnet-4": Price(3.00, 15.00, 0.30, 3.75),
        "claude-opus-4": Price(15.00, 75.00, 1.50, 18.75),
        "claude-opus-4-1": Price(15.00, 75.00, 1.50, 18.75),
        "gemini-2.5-flash": Price(0.30, 2.50, 0.03),
        "gemini-2.5-pro": Price(1.25, 10.00, 0.31),
        "sim-model": Price(0.0, 0.0),
        # Embedding models: input tokens only.
        "text-embedding-3-small": Price(0.02, 0.0),
        "text-embedding-3-large": Price(0.13, 0.0),
    }
)
"""The built-in table, used where ``genai-prices`` is not installed or has no entry."""

FREE = Price(0.0, 0.0)
"""The price of the simulator and of local models."""


class PriceTable:
    """Prices by model name: overrides, then ``genai-prices``, then the built-in table."""

    __slots__ = ("_found", "_overrides", "_prices", "_use_package")

    def __init__(
        self,
        prices: Mapping[str, Price] = DEFAULT_PRICES,
        *,
        overrides: Mapping[str, Price] | None = None,
        use_package: bool = True,
    ) -> None:
        self._prices = dict(prices)
        self._overrides = dict(overrides or {})
        self._use_package = use_package
        # Each model's price once found (a table never changes): every LLM call asks
        # for it three times (budget estimate, settle, recorded cost), and a model that
        # no source prices costs a walk over the whole table each time.
        self._found: dict[str, Price | None] = {}

    def with_prices(self, prices: Mapping[str, Price]) -> PriceTable:
        """This table with ``prices`` taking precedence over every other source."""
        return PriceTable(
            self._prices,
            overrides={**self._overrides, **prices},
            use_package=self._use_package,
        )

    def price(self, model: str) -> Price | None:
        """The price of ``model``, or ``None`` when no source has one."""
        try:
            return self._found[model]
        except KeyError:
            found = self._found[model] = self._lookup(model)
            return found

    def _lookup(self, model: str) -> Price | None:
        override = self._overrides.get(model)
        if override is not None:
            return override
        if self._use_package:
            found = package_price(model)
            if found is not None:
                return found
        return self._table_price(model)

    def cost(self, model: str, usage: Usage) -> float | None:
        """USD for ``usage`` on ``model``; ``None`` when its price is unknown."""
        price = self.price(model)
        return None if price is None else price.cost(usage)

    def batch_price(self, model: str) -> Price | None:
        """``model``'s price in a provider's batch job (see the module's text)."""
        if model not in self._overrides and self._use_package:
            found = package_price(model, batch=True)
            if found is not None:
                return found
        price = self.price(model)
        return None if price is None else price.scaled(BATCH_DISCOUNT)

    def _table_price(self, model: str) -> Price | None:
        exact = self._prices.get(model)
        if exact is not None:
            return exact
        best = ""
        for name in self._prices:
            if len(name) > len(best) and model.startswith(name + "-"):
                best = name
        return self._prices[best] if best else None


def cost(model: str, usage: Usage) -> float | None:
    """USD for ``usage`` on ``model`` at the default prices (``None``: unknown)."""
    return PriceTable().cost(model, usage)


def format_cost(cost_usd: float, unpriced_calls: int = 0, *, hint: bool = True) -> str:
    """How a cost is shown: ``$0.0123``, or with ``cost unknown`` when some calls were
    on a model without a price (their cost is not in ``cost_usd``); ``hint`` adds how
    to give it one (for a summary, not a line redrawn many times)."""
    if not unpriced_calls:
        return f"${cost_usd:.4f}"
    if cost_usd:
        return f"${cost_usd:.4f} + cost unknown for {unpriced_calls:,} calls"
    if not hint:
        return "cost unknown"
    return "cost unknown (no price for the model: set input_price and output_price)"


# Providers to ask genai-prices for when a model's name alone finds nothing.
_PROVIDER_HINTS = (("text-embedding-", "openai"),)


@functools.cache
def package_price(model: str, *, batch: bool = False) -> Price | None:
    """``model``'s price in ``genai-prices`` (``None``: not installed, or not there);
    ``batch``: its price in a provider's batch job, ``None`` unless the package has one of
    its own (one lower than the standard price)."""
    try:
        import genai_prices
    except ImportError:
        return None
    context = {"processing": "batch"} if batch else None

    hinted = [provider for prefix, provider in _PROVIDER_HINTS if model.startswith(prefix)]
    providers: tuple[str | None, ...] = (None, *hinted)

    def per_million(**tokens: int) -> float | None:
        # By the model's name alone first; some names (embedding models) are found only
        # with their provider, guessed from the name's prefix.
        for provider in providers:
            try:
                calculation = genai_prices.calc_price(
                    genai_prices.Usage(**tokens), model, provider_id=provider, price_context=context
                )
            except LookupError:
                continue
            except Exception:  # a price it cannot compute (odd units, a bad entry)
                return None
            return float(calculation.total_price) * 1e6 / _PROBE
        return None

    input_price = per_million(input_tokens=_PROBE)
    output_price = per_million(output_tokens=_PROBE)
    if input_price is None or output_price is None:
        return None
    cache_read = per_million(input_tokens=_PROBE, cache_read_tokens=_PROBE)
    cache_write = per_million(input_tokens=_PROBE, cache_write_tokens=_PROBE)
    found = Price(input_price, output_price, cache_read, cache_write)
    if batch:
        standard = package_price(model)
        if standard is None or (found.input, found.output) >= (standard.input, standard.output):
            return None  # no batch price of its own: the caller applies BATCH_DISCOUNT
    return found
