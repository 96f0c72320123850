"""What completions cost: a price table in USD per million tokens.

The defaults are list prices of a few common models (standard tier, no
caching or batch discounts; check your provider's page, prices change), and
zero for the simulator's model. A model not in the table costs nothing, so
local models are free; a dated or suffixed model name (``gpt-4o-mini-2024-07-18``,
``claude-3-5-haiku-latest``) takes the price of the longest entry it extends.
Override or extend the table from configuration (`PriceTable.with_prices`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from legion.llm.types import Usage


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input (prompt) and output (completion) tokens."""

    input: float
    output: float

    def __post_init__(self) -> None:
        if self.input < 0 or self.output < 0:
            raise ValueError(f"prices must be >= 0, got {self}")


DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        "gpt-4o-mini": Price(0.15, 0.60),
        "gpt-4o": Price(2.50, 10.00),
        "gpt-4.1": Price(2.00, 8.00),
        "gpt-4.1-mini": Price(0.40, 1.60),
        "gpt-4.1-nano": Price(0.10, 0.40),
        "claude-3-haiku": Price(0.25, 1.25),
        "claude-3-5-haiku": Price(0.80, 4.00),
        "claude-3-5-sonnet": Price(3.00, 15.00),
        "claude-3-7-sonnet": Price(3.00, 15.00),
        "claude-sonnet-4": Price(3.00, 15.00),
        "sim-model": Price(0.0, 0.0),
        # Embedding models: input tokens only.
        "text-embedding-3-small": Price(0.02, 0.0),
        "text-embedding-3-large": Price(0.13, 0.0),
    }
)


class PriceTable:
    """Prices by model name."""

    __slots__ = ("_prices",)

    def __init__(self, prices: Mapping[str, Price] = DEFAULT_PRICES) -> None:
        self._prices = dict(prices)

    def with_prices(self, prices: Mapping[str, Price]) -> PriceTable:
        """This table with ``prices`` added or replacing existing entries."""
        return PriceTable({**self._prices, **prices})

    def price(self, model: str) -> Price | None:
        """The price of ``model``: its own entry, else the longest entry it
        extends (followed by ``-``), else ``None``."""
        exact = self._prices.get(model)
        if exact is not None:
            return exact
        best = ""
        for name in self._prices:
            if len(name) > len(best) and model.startswith(name + "-"):
                best = name
        return self._prices[best] if best else None

    def cost(self, model: str, usage: Usage) -> float:
        """USD for ``usage`` on ``model`` (0 for a model without a price)."""
        price = self.price(model)
        if price is None:
            return 0.0
        return (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1e6


def cost(model: str, usage: Usage) -> float:
    """USD for ``usage`` on ``model`` at the default prices."""
    return PriceTable().cost(model, usage)
