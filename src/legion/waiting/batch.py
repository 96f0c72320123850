"""The batch tier: ``ctx.llm.chat(..., tier="batch")`` at the providers' batch price.

A batch-tier call does not go out at once. It is kept in the store
(`legion.store.batches`) and its task suspends (``waiting``, no slot, no lease) until the
answer comes; a worker's `BatchDesk` collects the calls queued on a route within its
window into one provider job (OpenAI's Batch API, Anthropic's Message Batches, see
`legion.llm.batch`), polls it, and signals each task its answer (the signal
``legion.batch:<step key>``), which queues it again; the task replays to the call, which
finds its answer and records it as the call's step, exactly where a standard call records
its own. So a task that moves between workers, or whose worker dies while it waits,
resumes without sending a call twice.

The deadline: ``deadline=`` seconds after the call was first made (24 hours by default,
the providers' completion window), a call still unanswered gives up on the batch and is
sent at the standard tier (its task is woken by the timer, like ``ctx.sleep``); so is a
call whose job failed or did not answer it, and a call on a route whose provider has no
batch API (a local model). A job whose calls all gave up is cancelled at its next poll;
an answer that comes after its call gave up is ignored (the provider bills it).

Cost: an answer is counted at the batch price (`legion.llm.pricing.PriceTable.batch_price`:
half the standard price unless ``genai-prices`` knows the model's), and its recorded JSON
says ``"tier": "batch"``; the answers are those the standard tier gives (the same request,
parsed the same way). Budgets (the run's, the agent's, the tenant's): a call is queued
only if its estimate at the batch price fits them (`legion.errors.BudgetExceeded` if
not), and its answer is counted in them when recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from legion import codec
from legion.errors import Permanent, ProviderError
from legion.llm.batch import BatchAPI, batch_api, has_batch_api
from legion.llm.types import ChatRequest, ChatResponse
from legion.steps import scoped
from legion.store.batches import BatchCall
from legion.task import Wait
from legion.waiting.suspend import Suspended

if TYPE_CHECKING:
    from legion.clock import Clock
    from legion.diagnostics.unawaited import SiteRef
    from legion.llm.client import LLMClient, Route
    from legion.steps import Waiter
    from legion.store.base import ContextStore, Store

log = logging.getLogger("legion.batch")

DEFAULT_DEADLINE = 24 * 3600.0
"""How long a batch-tier call waits for its batch when the call names no ``deadline``."""
EVENT = "legion.batch:"
"""The signals that bring batch answers: ``legion.batch:<the call's step key>``."""


async def batch_chat(
    ctx: Waiter,
    store: ContextStore,
    clock: Clock,
    client: LLMClient,
    route: Route,
    name: str,
    messages: Sequence[Any],
    params: dict[str, Any],
    deadline: float | None,
    standard: Callable[[], Awaitable[dict[str, Any]]],
    site: SiteRef | None,
) -> dict[str, Any]:
    """One batch-tier call, recorded as the step ``name`` (as its standard call would be):
    its answer if it came, else the standard call once the deadline passed, else queue it
    for a batch and suspend the task."""
    if deadline is not None and deadline < 0:
        raise ValueError("deadline must be >= 0 seconds")
    # The key `ctx.record` gives this call, taken before anything awaits: two equal
    # requests in one gather get their own keys (and events) in the order they were made.
    n = ctx.step_count(name) + 1
    key = scoped(name) if n == 1 else f"{scoped(name)}#{n}"
    event = f"{EVENT}{key}"

    async def run() -> dict[str, Any]:
        data = await store.signal_data(ctx.task_id, event, 0)
        if data is not None:
            got = codec.loads(data)
            if "response" in got:
                answer: dict[str, Any] = got["response"]
                usage = answer.get("usage") or {}
                tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
                await client.budgets.charge(tokens, answer.get("cost_usd"))
                return answer
            log.info("task %d: %s; sent at the standard tier", ctx.task_id, got.get("fallback"))
            return await standard()
        if not has_batch_api(route.provider):
            return await standard()
        first = clock.wall() + (DEFAULT_DEADLINE if deadline is None else deadline)
        until = float(await ctx.record(f"legion.batch-until:{key}", lambda: first, (), {}, None))
        if clock.wall() >= until:  # the deadline came: the standard tier
            await store.batch_forget([(ctx.task_id, event)])
            return await standard()
        await client.admit_batch(route.name, messages, params)  # the budgets
        request = codec.dumps({"messages": list(messages), "params": params})
        call = BatchCall(ctx.task_id, event, route.name, request, until)
        await store.batch_enqueue(call, clock.wall())
        if client.batch_queued is not None:
            client.batch_queued()
        info = codec.dumps({"kind": "batch", "route": route.name})
        raise Suspended(Wait(event=event, count=1, wake_at=until, info=info))

    # Recorded as the step a standard call records (replayed from it, once recorded).
    result: dict[str, Any] = await ctx.record(
        name, run, (), {}, site, inputs=(list(messages), params)
    )
    return result


def custom_id(call: BatchCall) -> str:
    """A call's name in its job (letters, digits, ``-``; at most 64 characters)."""
    return f"t{call.task_id}-{hashlib.blake2b(call.event.encode(), digest_size=8).hexdigest()}"


class BatchDesk:
    """A worker's collector and poller of batch-tier calls, for every route of ``client``
    whose provider has a batch API.

    Each pass (`tick`) claims the calls queued on each route (up to ``max_calls`` a job)
    and submits them as one job, then polls the jobs whose poll is due (every
    ``poll_interval`` seconds; one desk polls a job at a time, whatever the number of
    workers) and signals the answers of those that ended. `run` makes a pass every
    ``poll_interval`` seconds, and ``window`` seconds after a call of this process is
    queued (the calls queued meanwhile go in the same job); both default to the client's
    ``batch_window`` and ``batch_poll_interval``. A job that cannot be submitted
    sends its calls back to their tasks at the standard tier; calls claimed by a desk that
    died before submitting them are claimed again after ``stale`` seconds.
    """

    def __init__(
        self,
        client: LLMClient,
        store: Store,
        *,
        clock: Clock,
        wake: Callable[[], None] = lambda: None,
        window: float | None = None,
        poll_interval: float | None = None,
        max_calls: int = 1000,
        stale: float = 300.0,
    ) -> None:
        self._client = client
        self._store = store
        self._clock = clock
        self._wake = wake
        self._window = client.batch_window if window is None else window
        self._poll_interval = client.batch_poll_interval if poll_interval is None else poll_interval
        self._max_calls = max_calls
        self._stale = stale
        self._apis: dict[str, BatchAPI] = {}
        self._queued = asyncio.Event()
        self.jobs = 0
        """Jobs this desk submitted."""
        self.answered = 0
        """Calls this desk answered (signalled an answer to)."""
        self.cancelled = 0
        """Jobs this desk cancelled (every call of theirs given up)."""
        client.batch_queued = self._queued.set

    @property
    def routes(self) -> list[str]:
        """The routes whose calls this desk batches."""
        return [n for n, r in self._client.routes.items() if has_batch_api(r.provider)]

    async def run(self) -> None:
        """Make a pass now and then (see the class) until cancelled."""
        try:
            while True:
                try:
                    await self.tick()
                except Exception as exc:  # the store or a provider is down: next pass
                    log.error("batch desk: %s", exc)
                try:
                    async with asyncio.timeout(self._poll_interval):
                        await self._queued.wait()
                except TimeoutError:
                    continue
                await asyncio.sleep(self._window)  # collect what else comes meanwhile
                self._queued.clear()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop listening to the client and close the connections to the batch APIs."""
        if self._client.batch_queued == self._queued.set:
            self._client.batch_queued = None
        apis, self._apis = list(self._apis.values()), {}
        for api in apis:
            await api.aclose()

    async def tick(self) -> int:
        """One pass: submit what is queued, poll what is due; answer how many calls were
        answered or sent back to the standard tier (their tasks are queued again)."""
        now = self._clock.wall()
        done = 0
        for name in self.routes:
            while True:
                claim = f"claim:{uuid.uuid4().hex}"
                calls = await self._store.batch_claim(
                    name, self._max_calls, claim, now, now - self._stale
                )
                if calls:
                    done += await self._submit(name, claim, calls, now)
                if len(calls) < self._max_calls:
                    break
        due = await self._store.batch_due(now, now + self._poll_interval)
        jobs: dict[tuple[str, str], list[BatchCall]] = {}
        for call in due:
            if call.job is not None and call.route in self._client.routes:
                jobs.setdefault((call.route, call.job), []).append(call)
        for (route, job), calls in jobs.items():
            done += await self._poll(route, job, calls)
        if done:
            self._wake()
        return done

    def _api(self, route: str) -> BatchAPI:
        api = self._apis.get(route)
        if api is None:
            found = batch_api(self._client.routes[route].provider)
            assert found is not None
            api = self._apis[route] = found
        return api

    async def _submit(self, route: str, claim: str, calls: list[BatchCall], now: float) -> int:
        """Send ``calls`` as one job; answer how many went back to the standard tier
        instead (all of them, when the job could not be submitted)."""
        model = self._client.routes[route].model
        items = []
        for call in calls:
            request = codec.loads(call.request)
            items.append(
                (
                    custom_id(call),
                    ChatRequest(model, tuple(request["messages"]), request["params"], False),
                )
            )
        try:
            job = await self._api(route).submit(items)
        except (ProviderError, Permanent) as exc:
            log.warning("batch of %d calls on route %r not submitted: %s", len(calls), route, exc)
            return await self._answer(calls, {}, f"the batch was not submitted: {exc}")
        await self._store.batch_sent(claim, job, now + self._poll_interval)
        self.jobs += 1
        log.info("route %r: %d calls sent as batch %s", route, len(calls), job)
        return 0

    async def _poll(self, route: str, job: str, calls: list[BatchCall]) -> int:
        api = self._api(route)
        try:
            if all(c.state == "dropped" for c in calls):  # every task gave up on it
                await api.cancel(job)
                self.cancelled += 1
                log.info("batch %s on route %r cancelled: its calls went standard", job, route)
                gone = [(c.task_id, c.event, None) for c in calls]
                await self._store.batch_deliver(gone, self._clock.wall())
                return 0
            poll = await api.poll(job)
        except (ProviderError, Permanent) as exc:
            log.warning("batch %s on route %r: %s (polled again later)", job, route, exc)
            return 0
        if not poll.ended:
            return 0
        return await self._answer(calls, poll.results, "the batch did not answer the call")

    async def _answer(self, calls: list[BatchCall], results: Any, missing: str) -> int:
        answers: list[tuple[int, str, bytes | None]] = []
        for call in calls:
            if call.state == "dropped":  # its task went standard: nothing to say
                answers.append((call.task_id, call.event, None))
                continue
            result = results.get(custom_id(call))
            if isinstance(result, ChatResponse):
                cost = self._client.settle_batch(call.route, result)
                data: dict[str, Any] = {
                    "response": {**result.to_json(), "cost_usd": cost, "tier": "batch"}
                }
                self.answered += 1
            else:
                data = {"fallback": result if isinstance(result, str) else missing}
            answers.append((call.task_id, call.event, codec.dumps(data)))
        await self._store.batch_deliver(answers, self._clock.wall())
        return sum(1 for _, _, data in answers if data is not None)
