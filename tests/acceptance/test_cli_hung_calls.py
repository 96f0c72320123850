"""``legion run`` against a ``legion sim`` process that hangs, pings forever or answers
too much: each call ends on the route's own bound (set in legion.toml), with an error
that says which."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from .conftest import legion, read_jsonl, sim_stats, start_sim, write_jsonl

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
