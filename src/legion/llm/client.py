"""`LLMClient`: what ``ctx.llm`` delegates to.

It holds named routes (route name → provider, model, shared `Capacity`), and
for each call: estimates its tokens, waits for a turn at the route's
capacity, asks the provider, settles the real usage, feeds the rate-limit
headers back to the capacity, and retries what may pass.

One retry budget. A provider failure is retried in one place: here, inside the
task's attempt. The task's own retries are for what the agent does: a call whose
budget went on malformed answers (each one paid for) is not tried again by them
(`MalformedResponse`, not retryable once raised from here); one that may pass later
(a 5xx, a timeout) is left to the task's policy.

* `RateLimited`: the capacity pauses every caller until the provider's
  Retry-After and slows down; the retry then waits for its turn like any call.
  A 429 spends none of the call's budget: it is the route's capacity speaking,
  and waiting for capacity is not attempt time.
* `ProviderUnavailable` (a 5xx, a timeout, a broken connection) while the route
  fails as a whole (failures in a row, no call on it answered since: an
  outage): the retry waits for the route, which starts one probe per second while it fails
  (`Capacity.failing`); no budget is spent and the wait is not attempt time,
  for up to ``max_outage`` seconds of failing (then the failures count again,
  so a route that never comes back, such as a wrong address, fails its tasks).
  A route that has answered nothing but 429s for ``max_outage`` seconds counts
  them too.
* The same errors while other calls get through (this call's own bad luck), and
  `MalformedResponse` (an answer, if a wrong one: the route is not down):
  exponential backoff with full jitter (`legion.retry.RetryPolicy`), at least
  the provider's Retry-After, at most the policy's ``max_backoff`` and never
  past the attempt's remaining time; each spends one of the policy's
  ``retries``.

After the budget is spent the last error is raised. Permanent errors
(`ProviderRejected`) are raised at once; a fatal one (`ProviderAuthError`,
`EndpointNotFound`) is also kept in `LLMClient.fatal_error` so the runtime can stop the
whole run.

Around each attempt (in `LLMClient.chat`, apart from the pacing above):

* The route's `Breaker` (`legion.llm.breaker`): while it is open the call
  waits before it is sent, spending no attempt. A failed probe is not
  counted against the probing call's attempts either (it was sent for every
  waiting caller), once the route has worked: a route that never answered
  (a wrong URL, a server not started) fails its calls as usual.
* A Retry-After that outlasts the calling attempt (`legion.deadline`):
  a 429 asking for a longer wait, or a route still paused by one for
  longer than the attempt has left, raises `RetryAfterTooLong` at once
  instead of waiting into a timeout that would not say why.
* Hedging (`legion.llm.hedge`, off by default): a call slower than the
  route's latency percentile gets a second copy; the first answer wins and
  the loser is cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from legion import attempt as attempts
from legion import deadline, telemetry
from legion.errors import (
    ConnectionRefused,
    HostNotFound,
    MalformedResponse,
    NothingListens,
    Permanent,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    RetryAfterTooLong,
)
from legion.llm import deltas
from legion.llm.breaker import Breaker, BreakerState, BreakerStatistics, Ticket
from legion.llm.budget import Budget, BudgetLimits, Budgets, Holds
from legion.llm.capacity import Capacity, CapacityStatistics, TurnedAway
from legion.llm.embeddings import Embeddings, EmbedRequest, EmbedResult, estimate_embed_tokens
from legion.llm.hedge import HedgeSettings, Latencies
from legion.llm.pricing import BATCH_DISCOUNT, Price, PriceTable
from legion.llm.provider import Provider
from legion.llm.timer import AsyncioTimer, Timer
from legion.llm.tracing import traced_chat
from legion.llm.types import ChatRequest, ChatResponse, Message, Usage
from legion.retry import RetryPolicy

EMBED_ROUTE = "embed"
"""The route ``ctx.llm.embed`` takes when the call names none, if configured."""
DEFAULT_RETRY = RetryPolicy(retries=4, backoff=0.5, max_backoff=30.0)
_CHARS_PER_TOKEN = 4
_TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True, slots=True)
class Route:
    """Where calls to one route name go, and their defaults."""

    name: str
    provider: Provider
    model: str
    capacity: Capacity
    timeout: float = 60.0
    """Seconds allowed per attempt, unless the call says otherwise."""
    stream: bool = False
    """Whether calls stream, unless the call says otherwise."""
    breaker: Breaker | None = None
    """The route's circuit breaker (``None``: none)."""
    hedge: HedgeSettings | None = None
    """When slow calls get a hedged copy (``None``: never)."""
    deployment: str = ""
    """This deployment's name within a pool (``main#2``); ``""`` when the route has one."""
    fallback: tuple[str, ...] = ()
    """Routes to use, in order, while every deployment of this one is out (its breaker
    open, failing, or paused by a 429)."""
    key_id: str = ""
    """A digest of the deployment's API key when a pool holds several keys: workers
    sharing capacity through the store keep one budget per key."""
    price: Price | None = None
    """This deployment's own price (its ``[llm.*]`` table's; free on the simulator and a
    local model); ``None``: its model's, from the client's price table. Kept on the
    deployment, not the model: two routes on one model at two prices (two providers, a
    discounted key) were each charged the last one's."""

    @property
    def label(self) -> str:
        return self.deployment or self.name


@dataclass(frozen=True, slots=True)
class RouteStatistics:
    """A snapshot of one route's calls."""

    name: str
    provider: str
    model: str
    calls: int
    """`LLMClient.chat` calls made."""
    succeeded: int
    failed: int
    attempts: int
    """Requests sent to the provider: retries and hedged copies included, calls that a
    budget refused or a pause turned away before sending not."""
    retries: int
    errors: Mapping[str, int]
    """Failed attempts by error class name."""
    usage: Usage
    cost_usd: float
    """The cost of the calls on a priced model (see ``unpriced_calls``)."""
    capacity: CapacityStatistics
    unpriced_calls: int = 0
    """Calls on a model without a price: their cost is unknown, and not in ``cost_usd``."""

    breaker: BreakerStatistics | None = None
    """The route's circuit breaker (``None``: the route has none)."""
    hedged: int = 0
    """Calls that got a hedged copy."""
    hedges_won: int = 0
    """Hedged calls answered by the copy."""
    served_by: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Answered calls by deployment, for a pooled route (or served by a fallback)."""
    batched: int = 0
    """Calls answered by a provider's batch job (the batch tier), among ``calls``."""
    last_error: str | None = None
    """What the last failed attempt said (its class and message)."""

    @property
    def cost_known(self) -> bool:
        return not self.unpriced_calls


@dataclass(frozen=True, slots=True)
class LLMStatistics:
    """A snapshot of every route, with totals."""

    routes: Mapping[str, RouteStatistics]
    usage: Usage
    cost_usd: float
    unpriced_calls: int = 0

    @property
    def cost_known(self) -> bool:
        return not self.unpriced_calls


REFUSALS_APART = 5.0
"""Seconds between two refused connections past which they are not one refusal going on
(see `LLMClient.unreachable_after`)."""


class _Counters:
    __slots__ = (
        "_tokens",
        "answered",
        "attempts",
        "batched",
        "calls",
        "cost",
        "errors",
        "failed",
        "hedged",
        "hedges_won",
        "last_error",
        "latencies",
        "refused_at",
        "refused_since",
        "retries",
        "served_by",
        "succeeded",
        "unpriced",
    )

    def __init__(self, hedge: HedgeSettings | None) -> None:
        self.answered = False  # (some answer came, of any kind: something listens)
        self.refused_since: float | None = None  # (connections refused, never answered)
        self.refused_at = 0.0  # (the latest refusal)
        self.calls = 0
        self.succeeded = 0
        self.failed = 0
        self.attempts = 0
        self.retries = 0
        self.errors: dict[str, int] = {}
        self.last_error: str | None = None
        self._tokens = [0, 0, 0, 0, 0]  # Usage's five counts, summed in place
        self.cost = 0.0
        self.unpriced = 0
        self.hedged = 0
        self.hedges_won = 0
        self.batched = 0
        self.latencies = Latencies(hedge) if hedge is not None else None
        self.served_by: dict[str, int] = {}

    def failed_with(self, exc: BaseException) -> None:
        """Count an attempt that failed with ``exc``, and keep what it said."""
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1
        self.last_error = f"{name}: {exc}"[:300]

    def count(self, usage: Usage) -> None:
        """Add one answer's usage (no new `Usage` per call)."""
        tokens = self._tokens
        tokens[0] += usage.prompt_tokens
        tokens[1] += usage.completion_tokens
        tokens[2] += usage.cached_tokens
        tokens[3] += usage.cache_write_tokens
        tokens[4] += usage.reasoning_tokens

    @property
    def usage(self) -> Usage:
        """The usage of every answered call."""
        return Usage(*self._tokens)


class _Sent:
    """When the try under way started, on the capacity's timer."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = math.inf


class _Announced(_Sent):
    """A `_Sent` that says when it is set (a hedged call's: its copy's delay counts from
    the first's start at the provider, not from its wait for a turn)."""

    __slots__ = ("_at", "started")

    def __init__(self) -> None:  # (no super(): its `at` would say sent)
        self._at = math.inf
        self.started = asyncio.Event()

    @property
    def at(self) -> float:
        return self._at

    @at.setter
    def at(self, value: float) -> None:
        self._at = value
        self.started.set()


def estimate_tokens(
    messages: Sequence[Message], params: Mapping[str, Any], default_completion: int
) -> int:
    """A call's tokens before it is made: the text of the messages at 4
    characters a token, a few tokens per message, and its ``max_tokens`` (or
    ``max_completion_tokens``, else ``default_completion``)."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, Mapping) else None
                if isinstance(text, str):
                    chars += len(text)
    completion = params.get("max_tokens") or params.get("max_completion_tokens")
    if not isinstance(completion, int):
        completion = default_completion
    return -(-chars // _CHARS_PER_TOKEN) + _TOKENS_PER_MESSAGE * len(messages) + completion


def _completion_tokens(params: Mapping[str, Any], default_completion: int) -> int:
    """The completion part of a call's estimate (see `estimate_tokens`)."""
    completion = params.get("max_tokens") or params.get("max_completion_tokens")
    return completion if isinstance(completion, int) else default_completion


def _estimated(total: int, prompt: int) -> Usage:
    """An estimate of ``total`` tokens, ``prompt`` of them input, as a `Usage`."""
    prompt = max(0, min(prompt, total))
    return Usage(prompt_tokens=prompt, completion_tokens=total - prompt)


def _sets_max_tokens(params: Mapping[str, Any]) -> bool:
    return isinstance(params.get("max_tokens") or params.get("max_completion_tokens"), int)


class LLMClient:
    """Chat completions over named routes, with shared capacity and retries.

    ``default`` names the route used when a call names none (the first
    route by default). ``completion_estimate`` is the completion length
    assumed for a call without ``max_tokens``. The client owns the routes'
    providers: `aclose` closes them.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        default: str | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        prices: PriceTable | None = None,
        completion_estimate: int = 256,
        timer: Timer | None = None,
        rng: random.Random | None = None,
        max_outage: float = 120.0,
        budget: Budget | None = None,
        tenant_budget: BudgetLimits | None = None,
    ) -> None:
        if not routes:
            raise ValueError("an LLMClient needs at least one route")
        # A name given to several routes is a pool of deployments (the first one stands
        # for the pool where one route is asked for).
        self._pools: dict[str, tuple[Route, ...]] = {}
        for route in routes:
            self._pools[route.name] = (*self._pools.get(route.name, ()), route)
        self._routes = {name: pool[0] for name, pool in self._pools.items()}
        for name, pool in self._pools.items():
            labels = {route.label for route in pool}
            if len(pool) > 1 and len(labels) != len(pool):
                raise ValueError(f"the deployments of route {name!r} need distinct names")
            for fallback in pool[0].fallback:
                if fallback not in self._pools or fallback == name:
                    raise ValueError(f"route {name!r} falls back to {fallback!r}, no other route")
        self._default = default if default is not None else routes[0].name
        if self._default not in self._routes:
            raise ValueError(f"default route {self._default!r} is not one of {self._names()}")
        self._retry = retry
        self._max_outage = max_outage
        self._last_failure: dict[str, str] = {}  # per route: what its last failure said
        self._prices = prices or PriceTable()
        self._completion_estimate = completion_estimate
        self._timer: Timer = timer or AsyncioTimer()
        self._rng = rng or random.Random()
        self._counters = {name: _Counters(route.hedge) for name, route in self._routes.items()}
        self.unreachable_after: float | None = None
        """Seconds after which a route that never answered, its connections refused all
        along, raises `NothingListens` (fatal: the run stops, its tasks unspent) rather
        than wait and fail its tasks one by one; ``None``: wait (a fleet's workers, whose
        provider may start after them)."""
        self._recorders: dict[str, Callable[[ChatResponse], dict[str, Any]]] = {}
        self.fatal_error: ProviderRejected | None = None
        """The first fatal refusal seen (a rejected key, a URL nothing serves): the runtime
        stops the run when set."""
        self.batch_queued: Callable[[], None] | None = None
        """Told when a call of this process is queued for a batch (the worker's batch desk
        listens, see `legion.waiting.batch`)."""
        self.batch_window = 0.5
        """Seconds a worker's batch desk collects calls into one job after the first."""
        self.batch_poll_interval = 2.0
        """Seconds between two polls of a provider's batch job."""
        self.budget = budget
        """The run's spending limits (``None``: none); every call reserves its share."""
        self.budgets = Budgets(budget, tenant_budget)
        """The run's budget, each agent's and each tenant's (``tenant_budget``: the limits
        of every tenant); a call reserves its share in each that applies to it."""

    @property
    def routes(self) -> Mapping[str, Route]:
        return dict(self._routes)

    @property
    def default(self) -> str:
        return self._default

    @property
    def deployments(self) -> tuple[Route, ...]:
        """Every deployment of every route (a route with one deployment is itself)."""
        return tuple(route for pool in self._pools.values() for route in pool)

    def headroom(self, horizon: float, priority: int | None = None) -> float:
        """How many more calls may queue and still start within ``horizon`` seconds on
        the most constrained route (a pool's deployments add up; a route that is out
        counts its fallbacks', where its calls go); ``priority``: calls of that priority,
        which go ahead of lower lanes (see `Capacity.headroom`)."""
        return min(
            (
                sum(r.capacity.headroom(horizon, priority) for r in self._serving(name))
                for name in self._pools
            ),
            default=math.inf,
        )

    def pick(self, name: str, tokens: int) -> Route:
        """The deployment a call on route ``name`` goes to now: of those not out (breaker
        open, failing, paused by a 429), the one where it would start soonest (the most
        headroom), before any 429 says so; while every one is out, the first of the
        route's fallbacks with one that is not; while those are out too, the soonest."""
        pool = self._pools[name]
        if len(pool) == 1 and not pool[0].fallback:
            return pool[0]  # one deployment, nowhere else to go: it, out or not
        usable = self._serving(name)
        return usable[0] if len(usable) == 1 else _soonest(usable, tokens)

    def expected_wait(
        self, name: str, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> float:
        """About how many seconds a chat call on route ``name`` made now would wait for its
        turn, at the deployment `pick` would send it to (what a gateway compares with the
        longest its callers may wait)."""
        return self.expected_turn(name, messages, params)[0]

    def expected_turn(
        self, name: str, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> tuple[float, float]:
        """`expected_wait`, and about how many seconds such a call adds to the wait of the
        calls after it (`Capacity.spacing`)."""
        tokens = estimate_tokens(messages, params, self._completion_estimate)
        capacity = self.pick(name, tokens).capacity
        return capacity.expected_wait(tokens), capacity.spacing(tokens)

    def _serving(self, name: str) -> Sequence[Route]:
        """The deployments a call on route ``name`` may go to now (see `pick`). One that is
        out but due a probe counts: its calls going elsewhere, nothing else would send it
        one, and a deployment that came back was never used again."""
        pool = self._pools[name]
        if len(pool) == 1 and not pool[0].fallback:
            return pool
        for candidates in (pool, *(self._pools[f] for f in pool[0].fallback)):
            usable = [route for route in candidates if not _out(route) or _probe_due(route)]
            if usable:
                return usable
        return pool

    @traced_chat
    async def chat(
        self,
        messages: Sequence[Message],
        model: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per attempt, becomes a retryable error
        stream: bool | None = None,
        **params: Any,
    ) -> ChatResponse:
        """One chat completion on route ``model`` (the default route if ``None``).

        ``timeout`` bounds each attempt (the route's timeout by default);
        ``stream`` picks the transport (the route's choice by default);
        ``params`` are the request's parameters in OpenAI's names
        (``max_tokens``, ``temperature``, ``tools``...).
        """
        named = self._route(model)
        estimate = estimate_tokens(messages, params, self._completion_estimate)
        counters = self._counters[named.name]
        counters.calls += 1
        current = attempts.current()
        if current is not None:
            current.calls += 1
        spent = 0  # failures of this call's own, each one of the budget's retries
        while True:
            route = self.pick(named.name, estimate)
            request = ChatRequest(
                route.model,
                tuple(messages),
                params,
                named.stream if stream is None else stream,
            )
            limit = route.timeout if timeout is None else timeout
            try:
                _check_pause(route)  # before anything waits: the pause would outlast it
            except RetryAfterTooLong as exc:
                counters.failed_with(exc)
                counters.failed += 1
                raise
            ticket = None
            if route.breaker is not None:
                ticket = self._down_too_long(route, counters)
                if ticket is None:
                    # Waited for no longer than the route may still fail before it is
                    # down too long: then asked again (above), to fail or to probe.
                    left = self._max_outage - route.capacity.failing_for()
                    with attempts.waiting(f"the breaker of route {route.name}"):
                        ticket = await self._turn_within(route.breaker, left)
                    if ticket is None:
                        continue
            sent = _Sent() if counters.latencies is None else _Announced()
            try:
                # One attempt (hedged if the route says so), its outcome told to the
                # breaker; awaited right here, not in a coroutine of its own (one frame
                # less held by every call in flight).
                try:
                    if counters.latencies is None:
                        response = await self._attempt(
                            route, request, limit, estimate, counters, sent
                        )
                    else:
                        response = await self._hedged(
                            route, request, limit, estimate, counters, sent
                        )
                except BaseException as exc:
                    if route.breaker is not None and ticket is not None:
                        _tell_breaker(route.breaker, ticket, exc)
                    raise
                if route.breaker is not None and ticket is not None:
                    route.breaker.succeeded(ticket)
                counters.succeeded += 1
                counters.answered = True
                if route is not named or len(self._pools[named.name]) > 1:
                    counters.served_by[route.label] = counters.served_by.get(route.label, 0) + 1
                    return dataclasses.replace(response, deployment=route.label)
                return response
            except RetryAfterTooLong as exc:
                counters.failed_with(exc)
                counters.failed += 1
                raise
            except ProviderError as exc:
                spent = await self._after_failure(route, exc, counters, spent, sent, ticket)
            except Permanent as exc:
                self._refused(exc, counters)
                raise
            except TurnedAway:
                continue  # its route went out while it waited there: to another, now

    async def embed(
        self,
        texts: Sequence[str],
        model: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per attempt, becomes a retryable error
        **params: Any,
    ) -> Embeddings:
        """Embeddings of ``texts`` on route ``model`` (the ``embed`` route if there is one,
        else the default route): the same capacity, retries and counters as `chat`."""
        route = self.embed_route(model)
        route = self.pick(route.name, estimate_embed_tokens(texts))
        embed = getattr(route.provider, "embed", None)
        if embed is None:
            raise Permanent(
                f"the LLM route {route.name!r} ({route.provider.name}) serves no embeddings: "
                "add an embedding route, e.g. --llm embed=openai:text-embedding-3-small"
            )
        request = EmbedRequest(route.model, tuple(texts), params)
        limit = route.timeout if timeout is None else timeout
        estimate = estimate_embed_tokens(request.texts)
        counters = self._counters[route.name]
        counters.calls += 1
        spent = 0  # failures of this call's own (the rules of `chat`)
        while True:
            sent = _Sent()
            try:
                hold = await self._hold(route, estimate, estimate)
                try:
                    async with route.capacity.reserve(estimate) as slot:
                        sent.at = slot.started_at
                        counters.attempts += 1
                        try:
                            result: EmbedResult = await embed(request, timeout=limit)
                        except RateLimited as exc:
                            route.capacity.rate_limited(exc.retry_after, sent_at=slot.started_at)
                            raise
                        usage = result.embeddings.usage
                        slot.settle(usage.total or estimate, refund=True)
                except BaseException:
                    self._unhold(hold)
                    raise
                route.capacity.observe(result.rate_limits, sent_at=slot.started_at)
                counters.succeeded += 1
                counters.answered = True
                counters.count(usage)
                cost = self._cost(route, usage)
                self._settle_hold(hold, usage, cost)
                if cost is None:
                    counters.unpriced += 1
                else:
                    counters.cost += cost
                # The route's model names the vectors (what a collection records), not the
                # provider's answer (which may add a version).
                return dataclasses.replace(result.embeddings, model=route.model)
            except ProviderError as exc:
                spent = await self._after_failure(route, exc, counters, spent, sent, None)
            except Permanent as exc:
                self._refused(exc, counters)
                raise
            except TurnedAway:
                continue  # (a route shared with chats that went elsewhere: it waits again)

    async def _after_failure(
        self,
        route: Route,
        exc: ProviderError,
        counters: _Counters,
        spent: int,
        sent: _Sent,
        ticket: Ticket | None,
    ) -> int:
        """What a failed try costs under the one retry budget (see the module's text):
        answer the call's own failures so far, after the backoff when one is due; raise
        ``exc`` once the budget, or the attempt's time, is spent."""
        counters.failed_with(exc)
        self._last_failure[route.name] = str(exc)
        deltas.broke(exc)
        if isinstance(exc, ConnectionRefused):
            self._nothing_listens(route, exc, counters)
        else:
            counters.refused_since = None
            counters.answered = counters.answered or not isinstance(exc, ProviderUnavailable)
        if telemetry.tracing:  # each try that failed, on the call's span
            telemetry.add_event(
                "legion.llm.try_failed",
                {
                    "error.type": type(exc).__name__,
                    "error.message": str(exc)[:300],
                    "legion.llm.deployment": route.label,
                },
            )
        capacity = route.capacity
        if isinstance(exc, RateLimited):
            self._went_out(route)  # (paused: the calls queued there may go elsewhere)
            # The capacity paused and slowed down: wait again, spending no retry, unless
            # the route has refused every call for ``max_outage`` seconds (a key or
            # account that is never served): then its 429s count, so its tasks end.
            if capacity.failing_for() < self._max_outage:
                counters.retries += 1
                return spent
        else:
            was_failing = capacity.failing
            route_failing = (
                not isinstance(exc, MalformedResponse)  # an answer, wrong: not an outage
                and sent.at < math.inf
                and capacity.failed(sent_at=sent.at)
                and capacity.failing_for() < self._max_outage
            )
            if capacity.failing and not was_failing:
                self._went_out(route)
            if route_failing or _probe_failed(route, ticket, exc):
                # The route fails as a whole, or this was the breaker's probe, sent for
                # every waiting caller: wait for the route, spending no retry.
                counters.retries += 1
                return spent
        spent += 1
        delay = self._backoff(spent, exc.retry_after)
        current = attempts.current()
        left = current.remaining() if current is not None else None
        if spent >= self._retry.max_attempts or (left is not None and delay >= left):
            counters.failed += 1
            if isinstance(exc, MalformedResponse):  # paid answers: the task stops asking
                exc.retryable = False
            raise exc
        counters.retries += 1
        await self._timer.sleep(delay)
        return spent

    def _nothing_listens(self, route: Route, exc: ConnectionRefused, counters: _Counters) -> None:
        """Raise `NothingListens` once a route that never answered has had its
        connections refused for `unreachable_after` seconds (see there)."""
        if counters.answered or self.unreachable_after is None:
            return
        now = self._timer.now()
        if counters.refused_since is None or now - counters.refused_at > REFUSALS_APART:
            counters.refused_since = now  # (refusals far apart: not one refusing all along)
        counters.refused_at = now
        if now - counters.refused_since < self.unreachable_after:
            return
        where = getattr(route.provider, "base_url", None) or route.provider.name
        counters.failed += 1
        seconds = now - counters.refused_since
        if isinstance(exc, HostNotFound):
            said = (
                f"the host of {where} (route {route.name!r}) does not resolve: its name was "
                f"not found for {seconds:.0f} s, and it never answered; fix the address in "
                "--llm (or legion.toml), or the machine's DNS"
            )
        else:
            said = (
                f"nothing listens at {where} (route {route.name!r}): its connections were "
                f"refused for {seconds:.0f} s, and it never answered; start the server "
                "(`legion sim &` for the simulator), or fix --llm"
            )
        stop = NothingListens(said, provider=route.provider.name)
        if self.fatal_error is None:
            self.fatal_error = stop
        raise stop from exc

    def _went_out(self, route: Route) -> None:
        """``route`` has gone out (failing, or paused by a 429): the calls queued at its
        limiter go to another deployment or fallback, if it has one, rather than wait
        there for its probes (one a second: 22 calls queued on a failing route took 22 s
        to reach its healthy fallback, and no task started meanwhile)."""
        pool = self._pools.get(route.name, ())
        if len(pool) > 1 or (pool and pool[0].fallback):
            route.capacity.turn_away()

    async def _turn_within(self, breaker: Breaker, seconds: float) -> Ticket | None:
        """The breaker's turn (`Breaker.wait_turn`), or ``None`` after ``seconds``."""
        if breaker.state is BreakerState.CLOSED:
            return await breaker.wait_turn()  # at once
        # asyncio.Task, not ensure_future: these are the client's, not the agent's (the
        # loop's task factory counted them as tasks the agent left running, once an error
        # after the wait ended the call before their cancellation had).
        turn = asyncio.Task(breaker.wait_turn(), name="llm-breaker-turn")
        timer = asyncio.Task(self._timer.sleep(max(seconds, 0.0)), name="llm-breaker-wait")
        try:
            await asyncio.wait((turn, timer), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: a probe's turn it got passes on
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                breaker.abandoned(turn.result())
            raise
        finally:
            timer.cancel()
            if not turn.done():
                turn.cancel()
        return turn.result() if turn.done() and not turn.cancelled() else None

    def _down_too_long(self, route: Route, counters: _Counters) -> Ticket | None:
        """On a route that has failed every call for ``max_outage`` seconds, behind an open
        breaker: this call's turn, if a probe may go now; else it fails now (waiting, each
        of its tries would wait for a probe of its own, up to the breaker's longest open
        period apiece). ``None`` while the route is not down that long."""
        breaker = route.breaker
        assert breaker is not None
        failing = route.capacity.failing_for()
        if (
            breaker.state is BreakerState.CLOSED
            or not route.capacity.failing
            or failing < self._max_outage
        ):
            return None
        ticket = breaker.try_turn(eager=True)  # (callers refused at once: a probe a second)
        if ticket is not None:
            return ticket
        last = self._last_failure.get(route.name)
        exc = ProviderUnavailable(
            f"route {route.name!r} ({route.provider.name}) has failed every call for "
            f"{failing:.0f} s; not sent while its breaker waits for the next probe"
            + (f" (the last failure: {last})" if last else ""),
            provider=route.provider.name,
        )
        counters.failed_with(exc)
        counters.failed += 1
        raise exc

    def _refused(self, exc: Permanent, counters: _Counters) -> None:
        """Count a refusal; a fatal one (a rejected key, a URL nothing serves) is kept to
        stop the whole run."""
        counters.failed_with(exc)
        counters.failed += 1
        counters.answered = True  # (refused by an answer: something listens)
        if isinstance(exc, ProviderRejected) and exc.fatal and self.fatal_error is None:
            self.fatal_error = exc

    def embed_route(self, name: str | None) -> Route:
        """The route an embedding call names: ``None`` takes the route named ``embed`` when
        there is one, else the default route."""
        if name is None and EMBED_ROUTE in self._routes:
            return self._routes[EMBED_ROUTE]
        return self._route(name)

    async def admit_batch(
        self, route: str, messages: Sequence[Message], params: Mapping[str, Any]
    ) -> None:
        """Check that a batch-tier call fits the budgets that apply to it (its estimate, at
        the batch price) before it is queued: `BudgetExceeded` if not. Nothing stays
        reserved: its answer is counted when it is recorded (`Budgets.charge`)."""
        named = self._route(route)
        estimate = estimate_tokens(messages, params, self._completion_estimate)
        prompt = estimate - _completion_tokens(params, self._completion_estimate)
        price = self._batch_price(named)
        cost = None if price is None else price.cost(_estimated(estimate, prompt))
        holds = await self.budgets.reserve(estimate, cost)
        self.budgets.release(holds)

    def settle_batch(self, route: str, response: ChatResponse) -> float | None:
        """Count a call answered by a provider's batch job (the batch tier) in the route's
        statistics, and answer its cost at the batch price (`PriceTable.batch_price` of
        the model that answered, else of the route's model; ``None``: unknown)."""
        named = self._route(route)
        counters = self._counters[named.name]
        counters.calls += 1
        counters.attempts += 1
        counters.succeeded += 1
        counters.batched += 1
        counters.count(response.usage)
        price = self._batch_price(named, response.model)
        if price is None:
            counters.unpriced += 1
            return None
        cost = price.cost(response.usage)
        counters.cost += cost
        return cost

    def cost_of(self, route: Route, usage: Usage) -> float | None:
        """USD for ``usage`` on deployment ``route`` at its price (``None``: unknown)."""
        return self._cost(route, usage)

    def unpriced(self) -> list[Route]:
        """The routes whose model has no price (a cost limit cannot count their calls)."""
        return [route for route in self.routes.values() if self._price(route) is None]

    def _price(self, route: Route) -> Price | None:
        """Deployment ``route``'s price: its own, else its model's."""
        return route.price if route.price is not None else self._prices.price(route.model)

    def _cost(self, route: Route, usage: Usage) -> float | None:
        price = self._price(route)
        return None if price is None else price.cost(usage)

    def _batch_price(self, route: Route, answered_by: str = "") -> Price | None:
        """A batch job's price on ``route``: its own price at the batch discount, else
        that of the model that answered (``answered_by``) or of its model."""
        if route.price is not None:
            return route.price.scaled(BATCH_DISCOUNT)
        if answered_by:
            found = self._prices.batch_price(answered_by)
            if found is not None:
                return found
        return self._prices.batch_price(route.model)

    def statistics(self) -> LLMStatistics:
        """A snapshot of every route's calls, usage and cost."""
        routes = {}
        for name, route in self._routes.items():
            counters = self._counters[name]
            routes[name] = RouteStatistics(
                name=name,
                provider=route.provider.name,
                model=route.model,
                calls=counters.calls,
                succeeded=counters.succeeded,
                failed=counters.failed,
                attempts=counters.attempts,
                retries=counters.retries,
                errors=dict(counters.errors),
                last_error=counters.last_error,
                usage=counters.usage,
                cost_usd=counters.cost,
                capacity=route.capacity.statistics(),
                unpriced_calls=counters.unpriced,
                breaker=route.breaker.statistics() if route.breaker is not None else None,
                hedged=counters.hedged,
                hedges_won=counters.hedges_won,
                served_by=dict(counters.served_by),
                batched=counters.batched,
            )
        usage = Usage()
        for stats in routes.values():
            usage += stats.usage
        return LLMStatistics(
            routes,
            usage,
            sum(stats.cost_usd for stats in routes.values()),
            sum(stats.unpriced_calls for stats in routes.values()),
        )

    async def aclose(self) -> None:
        """Close every provider (once, even when routes share one)."""
        providers = {id(route.provider): route.provider for route in self.deployments}
        for provider in providers.values():
            await provider.aclose()

    def price_routes(self) -> None:
        """Look up the price of every deployment's model now (kept: `PriceTable.price`),
        as a worker starts: the first call on each then pays neither the lookup nor the
        price package's import (~0.1 s) on the event loop, with every instance behind it."""
        for route in self.deployments:
            if route.price is None:
                self._prices.price(route.model)

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def cost(self, response: ChatResponse, route: str | None = None) -> float | None:
        """USD for one response at this client's prices (``None``: the model has no
        price). ``route``: the route it came from, whose model is priced when the
        model that answered has no price of its own."""
        if route is not None:
            deployment = self._deployment(route, response.deployment)
            if deployment.price is not None:
                return deployment.price.cost(response.usage)
        found = self._prices.cost(response.model, response.usage)
        if found is None and route is not None:
            found = self._prices.cost(self._route(route).model, response.usage)
        return found

    def _deployment(self, route: str, label: str) -> Route:
        """The deployment of route ``route`` labelled ``label`` (the route's first when
        none is: a route of one deployment)."""
        named = self._route(route)
        if label:
            for deployment in self._pools.get(named.name, ()):
                if deployment.label == label:
                    return deployment
        return named

    def recorder(self, route: str) -> Callable[[ChatResponse], dict[str, Any]]:
        """How an answer on ``route`` is recorded as a step: its JSON and its cost. Made
        once per route (a call in flight held one of its own)."""
        found = self._recorders.get(route)
        if found is None:
            found = self._recorders[route] = functools.partial(_recorded, self, route)
        return found

    def route_for(self, name: str | None) -> Route:
        """The route a call names: by route name, else by model (the default if ``None``)."""
        return self._route(name)

    def _route(self, name: str | None) -> Route:
        route = self._routes.get(self._default if name is None else name)
        if route is None:
            route = next((r for r in self._routes.values() if r.model == name), None)
        if route is None:
            raise Permanent(f"no LLM route or model named {name!r}; routes: {self._names()}")
        return route

    def _names(self) -> str:
        return ", ".join(self._routes)

    async def _attempt(
        self,
        route: Route,
        request: ChatRequest,
        timeout: float,  # noqa: ASYNC109 - handed to the provider
        estimate: int,
        counters: _Counters,
        sent: _Sent,
    ) -> ChatResponse:
        capacity = route.capacity
        completion = _completion_tokens(request.params, self._completion_estimate)
        applying = self.budgets.applying()
        # No budget applies (the common case): nothing to price or hold before the call.
        hold: Holds = ()
        if applying:
            hold = await self._hold(route, estimate, estimate - completion, applying)
        try:
            # acquire/release rather than ``async with reserve()``: no reservation object
            # and bound exit method held by every call in flight.
            slot = await capacity.acquire(
                estimate, input_tokens=estimate - completion, output_tokens=completion
            )
            try:
                sent.at = slot.started_at
                counters.attempts += 1  # a request sent (not one a budget or pause refused)
                try:
                    result = await route.provider.chat(request, timeout=timeout)
                except RateLimited as exc:
                    capacity.rate_limited(exc.retry_after, sent_at=slot.started_at)
                    _check_retry_after(exc)
                    raise
                except ProviderRejected:
                    slot.refund()  # (refused as it came: a request too large, a bad one)
                    raise
                usage = result.response.usage
                # A provider that reports no usage is charged the estimate. A call that set
                # max_tokens gets no refund of its unused completion: providers count
                # max_tokens against the token limit on admission and refund nothing (OpenAI
                # does), so refunding it would overshoot their limit.
                counted = usage.total > 0
                slot.settle(
                    usage.total or estimate,
                    refund=not _sets_max_tokens(request.params),
                    # As providers with separate input and output limits count them:
                    # cache reads left out where they are exempt, the real output.
                    input_tokens=usage.prompt_tokens
                    - (usage.cached_tokens if capacity.cache_exempt else 0)
                    if counted
                    else None,
                    output_tokens=usage.completion_tokens if counted else None,
                )
            finally:
                capacity.release()
        except BaseException:
            self._unhold(hold)
            raise
        capacity.observe(result.rate_limits, sent_at=slot.started_at)
        if counters.latencies is not None:
            counters.latencies.add(self._timer.now() - slot.started_at)
        counters.count(usage)
        cost = self._cost(route, usage)
        if hold:
            self._settle_hold(hold, usage if usage.total else _estimated(estimate, estimate), cost)
        if cost is None:
            counters.unpriced += 1
        else:
            counters.cost += cost
        return result.response

    async def _hold(
        self, route: Route, estimate: int, prompt: int, applying: Sequence[Budget] | None = None
    ) -> Holds:
        """Reserve one call of ``estimate`` tokens (``prompt`` of them input) against the
        budgets that apply to it (``applying``, when the caller has them already);
        `BudgetExceeded` when one cannot hold it."""
        usage = _estimated(estimate, prompt)
        cost = self._cost(route, usage)
        return await self.budgets.reserve(estimate, cost, applying)

    def _unhold(self, hold: Holds) -> None:
        self.budgets.release(hold)

    def _settle_hold(self, hold: Holds, usage: Usage, cost: float | None) -> None:
        self.budgets.settle(hold, usage.total, cost)

    async def _hedged(
        self,
        route: Route,
        request: ChatRequest,
        timeout: float,  # noqa: ASYNC109 - handed to the provider
        estimate: int,
        counters: _Counters,
        sent: _Sent,
    ) -> ChatResponse:
        """The first answer of the call and, if it is slow, of a second copy."""
        assert counters.latencies is not None
        delay = counters.latencies.hedge_delay()
        if delay is None:
            return await self._attempt(route, request, timeout, estimate, counters, sent)
        # asyncio.Task, not create_task: these belong to the client, not to the agent
        # whose call this is (the loop's task factory would count them as its own).
        first = asyncio.Task(
            self._attempt(route, request, timeout, estimate, counters, sent), name="llm-call"
        )
        racing = [first]
        # The delay is a provider's latency (measured from the start of a request): it
        # counts from the first's start, not from its wait for a turn at the route's
        # limits. Counted from the call, every call that queued longer got a copy, which
        # queued too and took a request of the limit: twice the requests, half the pace.
        turn: asyncio.Task[Any] | None = None
        if isinstance(sent, _Announced):
            turn = asyncio.Task(sent.started.wait(), name="llm-hedge-turn")
        sleeper: asyncio.Task[Any] = asyncio.Task(self._after(turn, delay), name="llm-hedge-delay")
        try:
            await asyncio.wait((first, sleeper), return_when=asyncio.FIRST_COMPLETED)
            if first.done():
                return first.result()
            counters.hedged += 1
            second = asyncio.Task(
                self._attempt(route, request, timeout, estimate, counters, sent), name="llm-hedge"
            )
            racing.append(second)
            pending: set[asyncio.Task[ChatResponse]] = {first, second}
            error: BaseException | None = None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in (first, second):  # the first sent wins a tie
                    if task in done and task.exception() is None:
                        if task is second:
                            counters.hedges_won += 1
                        return task.result()
                for task in done:
                    error = error or task.exception()
            assert error is not None
            raise error
        finally:
            sleeper.cancel()
            if turn is not None:
                turn.cancel()
            losers = [task for task in racing if not task.done()]
            for task in losers:
                task.cancel()  # the loser: never returned, so never recorded
            if losers:
                await asyncio.wait(losers)
            for task in racing:
                if not task.cancelled():
                    task.exception()  # retrieved: a loser's error is not news

    async def _after(self, turn: asyncio.Task[Any] | None, delay: float) -> None:
        """``delay`` seconds after ``turn`` ends (at once: ``None``)."""
        if turn is not None:
            await turn
        await self._timer.sleep(delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = self._retry.delay(attempt, self._rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self._retry.max_backoff)


def _out(route: Route) -> bool:
    """Whether a deployment is out for now: its breaker open, failing, or paused by a 429."""
    if route.breaker is not None and route.breaker.state is not BreakerState.CLOSED:
        return True
    capacity = route.capacity
    return capacity.failing or capacity.paused_for() > 0


def _probe_due(route: Route) -> bool:
    """Whether a deployment that is out (`_out`) may be sent its next probe now: each
    reason it is out is due a probe, its open breaker's and its failing capacity's (a 429's
    pause never is: it ends by itself)."""
    breaker, capacity = route.breaker, route.capacity
    if capacity.paused_for() > 0:
        return False
    if breaker is not None and breaker.state is not BreakerState.CLOSED and not breaker.probe_due():
        return False
    return not capacity.failing or capacity.probe_due()


def _soonest(routes: Sequence[Route], tokens: int) -> Route:
    """The deployment where a call of ``tokens`` would start soonest (the first on a tie)."""
    return min(routes, key=lambda route: route.capacity.expected_wait(tokens))


def _check_pause(route: Route) -> None:
    """`RetryAfterTooLong` if the route is paused by a 429 for longer than the
    calling attempt has left."""
    left = deadline.remaining()
    if left is None:
        return
    paused = route.capacity.paused_for()
    if paused > left:
        raise RetryAfterTooLong(
            f"{route.provider.name} answered 429 with Retry-After {paused:.0f} s (route "
            f"{route.name!r} is paused that long), beyond this attempt's remaining {left:.0f} s; "
            "the task goes back to the queue until then",
            provider=route.provider.name,
            status=429,
            retry_after=paused,
        )


def _check_retry_after(exc: RateLimited) -> None:
    """`RetryAfterTooLong` if the 429's Retry-After outlasts the calling attempt."""
    left = deadline.remaining()
    if left is None or exc.retry_after is None or exc.retry_after <= left:
        return
    raise RetryAfterTooLong(
        f"{exc.provider} answered 429 with Retry-After {exc.retry_after:.0f} s, beyond this "
        f"attempt's remaining {left:.0f} s; the task goes back to the queue until then",
        provider=exc.provider,
        status=429,
        retry_after=exc.retry_after,
    ) from exc


def _tell_breaker(breaker: Breaker, ticket: Ticket, exc: BaseException) -> None:
    """Tell a route's breaker how an attempt that raised ``exc`` ended: unavailable
    (a failure), answered (a provider error or a refusal: the provider is up), or
    abandoned (cancelled, or an error of ours)."""
    if isinstance(exc, ProviderUnavailable):
        breaker.failed(ticket)
    elif isinstance(exc, (ProviderError, Permanent)):
        breaker.succeeded(ticket)  # the provider answered: it is up
    else:
        breaker.abandoned(ticket)


def _probe_failed(route: Route, ticket: Ticket | None, exc: ProviderError) -> bool:
    """Whether ``exc`` ended a probe of a route that has worked before."""
    return (
        ticket is not None
        and ticket.probe
        and isinstance(exc, ProviderUnavailable)
        and route.breaker is not None
        and route.breaker.answered
    )


def _recorded(client: LLMClient, route: str, response: ChatResponse) -> dict[str, Any]:
    """A call's answer as it is recorded: its JSON and its cost."""
    return {**response.to_json(), "cost_usd": client.cost(response, route)}
