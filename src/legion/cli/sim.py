"""``legion sim``: the provider simulator, with the flags of ``python -m legion.sim``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer


class Window(StrEnum):
    sliding = "sliding"
    fixed = "fixed"


class Distribution(StrEnum):
    uniform = "uniform"
    lognormal = "lognormal"


def sim(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on, 0 for any free one (default 8000)."),
    ] = None,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow a host that is not loopback.")
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="A TOML file with a [sim] table of these settings (flags win)."
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(metavar="NAME", help="A model name served (repeatable; default sim-model)."),
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(help="Requests per minute (default unlimited).")
    ] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (default unlimited).")] = None,
    itpm: Annotated[
        int | None,
        typer.Option(help="Input tokens per minute, counted apart (cache reads exempt)."),
    ] = None,
    otpm: Annotated[
        int | None, typer.Option(help="Output tokens per minute, counted apart.")
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Requests served at once (default unlimited).")
    ] = None,
    window: Annotated[
        Window | None, typer.Option(help="Rate window kind (default sliding).")
    ] = None,
    window_seconds: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Enforce the per-minute limits over windows this long (default 60; 1 = per "
            "second, as providers quantize). A request larger than one window's tokens "
            "(--tpm 6000 over 1 s windows: 100) is refused as too large, where a provider "
            "refuses only one larger than its minute's: give longer windows to send such "
            "requests.",
        ),
    ] = None,
    rejected_count_against_limit: Annotated[
        bool | None,
        typer.Option(help="Count 429-rejected requests in the request window."),
    ] = None,
    latency: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Base time to first token.")
    ] = None,
    latency_jitter: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Scale of the random extra latency.")
    ] = None,
    latency_distribution: Annotated[
        Distribution | None,
        typer.Option(help="Distribution of the extra latency (default uniform)."),
    ] = None,
    tokens_per_second: Annotated[
        float | None, typer.Option(help="Generation speed (default instant).")
    ] = None,
    min_output_tokens: Annotated[
        int | None, typer.Option(help="Shortest completion (default 8).")
    ] = None,
    max_output_tokens: Annotated[
        int | None, typer.Option(help="Longest completion (default 64).")
    ] = None,
    cached_prompt_share: Annotated[
        float | None,
        typer.Option(
            help="Share of prompt tokens reported as read from a prompt cache (default 0)."
        ),
    ] = None,
    tool_calls: Annotated[
        bool,
        typer.Option(
            "--tool-calls",
            help="Call the tools a request offers, one after another, then answer text; "
            "answer a json_schema response format with JSON of that schema.",
        ),
    ] = False,
    error_rate: Annotated[
        float | None, typer.Option(help="Fraction of requests answered 500/503.")
    ] = None,
    hang_rate: Annotated[
        float | None, typer.Option(help="Fraction of requests never answered.")
    ] = None,
    hang_seconds: Annotated[
        float | None, typer.Option(help="Longest hang before a 504 (default 600).")
    ] = None,
    malformed_rate: Annotated[
        float | None, typer.Option(help="Fraction of answers with an invalid JSON body.")
    ] = None,
    stall_rate: Annotated[
        float | None, typer.Option(help="Fraction of streams stopping mid-way.")
    ] = None,
    ping_rate: Annotated[
        float | None, typer.Option(help="Fraction of streams sending only ': ping' comments.")
    ] = None,
    ping_interval: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Between two pings (default 1).")
    ] = None,
    padding_bytes: Annotated[
        int | None, typer.Option(help="Padding added to every answer (default 0).")
    ] = None,
    outage_after: Annotated[
        int | None, typer.Option(metavar="N", help="Requests served before the outage.")
    ] = None,
    outage_requests: Annotated[
        int | None, typer.Option(metavar="N", help="Requests answered 503 in the outage.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the fault and latency draws (default 0).")
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            metavar="START:END:STATUS",
            help="Answer every request STATUS (429 or 5xx) from START to END seconds after the "
            "start (repeatable): a 429 storm, an outage.",
        ),
    ] = None,
    rate_limit_headers: Annotated[
        bool | None,
        typer.Option(
            help="Send x-ratelimit-* and Retry-After headers (default yes; "
            "--no-rate-limit-headers answers as vLLM and most gateways do)."
        ),
    ] = None,
    batch_turnaround: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Time a batch (OpenAI Batch API, Anthropic Message Batches) takes to end "
            "(default 0).",
        ),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer key.")] = None,
    limits_per_key: Annotated[
        bool | None,
        typer.Option(
            help="Give each API key its own rate limits, as providers limit each organisation "
            "(a pool of keys gets the sum of their limits); /stats counts them by key."
        ),
    ] = None,
) -> None:
    """Start the provider simulator: an OpenAI- and Anthropic-compatible server on loopback
    with rate limits, latency and faults.

    It prints one line ending with its base URL once it accepts connections (point
    `--llm openai:MODEL@URL` at it) and stops on SIGINT or SIGTERM. Settings come from the
    defaults, then the [sim] table of --config, then these flags.
    """
    from legion.sim.cli import fault_span, run

    try:
        faults = [fault_span(text) for text in fault or ()]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--fault") from None

    given: dict[str, Any] = {
        name: value
        for name, value in (
            ("host", host),
            ("port", port),
            ("config", str(config) if config is not None else None),
            ("models", model or None),
            ("rpm", rpm),
            ("tpm", tpm),
            ("itpm", itpm),
            ("otpm", otpm),
            ("max_concurrency", max_concurrency),
            ("window", window.value if window is not None else None),
            ("window_seconds", window_seconds),
            ("rejected_count_against_limit", rejected_count_against_limit),
            ("latency", latency),
            ("latency_jitter", latency_jitter),
            (
                "latency_distribution",
                latency_distribution.value if latency_distribution is not None else None,
            ),
            ("tokens_per_second", tokens_per_second),
            ("min_output_tokens", min_output_tokens),
            ("max_output_tokens", max_output_tokens),
            ("cached_prompt_share", cached_prompt_share),
            ("tool_calls", tool_calls or None),
            ("error_rate", error_rate),
            ("hang_rate", hang_rate),
            ("hang_seconds", hang_seconds),
            ("malformed_rate", malformed_rate),
            ("stall_rate", stall_rate),
            ("ping_rate", ping_rate),
            ("ping_interval", ping_interval),
            ("padding_bytes", padding_bytes),
            ("outage_after", outage_after),
            ("outage_requests", outage_requests),
            ("seed", seed),
            ("fault_schedule", faults or None),
            ("rate_limit_headers", rate_limit_headers),
            ("batch_turnaround", batch_turnaround),
            ("api_key", api_key),
            ("limits_per_key", limits_per_key),
        )
        if value is not None
    }
    if allow_remote:
        given["allow_remote"] = True
    raise typer.Exit(run(given))


def register(app: typer.Typer) -> None:
    app.command("sim")(sim)
