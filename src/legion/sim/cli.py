"""Command line of the provider simulator (``legion sim``,
``python -m legion.sim``).

Settings come from the defaults of `SimConfig`, then the ``[sim]`` table of
``--config FILE`` (TOML, keys named like the flags, with dashes or
underscores), then the flags. The simulator prints one line ending with its
base URL once it accepts connections, and stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tomllib
from typing import Any

from legion.addresses import is_loopback
from legion.sim.config import SimConfig
from legion.sim.server import Simulator, serve_simulator

_DEFAULT_HOST = "127.0.0.1"
_DEFAULT_PORT = 8000
# Settings that belong to the command, not to `SimConfig`.
_SERVER_SETTINGS = ("host", "port", "allow_remote")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; only flags given on the command line end up in
    the parsed namespace, so they can override the config file."""
    parser = argparse.ArgumentParser(
        prog="legion sim",
        description="Run an OpenAI-compatible provider simulator on loopback.",
        argument_default=argparse.SUPPRESS,
    )
    add = parser.add_argument
    add("--host", help=f"address to listen on (default {_DEFAULT_HOST})")
    add("--port", type=int, help=f"port to listen on, 0 for any free one (default {_DEFAULT_PORT})")
    add("--allow-remote", action="store_true", help="allow a host that is not loopback")
    add("--config", metavar="FILE", help="TOML file with a [sim] table of these settings")
    add(
        "--model",
        dest="models",
        action="append",
        metavar="NAME",
        help="model name served (repeatable; default sim-model)",
    )
    add("--rpm", type=int, help="requests per minute (default unlimited)")
    add("--tpm", type=int, help="tokens per minute (default unlimited)")
    add("--itpm", type=int, help="input tokens per minute, counted apart (cache reads exempt)")
    add("--otpm", type=int, help="output tokens per minute, counted apart")
    add("--max-concurrency", type=int, help="requests served at once (default unlimited)")
    add("--window", choices=("sliding", "fixed"), help="rate window kind (default sliding)")
    add(
        "--window-seconds",
        type=float,
        metavar="SECONDS",
        help="enforce the per-minute limits over windows this long (default 60; 1 = per "
        "second); a request larger than one window's tokens is refused as too large",
    )
    add(
        "--rejected-count-against-limit",
        action=argparse.BooleanOptionalAction,
        help="count 429-rejected requests in the request window",
    )
    add("--latency", type=float, metavar="SECONDS", help="base time to first token")
    add("--latency-jitter", type=float, metavar="SECONDS", help="scale of the random extra latency")
    add(
        "--latency-distribution",
        choices=("uniform", "lognormal"),
        help="distribution of the extra latency (default uniform)",
    )
    add("--tokens-per-second", type=float, help="generation speed (default instant)")
    add("--min-output-tokens", type=int, help="shortest completion (default 8)")
    add("--max-output-tokens", type=int, help="longest completion (default 64)")
    add(
        "--cached-prompt-share",
        type=float,
        help="share of prompt tokens reported as read from a prompt cache (default 0)",
    )
    add(
        "--tool-calls",
        action="store_const",
        const=True,
        help="call the tools a request offers, in turn (OpenAI and Anthropic routes), and "
        "answer JSON to a json_schema",
    )
    add("--error-rate", type=float, help="fraction of requests answered 500/503")
    add("--hang-rate", type=float, help="fraction of requests never answered")
    add("--hang-seconds", type=float, help="longest hang before a 504 (default 600)")
    add("--malformed-rate", type=float, help="fraction of answers with an invalid JSON body")
    add("--stall-rate", type=float, help="fraction of streams stopping mid-way")
    add("--ping-rate", type=float, help="fraction of streams sending only ': ping' comments")
    add("--ping-interval", type=float, metavar="SECONDS", help="between two pings (default 1)")
    add("--padding-bytes", type=int, help="padding added to every answer (default 0)")
    add("--outage-after", type=int, metavar="N", help="requests served before the outage")
    add("--outage-requests", type=int, metavar="N", help="requests answered 503 in the outage")
    add("--seed", type=int, help="seed of the fault and latency draws (default 0)")
    add(
        "--fault",
        dest="fault_schedule",
        action="append",
        type=_fault_arg,
        metavar="START:END:STATUS",
        help="answer every request STATUS (429 or 5xx) from START to END seconds after the "
        "start (repeatable): a 429 storm, an outage",
    )
    add(
        "--rate-limit-headers",
        action=argparse.BooleanOptionalAction,
        help="send x-ratelimit-* and Retry-After headers (default yes; --no-rate-limit-headers "
        "answers as vLLM and most gateways do)",
    )
    add(
        "--batch-turnaround",
        type=float,
        metavar="SECONDS",
        help="time a batch (OpenAI Batch API, Anthropic Message Batches) takes to end (default 0)",
    )
    add("--api-key", help="require this bearer key")
    add(
        "--limits-per-key",
        action=argparse.BooleanOptionalAction,
        help="give each API key its own rate limits (a pool of keys gets their sum); "
        "/stats counts them by key",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM; return the exit status."""
    parser = build_parser()
    return run(vars(parser.parse_args(argv)))


def run(flags: dict[str, Any]) -> int:
    """Run the simulator with the settings given as flags (by field name; those absent
    come from ``flags["config"]``, then the defaults)."""
    flags = dict(flags)
    try:
        settings = _load_config(flags.pop("config")) if "config" in flags else {}
        settings.update(flags)
        host, port, allow_remote = _server_settings(settings)
        if not allow_remote and not is_loopback(host):
            raise ValueError(
                f"refusing to listen on non-loopback host {host!r} without --allow-remote"
            )
        config = SimConfig.from_mapping(settings)
    except ValueError as exc:
        print(f"legion sim: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config, host, port))
    except OSError as exc:  # a usage error: exit 2, as `legion serve` and `gateway`
        # (worded as legion.errors.cannot_listen, which the simulator, standalone, does
        # not import: the errno's text is the reason)
        errno = exc.errno or 0
        reason = os.strerror(errno) if errno > 0 else exc.strerror or str(exc)
        print(f"legion sim: error: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return 2
    return 0


def fault_span(text: str) -> tuple[float, float, int]:
    """``START:END:STATUS`` as a span of the fault schedule (`ValueError` if it is not)."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(
            f"expected START:END:STATUS (seconds, seconds, an HTTP status), got {text!r}"
        ) from None


def _fault_arg(text: str) -> tuple[float, float, int]:
    try:
        return fault_span(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load_config(path: str) -> dict[str, Any]:
    """The ``[sim]`` table of a TOML file, keys normalised to field names."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read config file {path}: {exc}") from exc
    table = document.get("sim")
    if not isinstance(table, dict):
        raise ValueError(f"config file {path} has no [sim] table")
    settings: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name == "model":
            name, value = "models", [value] if isinstance(value, str) else value
        elif name == "fault":  # as the flag: "START:END:STATUS" strings (or one)
            spans = [value] if isinstance(value, str) else value
            if not isinstance(spans, list):
                raise ValueError(f"fault must be a list of START:END:STATUS strings, got {value!r}")
            name = "fault_schedule"
            value = [fault_span(span) if isinstance(span, str) else span for span in spans]
        settings[name] = value
    return settings


def _server_settings(settings: dict[str, Any]) -> tuple[str, int, bool]:
    """Remove and check the host, port and allow_remote settings."""
    host = settings.pop("host", _DEFAULT_HOST)
    port = settings.pop("port", _DEFAULT_PORT)
    allow_remote = settings.pop("allow_remote", False)
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
    if not isinstance(allow_remote, bool):
        raise ValueError(f"allow_remote must be true or false, got {allow_remote!r}")
    return host, port, allow_remote


def _announce(simulator: Simulator) -> None:
    print(f"legion sim ready at {simulator.base_url}", flush=True)


async def _serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM cancels this task."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, task.cancel)
    try:
        await serve_simulator(config, host, port, on_ready=_announce)
    except asyncio.CancelledError:
        pass  # asked to stop; the simulator has shut down
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
