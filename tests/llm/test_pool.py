"""Pooled routes (`--llm NAME=SPEC` given several times): each call goes to the
deployment where it starts soonest, before any 429; deployments that are out are
skipped; a fallback route takes over while all are; each call says who served it."""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter

import pytest

from legion.errors import ConfigError
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.config import LLMConfig, build_client, parse_config, parse_provider_spec
from legion.llm.hedge import HedgeSettings
from legion.llm.provider import ChatResult
from legion.llm.types import ChatRequest
from legion.retry import RetryPolicy
from legion.sim import SimConfig, Simulator
from legion.testing import FakeClock, ScriptedProvider

USER = [{"role": "user", "content": "Hello"}]
KEYS = {"KEY_A": "sk-test-aaaa", "KEY_B": "sk-test-bbbb"}


def _deployment(url: str, key_env: str, rpm: int) -> object:
    return parse_provider_spec(
        f"openai:sim-model@{url}",
        name="main",
        options={"api_key_env": key_env, "rpm": rpm},
        env=KEYS,
    )


class _Stamped(ScriptedProvider):
    """A scripted provider that notes when (on ``clock``) each request reached it."""

    def __init__(self, clock: FakeClock, name: str, calls: int) -> None:
        super().__init__(["ok"] * calls, name=name)
        self._clock = clock
        self.sent_at: list[float] = []

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        self.sent_at.append(self._clock.now())
        return await super().chat(request, timeout=timeout)


def _most_in_a_second(times: list[float]) -> int:
    """The most of ``times`` that fall in any window of one second."""
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered))


async def test_two_keys_serve_at_the_sum_of_their_limits_and_neither_above_its_own() -> None:
    """Each key may start 1,200 calls a minute (20 in any second); 400 calls at once
    need both. They are spread over the keys by headroom, half each, and the run ends
    in the time the sum of the limits takes (10 s, where one key alone takes 20 s),
    with no second in which either key was sent more than its 20."""
    clock = FakeClock()
    a, b = _Stamped(clock, "a", 400), _Stamped(clock, "b", 400)
    llm = LLMClient(
        [
            Route("main", a, "m", Capacity("a", rpm=1200, timer=clock), deployment="main#1"),
            Route("main", b, "m", Capacity("b", rpm=1200, timer=clock), deployment="main#2"),
        ],
        timer=clock,
    )
    async with llm:
        answers = await clock.run(asyncio.gather(*(llm.chat(USER) for _ in range(400))))
    served = Counter(answer.deployment for answer in answers)
    assert served == {"main#1": 200, "main#2": 200}
    assert 9.0 < clock.now() < 11.0  # the pace of 40 a second (at 98 % of it)
    assert _most_in_a_second(a.sent_at) <= 20 and _most_in_a_second(b.sent_at) <= 20
    route = llm.statistics().routes["main"]
    assert route.succeeded == 400 and route.served_by == served


async def test_two_keys_of_one_route_are_counted_apart_by_the_provider() -> None:
    """The same pool end to end: two keys named by their environment variables reach
    the simulator, which counts (and limits) each key apart, as a provider does."""
    config = SimConfig(rpm=1200, window_seconds=1.0, limits_per_key=True, latency=0.01)
    async with Simulator(config) as sim:
        routes = (
            _deployment(sim.base_url, "KEY_A", 1200),
            _deployment(sim.base_url, "KEY_B", 1200),
        )
        llm = await build_client(LLMConfig(routes, "main"))  # type: ignore[arg-type]
        async with llm:
            answers = await asyncio.gather(*(llm.chat(USER) for _ in range(40)))
        stats = sim.stats()
    assert {answer.deployment for answer in answers} == {"main#1", "main#2"}
    # (How the 40 split depends on how the calls' windows fall on a loaded machine;
    # the split on an even pace is the test above, on a fake clock.)
    assert set(stats.by_key) == {"...aaaa", "...bbbb"}
    assert llm.statistics().routes["main"].succeeded == 40


async def test_a_deployment_that_is_down_is_skipped_for_the_fallback() -> None:
    async with Simulator(SimConfig(latency=0.0)) as sim:
        table = {
            "main": {
                "provider": "openai",
                "model": "sim-model",
                "base_url": "http://127.0.0.1:9/v1",  # nothing listens: connection refused
                "fallback": ["backup"],
                "breaker_failures": 0,
            },
            "backup": {"provider": "openai", "model": "sim-model", "base_url": sim.base_url},
            "retries": 6,
            "backoff": 0.01,
            "max_backoff": 0.05,
        }
        config = parse_config(table, env={})
        assert config.retry == RetryPolicy(retries=6, backoff=0.01, max_backoff=0.05)
        llm = await build_client(config)
        async with llm:
            answers = [await llm.chat(USER, model="main") for _ in range(5)]
        route = llm.statistics().routes["main"]
    # The first call failed on main until main counted as failing, then went to backup;
    # the later ones went straight to backup.
    assert [a.deployment for a in answers] == ["backup"] * 5
    assert route.served_by == {"backup": 5}
    assert route.errors == {"ConnectionRefused": 3}  # (a ProviderUnavailable: nothing listens)
    assert sim.stats().succeeded == 5


def test_a_fallback_must_name_another_route() -> None:
    table = {"main": {"provider": "sim", "fallback": ["nowhere"]}}
    with pytest.raises(ConfigError, match="falls back to 'nowhere'"):
        parse_config(table, env={})


def test_the_deployments_of_a_pool_agree_on_its_fallbacks() -> None:
    # A fallback list on the second deployment was taken, and never used (a pool's
    # fallbacks are its first deployment's).
    table = {
        "main": {
            "deployments": [
                {"provider": "sim", "fallback": ["b"]},
                {"provider": "sim", "fallback": ["c"]},
            ]
        },
        "b": {"provider": "sim"},
        "c": {"provider": "sim"},
    }
    with pytest.raises(ConfigError, match="deployments of route 'main' name different fallbacks"):
        parse_config(table, env={})


def test_a_pool_in_legion_toml_is_a_list_of_deployments() -> None:
    table = {
        "main": {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "rpm": 500,
            "deployments": [{"api_key_env": "KEY_A"}, {"api_key_env": "KEY_B", "rpm": 900}],
        }
    }
    config = parse_config(table, env=KEYS)
    assert [(r.name, r.api_key, r.rpm) for r in config.routes] == [
        ("main", "sk-test-aaaa", 500),
        ("main", "sk-test-bbbb", 900),
    ]


async def test_calls_queued_on_a_route_that_goes_out_go_to_its_fallback() -> None:
    """Calls that picked main before it went out waited in main's queue for its probes,
    one a second, each probe one more failed request to main before that call went to
    the backup: 40 calls took 40 s (no rpm limit on main, none of its waits timed). Now
    they are turned away to the backup as soon as main is out."""
    down = SimConfig(latency=0.0, fault_schedule=((0.0, 3600.0, 503),))
    async with Simulator(down) as failing, Simulator(SimConfig(latency=0.0)) as healthy:
        table = {
            "main": {
                "provider": "openai",
                "model": "sim-model",
                "base_url": failing.base_url,
                "fallback": ["backup"],
                "max_in_flight": 2,  # (a queue forms at main's limiter)
            },
            "backup": {"provider": "openai", "model": "sim-model", "base_url": healthy.base_url},
        }
        llm = await build_client(parse_config(table, env={"OPENAI_API_KEY": "k"}))
        async with llm:
            answers = await asyncio.gather(*(llm.chat(USER, model="main") for _ in range(40)))
        route = llm.statistics().routes["main"]
    assert [a.deployment for a in answers] == ["backup"] * 40
    assert route.served_by == {"backup": 40}
    # main was asked until it counted as failing (and probed at most once since)
    assert failing.stats().requests_total <= 6, failing.stats()


def test_the_headroom_of_a_route_that_is_out_is_its_fallbacks() -> None:
    """What a worker admits: while main fails (a probe a second), its calls go to the
    backup, so as many tasks start as the backup can serve (it admitted about one a
    second, the failing route's pace, with the backup idle)."""
    main, backup = Capacity("main", rpm=6000), Capacity("backup", rpm=600)
    llm = LLMClient(
        [
            Route("main", ScriptedProvider([]), "m", main, fallback=("backup",)),
            Route("backup", ScriptedProvider([]), "m", backup),
        ]
    )
    assert llm.headroom(1.0) == backup.headroom(1.0) > 9  # (healthy: the backup binds)
    for _ in range(3):  # three failures in a row: main is failing
        main.failed(sent_at=0.0)
    assert main.failing and main.headroom(1.0) == 1.0  # (a probe a second)
    assert llm.headroom(1.0) == backup.headroom(1.0)  # main's calls go to the backup


async def test_a_deployment_that_went_out_is_sent_a_probe_and_comes_back() -> None:
    """While a deployment is out its calls go to the others (or to the fallback), and
    nothing sent it one: it was never used again after it came back (a pool's outage of
    10 s left the rest of a run at half the capacity). Now it is sent its probe when one
    is due, and takes calls again once that one gets through."""
    clock = FakeClock()
    a, b = Capacity("a", timer=clock), Capacity("b", timer=clock)
    main, backup = Capacity("main", timer=clock), Capacity("backup", timer=clock)
    llm = LLMClient(
        [
            Route("pool", ScriptedProvider([]), "m", a, deployment="pool#1"),
            Route("pool", ScriptedProvider([]), "m", b, deployment="pool#2"),
            Route("main", ScriptedProvider([]), "m", main, fallback=("backup",)),
            Route("backup", ScriptedProvider([]), "m", backup),
        ]
    )
    for capacity in (a, main):  # three failures in a row: failing
        for _ in range(3):
            capacity.failed(sent_at=clock.now())
    assert (llm.pick("pool", 10).capacity, llm.pick("main", 10).capacity) == (b, backup)
    await clock.advance(1.0)  # (a probe a second)
    assert (llm.pick("pool", 10).capacity, llm.pick("main", 10).capacity) == (a, main)
    probe = await a.acquire(10)  # the probe is sent: none is due until it is answered
    assert llm.pick("pool", 10).capacity is b
    probe.settle(10)  # it got through: the deployment is back
    a.release()
    assert not a.failing and llm.pick("pool", 10).capacity in (a, b)


class _Slow(_Stamped):
    """Answers each request 0.3 s (on ``clock``) after it reached it."""

    async def chat(self, request: ChatRequest, *, timeout: float) -> ChatResult:  # noqa: ASYNC109
        result = await super().chat(request, timeout=timeout)
        await self._clock.sleep(0.3)
        return result


async def test_a_call_waiting_for_its_turn_is_not_hedged_for_it() -> None:
    """A hedge's delay is a provider's latency: it counts from the request's start. Counted
    from the call, every call that waited longer than it for its turn at the route's
    limit got a copy (256 of 300 at 600 rpm, none answering first), which waited too
    and took a request of the limit: 556 requests, and the run took twice as long."""
    clock = FakeClock()
    slow = _Slow(clock, "slow", 200)
    hedge = HedgeSettings(percentile=95, min_delay=0.5, min_samples=5)
    llm = LLMClient(
        [Route("main", slow, "m", Capacity("a", rpm=600, timer=clock), hedge=hedge)],
        timer=clock,
    )

    async def calls() -> list[object]:
        for _ in range(5):  # the latencies a hedge's delay is worked out from: 0.3 s
            await llm.chat(USER)
        return await asyncio.gather(*(llm.chat(USER) for _ in range(100)))

    async with llm:
        answers = await clock.run(calls())
    route = llm.statistics().routes["main"]
    assert len(answers) == 100 and route.hedged == 0
    assert len(slow.sent_at) == 105  # one request a call
    assert clock.now() < 13.0  # 100 calls at 10 a second, after 5 one at a time
