"""Provider specs and legion.toml: parsing and validation. No sockets (but for one
client built on a loopback simulator)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from legion.errors import ConfigError
from legion.llm import Price, build_client, load_config, parse_config, parse_provider_spec
from legion.llm.breaker import BreakerSettings
from legion.llm.hedge import HedgeSettings
from legion.retry import RetryPolicy
from legion.sim import SimConfig

KEYS = {"OPENAI_API_KEY": "sk-test-123", "ANTHROPIC_API_KEY": "sk-ant-456"}


def test_sim_specs() -> None:
    route = parse_provider_spec("sim", env={})
    assert (route.name, route.provider, route.model, route.base_url) == (
        "default",
        "sim",
        "sim-model",
        None,
    )
    assert route.simulator == SimConfig()
    named = parse_provider_spec("sim:fast-model", name="fast", env={}, options={"rpm": 600})
    assert (named.name, named.model, named.rpm) == ("fast", "fast-model", 600)
    assert named.simulator is not None and named.simulator.models == ("fast-model",)


def test_openai_spec_takes_key_and_url_from_the_environment() -> None:
    route = parse_provider_spec("openai:gpt-4o-mini", env=KEYS)
    assert (route.provider, route.model, route.base_url) == (
        "openai",
        "gpt-4o-mini",
        "https://api.openai.com/v1",
    )
    assert (route.api_key, route.key_env) == ("sk-test-123", "OPENAI_API_KEY")
    assert "sk-test-123" not in repr(route)  # the key never reaches a log
    env = {**KEYS, "OPENAI_BASE_URL": "https://proxy.example/v1"}
    assert parse_provider_spec("openai:m", env=env).base_url == "https://proxy.example/v1"


@pytest.mark.parametrize(
    ("spec", "env", "said"),
    [
        ("openai:m@127.0.0.1:8000/v1", {}, "openai:m@127.0.0.1:8000/v1: the base URL"),
        ("anthropic:m@ftp://h/v1", {}, "needs http:// or https:// and a host"),
        ("openai:m@http:///v1", {}, "needs http:// or https:// and a host"),
        ("openai:m@http://h:port/v1", {}, "bad base URL"),
        # Credentials in the URL: printed with it in errors (or every call failed, with
        # a key beside them); refused, and said without them.
        ("openai:m@http://bob:s3cret@h/v1", {}, "the base URL http://h/v1 holds credentials"),
        ("openai:m@http://bob:s3cret@h:x/v1", {}, "the base URL http://h:x/v1 holds"),
        ("openai:m@http://bob:s3cret@[::1/v1", {}, "bad base URL 'http://[::1/v1'"),
        ("openai:m", {**KEYS, "OPENAI_BASE_URL": "localhost:1"}, "$OPENAI_BASE_URL: the base"),
    ],
)
def test_a_base_url_without_a_scheme_or_host_is_refused(
    spec: str, env: dict[str, str], said: str
) -> None:
    # It was taken, and every call failed as an outage: two minutes before a task said so.
    with pytest.raises(ConfigError, match=re.escape(said)) as refused:
        parse_provider_spec(spec, env=env)
    assert "s3cret" not in str(refused.value)


def test_compatible_servers_need_no_key() -> None:
    route = parse_provider_spec("openai:llama3@http://127.0.0.1:8000/v1", env={})
    assert (route.model, route.base_url, route.api_key) == (
        "llama3",
        "http://127.0.0.1:8000/v1",
        None,
    )
    local = parse_provider_spec("openai:qwen", env={"OPENAI_BASE_URL": "http://localhost:11434/v1"})
    assert local.api_key is None


@pytest.mark.parametrize(
    ("spec", "variable"),
    [("openai:gpt-4o-mini", "OPENAI_API_KEY"), ("anthropic:claude-3-5-haiku", "ANTHROPIC_API_KEY")],
)
def test_a_missing_key_is_one_clear_line(spec: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable} is not set") as caught:
        parse_provider_spec(spec, env={})
    assert "\n" not in str(caught.value)


def test_anthropic_spec_and_options() -> None:
    route = parse_provider_spec(
        "anthropic:claude-3-5-haiku-latest",
        env=KEYS,
        options={
            "rpm": 50,
            "tpm": 40_000,
            "max_in_flight": 8,
            "timeout": 20,
            "stream": True,
            "stream_idle_timeout": 5.5,
            "input_price": 1,
            "output_price": 5,
        },
    )
    assert (route.base_url, route.api_key) == ("https://api.anthropic.com", "sk-ant-456")
    assert (route.rpm, route.tpm, route.max_in_flight) == (50, 40_000, 8)
    assert (route.timeout, route.stream, route.stream_idle_timeout) == (20.0, True, 5.5)
    assert route.price == Price(1, 5)


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("gemini:pro", {}, "unknown provider 'gemini'"),
        ("openai", {}, "name a model"),
        ("sim", {"rpm": 0}, "rpm must be a positive integer"),
        ("sim", {"rpm": True}, "rpm must be a positive integer"),
        ("sim", {"timeout": 0}, "timeout must be a positive number"),
        ("sim", {"stream": "yes"}, "stream must be true or false"),
        ("sim", {"input_price": -1, "output_price": 1}, "input_price must be a non-negative"),
        # (the other half was counted as free under --max-cost)
        ("sim", {"input_price": 5}, "input_price without output_price: give both"),
        ("sim", {"output_price": 0.6}, "output_price without input_price: give both"),
        ("sim", {"colour": "red"}, "unknown option"),
        ("sim", {"base_url": "http://x"}, "a sim route takes no base_url"),
        ("sim", {"simulator": {"rpm": -5}}, "simulator: rpm must be a positive integer"),
        ("openai:m", {"simulator": {}}, "only sim routes take a simulator"),
        ("openai:m", {"api_key_env": ""}, "api_key_env must be a non-empty string"),
    ],
)
def test_invalid_specs_are_config_errors(
    spec: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_provider_spec(spec, env=KEYS, options=options)


def test_a_custom_key_variable() -> None:
    route = parse_provider_spec("openai:m", env={"MY_KEY": "k"}, options={"api_key_env": "MY_KEY"})
    assert (route.api_key, route.key_env) == ("k", "MY_KEY")


def test_legion_toml(tmp_path: Path) -> None:
    path = tmp_path / "legion.toml"
    path.write_text(
        """
[llm]
default = "strong"
retries = 2
backoff = 0.25

[llm.cheap]
provider = "openai"
model = "gpt-4o-mini"
rpm = 500
tpm = 200000

[llm.strong]
provider = "anthropic"
model = "claude-3-5-haiku-latest"
max_in_flight = 16

[llm.rehearsal]
provider = "sim"
simulator = { rpm = 60, latency = 0.01 }
"""
    )
    config = load_config(path, env=KEYS)
    assert [route.name for route in config.routes] == ["cheap", "strong", "rehearsal"]
    assert config.default == "strong"
    assert config.retry == RetryPolicy(retries=2, backoff=0.25, max_backoff=30.0)
    cheap, strong, rehearsal = config.routes
    assert (cheap.provider, cheap.model, cheap.rpm, cheap.tpm) == (
        "openai",
        "gpt-4o-mini",
        500,
        200_000,
    )
    assert (strong.provider, strong.max_in_flight) == ("anthropic", 16)
    assert rehearsal.simulator == SimConfig(rpm=60, latency=0.01)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "defines no route"),
        ({"a": {"provider": "sim"}, "default": "b"}, "default = 'b' names no"),
        ({"a": {"provider": "sim"}, "colour": 1}, "unknown setting 'colour'"),
        ({"a": {"model": "x"}}, r"\[llm.a\] needs provider"),
        ({"a": {"provder": "sim"}}, r"needs provider = .* \(unknown option\(s\) provder\)"),
        ({"a": {"provider": "sim"}, "retries": -1}, "retry settings"),
        ({"a": {"provider": "openai", "model": "m"}}, "OPENAI_API_KEY is not set"),
    ],
)
def test_invalid_tables_are_config_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(table, env={})


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[llm\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(bad)
    other = tmp_path / "other.toml"
    other.write_text("[sim]\nrpm = 1\n")
    with pytest.raises(ConfigError, match="no \\[llm\\] table"):
        load_config(other)


def test_hung_call_size_breaker_and_hedge_keys() -> None:
    config = parse_config(
        {
            "fast": {
                "provider": "openai",
                "model": "m",
                "ttfb_timeout": 5,
                "max_response_bytes": 1_048_576,
                "max_event_bytes": 65_536,
                "breaker_failures": 3,
                "breaker_open": 2,
                "breaker_max_open": 10,
                "hedge_percentile": 90,
                "hedge_min_delay": 0.5,
            },
            "plain": {"provider": "sim", "breaker_failures": 0},
        },
        env=KEYS,
    )
    fast, plain = config.routes
    assert (fast.ttfb_timeout, fast.max_response_bytes, fast.max_event_bytes) == (
        5.0,
        1_048_576,
        65_536,
    )
    assert fast.breaker == BreakerSettings(failures=3, open_for=2.0, max_open_for=10.0)
    assert fast.hedge == HedgeSettings(percentile=90.0, min_delay=0.5)
    # Defaults: 30 s to first byte on streams (None here), 32 MiB / 8 MiB, a breaker at 5
    # failures in a row, no hedging.
    assert plain.ttfb_timeout is None and plain.hedge is None
    assert (plain.max_response_bytes, plain.max_event_bytes) == (32 << 20, 8 << 20)
    assert plain.breaker == BreakerSettings(failures=0)
    assert parse_config({"d": {"provider": "sim"}}).routes[0].breaker == BreakerSettings()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttfb_timeout": 0}, "ttfb_timeout must be a positive number"),
        ({"max_event_bytes": 10}, "max_event_bytes must be an integer >= 1024"),
        ({"breaker_failures": -1}, "breaker_failures must be an integer >= 0"),
        ({"breaker_open": 60}, "open_for must be > 0 and <= max_open_for"),
        ({"hedge_percentile": 100}, "hedge_percentile must be between 0 and 100"),
        ({"hedge_min_delay": 1}, "hedge_min_delay needs hedge_percentile"),
    ],
)
def test_invalid_resilience_keys_are_config_errors(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"a": {"provider": "sim", **options}})


async def test_a_built_client_has_the_routes_breaker_and_hedging() -> None:
    config = parse_config(
        {
            "a": {"provider": "sim", "hedge_percentile": 99},
            "b": {"provider": "sim", "breaker_failures": 0},
        }
    )
    async with await build_client(config) as client:
        a, b = client.routes["a"], client.routes["b"]
        assert a.breaker is not None and a.breaker.settings == BreakerSettings()
        assert a.hedge == HedgeSettings(percentile=99.0)
        assert b.breaker is None and b.hedge is None
        assert client.statistics().routes["b"].breaker is None


async def test_the_batch_tier_window_and_poll_interval_reach_the_client() -> None:
    table = {"batch_window": 0.2, "batch_poll_interval": 5, "d": {"provider": "sim"}}
    config = parse_config(table)
    assert (config.batch_window, config.batch_poll_interval) == (0.2, 5.0)
    async with await build_client(config) as client:
        assert (client.batch_window, client.batch_poll_interval) == (0.2, 5.0)
    assert parse_config({"d": {"provider": "sim"}}).batch_poll_interval == 2.0
    with pytest.raises(ConfigError, match="batch_window must be a number of seconds > 0"):
        parse_config({"batch_window": 0, "d": {"provider": "sim"}})


async def test_each_route_is_charged_its_own_price_on_a_model_another_route_shares() -> None:
    # Prices were kept by model name: two routes on one model at two prices were both
    # charged the last one's (1,000 times the cheap route's cost, --max-cost stopping the
    # run early), and a simulator's route made a real route on its model free.
    config = parse_config(
        {
            "cheap": {"provider": "sim", "model": "gpt-4o-mini", "input_price": 0.15,
                      "output_price": 0.60},
            "dear": {"provider": "sim", "model": "gpt-4o-mini", "input_price": 150,
                     "output_price": 600},
            "free": {"provider": "sim", "model": "gpt-4o-mini"},
        }
    )  # fmt: skip
    async with await build_client(config) as client:
        question = [{"role": "user", "content": "what does it cost?"}]
        costs, at_cheap_price = {}, {}
        for name in ("cheap", "dear", "free"):
            answer = await client.chat(question, name, max_tokens=8)
            costs[name] = client.cost(answer, name)
            usage = answer.usage
            at_cheap_price[name] = (
                usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.6
            ) / 1e6
            assert client.statistics().routes[name].cost_usd == pytest.approx(costs[name])
    assert costs["cheap"] == pytest.approx(at_cheap_price["cheap"])
    assert costs["dear"] == pytest.approx(at_cheap_price["dear"] * 1000)
    assert costs["free"] == 0
