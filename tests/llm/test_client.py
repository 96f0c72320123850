"""LLMClient on a scripted provider and a fake clock: routes, retries,
permanent and fatal errors, usage and cost. No sockets."""

from __future__ import annotations

import random

import pytest

from legion.errors import (
    MalformedResponse,
    Permanent,
    ProviderAuthError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from legion.llm import (
    Capacity,
    ChatResponse,
    LLMClient,
    Price,
    PriceTable,
    RateLimitInfo,
    Route,
    Usage,
    estimate_tokens,
)
from legion.retry import RetryPolicy
from legion.testing import FakeClock, ScriptedProvider

RETRY = RetryPolicy(retries=3, backoff=0.5, max_backoff=30.0)
HELLO = [{"role": "user", "content": "Hello, how are you?"}]  # 19 characters: 5 tokens


def unavailable(retry_after: float | None = None) -> ProviderUnavailable:
    return ProviderUnavailable("down", provider="scripted", status=503, retry_after=retry_after)


def client_for(
    provider: ScriptedProvider,
    clock: FakeClock,
    *,
    model: str = "gpt-4o-mini",
    retry: RetryPolicy = RETRY,
    rpm: int | None = None,
) -> LLMClient:
    capacity = Capacity("c", rpm=rpm, timer=clock, rng=random.Random(0))
    return LLMClient(
        [Route("main", provider, model, capacity)],
        retry=retry,
        timer=clock,
        rng=random.Random(7),
    )


def behind_a_breaker(
    provider: ScriptedProvider, clock: FakeClock, *, retries: int, max_outage: float
) -> LLMClient:
    """A client of one route, ``main``, with a breaker, on ``clock``."""
    from legion.llm import Breaker, BreakerSettings

    capacity = Capacity("c", timer=clock, rng=random.Random(0))
    breaker = Breaker(BreakerSettings(), timer=clock)
    return LLMClient(
        [Route("main", provider, "m", capacity, breaker=breaker)],
        retry=RetryPolicy(retries=retries),
        timer=clock,
        rng=random.Random(7),
        max_outage=max_outage,
    )


def test_token_estimate_is_characters_over_four_plus_the_completion() -> None:
    assert estimate_tokens(HELLO, {"max_tokens": 100}, 256) == 5 + 4 + 100
    assert estimate_tokens(HELLO, {}, 256) == 5 + 4 + 256
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, {"type": "image"}]}]
    assert estimate_tokens(parts, {"max_completion_tokens": 10}, 256) == 2 + 4 + 10


async def test_a_call_goes_to_the_route_and_counts_usage_and_cost() -> None:
    clock = FakeClock()
    answer = ChatResponse("Fine.", (), "stop", Usage(1_000_000, 100_000), "gpt-4o-mini", "scripted")
    provider = ScriptedProvider([answer], rate_limits=RateLimitInfo(limit_requests=42))
    async with client_for(provider, clock) as client:
        reply = await client.chat(HELLO, temperature=0.2, max_tokens=50)
        assert reply == answer
        request = provider.requests[0]
        assert (request.model, request.params, request.stream) == (
            "gpt-4o-mini",
            {"temperature": 0.2, "max_tokens": 50},
            False,
        )
        assert tuple(request.messages) == tuple(HELLO)
        stats = client.statistics()
        route = stats.routes["main"]
        assert (route.calls, route.succeeded, route.failed, route.attempts) == (1, 1, 0, 1)
        assert route.usage == stats.usage == Usage(1_000_000, 100_000)
        assert route.cost_usd == stats.cost_usd == pytest.approx(0.15 + 0.06)
        assert route.capacity.tokens_used == 1_100_000
        assert route.capacity.learned_rpm == 42  # headers reached the capacity
    assert provider.closed


async def test_transient_errors_are_retried_with_jittered_backoff() -> None:
    clock = FakeClock()
    provider = ScriptedProvider(
        [unavailable(), MalformedResponse("bad", provider="scripted"), "ok"]
    )
    client = client_for(provider, clock)
    reply = await clock.run(client.chat(HELLO))
    assert reply.text == "ok"
    expected = random.Random(7)
    assert clock.now() == pytest.approx(expected.uniform(0, 0.5) + expected.uniform(0, 1.0))
    route = client.statistics().routes["main"]
    assert (route.attempts, route.retries, route.succeeded) == (3, 2, 1)
    assert route.errors == {"ProviderUnavailable": 1, "MalformedResponse": 1}
    # What the last failure said, for a route whose breaker opens (a progress line said
    # only "breaker open on route main", never the address that refused the connection).
    assert route.last_error == "MalformedResponse: bad"


async def test_retry_after_is_honoured_up_to_max_backoff() -> None:
    clock = FakeClock()
    client = client_for(ScriptedProvider([unavailable(7.0), unavailable(100.0), "ok"]), clock)
    await clock.run(client.chat(HELLO))
    assert clock.now() == pytest.approx(7.0 + 30.0)


async def test_a_429_pauses_the_route_and_the_retry_waits_its_turn() -> None:
    clock = FakeClock()
    limited = RateLimited("slow down", provider="scripted", status=429, retry_after=20.0)
    client = client_for(ScriptedProvider([limited, "ok"]), clock, rpm=600)
    await clock.run(client.chat(HELLO))
    capacity = client.statistics().routes["main"].capacity
    assert 20.0 <= clock.now() <= 22.0  # the pause, with jitter; no backoff on top
    assert (capacity.rate_limited, capacity.requests) == (1, 2)
    # Decreased by 10 % (a first 429), then one success gives back 1/30 of the 60 rpm
    # taken (the calls of 3 s at 10 a second give it all back).
    assert capacity.effective_rpm == pytest.approx(600 * 0.9 + 2)


async def test_the_last_error_is_raised_when_attempts_run_out() -> None:
    clock = FakeClock()
    errors = [unavailable() for _ in range(3)]
    client = client_for(ScriptedProvider(errors), clock, retry=RetryPolicy(retries=2))
    with pytest.raises(ProviderUnavailable) as caught:
        await clock.run(client.chat(HELLO))
    assert caught.value is errors[-1]
    route = client.statistics().routes["main"]
    assert (route.calls, route.attempts, route.failed, route.succeeded) == (1, 3, 1, 0)


async def test_permanent_errors_are_raised_at_once() -> None:
    clock = FakeClock()
    provider = ScriptedProvider([ProviderRejected("bad request", provider="scripted", status=400)])
    client = client_for(provider, clock)
    with pytest.raises(ProviderRejected, match="bad request"):
        await client.chat(HELLO)
    assert len(provider.requests) == 1 and client.fatal_error is None
    assert client.statistics().routes["main"].errors == {"ProviderRejected": 1}


async def test_a_request_refused_as_too_large_holds_no_tokens_of_the_route() -> None:
    clock = FakeClock()
    too_large = ProviderRejected(
        "Request too large for tokens per min", provider="scripted", status=429
    )
    provider = ScriptedProvider([too_large, ChatResponse("hi", usage=Usage(5, 1))])
    capacity = Capacity("c", tpm=6000, timer=clock, rng=random.Random(0))
    client = LLMClient([Route("main", provider, "m", capacity)], timer=clock)
    big = [{"role": "user", "content": "word " * 4000}]  # 5,000 tokens: past a minute's 6,000
    with pytest.raises(ProviderRejected):
        await client.chat(big, max_tokens=10)
    await clock.run(client.chat(HELLO, max_tokens=10))
    assert clock.now() == 0.0  # (its 5,010 tokens were charged: it waited 51 s)


async def test_an_auth_error_is_kept_as_fatal() -> None:
    clock = FakeClock()
    first = ProviderAuthError("bad key", provider="scripted", status=401)
    second = ProviderAuthError("still bad", provider="scripted", status=401)
    client = client_for(ScriptedProvider([first, second]), clock)
    for _ in range(2):
        with pytest.raises(ProviderAuthError):
            await client.chat(HELLO)
    assert client.fatal_error is first and first.fatal


async def test_a_response_without_usage_is_charged_its_estimate() -> None:
    clock = FakeClock()
    silent = ChatResponse("?", (), "stop", Usage(), "m", "scripted")
    client = client_for(ScriptedProvider([silent]), clock)
    await client.chat(HELLO, max_tokens=10)
    assert client.statistics().routes["main"].capacity.tokens_used == 5 + 4 + 10


async def test_routes_defaults_and_per_call_overrides() -> None:
    clock = FakeClock()
    cheap, strong = ScriptedProvider(["a", "b"]), ScriptedProvider(["c"], name="other")
    client = LLMClient(
        [
            Route("cheap", cheap, "small", Capacity(timer=clock)),
            Route("strong", strong, "large", Capacity(timer=clock), stream=True),
        ],
        default="strong",
        prices=PriceTable({"large": Price(1_000_000, 0)}),
        timer=clock,
    )
    assert client.default == "strong" and set(client.routes) == {"cheap", "strong"}
    assert (await client.chat(HELLO)).text == "c"
    assert strong.requests[0].stream is True
    await client.chat(HELLO, "cheap")
    await client.chat(HELLO, "cheap", stream=True)
    assert [r.stream for r in cheap.requests] == [False, True]
    assert client.statistics().cost_usd == pytest.approx(1.0)  # 1 prompt token on "large"
    with pytest.raises(
        Permanent, match="no LLM route or model named 'missing'; routes: cheap, strong"
    ):
        await client.chat(HELLO, "missing")
    await client.aclose()
    assert cheap.closed and strong.closed


def test_invalid_routes_are_refused() -> None:
    provider = ScriptedProvider([])
    route = Route("a", provider, "m", Capacity())
    with pytest.raises(ValueError, match="at least one route"):
        LLMClient([])
    with pytest.raises(ValueError, match="distinct names"):
        LLMClient([route, route])
    with pytest.raises(ValueError, match="default route 'b'"):
        LLMClient([route], default="b")


async def test_a_route_that_answers_only_429s_fails_its_call_after_max_outage() -> None:
    # A key the provider never serves (429 on every call, no Retry-After): each retry
    # waited for the route's pause without spending anything, so the call, and its task,
    # waited for ever, about one request a second.
    clock = FakeClock()
    refusals = [RateLimited("no", provider="scripted", status=429) for _ in range(1000)]
    provider = ScriptedProvider(refusals)
    capacity = Capacity("c", timer=clock, rng=random.Random(0))
    client = LLMClient(
        [Route("main", provider, "m", capacity)],
        retry=RetryPolicy(retries=2),
        timer=clock,
        rng=random.Random(7),
        max_outage=120.0,
    )
    with pytest.raises(RateLimited):
        await clock.run(client.chat(HELLO))
    assert 120.0 <= clock.now() < 200.0
    route = client.statistics().routes["main"]
    assert (route.calls, route.failed, route.succeeded) == (1, 1, 0)
    assert len(provider.requests) < 250  # about one a second, then three that count


async def test_a_call_whose_retries_went_on_malformed_answers_is_not_retried_by_its_task() -> None:
    # Each malformed 200 is paid: 5 client tries x 3 task attempts paid 15 answers a task.
    import pickle

    from legion.errors import is_retryable

    clock = FakeClock()
    wrong = [MalformedResponse("bad", provider="scripted") for _ in range(3)]
    client = client_for(ScriptedProvider(wrong), clock, retry=RetryPolicy(retries=2))
    with pytest.raises(MalformedResponse) as caught:
        await clock.run(client.chat(HELLO))
    assert not is_retryable(caught.value)
    assert not is_retryable(pickle.loads(pickle.dumps(caught.value)))  # across processes
    assert is_retryable(MalformedResponse("bad", provider="scripted"))  # the class still is
    down = [unavailable() for _ in range(3)]
    client = client_for(ScriptedProvider(down), clock, retry=RetryPolicy(retries=2))
    with pytest.raises(ProviderUnavailable) as outage:
        await clock.run(client.chat(HELLO))
    assert is_retryable(outage.value)  # may pass later: the task's policy decides


async def test_calls_on_a_route_down_past_max_outage_fail_without_waiting_a_probe_each() -> None:
    # A wrong address: after the 120 s grace each call still waited for a breaker probe
    # of its own (one every 30 s) for each of its tries: tasks x tries x ~30 s to fail.
    import asyncio

    clock = FakeClock()
    provider = ScriptedProvider([unavailable() for _ in range(10_000)])
    client = behind_a_breaker(provider, clock, retries=4, max_outage=120.0)

    async def one() -> BaseException | None:
        try:
            await client.chat(HELLO)
        except ProviderUnavailable as exc:
            return exc
        return None

    results = await clock.run(asyncio.gather(*(one() for _ in range(20))))
    assert all(isinstance(r, ProviderUnavailable) for r in results)
    assert clock.now() < 240.0  # the grace, then at most one probe period: not 20 x 5 x 30 s
    assert any(
        "has failed every call" in str(r) and "(the last failure: down)" in str(r) for r in results
    )
    assert client.statistics().routes["main"].failed == 20


async def test_a_route_down_past_max_outage_is_probed_every_second_and_found_back() -> None:
    # Down past max_outage, calls are refused at once; the breaker's open period had
    # doubled to 30 s, so a provider back at once was found up to 30 s later (a gateway
    # answered 502s meanwhile), though the README says a probe a second finds it.

    clock = FakeClock()
    provider = ScriptedProvider([*(unavailable() for _ in range(40)), *["back"] * 10])
    client = behind_a_breaker(provider, clock, retries=0, max_outage=5.0)
    answers: list[str] = []
    while not answers and clock.now() < 600:  # a caller a second, as a gateway's
        try:
            answers.append((await clock.run(client.chat(HELLO))).text)
        except ProviderUnavailable:
            await clock.run(clock.sleep(1.0))
    assert answers == ["back"]
    sent = len(provider.requests)
    assert sent == 41, sent  # every probe failed until the provider came back: none wasted
    assert clock.now() < 60, clock.now()  # a probe a second, not one per 30 s
