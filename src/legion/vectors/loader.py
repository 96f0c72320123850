"""``legion vectors load``: a JSONL file into a shared collection, resumably.

Each input line is a JSON object with ``text`` (required), ``id`` (optional: by default a
digest of the text) and any other keys, kept as the chunks' metadata (with ``doc``, the
document's id, and ``chunk``, the chunk's number); a bare JSON string is a text alone.
Documents are cut by `legion.vectors.chunking`; batches of chunks are embedded through the
LLM client (its capacity paces them, its retries cover provider errors) and written, each
batch in one transaction. A batch whose chunks are all stored already is skipped without
embedding, so a load that was stopped resumes where it was; a chunk whose stored text is
not its text (the document was edited) is embedded and written anew, one whose metadata
alone changed gets the new metadata (not embedded again), and chunks stored past a
shortened document's end are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legion import codec
from legion.errors import ConfigError, ProviderRejected, VectorError
from legion.llm.client import LLMClient
from legion.vectors.backend import VectorBackend
from legion.vectors.chunking import DEFAULT_CHUNK_CHARS, chunk
from legion.vectors.types import (
    NUL_REFUSED,
    SHARED,
    CollectionInfo,
    Item,
    check_direction,
    check_name,
    check_same,
    nul_in,
)

_BOM = b"\xef\xbb\xbf"
_OURS = frozenset({"doc", "chunk"})  # metadata keys every chunk gets from the loader


@dataclass(frozen=True, slots=True)
class Chunk:
    id: str
    text: str
    metadata: dict[str, Any]
    last: bool = False
    """The last chunk of its document."""


@dataclass(slots=True)
class LoadReport:
    documents: int = 0
    chunks: int = 0
    embedded: int = 0
    skipped: int = 0
    bad_lines: int = 0
    refused: int = 0
    """Chunks whose embedding cosine similarity cannot compare (all zeros): not stored."""
    updated: int = 0
    """Chunks stored before with another text (their document was edited): embedded anew."""
    removed: int = 0
    """Chunks stored before past the end of their document (it was shortened): deleted."""
    empty: int = 0
    """Documents without text (none, or only spaces): no chunk, and any stored deleted."""
    retagged: int = 0
    """Chunks stored before with the same text and other metadata: their metadata written
    anew, their vectors kept."""
    errors: list[str] = field(default_factory=list)


def read_chunks(path: Path, max_chars: int, report: LoadReport) -> Iterator[Chunk]:
    """The chunks of every document in ``path``; a bad line (not JSON, not UTF-8, no text)
    is reported and skipped. A UTF-8 byte order mark at the start is not part of the first
    line, as for `legion run`'s input. A document whose id an earlier line gave is a bad
    line too: its chunks would replace the earlier document's, or be taken for stored."""
    first_line: dict[str, int] = {}
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle:
        for number, raw in enumerate(handle, 1):
            if number == 1:
                raw = raw.removeprefix(_BOM)
            if not raw.strip():
                continue
            try:
                raw.decode("utf-8")
                # Strict JSON, as `legion run` reads it: no NaN or Infinity, no integer
                # past 64 bits, no lone surrogate (none of which a store can keep).
                doc = codec.loads_given(raw)
                if isinstance(doc, str):
                    doc = {"text": doc}
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise ValueError('expected {"text": "...", ...} or a JSON string')
                if nul_in(doc):
                    raise ValueError(f"its text, id or metadata {NUL_REFUSED}")
            except codec.JSONDecodeError as exc:
                report.bad_lines += 1
                report.errors.append(f"{path}:{number}: not JSON: {codec.json_error(exc)}")
                continue
            except ValueError as exc:
                report.bad_lines += 1
                report.errors.append(f"{path}:{number}: {exc}")
                continue
            taken = sorted(_OURS & doc.keys())
            if taken:
                report.bad_lines += 1
                report.errors.append(
                    f"{path}:{number}: {' and '.join(map(repr, taken))}: legion's own "
                    "metadata keys (the document's id and the chunk's number): rename them"
                )
                continue
            text = doc.pop("text")
            given = doc.pop("id", None)
            doc_id = _digest(text) if given is None or given == "" else str(given)
            if doc_id in first_line:
                report.bad_lines += 1
                report.errors.append(
                    f"{path}:{number}: id {doc_id!r} is the id of line {first_line[doc_id]} too "
                    "(each document needs an id of its own)"
                )
                continue
            first_line[doc_id] = number
            report.documents += 1
            pieces = chunk(text, max_chars)
            if not pieces:  # no text: nothing to embed, and what it had stored goes
                report.empty += 1
                yield Chunk(f"{doc_id}#-1", "", {"doc": doc_id, "chunk": -1}, last=True)
            for n, piece in enumerate(pieces):
                meta = {**doc, "doc": doc_id, "chunk": n}
                yield Chunk(f"{doc_id}#{n}", piece, meta, last=n == len(pieces) - 1)


def _next(c: Chunk) -> str:
    """The id a chunk after ``c`` in its document would have."""
    return f"{c.metadata['doc']}#{c.metadata['chunk'] + 1}"


async def _delete_from(backend: VectorBackend, info: CollectionInfo, last: Chunk) -> int:
    """Delete the chunks stored past ``last``, the end of its document now; answer how
    many there were."""
    doc, n, deleted = last.metadata["doc"], last.metadata["chunk"] + 1, 0
    while True:
        ids = [f"{doc}#{k}" for k in range(n, n + _DELETE_STEP)]
        gone = await backend.delete(info, SHARED, ids)
        deleted += gone
        if gone < _DELETE_STEP:
            return deleted
        n += _DELETE_STEP


_DELETE_STEP = 256


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _batches(chunks: Iterator[Chunk], size: int) -> Iterator[list[Chunk]]:
    batch: list[Chunk] = []
    for c in chunks:
        batch.append(c)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def load(
    backend: VectorBackend,
    client: LLMClient,
    collection: str,
    path: Path,
    *,
    model: str | None = None,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    batch: int = 64,
    concurrency: int = 4,
    progress: Callable[[LoadReport], None] | None = None,
) -> LoadReport:
    """Load ``path`` into the shared collection ``collection``; see the module."""
    check_name(collection)
    route = client.embed_route(model)
    found = await backend.collection(collection)
    if found is not None:
        if found.scope != "shared":
            raise VectorError(f"collection {collection!r} is session-scoped: load into another")
        if found.model != route.model:
            raise VectorError(
                f"collection {collection!r} was embedded with {found.model!r}, not "
                f"{route.model!r}: load it with --llm for that model, or into another collection"
            )
    report = LoadReport()
    gate = asyncio.Semaphore(concurrency)
    info_box: list[CollectionInfo] = [found] if found is not None else []

    async def one(batch: list[Chunk]) -> None:
        chunks = [c for c in batch if c.text]  # (not an empty document's mark)
        async with gate:
            if info_box:
                # A chunk is stored already when its id holds its text: an edited document's
                # chunks are embedded anew, and those past its new end deleted.
                after = {_next(c): c for c in batch if c.last}
                have = await backend.stored(info_box[0], SHARED, [*(c.id for c in chunks), *after])
                todo = [c for c in chunks if c.id not in have or have[c.id][0] != c.text]
                report.updated += sum(1 for c in todo if c.id in have)
                # The same text with other metadata: the metadata is written, the vector
                # kept (it was kept whole: a --where on the new field found nothing).
                retagged = {
                    c.id: c.metadata
                    for c in chunks
                    if c.id in have and have[c.id][0] == c.text and have[c.id][1] != c.metadata
                }
                if retagged:
                    await backend.set_metadata(info_box[0], SHARED, retagged)
                    report.retagged += len(retagged)
                for beyond in after.keys() & have.keys():
                    # (not `report.removed += await ...`: that reads the count before the
                    # await, and the other batches' deletions meanwhile were lost)
                    gone = await _delete_from(backend, info_box[0], after[beyond])
                    report.removed += gone
            else:
                todo = chunks
            report.skipped += len(chunks) - len(todo)
            if todo:
                try:
                    embeddings = await client.embed([c.text for c in todo], route.name)
                except ProviderRejected as exc:
                    if len(todo) == 1:
                        raise
                    raise VectorError(
                        f"{exc} (that call embedded a batch of {len(todo)} chunks: a lower "
                        "--batch sends fewer at once)"
                    ) from exc
                info = CollectionInfo(collection, "shared", route.model, embeddings.dims)
                if info_box:
                    check_same(info_box[0], info)
                items = []
                for c, v in zip(todo, embeddings.vectors, strict=True):
                    try:
                        check_direction(v, f"chunk {c.id}: its embedding")
                    except VectorError as exc:
                        report.refused += 1
                        report.errors.append(str(exc))
                        continue
                    items.append(Item(c.id, c.text, c.metadata, v))
                if items:
                    await backend.write(info, SHARED, items, index=False)
                    if not info_box:
                        info_box.append(info)
                report.embedded += len(items)
            report.chunks += len(chunks)
            if progress is not None:
                progress(report)

    tasks: list[asyncio.Task[None]] = []
    try:
        for n, chunks in enumerate(_batches(read_chunks(path, chunk_chars, report), batch)):
            if n == 0:
                await one(chunks)  # the first batch makes the collection
                continue
            tasks.append(asyncio.create_task(one(chunks)))
            running = [t for t in tasks[-concurrency * 4 :] if not t.done()]
            if len(running) >= concurrency * 2:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks[-concurrency * 4 :]:
                if t.done():
                    t.result()  # a failed batch stops the load (what was written stays)
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if info_box:
        await backend.build_index(info_box[0])
    return report
