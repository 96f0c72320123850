"""Prices and costs: overrides, genai-prices, the built-in table, and unknown prices."""

from __future__ import annotations

import pytest

from legion.llm import Price, PriceTable, Usage, cost
from legion.llm.pricing import DEFAULT_PRICES, format_cost, package_price


def test_default_prices_and_dated_model_names() -> None:
    usage = Usage(1_000_000, 1_000_000)
    assert cost("gpt-4o-mini", usage) == pytest.approx(0.75)
    assert cost("gpt-4o-mini-2024-07-18", usage) == pytest.approx(0.75)
    assert cost("gpt-4o-2024-08-06", usage) == pytest.approx(12.50)
    assert cost("claude-3-5-haiku-latest", Usage(2_000, 1_000)) == pytest.approx(0.0056)
    assert cost("sim-model", usage) == 0.0


@pytest.mark.parametrize(
    ("model", "input_price", "output_price"),
    [
        ("gpt-5-mini", 0.25, 2.00),
        ("o3-mini", 1.10, 4.40),
        ("claude-opus-4-1", 15.00, 75.00),
        ("gemini-2.5-flash", 0.30, 2.50),
    ],
)
def test_models_beyond_the_old_table_have_prices(
    model: str, input_price: float, output_price: float
) -> None:
    for table in (PriceTable(), PriceTable(use_package=False)):  # genai-prices, built-in
        price = table.price(model)
        assert price is not None, model
        assert (price.input, price.output) == pytest.approx((input_price, output_price))
        assert table.cost(model, Usage(1_000_000, 1_000_000)) == pytest.approx(
            input_price + output_price
        )


def test_genai_prices_is_read_offline_and_agrees_with_the_built_in_table() -> None:
    # The package ships its prices: no network here (the tests run without one).
    for model, built_in in DEFAULT_PRICES.items():
        found = package_price(model)
        if model == "sim-model":
            assert found is None
            continue
        assert found is not None, model
        assert (found.input, found.output) == pytest.approx((built_in.input, built_in.output))


def test_a_model_without_a_price_has_an_unknown_cost_not_zero() -> None:
    usage = Usage(1_000_000, 1_000_000)
    assert cost("my-own-finetune-v3", usage) is None
    assert PriceTable().price("my-own-finetune-v3") is None
    assert format_cost(0.0, 3) == (
        "cost unknown (no price for the model: set input_price and output_price)"
    )
    assert format_cost(1.5, 2) == "$1.5000 + cost unknown for 2 calls"
    assert format_cost(1.5) == "$1.5000"


def test_cached_prompt_tokens_and_cache_writes_are_priced_apart() -> None:
    price = Price(3.0, 15.0, cache_read=0.3, cache_write=3.75)
    usage = Usage(1_000_000, 0, cached_tokens=600_000, cache_write_tokens=100_000)
    assert price.cost(usage) == pytest.approx(0.3 * 3.0 + 0.6 * 0.3 + 0.1 * 3.75)
    assert Price(3.0, 15.0).cost(usage) == pytest.approx(3.0)  # no cache price: as input
    # Reasoning tokens are completion tokens, priced as output.
    assert price.cost(Usage(0, 1_000, reasoning_tokens=800)) == pytest.approx(0.015)
    opus = PriceTable().price("claude-opus-4-1")
    assert opus is not None and opus.cache_read == pytest.approx(1.5)
    assert opus.cache_write == pytest.approx(18.75)
    mini = PriceTable().cost("gpt-5-mini", Usage(1_000_000, 0, cached_tokens=500_000))
    assert mini == pytest.approx(0.5 * 0.25 + 0.5 * 0.025)


def test_longest_entry_wins_and_overrides_come_first() -> None:
    table = PriceTable({"m": Price(1, 1), "m-large": Price(10, 10)}, use_package=False)
    assert table.price("m-large-v2") == Price(10, 10)
    assert table.price("m-small") == Price(1, 1)
    assert table.price("mx") is None
    cheaper = table.with_prices({"m": Price(0.5, 0.5)})
    assert cheaper.cost("m", Usage(2_000_000, 0)) == 1.0
    assert table.cost("m", Usage(2_000_000, 0)) == 2.0  # the original is unchanged
    negotiated = PriceTable().with_prices({"gpt-5-mini": Price(0.1, 1.0)})
    assert negotiated.price("gpt-5-mini") == Price(0.1, 1.0)  # before genai-prices


def test_usage_adds_and_round_trips_its_details() -> None:
    a = Usage(10, 5, cached_tokens=4, reasoning_tokens=2)
    b = Usage(1, 1, cache_write_tokens=1)
    assert a + b == Usage(11, 6, 4, 1, 2)
    assert a.to_json() == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 4,
        "reasoning_tokens": 2,
    }
    assert Usage.from_json(a.to_json()) == a
    assert Usage.from_json({"prompt_tokens": 3, "completion_tokens": 4}) == Usage(3, 4)


def test_negative_prices_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Price(-1, 0)
    with pytest.raises(ValueError, match=">= 0"):
        Price(1, 1, cache_read=-1)


def test_batch_prices_come_from_genai_prices_else_half_the_standard_price() -> None:
    table = PriceTable()
    standard, batch = table.price("gpt-4o-mini"), table.batch_price("gpt-4o-mini")
    assert standard is not None and batch is not None
    # genai-prices has OpenAI's batch price of this model: half, as billed.
    assert package_price("gpt-4o-mini", batch=True) == batch
    assert (batch.input, batch.output) == pytest.approx((standard.input / 2, standard.output / 2))
    # A route's own price, and a model without a batch price of its own: halved.
    own = table.with_prices({"gpt-4o-mini": Price(1.0, 4.0, 0.5)})
    assert own.batch_price("gpt-4o-mini") == Price(0.5, 2.0, 0.25)
    local = PriceTable(use_package=False)
    assert local.batch_price("claude-sonnet-4") == Price(1.5, 7.5, 0.15, 1.875)
    assert local.batch_price("mystery-model") is None
