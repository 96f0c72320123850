"""``legion serve`` (the HTTP API, dashboard and metrics) and ``legion keys`` (its API keys).

The server's packages (FastAPI, uvicorn, prometheus-client: the ``server`` extra) are
imported only when one of these commands runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from legion.cli.options import (
    DEFAULT_STORE,
    ConcurrencyOpt,
    ConfigOpt,
    LeaseSecondsOpt,
    LLMOpt,
    LogFormat,
    LogFormatOpt,
    MaxInFlightOpt,
    RpmOpt,
    StoreOpt,
    StoreWaitOpt,
    TenantMaxCallsOpt,
    TenantMaxCostOpt,
    TenantMaxRunningOpt,
    TenantMaxTokensOpt,
    TpmOpt,
    TraceOpt,
    _fail,
    _refuse_private_store,
    _run,
    _setup_logging,
    _tracing,
)
from legion.cli.progress import error_text, stderr_console
from legion.cli.status import opened
from legion.cli.times import utc
from legion.errors import ConfigError, LegionError
from legion.extras import install_hint
from legion.inputs import PRIORITY_MAX, PRIORITY_MIN
from legion.store import redact_url, store_from_url

if TYPE_CHECKING:
    from rich.console import Console

    from legion.agent import Agent
    from legion.cli.wiring import RuntimeOptions, StopSignals
    from legion.server import ServerSettings
    from legion.server.keys import NewKey
    from legion.store import Store
    from legion.store.types import ApiKey


_SERVER_MODULES = ("fastapi", "uvicorn", "prometheus_client")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    runtime: RuntimeOptions  # no executor: agents run in the server's event loop
    settings: ServerSettings
    store_wait: float = 300.0  # seconds to wait for an unavailable store at start


def _paragraphs(*parts: str) -> str:
    """Help text: each part one paragraph (the terminal wraps it)."""
    return "\n\n".join(parts)


SERVE_HELP = _paragraphs(
    "Serve the HTTP API, the live dashboard and Prometheus metrics for the agents of an app, "
    "and (unless --no-worker) run them in this process too.",
    "\b\n"
    "  legion keys create --store sqlite:///app.db     # prints a new API key\n"
    "  legion serve --store sqlite:///app.db --app agents.py\n"
    '  curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/v1/tasks \\\n'
    '       -d \'{"agent": "research", "input": {"question": "..."}}\'',
    "Every route but /healthz and /livez needs an API key (Authorization: Bearer KEY). A "
    "browser opening "
    "the dashboard at / asks for it: any user name, the key as the password. The OpenAPI "
    "document is at /openapi.json, metrics at /metrics.",
    "The server listens on 127.0.0.1 unless told otherwise; any other address also needs "
    "--allow-remote. With --no-worker it only submits and watches: run workers with "
    "`legion worker` on the same store.",
    "SIGINT/SIGTERM stop serving, then drain the worker (unless --no-worker): running tasks "
    "finish (a second signal gives them back to the queue at once).",
)

KEYS_HELP = _paragraphs(
    "Create, list and revoke the API keys of `legion serve`.",
    "\b\n"
    "  legion keys create --name ci --store sqlite:///app.db   # the key is the last line\n"
    "  legion keys create --name acme --tenant acme --store sqlite:///app.db\n"
    "  legion keys create --name ops --admin --store sqlite:///app.db  # sees every tenant\n"
    "  legion keys list --store sqlite:///app.db\n"
    "  legion keys revoke 3f2a9c1b0d4e --store sqlite:///app.db",
    "Keys live in the store, so every server on that store accepts them. The store keeps "
    "only a salted SHA-256 digest: a key is shown once, when it is made. A revoked key is "
    "refused (403); a server that checked it in the last 5 seconds (a gateway: 10 seconds) "
    "may take that long to notice.",
)


# Why `legion serve`, `legion gateway` and `legion keys create` refuse an in-memory store.
KEYS_NEED = "the API keys live in the store, where `legion keys create` and the server both reach"


def register(app: typer.Typer) -> None:
    """Add ``serve`` and the ``keys`` commands to the ``legion`` command."""
    app.command("serve", help=SERVE_HELP)(serve)
    keys = typer.Typer(name="keys", help=KEYS_HELP, no_args_is_help=True, rich_markup_mode=None)
    keys.command("create")(create_key)
    keys.command("list")(list_keys)
    keys.command("revoke")(revoke_key)
    app.add_typer(keys, name="keys")


def serve(
    app_ref: Annotated[
        str,
        typer.Option(
            "--app",
            "-a",
            help="The module whose agents to serve: path/to/agents.py or package.module; "
            "FILE:NAME for one (a plain `async def` too, as `legion run` takes it).",
        ),
    ],
    store: StoreOpt = DEFAULT_STORE,
    host: Annotated[
        str, typer.Option(help="Address to listen on (not loopback: needs --allow-remote).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow listening on an address other machines can reach.",
        ),
    ] = False,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Also run the agents in this process (default), or only serve the API.",
        ),
    ] = True,
    concurrency: ConcurrencyOpt = 1000,
    lease_seconds: LeaseSecondsOpt = 30.0,
    llm: LLMOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_in_flight: MaxInFlightOpt = None,
    config: ConfigOpt = None,
    store_wait: StoreWaitOpt = 300.0,
    max_body: Annotated[
        int, typer.Option(min=1024, help="Largest request body in bytes; larger ones get 413.")
    ] = 4 * 1024 * 1024,
    trace: TraceOpt = None,
    log_format: LogFormatOpt = LogFormat.text,
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request.")] = False,
    max_in_progress: Annotated[
        int,
        typer.Option(
            min=1,
            help="Most requests handled at once; more are answered 503 with Retry-After "
            "(event streams and /healthz are not counted).",
        ),
    ] = 128,
    target_latency: Annotated[
        float,
        typer.Option(
            min=0,
            help="Mean seconds an admitted request should take: while calls to the store "
            "queue for over half of it, fewer than --max-in-progress are taken on "
            "(as many as finish in this time) and the rest get 503 at once "
            "(0: a fixed bound of --max-in-progress).",
        ),
    ] = 0.1,
    tenant_max_queued: Annotated[
        int | None,
        typer.Option(min=1, help="Most queued tasks per tenant; a submission past it gets 429."),
    ] = None,
    tenant_rate: Annotated[
        str | None,
        typer.Option(
            help="Tasks each tenant may submit per second (R, R/s or R/m); past it, 429 "
            "with Retry-After.",
        ),
    ] = None,
    tenant_burst: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="Burst of --tenant-rate, in tasks (default: one second's): what a tenant may "
            "submit at once after a pause. A larger batch is taken whole when the tenant's "
            "bucket is full, which then owes it: the tenant's next submissions get 429 until "
            "the rate has paid it back (a batch of 100 at 5/s: 20 s).",
        ),
    ] = None,
    tenant_max_priority: Annotated[
        int | None,
        typer.Option(
            min=PRIORITY_MIN,
            max=PRIORITY_MAX,
            help="The highest priority a tenant's API key may give a task (an admin key: "
            "any); a task above it is refused (422, priority_not_allowed). Default: no cap, "
            "and a tenant may put its tasks ahead of every other tenant's (a higher "
            "priority runs first, whatever its tenant).",
        ),
    ] = None,
    tenant_max_cost: TenantMaxCostOpt = None,
    tenant_max_tokens: TenantMaxTokensOpt = None,
    tenant_max_calls: TenantMaxCallsOpt = None,
    tenant_max_running: TenantMaxRunningOpt = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Also serve /metrics without an API key on this port (of 127.0.0.1; of "
            "--host with --allow-remote), for Prometheus.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """``legion serve`` (its help is SERVE_HELP)."""
    # The runtime's wiring and the LLM layer load when the command runs, not with `legion`.
    from legion.cli.wiring import RuntimeOptions, llm_options
    from legion.cli.worker import load_agents
    from legion.llm.budget import BudgetLimits

    _setup_logging(verbose, log_format)
    if access_log:  # (uvicorn says each request at INFO: shown without -v too)
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    _refuse_private_store(store, KEYS_NEED)
    _require_server_extra()
    from legion.server import ServerSettings

    try:
        if tenant_burst is not None and tenant_rate is None:
            raise ConfigError("--tenant-burst is the burst of --tenant-rate: give that too")
        settings = ServerSettings(
            host=host,
            port=port,
            allow_remote=allow_remote,
            max_body_bytes=max_body,
            stale_after=2 * lease_seconds,
            access_log=access_log,
            max_in_progress=max_in_progress,
            target_latency=target_latency or None,
            tenant_max_queued=tenant_max_queued,
            tenant_rate=parse_rate(tenant_rate) if tenant_rate is not None else None,
            tenant_burst=tenant_burst,
            tenant_max_priority=tenant_max_priority,
            metrics_port=metrics_port,
            metrics_host=host if allow_remote else "127.0.0.1",
        )
        agents = load_agents((app_ref,))
        tenant_budget = BudgetLimits(tenant_max_cost, tenant_max_tokens, tenant_max_calls)
        if tenant_max_running is not None and not worker:
            raise ConfigError("--tenant-max-running caps this server's worker: it needs --worker")
        if tenant_budget.any and not worker:
            raise ConfigError(
                "--tenant-max-cost/--tenant-max-tokens/--tenant-max-calls limit the calls of "
                "this server's worker: they need --worker"
            )
    except LegionError as exc:
        raise _fail(str(exc)) from None
    runtime = RuntimeOptions(
        store=store,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        llm=llm_options(llm, rpm, tpm, max_in_flight, config),
        worker=worker,
        executors=None,
        tenant_budget=tenant_budget,
        tenant_max_running=tenant_max_running,
    )
    opts = ServeOptions(runtime=runtime, settings=settings, store_wait=store_wait)
    with _tracing(trace):
        code = _run(_serve(opts, agents, stderr_console(as_log=log_format is LogFormat.json)))
    raise typer.Exit(code)


def parse_rate(text: str) -> float:
    """Tasks per second from ``R``, ``R/s`` or ``R/m``."""
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0}.get(unit.strip())
    try:
        rate = float(number) / per if per is not None else -1.0
    except ValueError:
        rate = -1.0
    if not rate > 0 or rate == float("inf"):
        raise ConfigError(f"bad rate {text!r}: use a positive number of tasks, R, R/s or R/m")
    return rate


def _require_server_extra() -> None:
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise _fail(f"this command needs {', '.join(missing)}: {install_hint('server')}", code=2)


async def _serve(opts: ServeOptions, agents: list[Agent], console: Console) -> int:
    """Serve until SIGINT/SIGTERM; then stop serving and drain the worker (if it runs one).
    A store that cannot be reached at start is waited for, as a worker waits for it (a
    server started before its database came up exited at once)."""
    from legion.cli.wiring import StopSignals, run_on_store

    then = ", then draining the worker" if opts.runtime.worker else ""

    def first(sig: signal.Signals) -> None:
        console.print(f"{sig.name}: stopping the server{then}", highlight=False)

    stop = StopSignals(first)  # from the start: a stop while opening still ends cleanly

    def serve_on(store: Store, started: list[bool]) -> Awaitable[int]:
        return _serve_on(store, opts, agents, stop, console, started)

    return await run_on_store(opts.runtime, opts.store_wait, stop, console, serve_on, what="server")


async def _serve_on(
    store: Store,
    opts: ServeOptions,
    agents: list[Agent],
    stop: StopSignals,
    console: Console,
    started: list[bool],
) -> int:
    from legion.cli.wiring import open_runtime, until_first, worker_up
    from legion.server import running_server

    async with (
        open_runtime(
            opts.runtime,
            store=store,
            agents=agents,
            on_routes=lambda note: console.print(note, highlight=False),
        ) as rt,
        running_server(rt, agents, opts.settings) as server,
    ):
        await worker_up(rt)
        started.append(True)
        stop.attach(rt)
        names = ", ".join(a.name for a in agents)
        print(f"legion serve: listening on {server.url} ({names})", flush=True)
        if server.metrics_url is not None:
            print(f"legion serve: metrics on {server.metrics_url}/metrics", flush=True)
        metrics = server.metrics_url or server.url
        console.print(
            f"dashboard {server.url}/ · API {server.url}/v1 · OpenAPI "
            f"{server.url}/openapi.json · metrics {metrics}/metrics",
            highlight=False,
        )
        if not any(k.revoked_at is None for k in await rt.store.api_keys()):
            console.print(_no_key_hint(opts.runtime.store), highlight=False)
        await until_first(stop.wait(), server.wait_stopped())
    if rt.fatal_error is not None:
        console.print(error_text(f"the worker stopped: {rt.fatal_error}"))
        return 2
    return 0


def _no_key_hint(store: str, open_routes: str = "/healthz and /livez") -> str:
    """What to do when the store has no API key: every request but ``open_routes`` gets
    401."""
    import shlex
    from urllib.parse import urlsplit

    has_password = urlsplit(store).password is not None if "://" in store else False
    where = "URL" if has_password else shlex.quote(store)
    return (
        f"no API key in this store yet: every request but {open_routes} is refused (401). "
        f"Make one with `legion keys create --store {where}` (add --tenant NAME or --admin as "
        "needed); it works at once, without a restart"
    )


# -- keys ------------------------------------------------------------------------------


def create_key(
    name: Annotated[
        str, typer.Option("--name", "-n", help="What or who the key is for.")
    ] = "default",
    store: StoreOpt = DEFAULT_STORE,
    tenant: Annotated[
        str,
        typer.Option(
            "--tenant",
            "-t",
            help="The tenant whose tasks the key submits and sees (one tenant, 'default', "
            "serves a single user).",
        ),
    ] = "default",
    admin: Annotated[
        bool,
        typer.Option("--admin", help="The key sees every tenant's tasks (the dashboard's)."),
    ] = False,
) -> None:
    """Create an API key and print it, alone, on the last line (it is not shown again)."""
    for label, text in (("--name", name), ("--tenant", tenant)):
        if not text or not text.isprintable():  # a newline or an escape would forge lines
            raise typer.BadParameter(
                f"{label} takes printable text, not {text!r}", param_hint=label
            )
    if len(name) > 200:
        raise typer.BadParameter("--name takes at most 200 characters", param_hint="--name")
    if sys.stdout is None:  # (closed: the secret, shown once, would go nowhere)
        raise _fail("standard output is closed: the key's secret is printed there, once")
    _refuse_private_store(store, KEYS_NEED)
    _require_server_extra()
    key = _run(_create_key(store, name, tenant, admin))
    console = stderr_console()
    scope = "an admin key: it sees every tenant" if admin else f"tenant {tenant}"
    console.print(
        f"created API key {key.record.id} ({name}) for {scope}; keep it secret: only its "
        "hash is stored",
        highlight=False,
    )
    try:
        print(key.token, flush=True)
    except OSError as exc:  # its secret is lost: a key nobody holds is revoked at once
        _run(_revoke_key(store, key.record.id))
        raise _fail(
            f"cannot write the key's secret to standard output ({exc.strerror or exc}): "
            f"key {key.record.id} was revoked; create another",
            code=1,
        ) from None


def list_keys(
    store: StoreOpt = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
) -> None:
    """List the API keys (ids and names, never secrets), revoked ones included."""
    found: list[ApiKey] = _run(_list_keys(store))
    for k in found:
        if as_json:
            doc = {
                "id": k.id,
                "name": k.name,
                "tenant": k.tenant,
                "scope": k.scope,
                "created_at": k.created_at,
                "revoked_at": k.revoked_at,
            }
            print(json.dumps(doc))
        else:
            state = "active" if k.revoked_at is None else f"revoked {utc(k.revoked_at)}"
            print(
                f"{k.id}\t{k.name}\tcreated {utc(k.created_at)}\t{state}"
                f"\ttenant {k.tenant}{' (admin)' if k.admin else ''}"
            )
    if not found and not as_json:
        stderr_console().print("no API key yet: create one with `legion keys create`")


def revoke_key(
    key: Annotated[str, typer.Argument(help="The key's id (as `legion keys list` shows it).")],
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Revoke an API key: requests with it are refused (403) from now on."""
    _require_server_extra()
    from legion.server.keys import key_id

    found = key_id(key)
    if found is None:
        raise _fail(f"{key!r} is not an API key id (12 hex digits) or an API key")
    if not _run(_revoke_key(store, found)):
        raise _fail(f"no API key {found} in {redact_url(store)}", code=1)
    stderr_console().print(f"revoked API key {found}", highlight=False)


async def _create_key(url: str, name: str, tenant: str, admin: bool) -> NewKey:
    from legion.server.keys import new_key

    if not name.strip():
        raise ConfigError("a key needs a name")
    key = new_key(name, time.time(), tenant=tenant, admin=admin)
    store = store_from_url(url)
    await store.open()
    try:
        await store.add_api_key(key.record)
    finally:
        await store.aclose()
    return key


async def _list_keys(url: str) -> list[ApiKey]:
    async with opened(url) as store:
        return await store.api_keys()


async def _revoke_key(url: str, key_id: str) -> bool:
    async with opened(url) as store:
        return await store.revoke_api_key(key_id, time.time())
