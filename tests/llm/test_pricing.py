"""Prices and costs."""

from __future__ import annotations

import pytest

from legion.llm import Price, PriceTable, Usage, cost


def test_default_prices_and_dated_model_names() -> None:
    usage = Usage(1_000_000, 1_000_000)
    assert cost("gpt-4o-mini", usage) == pytest.approx(0.75)
    assert cost("gpt-4o-mini-2024-07-18", usage) == pytest.approx(0.75)
    assert cost("gpt-4o-2024-08-06", usage) == pytest.approx(12.50)
    assert cost("claude-3-5-haiku-latest", Usage(2_000, 1_000)) == pytest.approx(0.0056)
    assert cost("sim-model", usage) == 0.0
    assert cost("my-local-llama", usage) == 0.0  # unknown models are free


def test_longest_entry_wins_and_overrides_replace() -> None:
    table = PriceTable({"m": Price(1, 1), "m-large": Price(10, 10)})
    assert table.price("m-large-v2") == Price(10, 10)
    assert table.price("m-small") == Price(1, 1)
    assert table.price("mx") is None
    cheaper = table.with_prices({"m": Price(0.5, 0.5)})
    assert cheaper.cost("m", Usage(2_000_000, 0)) == 1.0
    assert table.cost("m", Usage(2_000_000, 0)) == 2.0  # the original is unchanged


def test_negative_prices_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Price(-1, 0)
