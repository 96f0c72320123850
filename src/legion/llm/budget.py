"""`Budget`: the most a run may spend on LLM calls, in dollars, tokens and calls.

Every call reserves its share before it is sent (one call, its estimated tokens, and
their estimated cost at the route's prices) and settles the real figures once answered;
a call that fails gets its reservation back (a 429 or a 5xx is not billed). A call whose
reservation does not fit waits while calls in flight may still give some of theirs back;
when even a settled budget would not hold it, the budget is *exhausted*: that call and
every later one raise `legion.errors.BudgetExceeded` before anything is sent. The
instance that made it goes back to the queue with what it recorded (see
`legion.runner`), and `legion run` ends its run resumably with status
``budget_exceeded``; run it again with a higher limit and the recorded calls are
replayed, not bought again.

What earlier runs spent is added with `Budget.spent_before` (``legion run`` reads it
from the usage recorded on its tasks), so a limit is a limit on the whole job.

`Budgets` holds every budget a client's calls count against: the run's, one per agent
that declares one (``@legion.agent(max_cost=...)``) and one per tenant (``legion serve
--tenant-max-cost``). A call reserves its share in each that applies to its attempt (see
`legion.attempt`) and is refused when any one cannot hold it; `BudgetExceeded.scope` says
which kind refused. An agent's or a tenant's budget starts from what its tasks recorded
before (`Budgets.history`, which a worker reads from its store), so its limit holds across
runs and restarts.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from legion import attempt
from legion.errors import BudgetExceeded, ConfigError


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """``None``: no limit on that measure."""

    max_cost: float | None = None
    """USD."""
    max_tokens: int | None = None
    """Prompt plus completion tokens."""
    max_calls: int | None = None
    """Answered LLM calls (chat completions and embedding calls)."""

    def __post_init__(self) -> None:
        if self.max_cost is not None and not (math.isfinite(self.max_cost) and self.max_cost > 0):
            raise ConfigError(f"--max-cost must be a positive number of USD, got {self.max_cost}")
        for label, value in (("--max-tokens", self.max_tokens), ("--max-calls", self.max_calls)):
            if value is not None and value < 1:
                raise ConfigError(f"{label} must be >= 1, got {value}")

    @property
    def any(self) -> bool:
        return not (self.max_cost is None and self.max_tokens is None and self.max_calls is None)

    def describe(self) -> str:
        parts = []
        if self.max_cost is not None:
            parts.append(f"${self.max_cost:g}")
        if self.max_tokens is not None:
            parts.append(f"{self.max_tokens:,} tokens")
        if self.max_calls is not None:
            parts.append(f"{self.max_calls:,} calls")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Spend:
    calls: int = 0
    tokens: int = 0
    cost: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.calls + other.calls, self.tokens + other.tokens, self.cost + other.cost)

    def __sub__(self, other: Spend) -> Spend:
        return Spend(self.calls - other.calls, self.tokens - other.tokens, self.cost - other.cost)


class Hold:
    """A call's reservation: settle it with the real figures, or release it."""

    __slots__ = ("done", "reserved")

    def __init__(self, reserved: Spend) -> None:
        self.reserved = reserved
        self.done = False


class Budget:
    """Limits on what the calls of one run spend (see the module's documentation)."""

    def __init__(self, limits: BudgetLimits, *, scope: str = "run", who: str = "") -> None:
        self.limits = limits
        self.scope = scope
        """``"run"``, ``"agent"`` or ``"tenant"``: whose budget it is."""
        self.who = who
        """The agent's or the tenant's name (empty for a run's)."""
        self._spent = Spend()
        self._before = Spend()
        self._reserved = Spend()
        self._holds = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.exhausted: str | None = None
        """Why the budget stopped sending calls (``None``: it has not)."""
        self._exhausted_event: asyncio.Event | None = None
        self._earlier: asyncio.Event | None = None  # set once earlier spending is told

    # -- what the run reads ---------------------------------------------------------------

    @property
    def spent(self) -> Spend:
        """Settled calls of this process, plus what earlier runs spent."""
        return self._before + self._spent

    def spent_before(self, spend: Spend) -> None:
        """Count what earlier runs of the job spent (their recorded usage)."""
        self._before = self._before + spend
        if self._earlier is not None:
            self._earlier.set()

    def count_earlier_first(self) -> None:
        """Hold every call until `spent_before` tells what earlier runs spent: tasks an
        earlier run left queued start as soon as the worker does, and their calls, let
        through on a budget that read nothing spent, spent up to the whole limit again."""
        self._earlier = asyncio.Event()

    def calls_left(self) -> int | None:
        """How many more calls ``max_calls`` lets start, those reserved now counted
        (``None``: no limit on calls)."""
        if self.limits.max_calls is None:
            return None
        if self.exhausted is not None:
            return 0
        return max(0, self.limits.max_calls - self.spent.calls - self._reserved.calls)

    async def wait_exhausted(self) -> str:
        """Wait until the budget refuses a call; answer why."""
        if self.exhausted is not None:
            return self.exhausted
        if self._exhausted_event is None:
            self._exhausted_event = asyncio.Event()
        await self._exhausted_event.wait()
        assert self.exhausted is not None
        return self.exhausted

    # -- what each call does ----------------------------------------------------------------

    async def reserve(self, tokens: int, cost: float | None) -> Hold:
        """Reserve one call of ``tokens`` estimated tokens costing ``cost`` USD (``None``:
        unknown, refused when there is a cost limit), waiting while calls in flight may
        give some back; raise `BudgetExceeded` when it cannot fit."""
        want = Spend(1, tokens, cost or 0.0)
        if self._earlier is not None and not self._earlier.is_set():
            with attempt.waiting("the LLM budget (reading what earlier runs spent)"):
                await self._earlier.wait()
        if cost is None and self.limits.max_cost is not None:
            self._exhaust(
                "a call on a model without a price cannot be counted against "
                + self._name("max-cost")
            )
        while True:
            if self.exhausted is not None:
                raise BudgetExceeded(f"LLM budget exhausted: {self.exhausted}", self.scope)
            over = self._over(self.spent + self._reserved + want)
            if over is None:
                self._reserved = self._reserved + want
                self._holds += 1
                return Hold(want)
            if self._holds == 0 or self._over(self.spent + want) is not None:
                self._exhaust(over + self._alone(want))
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                with attempt.waiting("the LLM budget (calls in flight may give some back)"):
                    await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def settle(self, hold: Hold, tokens: int, cost: float | None) -> None:
        """The call was answered: count its real figures instead of the reservation."""
        if self._end(hold):
            self._spent = self._spent + Spend(1, tokens, cost or 0.0)
        self._wake()

    def release(self, hold: Hold) -> None:
        """The call failed (not billed): give its reservation back."""
        self._end(hold)
        self._wake()

    def charge(self, tokens: int, cost: float | None) -> None:
        """Count a call answered without a reservation (by a provider's batch job, see
        `legion.waiting.batch`); the next calls see it spent."""
        self._spent = self._spent + Spend(1, tokens, cost or 0.0)

    # -- inside -----------------------------------------------------------------------------

    def _end(self, hold: Hold) -> bool:
        if hold.done:
            return False
        hold.done = True
        self._reserved = self._reserved - hold.reserved
        self._holds -= 1
        return True

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _alone(self, want: Spend) -> str:
        """What to say of a call that no budget left could hold: one larger than the
        whole limit (its reservation counts its prompt and its ``max_tokens``, or the
        completion the client estimates without one)."""
        limits = self.limits
        if limits.max_tokens is not None and want.tokens > limits.max_tokens:
            shown = f"{want.tokens:,} tokens"
        elif limits.max_cost is not None and want.cost > limits.max_cost + 1e-12:
            shown = f"${want.cost:.4f}"
        else:
            return ""
        return (
            f"; one call alone reserves {shown}, more than the whole limit (its prompt and "
            "its max_tokens, or the completion estimated without one): give the call a "
            "lower max_tokens, or raise the limit"
        )

    def _over(self, total: Spend) -> str | None:
        limits = self.limits
        if limits.max_calls is not None and total.calls > limits.max_calls:
            return f"{self._name('max-calls')} {limits.max_calls:,} reached"
        if limits.max_tokens is not None and total.tokens > limits.max_tokens:
            return (
                f"{self._name('max-tokens')} {limits.max_tokens:,} reached "
                f"({self.spent.tokens:,} spent when a call did not fit)"
            )
        if limits.max_cost is not None and total.cost > limits.max_cost + 1e-12:
            return (
                f"{self._name('max-cost')} ${limits.max_cost:g} reached "
                f"(${self.spent.cost:.4f} spent when a call did not fit)"
            )
        return None

    def _name(self, limit: str) -> str:
        """How the limit is called where it was given."""
        if self.scope == "agent":
            return f"agent {self.who!r} {limit.replace('-', '_')}"
        if self.scope == "tenant":
            return f"tenant {self.who!r} --tenant-{limit}"
        return f"--{limit}"

    def _exhaust(self, why: str) -> None:
        if self.exhausted is None:
            self.exhausted = why
            if self._exhausted_event is not None:
                self._exhausted_event.set()
        self._wake()


Holds = Sequence[tuple[Budget, Hold]]
"""A call's reservations, one per budget that applies (empty when none does)."""


class Budgets:
    """Every budget the calls of one client count against (see the module's text):
    ``run``, the run's (``None``: none); ``tenant``, the limits each tenant has (``None``:
    none); an agent's limits come with its attempt (`legion.attempt.AttemptTime.budget`)."""

    def __init__(self, run: Budget | None = None, tenant: BudgetLimits | None = None) -> None:
        self.run = run
        self.tenant_limits = tenant if tenant is not None and tenant.any else None
        self.history: Callable[[str, str], Awaitable[Spend]] | None = None
        """What the tasks of an agent (``("agent", name)``) or a tenant (``("tenant",
        name)``) spent before; read once, before that budget's first call."""
        self._loads: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.agents: dict[str, Budget] = {}
        """The budget of each agent that has made a call with one, by name."""
        self.tenants: dict[str, Budget] = {}
        """The budget of each tenant that has made a call, by name."""

    def agent(self, name: str, limits: BudgetLimits) -> Budget:
        """Agent ``name``'s budget (made with ``limits`` on first use)."""
        budget = self.agents.get(name)
        if budget is None:
            budget = self.agents[name] = Budget(limits, scope="agent", who=name)
        return budget

    def tenant(self, name: str) -> Budget | None:
        """Tenant ``name``'s budget (``None`` without tenant limits)."""
        if self.tenant_limits is None:
            return None
        budget = self.tenants.get(name)
        if budget is None:
            budget = self.tenants[name] = Budget(self.tenant_limits, scope="tenant", who=name)
        return budget

    def agent_exhausted(self, name: str) -> bool:
        """Whether agent ``name``'s budget refuses calls (its tasks are not worth leasing)."""
        budget = self.agents.get(name)
        return budget is not None and budget.exhausted is not None

    def applying(self) -> Sequence[Budget]:
        """The budgets a call made now counts against: the run's, and those of the
        current attempt's agent and tenant (none: the empty tuple, which a call in
        flight may hold for nothing)."""
        found = [] if self.run is None else [self.run]
        current = attempt.current()
        if current is not None:
            if current.budget is not None:
                found.append(self.agent(current.agent_name, BudgetLimits(*current.budget)))
            tenant = self.tenant(current.tenant)
            if tenant is not None:
                found.append(tenant)
        return found or ()

    async def ready(self, budget: Budget) -> None:
        """Count what ``budget``'s agent or tenant spent before (once; a failed read is
        tried again by the next call)."""
        if budget.scope == "run" or self.history is None:
            return
        key = (budget.scope, budget.who)
        load = self._loads.get(key)
        if load is None:
            # (shared by every caller, and outlives the one that made it: not its task)
            load = self._loads[key] = asyncio.Task(self._load(budget, self.history))
        try:
            await asyncio.shield(load)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._loads.get(key) is load:
                del self._loads[key]
            raise

    @staticmethod
    async def _load(budget: Budget, history: Callable[[str, str], Awaitable[Spend]]) -> None:
        budget.spent_before(await history(budget.scope, budget.who))

    async def reserve(
        self, tokens: int, cost: float | None, applying: Sequence[Budget] | None = None
    ) -> Holds:
        """Reserve one call in every budget that applies (``applying``: those the caller
        found already), or in none (`BudgetExceeded`)."""
        if applying is None:
            applying = self.applying()
        if not applying:  # no budget: nothing held (no list kept by every call in flight)
            return ()
        holds: list[tuple[Budget, Hold]] = []
        try:
            for budget in applying:
                await self.ready(budget)
                holds.append((budget, await budget.reserve(tokens, cost)))
        except BaseException:
            self.release(holds)
            raise
        return holds

    def settle(self, holds: Holds, tokens: int, cost: float | None) -> None:
        for budget, hold in holds:
            budget.settle(hold, tokens, cost)

    def release(self, holds: Holds) -> None:
        for budget, hold in holds:
            budget.release(hold)

    async def charge(self, tokens: int, cost: float | None) -> None:
        """Count a call answered without a reservation in every budget that applies."""
        for budget in self.applying():
            await self.ready(budget)
            budget.charge(tokens, cost)
