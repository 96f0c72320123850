"""The simulator's fault schedule (a 429 storm, an outage, then health) and its
header-less mode, on a clock the test moves."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest

from legion.sim import SimConfig, Simulator
from legion.sim.cli import _load_config, build_parser, run

BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}


async def post(session: aiohttp.ClientSession, sim: Simulator) -> tuple[int, dict[str, str]]:
    async with session.post(f"{sim.base_url}/chat/completions", json=BODY) as response:
        await response.read()
        return response.status, {k.lower(): v for k, v in response.headers.items()}


async def test_the_schedule_answers_its_status_in_its_span_only() -> None:
    now = [0.0]
    config = SimConfig(fault_schedule=((1.0, 2.0, 429), (3.0, 4.0, 503)), rpm=600)
    async with Simulator(config, clock=lambda: now[0]) as sim, aiohttp.ClientSession() as s:
        seen = []
        for t in (0.5, 1.0, 1.5, 2.0, 3.5, 4.0):
            now[0] = t
            status, headers = await post(s, sim)
            seen.append(status)
            if status == 429:
                assert headers["retry-after"] == "1"
        assert seen == [200, 429, 429, 200, 503, 200]
        stats = sim.stats()
        assert (stats.rate_limited, stats.errors_injected, stats.succeeded) == (2, 1, 3)
        assert stats.requests_by_second == {0: 1, 1: 2, 2: 1, 3: 1, 4: 1}


async def test_without_rate_limit_headers_nothing_tells_the_limit() -> None:
    config = SimConfig(rpm=1, rate_limit_headers=False)
    async with Simulator(config) as sim, aiohttp.ClientSession() as s:
        ok, headers = await post(s, sim)
        limited, limited_headers = await post(s, sim)
    assert (ok, limited) == (200, 429)
    for found in (headers, limited_headers):
        assert not [k for k in found if k.lower().startswith(("x-ratelimit", "retry-after"))]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (((2.0, 1.0, 429),), "must end after it starts"),
        (((0.0, 2.0, 429), (1.0, 3.0, 503)), "must not overlap"),
        (((0.0, 1.0, 404),), "429 or 5xx"),
        (((0.0, 1.0),), "(start, end, status)"),
    ],
)
def test_bad_schedules_are_refused(schedule: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SimConfig(fault_schedule=schedule)  # type: ignore[arg-type]


def test_the_command_line_takes_spans_and_the_header_switch() -> None:
    flags = vars(build_parser().parse_args(["--fault", "3:63:429", "--no-rate-limit-headers"]))
    config = SimConfig.from_mapping(flags)
    assert config.fault_schedule == ((3.0, 63.0, 429),)
    assert config.rate_limit_headers is False
    assert SimConfig.from_mapping({"fault_schedule": [[0, 45, 503]]}).fault_schedule == (
        (0, 45, 503),
    )


def test_a_port_already_taken_is_a_usage_error_that_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = run({"host": "127.0.0.1", "port": port})
    assert status == 2
    err = capsys.readouterr().err
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in err, err


async def test_a_429_says_why_and_when_with_or_without_headers() -> None:
    """The body of a 429 names the limit that was hit and the real wait: an input-token
    limit said "Too many concurrent requests: Limit None", a scheduled 429 "Limit None",
    and one without headers "try again in 0s"."""
    user = {"model": "sim-model", "messages": [{"role": "user", "content": "x" * 100}]}
    cases = [
        (SimConfig(itpm=60), "input tokens per min (ITPM): Limit 60."),
        (SimConfig(fault_schedule=((0.0, 60.0, 429),)), "requests per min (RPM). Please"),
        (SimConfig(rpm=1, rate_limit_headers=False), "Limit 1, Requested 1. Please try again in"),
    ]
    for config, told in cases:
        async with Simulator(config) as sim, aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.post(f"{sim.base_url}/chat/completions", json=user) as response:
                    body = await response.json()
                if response.status == 429:
                    break
        message = body["error"]["message"]
        assert response.status == 429 and told in message, message
        assert "None" not in message and "in 0s" not in message


def test_a_config_file_takes_faults_as_the_flag_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text('[sim]\nfault = ["0:10:429", "20:30:503"]\n')
    config = SimConfig.from_mapping(_load_config(str(path)))
    assert config.fault_schedule == ((0.0, 10.0, 429), (20.0, 30.0, 503))
