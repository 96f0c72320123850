"""`Budget`: reservations before calls, settlements after, and exhaustion."""

from __future__ import annotations

import asyncio

import pytest

from legion.errors import BudgetExceeded, ConfigError
from legion.llm.budget import Budget, BudgetLimits, Spend


async def test_calls_reserve_then_settle_and_the_last_fitting_call_is_the_last() -> None:
    budget = Budget(BudgetLimits(max_calls=2))
    first = await budget.reserve(10, 0.0)
    second = await budget.reserve(10, 0.0)
    budget.settle(first, 8, 0.0)
    budget.settle(second, 8, 0.0)
    with pytest.raises(BudgetExceeded, match="--max-calls 2"):
        await budget.reserve(10, 0.0)
    assert budget.exhausted is not None
    assert budget.spent == Spend(2, 16, 0.0)


async def test_a_failed_call_gives_its_reservation_back() -> None:
    budget = Budget(BudgetLimits(max_calls=1))
    hold = await budget.reserve(10, 0.0)
    budget.release(hold)
    again = await budget.reserve(10, 0.0)
    budget.settle(again, 5, 0.0)
    assert budget.spent.calls == 1


async def test_a_call_waits_for_calls_in_flight_that_may_give_tokens_back() -> None:
    budget = Budget(BudgetLimits(max_tokens=100))
    first = await budget.reserve(80, None)  # an estimate: max_tokens, say
    waiting = asyncio.ensure_future(budget.reserve(50, None))
    await asyncio.sleep(0)
    assert not waiting.done()  # 80 + 50 > 100, but the first may use less
    budget.settle(first, 30, None)  # it did: 30 + 50 fit
    hold = await waiting
    assert hold.reserved.tokens == 50 and budget.exhausted is None


async def test_a_call_that_cannot_fit_even_after_settling_exhausts_the_budget() -> None:
    budget = Budget(BudgetLimits(max_tokens=100))
    first = await budget.reserve(80, None)
    waiting = asyncio.ensure_future(budget.reserve(50, None))
    await asyncio.sleep(0)
    budget.settle(first, 80, None)
    with pytest.raises(BudgetExceeded, match="--max-tokens"):
        await waiting
    exhausted = await budget.wait_exhausted()
    assert "--max-tokens 100" in exhausted


async def test_earlier_runs_count() -> None:
    budget = Budget(BudgetLimits(max_cost=1.0))
    budget.spent_before(Spend(3, 100, 0.9))
    with pytest.raises(BudgetExceeded, match="max-cost"):
        await budget.reserve(10, 0.2)


async def test_an_unpriced_call_cannot_count_against_a_cost_limit() -> None:
    budget = Budget(BudgetLimits(max_cost=1.0))
    with pytest.raises(BudgetExceeded, match="without a price"):
        await budget.reserve(10, None)


def test_limits_are_checked() -> None:
    with pytest.raises(ConfigError):
        BudgetLimits(max_cost=-1)
    with pytest.raises(ConfigError):
        BudgetLimits(max_calls=0)
    assert not BudgetLimits().any and BudgetLimits(max_calls=1).any
