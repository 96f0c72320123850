"""``legion vectors load|search|list``: vector collections in the store, from the shell."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from legion import codec

# Registered at the end of the package's __init__, once these exist.
from legion.cli.options import (
    ConfigOpt,
    LLMOpt,
    MaxInFlightOpt,
    RpmOpt,
    StoreOpt,
    TpmOpt,
    _fail,
    _run,
)
from legion.cli.progress import stderr_console
from legion.errors import ConfigError, LegionError
from legion.store.tenancy import DEFAULT_TENANT

if TYPE_CHECKING:
    from legion.llm.client import LLMClient
    from legion.store import Store
    from legion.vectors.loader import LoadReport


@asynccontextmanager
async def _opened(store_url: str, *, create: bool) -> AsyncIterator[Store]:
    from legion.store import store_from_url

    store = store_from_url(store_url, create=create)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


@asynccontextmanager
async def _client(specs: tuple[str, ...], **limits: Any) -> AsyncIterator[LLMClient]:
    from legion.cli.llm_options import LLMOptions, llm_config
    from legion.llm.config import build_client

    config, note = llm_config(LLMOptions(specs, **limits))
    stderr_console().print(note, highlight=False)
    async with await build_client(config) as client:
        yield client


def _where(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; a value that reads as JSON (a number, true, "text") is that."""
    where: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"bad --where {pair!r}: use key=value")
        try:  # strict JSON: NaN or Infinity is the text itself, as metadata holds it
            value = codec.loads(raw)
        except codec.JSONDecodeError:
            value = raw
        where[key] = value
    return where


def register(app: typer.Typer) -> None:
    """Add the ``vectors`` group to ``app``."""

    vectors = typer.Typer(
        name="vectors",
        help="Vector collections in the store: bulk-load a corpus, search it, list them.",
        no_args_is_help=True,
        rich_markup_mode=None,  # help verbatim, as for every other command
    )
    default_store = "sqlite:///legion.db"

    @vectors.command("load")
    def load_cmd(
        collection: Annotated[str, typer.Argument(help="The shared collection to load into.")],
        input: Annotated[
            Path,
            typer.Option(
                "--input",
                "-i",
                help='JSONL: {"text": ..., "id": optional, other keys: metadata} per line.',
            ),
        ],
        store: StoreOpt = default_store,
        llm: LLMOpt = None,
        rpm: RpmOpt = None,
        tpm: TpmOpt = None,
        max_in_flight: MaxInFlightOpt = None,
        config: ConfigOpt = None,
        model: Annotated[
            str | None,
            typer.Option(help="The embedding route (default: the 'embed' route, else the first)."),
        ] = None,
        chunk_chars: Annotated[
            int, typer.Option(min=50, help="Most characters per chunk (paragraphs packed).")
        ] = 1000,
        batch: Annotated[
            int, typer.Option(min=1, max=2048, help="Chunks per embedding call.")
        ] = 64,
        concurrency: Annotated[int, typer.Option(min=1, help="Embedding calls at once.")] = 4,
    ) -> None:
        """Chunk, embed (through the route's capacity) and store a JSONL corpus; re-running
        skips the chunks already stored."""
        from legion.vectors.backend import vectors_for
        from legion.vectors.loader import load
        from legion.vectors.types import check_name

        # What can be checked before the store is opened is, so that a typo creates no
        # store (opening a SQLite store creates its files).
        try:
            check_name(collection)
            input.open("rb").close()
        except LegionError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:
            raise _fail(f"cannot read {input}: {exc.strerror or exc}") from None
        console = stderr_console()
        started = time.monotonic()
        last = [0.0]

        def progress(report: LoadReport) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0:
                last[0] = now
                rate = report.embedded / max(now - started, 1e-9)
                console.print(
                    f"  {report.chunks:,} chunks: {report.embedded:,} embedded, "
                    f"{report.skipped:,} already loaded ({rate:,.0f}/s)",
                    highlight=False,
                )

        async def main() -> LoadReport:
            async with (
                # The client first: a missing API key is refused before a store is made.
                _client(
                    tuple(llm or ()), rpm=rpm, tpm=tpm, max_in_flight=max_in_flight, config=config
                ) as client,
                _opened(store, create=True) as opened,
            ):
                return await load(
                    vectors_for(opened),
                    client,
                    collection,
                    input,
                    model=model,
                    chunk_chars=chunk_chars,
                    batch=batch,
                    concurrency=concurrency,
                    progress=progress,
                )

        report = _run(main())
        for error in report.errors[:10]:
            console.print(f"skipped {error}", style="yellow", highlight=False)
        if len(report.errors) > 10:
            console.print(
                f"... and {len(report.errors) - 10:,} more skipped", style="yellow", highlight=False
            )
        seconds = time.monotonic() - started
        from rich.console import Console  # here: `legion --help` never needs rich

        counts = [
            f"{report.embedded:,} embedded"
            + (f" ({report.updated:,} anew: edited since)" if report.updated else ""),
            f"{report.skipped:,} already loaded",
        ]
        if report.removed:
            counts.append(f"{report.removed:,} deleted (past a shortened document's end)")
        if report.retagged:
            counts.append(f"{report.retagged:,} with new metadata")
        if report.empty:
            counts.append(f"{report.empty:,} without text (nothing kept of them)")
        if report.refused:
            counts.append(f"{report.refused:,} refused")
        Console().print(
            f"{collection}: {report.documents:,} documents, {report.chunks:,} chunks "
            f"({', '.join(counts)}) in {seconds:.1f} s",
            highlight=False,
            soft_wrap=True,  # one line, however long: scripts read it
        )
        if not report.chunks and not report.removed:
            # (a collection is made with its first vectors: there is none to search)
            console.print(
                f"no document with text in {input}: collection {collection!r} was not made "
                "(or changed)",
                style="yellow",
                highlight=False,
            )
        if report.bad_lines or report.refused:
            raise typer.Exit(1)

    @vectors.command("search")
    def search_cmd(
        collection: Annotated[str, typer.Argument(help="The collection to search.")],
        query: Annotated[str, typer.Argument(help="The text to find neighbours of.")],
        k: Annotated[int, typer.Option("-k", min=1, max=1000, help="Hits to show.")] = 5,
        where: Annotated[
            list[str] | None,
            typer.Option(
                "--where",
                help="key=value: only items whose metadata has it. The value is read as JSON "
                "where it is JSON (doc=7 is the number 7; a document's id is text: "
                "doc='\"7\"'), else as text.",
            ),
        ] = None,
        session: Annotated[
            str | None, typer.Option(help="For a session-scoped collection: whose items.")
        ] = None,
        tenant: Annotated[
            str,
            typer.Option(
                help="The session's tenant (as `legion keys` names it), for a session of tasks "
                "submitted through `legion serve` with a key."
            ),
        ] = DEFAULT_TENANT,
        store: StoreOpt = default_store,
        llm: LLMOpt = None,
        config: ConfigOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per hit.")] = False,
    ) -> None:
        """The items nearest to QUERY, best first, with their scores."""
        from legion.store import redact_url
        from legion.store.tenancy import check_tenant, scoped_key
        from legion.vectors.backend import vectors_for
        from legion.vectors.types import SHARED, check_direction, check_name, check_where

        async def main() -> list[Any]:
            check_name(collection)
            check_tenant(tenant)
            if not query.strip():
                raise ConfigError("the query is empty: give the text to find neighbours of")
            filters = check_where(_where(where))
            async with _opened(store, create=False) as opened:
                backend = vectors_for(opened)
                info = await backend.collection(collection)
                if info is None:
                    raise ConfigError(f"no vector collection {collection!r} in {redact_url(store)}")
                if info.scope == "session" and session is None:
                    raise ConfigError(f"{collection!r} is session-scoped: give --session")
                if info.scope == "shared" and session is not None:
                    raise ConfigError(
                        f"{collection!r} is shared: its items belong to no session (leave "
                        "out --session)"
                    )
                async with _client(tuple(llm or ()), config=config) as client:
                    names = {r.model: r.name for r in client.routes.values()}
                    if info.model not in names:
                        raise ConfigError(
                            f"{collection!r} was embedded with {info.model!r}: give --llm a "
                            "route of that model"
                        )
                    embeddings = await client.embed([query], names[info.model])
                check_direction(embeddings.vectors[0], "the query's embedding")
                if info.scope == "shared":
                    part = SHARED
                else:  # (a tenant's sessions are kept under its name, as its tasks keep them)
                    part = scoped_key(tenant, session, "a session") or str(session)
                return await backend.search(info, part, embeddings.vectors[0], k, filters)

        hits = _run(main())
        if as_json:
            for hit in hits:
                sys.stdout.write(json.dumps(hit.to_json()) + "\n")
            return
        from rich.console import Console

        console = Console()
        if not hits:
            console.print("no hits")
        for n, hit in enumerate(hits, 1):
            text = hit.text if len(hit.text) <= 200 else hit.text[:197] + "..."
            console.print(f"{n}. [{hit.score:.3f}] {hit.id}  {text}", highlight=False)

    @vectors.command("drop")
    def drop_cmd(
        collection: Annotated[str, typer.Argument(help="The collection to delete.")],
        yes: Annotated[
            bool,
            typer.Option("--yes", help="Delete it: without, only says what would go."),
        ] = False,
        store: StoreOpt = default_store,
    ) -> None:
        """Delete a collection and all its items, shared or session-scoped (every
        session's). Run it with no task writing to it: one that adds to it afterwards
        makes it anew."""
        from legion.store import redact_url
        from legion.vectors.backend import vectors_for
        from legion.vectors.types import check_name

        async def main() -> str:
            check_name(collection)
            async with _opened(store, create=False) as opened:
                backend = vectors_for(opened)
                found = next((c for c in await backend.collections() if c.name == collection), None)
                if found is None:
                    raise ConfigError(f"no vector collection {collection!r} in {redact_url(store)}")
                what = f"{collection!r} ({found.scope}, {found.items:,} items)"
                if not yes:
                    return f"would delete {what}: add --yes to delete it"
                dropped = await backend.drop_collection(collection)
                return f"deleted {collection!r} ({found.scope}, {dropped or 0:,} items)"

        said = _run(main())
        print(said)
        if not yes:
            raise typer.Exit(1)

    @vectors.command("adopt")
    def adopt_cmd(store: StoreOpt = default_store) -> None:
        """Tie a SQLite store's vectors file (`runs.vectors.db` beside `runs.db`) to the
        store, when they are its own and it refuses them as another store's: a store
        restored from a backup made before a store had its own number, or rebuilt (a
        .dump or .recover), has another number. Not for a file left behind by a deleted
        store: its vectors would be served to the new store's tasks."""
        from legion.store.sqlite import SQLiteStore
        from legion.vectors.sqlite import SQLiteVectors

        async def main() -> str:
            async with _opened(store, create=False) as opened:
                if not isinstance(opened, SQLiteStore):
                    return "nothing to adopt: this store keeps its vectors in itself"
                backend = SQLiteVectors(opened.path, opened.identity)
                try:
                    await backend.adopt()
                finally:
                    await backend.aclose()
                return f"{backend.path} is this store's now"

        print(_run(main()))

    @vectors.command("list")
    def list_cmd(
        store: StoreOpt = default_store,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    ) -> None:
        """The collections in the store: scope, model, dimension, items."""
        from legion.vectors.backend import vectors_for

        async def main() -> list[Any]:
            async with _opened(store, create=False) as opened:
                return await vectors_for(opened).collections()

        found = _run(main())
        if as_json:
            for c in found:
                row = {"name": c.name, "scope": c.scope, "model": c.model, "dims": c.dims}
                sys.stdout.write(json.dumps({**row, "items": c.items}) + "\n")
            return
        from rich.console import Console

        console = Console()
        if not found:
            console.print("no vector collections")
        for c in found:
            console.print(
                f"{c.name}  {c.scope}  {c.model}  {c.dims} dims  {c.items:,} items",
                highlight=False,
            )

    app.add_typer(vectors)
