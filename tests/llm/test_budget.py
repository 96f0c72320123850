"""`Budget`: reservations before calls, settlements after, and exhaustion."""

from __future__ import annotations

import asyncio
from contextvars import Token

import pytest

from legion import attempt
from legion.errors import BudgetExceeded, ConfigError
from legion.llm.budget import Budget, BudgetLimits, Budgets, Spend


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


async def test_a_call_larger_than_the_whole_limit_says_so() -> None:
    # "--max-cost $0.12 reached ($0.0000 spent)": nothing was spent, and the message did
    # not say that one call's reservation (its max_tokens, or the estimate) was the cause.
    budget = Budget(BudgetLimits(max_cost=0.12))
    with pytest.raises(BudgetExceeded) as refused:
        await budget.reserve(300, 0.27)
    assert str(refused.value) == (
        "LLM budget exhausted: --max-cost $0.12 reached ($0.0000 spent when a call did not "
        "fit); one call alone "
        "reserves $0.2700, more than the whole limit (its prompt and its max_tokens, or the "
        "completion estimated without one): give the call a lower max_tokens, or raise the "
        "limit"
    )
    tokens = Budget(BudgetLimits(max_tokens=100))
    with pytest.raises(BudgetExceeded, match="one call alone reserves 150 tokens"):
        await tokens.reserve(150, None)


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


# -- every budget a call counts against: the run's, its agent's, its tenant's ----------------


def _in_attempt(
    agent: str, tenant: str, budget: tuple[float | None, int | None, int | None] | None
) -> Token[attempt.AttemptTime | None]:
    """Calls from here on are made as if by an attempt of ``agent`` for ``tenant``."""
    time_ = attempt.AttemptTime(None, agent=agent, tenant=tenant, budget=budget)
    return attempt.CURRENT.set(time_)


async def test_an_agents_budget_refuses_its_calls_only() -> None:
    budgets = Budgets()
    token = _in_attempt("small", "default", (None, None, 2))
    try:
        for _ in range(2):
            budgets.settle(await budgets.reserve(10, 0.0), 10, 0.0)
        with pytest.raises(BudgetExceeded) as refused:
            await budgets.reserve(10, 0.0)
    finally:
        attempt.CURRENT.reset(token)
    assert refused.value.scope == "agent"
    assert "agent 'small' max_calls 2 reached" in str(refused.value)
    assert budgets.agent_exhausted("small") and not budgets.agent_exhausted("other")
    token = _in_attempt("other", "default", None)  # an agent without a budget goes on
    try:
        budgets.settle(await budgets.reserve(10, 0.0), 10, 0.0)
    finally:
        attempt.CURRENT.reset(token)


async def test_a_tenants_budget_counts_each_tenant_apart() -> None:
    budgets = Budgets(tenant=BudgetLimits(max_tokens=100))
    for tenant in ("acme", "globex"):
        token = _in_attempt("a", tenant, None)
        try:
            budgets.settle(await budgets.reserve(60, None), 60, None)
            with pytest.raises(BudgetExceeded) as refused:
                await budgets.reserve(60, None)
        finally:
            attempt.CURRENT.reset(token)
        assert refused.value.scope == "tenant"
        assert f"tenant {tenant!r} --tenant-max-tokens 100 reached" in str(refused.value)
    assert {name: b.spent.tokens for name, b in budgets.tenants.items()} == {
        "acme": 60,
        "globex": 60,
    }


async def test_a_refusal_by_one_budget_gives_the_others_their_reservation_back() -> None:
    run = Budget(BudgetLimits(max_calls=10))
    budgets = Budgets(run, tenant=BudgetLimits(max_calls=1))
    token = _in_attempt("a", "acme", None)
    try:
        budgets.settle(await budgets.reserve(5, 0.0), 5, 0.0)
        with pytest.raises(BudgetExceeded):
            await budgets.reserve(5, 0.0)  # the run's budget held it, the tenant's did not
    finally:
        attempt.CURRENT.reset(token)
    assert run.spent.calls == 1 and run._reserved == Spend()  # nothing left reserved


async def test_an_agents_budget_starts_from_what_its_tasks_recorded() -> None:
    asked: list[tuple[str, str]] = []

    async def history(scope: str, name: str) -> Spend:
        asked.append((scope, name))
        return Spend(calls=4)

    budgets = Budgets(tenant=BudgetLimits(max_calls=100))
    budgets.history = history
    token = _in_attempt("small", "acme", (None, None, 5))
    try:
        budgets.settle(await budgets.reserve(1, 0.0), 1, 0.0)  # the 5th call in all
        with pytest.raises(BudgetExceeded):
            await budgets.reserve(1, 0.0)
    finally:
        attempt.CURRENT.reset(token)
    assert sorted(asked) == [("agent", "small"), ("tenant", "acme")]  # read once each
    assert budgets.tenants["acme"].spent.calls == 5


async def test_a_budget_told_to_count_earlier_runs_first_holds_calls_until_it_has() -> None:
    # `legion run` again after a budget stop: the tasks left queued started with the
    # worker, and their calls went out before what the earlier run spent was read.
    budget = Budget(BudgetLimits(max_calls=10))
    budget.count_earlier_first()
    early = asyncio.ensure_future(budget.reserve(10, None))
    await asyncio.sleep(0)
    assert not early.done()
    budget.spent_before(Spend(10, 0, 0.0))  # the earlier run used the whole limit
    with pytest.raises(BudgetExceeded, match="--max-calls 10 reached"):
        await early
