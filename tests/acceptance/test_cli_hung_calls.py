"""``legion run`` against a ``legion sim`` process that hangs, pings forever or answers
too much: each call ends on the route's own bound (set in legion.toml), with an error
that says which."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, read_jsonl, sim_stats, start_sim, write_jsonl

pytestmark = pytest.mark.slow

AGENT = """
import legion


@legion.agent(timeout=120, retries=0)
async def ask(ctx, q: str):
    return (await ctx.llm.chat([{"role": "user", "content": q}], max_tokens=8)).text
"""


@pytest.mark.parametrize(
    ("sim_args", "route", "status", "error", "message", "expected"),
    [
        (
            ["--hang-rate", "1"],
            "ttfb_timeout = 0.5",
            "dead",
            "ProviderUnavailable",
            r"sent no answer within 0.5 s (time-to-first-byte timeout)",
            {"requests_total": 2, "hangs": 2},  # one try, one client retry
        ),
        (
            ["--ping-rate", "1", "--ping-interval", "0.05"],
            "stream = true\nstream_idle_timeout = 0.5",
            "dead",
            "ProviderUnavailable",
            "sent nothing for 0.5 s (stream idle timeout; keep-alive comments do not count)",
            {"requests_total": 2, "pings_only": 2},
        ),
        (
            ["--padding-bytes", "2000000"],
            "max_response_bytes = 1048576",
            "failed",  # permanent: the same request would bring the same answer back
            "ResponseTooLarge",
            "over the route's limit (max_response_bytes 1,048,576",
            {"requests_total": 1, "succeeded": 1},  # sent whole, refused by the client
        ),
    ],
    ids=["ttfb", "ping-only", "oversize"],
)
def test_a_call_ends_on_the_routes_bound_with_a_clear_error(
    tmp_path: Path,
    sim_args: list[str],
    route: str,
    status: str,
    error: str,
    message: str,
    expected: dict[str, int],
) -> None:
    proc, url = start_sim(*sim_args)
    try:
        (tmp_path / "app.py").write_text(AGENT)
        (tmp_path / "legion.toml").write_text(
            f"""
[llm]
retries = 1
backoff = 0.01

[llm.default]
provider = "openai"
model = "sim-model"
base_url = "{url}"
{route}
"""
        )
        inp = write_jsonl(tmp_path / "in.jsonl", [{"q": "hello"}])
        out = tmp_path / "out.jsonl"
        r = legion(
            "run",
            f"{tmp_path / 'app.py'}:ask",
            "-i",
            str(inp),
            "-o",
            str(out),
            "--store",
            f"sqlite:///{tmp_path / 'db'}",
            "--config",
            str(tmp_path / "legion.toml"),
        )
        stats = sim_stats(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert "Traceback" not in r.stderr
    (row,) = read_jsonl(out)
    assert row["status"] == status, row
    assert row["error"]["type"] == error and message in row["error"]["message"], row
    assert {key: stats[key] for key in expected} == expected


def test_an_outage_is_waited_out_behind_the_breaker(tmp_path: Path) -> None:
    # Request 1 is served, requests 2-7 are answered 503, then the provider is back.
    proc, url = start_sim("--outage-after", "1", "--outage-requests", "6")
    try:
        (tmp_path / "app.py").write_text(AGENT)
        (tmp_path / "legion.toml").write_text(
            f"""
[llm]
retries = 4
backoff = 0.01
max_backoff = 0.05

[llm.default]
provider = "openai"
model = "sim-model"
base_url = "{url}"
breaker_failures = 3
breaker_open = 0.2
breaker_max_open = 1
"""
        )
        inp = write_jsonl(tmp_path / "in.jsonl", [{"q": f"q{i}"} for i in range(5)])
        out = tmp_path / "out.jsonl"
        r = legion(
            "run",
            f"{tmp_path / 'app.py'}:ask",
            "-i",
            str(inp),
            "-o",
            str(out),
            "--store",
            f"sqlite:///{tmp_path / 'db'}",
            "--config",
            str(tmp_path / "legion.toml"),
            "-c",
            "1",  # one task at a time: the order of requests is known
        )
        stats = sim_stats(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert r.returncode == 0, r.stderr
    rows = read_jsonl(out)
    # Every task succeeded on its first attempt, though its agent allows no retry.
    assert [(row["status"], row["attempts"]) for row in rows] == [("succeeded", 1)] * 5
    # The second task's call: three failures opened the breaker; then probes only, each
    # alone, until the fourth found the provider back. Counted as the call's attempts, the
    # first two failed probes would have spent its last two retries and failed the task;
    # a failed probe is sent for every waiting caller, and is not the prober's attempt.
    assert (stats["requests_total"], stats["errors_injected"]) == (11, 6)
    assert "5 calls, 11 requests" in r.stderr, r.stderr
