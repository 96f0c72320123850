"""``legion gateway``: an OpenAI-compatible endpoint over legion's LLM routes, with
limits shared through the store (see `legion.gateway`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from typing import TYPE_CHECKING, Annotated

import typer

from legion.addresses import http_url, is_loopback
from legion.cli.options import (
    ConfigOpt,
    LLMOpt,
    MaxInFlightOpt,
    RpmOpt,
    StoreOpt,
    StoreWaitOpt,
    TpmOpt,
    _fail,
    _refuse_private_store,
    _run,
)
from legion.cli.progress import stderr_console
from legion.errors import LegionError
from legion.extras import install_hint
from legion.store.timeouts import DEFAULT_LEASE_SECONDS

if TYPE_CHECKING:
    from rich.console import Console

GATEWAY_HELP = (
    "Serve POST /v1/chat/completions and /v1/embeddings (OpenAI's API) for agents legion "
    "does not host: another language, another process. Each call goes through the --llm "
    "routes (pacing, retries, usage and cost per API key), and every gateway on the same "
    "--store shares each provider's limits (--rpm/--tpm) with the others and with "
    "legion's workers. Callers send an API key of `legion keys create` (Authorization: "
    "Bearer KEY); GET /v1/usage gives the key's usage over every gateway on the store. "
    "A call with an X-Legion-Task header (and optionally X-Legion-Step) is recorded as a "
    "step of that task, and answered from its record when asked again. Streams are "
    "passed on as they come. Listens on loopback unless --allow-remote.\n\n"
    "legion keys create --store postgresql://db/legion --name billing-bot\n\n"
    "legion gateway --llm openai:gpt-4o-mini --rpm 500 --store postgresql://db/legion "
    "--port 8090\n\n"
    "OPENAI_BASE_URL=http://127.0.0.1:8090/v1 OPENAI_API_KEY=lgn_... python bot.py"
)


def gateway(
    store: StoreOpt,
    llm: LLMOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_in_flight: MaxInFlightOpt = None,
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8090,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow a --host that is not loopback.")
    ] = False,
    max_outage: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds a call waits for a route that fails every call (an outage: the "
            "route is probed meanwhile) before it answers 502; later calls on a route down "
            "that long answer 502 at once until a probe (one a second) gets through. Callers "
            "wait on the line: keep it below their own timeout. It bounds waiting out "
            "failures, not one call's own tries: a provider that hangs or only sends "
            "keep-alives is waited for up to each try's timeout (the route's), for every "
            "try the route's retries allow.",
        ),
    ] = 30.0,
    max_wait: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Answer a chat call 429 at once, with a Retry-After, when its route's "
            "limits would keep it waiting longer than this many seconds for its turn "
            "(callers already waiting keep theirs). A queue longer than the callers' own "
            "timeouts spends the provider's capacity on calls whose callers have left. "
            "Default: every call waits its turn.",
        ),
    ] = None,
    store_wait: StoreWaitOpt = 300.0,
) -> None:
    # Here, not at the top: the LLM layer and the simulator's package (aiohttp) load when
    # the command runs, not with every `legion` command.
    from legion.cli.llm_options import LLMOptions, llm_config
    from legion.cli.serve import KEYS_NEED

    _refuse_private_store(store, KEYS_NEED)
    if not allow_remote and not is_loopback(host):
        raise _fail(f"refusing to listen on non-loopback host {host!r} without --allow-remote")
    try:
        import fastapi  # noqa: F401  (the API keys' checks live with the server)
    except ImportError:
        raise _fail(f"legion gateway needs the server extra: {install_hint('server')}") from None
    opts = LLMOptions(tuple(llm or ()), rpm, tpm, max_in_flight, config)
    try:
        llm_settings, note = llm_config(opts)
    except LegionError as exc:  # a config file or --llm at fault: one line, not a traceback
        raise _fail(str(exc)) from None
    console = stderr_console()
    console.print(note, highlight=False)
    code = _run(_serve(store, llm_settings, host, port, max_outage, max_wait, store_wait, console))
    raise typer.Exit(code)


async def _serve(
    url: str,
    llm_settings: object,
    host: str,
    port: int,
    max_outage: float,
    max_wait: float | None,
    store_wait: float,
    console: Console,
) -> int:
    """Serve until SIGINT/SIGTERM (0); a store that cannot be reached at start is waited
    for up to ``store_wait`` seconds (then 3, as a worker)."""
    from legion.cli.serve import _no_key_hint
    from legion.cli.wiring import open_store
    from legion.gateway.app import Gateway, serve
    from legion.llm.config import LLMConfig, build_client
    from legion.provision.exits import EXIT_STORE

    assert isinstance(llm_settings, LLMConfig)
    opening = asyncio.ensure_future(
        open_store(url, lease_seconds=DEFAULT_LEASE_SECONDS, wait=store_wait, console=console)
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, opening.cancel)
    try:
        store = await opening
    except asyncio.CancelledError:
        return 0
    if store is None:
        return EXIT_STORE
    try:
        async with await build_client(llm_settings, max_outage=max_outage) as client:
            gateway = Gateway(
                client,
                store,
                gateway_id=f"gateway-{socket.gethostname()}-{os.getpid()}",
                max_wait=max_wait,
            )
            ready = asyncio.Event()
            server = asyncio.create_task(serve(gateway, host, port, ready))
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, server.cancel)
            waiting = asyncio.create_task(ready.wait())
            await asyncio.wait({server, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if ready.is_set():
                bound_host, bound_port = gateway.address[:2]
                shown = http_url(bound_host, bound_port)
                print(f"legion gateway ready at {shown}/v1", flush=True)
                if not any(k.revoked_at is None for k in await store.api_keys()):
                    # (a new store, or a misspelt --store: every call would get 401)
                    console.print(_no_key_hint(url, "/healthz"), highlight=False)
            with contextlib.suppress(asyncio.CancelledError):
                await server
            waiting.cancel()
    finally:
        await store.aclose()
    return 0


def register(app: typer.Typer) -> None:
    app.command("gateway", help=GATEWAY_HELP)(gateway)
