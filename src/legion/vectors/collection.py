"""``ctx.vectors(name, scope=...)``: a vector collection as an agent sees it.

Writes are recorded steps: ``add`` embeds its texts (an LLM call through the route's
capacity, counted in the task's usage) and upserts them by id inside one step, so a task
that runs again — a retry, or another worker after a crash — neither pays for the
embeddings again nor adds the vectors twice.
Ids default to ``<task id>-<digest of the call>-<n>``: the same for the same call of the
same task, so even an add whose process died after the write but before the step was
recorded writes the same rows again (an upsert), not new ones. Every write is durable when
``await`` returns, so the task's next search sees it. Searches are recorded too: a replayed
task sees the hits its first run saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from legion import codec
from legion.diagnostics.unawaited import Pending, SiteRef
from legion.errors import OutputError, VectorError
from legion.llm.embeddings import Embeddings
from legion.steps import StepRecorder
from legion.vectors.backend import VectorBackend, vectors_for
from legion.vectors.types import (
    NUL_REFUSED,
    SHARED,
    CollectionInfo,
    Hit,
    Item,
    Scope,
    check_dims,
    check_direction,
    check_name,
    check_same,
    check_scope,
    check_where,
    nul_in,
)

if TYPE_CHECKING:
    from legion.llm.calls import LLMCalls

T = TypeVar("T")
MAX_K = 1000


class VectorsHost(StepRecorder, Protocol):
    """What a collection needs of the context it serves: the steps it records, the
    session and task it keys by, and the LLM routes that embed."""

    @property
    def session(self) -> str: ...

    @property
    def stored_session(self) -> str:
        """What the store keys the session by (within its tenant)."""
        ...

    @property
    def task_id(self) -> int: ...

    @property
    def llm(self) -> LLMCalls: ...


class Collection:
    """A named vector collection: session-scoped (keyed like ``ctx.memory``: every task
    of the session sees it, on any worker) or shared (one corpus many agents read)."""

    __slots__ = ("_ctx", "_model", "_scope", "_store", "name")

    def __init__(
        self, ctx: VectorsHost, store: Any, name: str, scope: str, model: str | None = None
    ) -> None:
        self._ctx = ctx
        self._store = store
        self.name = check_name(name)
        self._scope: Scope = check_scope(scope)
        self._model = model

    @property
    def scope(self) -> Scope:
        return self._scope

    @property
    def session(self) -> str:
        """The session whose items this collection reads and writes ('' when shared)."""
        return self._ctx.session if self._scope == "session" else SHARED

    @property
    def _part(self) -> str:
        """What the store keys this collection's items by: the session within its
        tenant, or the shared part."""
        return self._ctx.stored_session if self._scope == "session" else SHARED

    def add(
        self,
        texts: Sequence[str],
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> Pending[list[str]]:
        """Embed ``texts`` and store them (``await`` it: answers their ids). ``metadata``:
        one JSON object for all, or one per text; ``ids``: one per text (an existing id is
        replaced). The collection is made by its first add."""
        texts, metas, given = check_add(texts, metadata, ids)
        return self._pending("add", self._add, (texts, metas, given))

    def search(
        self, query: str, k: int = 5, where: Mapping[str, Any] | None = None
    ) -> Pending[list[Hit]]:
        """The ``k`` stored texts nearest to ``query`` whose metadata matches every
        ``where`` item (``await`` it), best first. A session-scoped collection nothing was
        added to yet answers no hits; a shared one that does not exist is an error."""
        if not isinstance(query, str) or not query.strip():
            raise VectorError("search needs a non-empty query text")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise VectorError(f"k must be an integer from 1 to {MAX_K}, not {k!r}")
        filters = check_where(where)
        return self._pending("search", self._search, (query, k, filters))

    def delete(self, ids: Sequence[str]) -> Pending[int]:
        """Delete items by id (``await`` it: answers how many there were)."""
        if isinstance(ids, str) or not all(isinstance(i, str) and i for i in ids):
            raise VectorError("delete needs a list of ids (non-empty strings)")
        return self._pending("delete", self._delete, (list(ids),))

    # -- the recorded work -------------------------------------------------------------

    def _pending(
        self,
        what: str,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
    ) -> Pending[T]:
        pending: Pending[T] = Pending(f"ctx.vectors({self.name!r}).{what}(...)", fn, args, depth=3)
        self._ctx.made(pending)
        return pending

    @property
    def _backend(self) -> VectorBackend:
        return vectors_for(self._store)

    def _key(self, op: str, *parts: Any) -> str:
        raw = codec.dumps([self._scope, self.name, self._model, *parts])
        return f"vectors.{op}.{self.name}.{hashlib.blake2b(raw, digest_size=6).hexdigest()}"

    async def _existing(self) -> CollectionInfo | None:
        info = await self._backend.collection(self.name)
        if info is not None and info.scope != self._scope:
            raise VectorError(
                f"collection {self.name!r} is {info.scope}-scoped: use "
                f"ctx.vectors({self.name!r}, scope={info.scope!r})"
            )
        return info

    async def _embed(
        self, texts: list[str], found: CollectionInfo | None
    ) -> tuple[Embeddings, Any]:
        """Embeddings made inside a vector step (recorded with its result, not apart), and
        what they cost, for the task's usage: by the model the collection ``found`` holds
        unless ``model=`` named one, which must then be the same (`VectorError` if not)."""
        llm = self._ctx.llm
        if found is not None and self._model is None and not llm.embeds_with(found.model):
            raise VectorError(
                f"collection {self.name!r} holds embeddings of model {found.model!r}, which no "
                "LLM route of this worker serves: give it a route of that model (--llm)"
            )
        model = self._model or (found.model if found is not None else None)
        if found is not None and self._model is not None:
            # Refused before the embedding is bought, where it certainly differs: the route
            # named is of another model than the collection's, which a route here serves
            # (a provider may answer under another name than its route's: then compared
            # after, by what it answered).
            named = llm.embed_model(self._model)
            if named not in (None, found.model) and found.model in llm.route_models():
                check_same(found, CollectionInfo(self.name, found.scope, named, found.dims))
        data = await llm.embed_unrecorded(texts, model)
        embeddings = Embeddings.from_json(data)
        if found is not None:
            check_same(found, CollectionInfo(self.name, found.scope, embeddings.model, found.dims))
        return embeddings, {"usage": data["usage"], "cost_usd": data["cost_usd"]}

    async def _add(
        self,
        texts: list[str],
        metas: list[dict[str, Any]],
        given: list[str] | None,
        site: SiteRef | None,
    ) -> list[str]:
        key = self._key("add", texts, metas, given)
        digest = key.rsplit(".", 1)[1]
        ids = given or [f"{self._ctx.task_id}-{digest}-{i}" for i in range(len(texts))]

        async def write() -> dict[str, Any]:
            found = await self._existing()
            embeddings, cost = await self._embed(texts, found)
            info = CollectionInfo(self.name, self._scope, embeddings.model, embeddings.dims)
            if found is not None:
                check_same(found, info)
            for n, (text, vector) in enumerate(zip(texts, embeddings.vectors, strict=True)):
                check_direction(vector, f"the embedding of text {n} ({codec.quoted(text, 60)})")
            items = [
                Item(i, t, m, v)
                for i, t, m, v in zip(ids, texts, metas, embeddings.vectors, strict=True)
            ]
            await self._backend.write(info, self._part, items)
            return {"ids": ids, "embedding": cost}

        out = await self._ctx.record(key, write, (), {}, site, inputs=(texts, metas))
        self._ctx.usage.add(out["embedding"])
        return list(out["ids"])

    async def _search(
        self, query: str, k: int, where: dict[str, Any], site: SiteRef | None
    ) -> list[Hit]:
        key = self._key("search", self._part, query, k, where)

        async def run() -> dict[str, Any]:
            info = await self._existing()
            if info is None:
                if self._scope == "session":
                    return {"hits": [], "embedding": None}
                raise VectorError(
                    f"no shared vector collection {self.name!r} in the store: make it with "
                    f"`legion vectors load {self.name} --input FILE.jsonl` or "
                    f"ctx.vectors({self.name!r}, scope='shared').add(...)"
                )
            embeddings, cost = await self._embed([query], info)
            check_dims(info, embeddings.dims)
            check_direction(
                embeddings.vectors[0], f"the embedding of the query {codec.quoted(query, 60)}"
            )
            hits = await self._backend.search(info, self._part, embeddings.vectors[0], k, where)
            return {"hits": [h.to_json() for h in hits], "embedding": cost}

        out = await self._ctx.record(key, run, (), {}, site, inputs=(query, k, where))
        if out["embedding"] is not None:
            self._ctx.usage.add(out["embedding"])
        return [Hit.from_json(h) for h in out["hits"]]

    async def _delete(self, ids: list[str], site: SiteRef | None) -> int:
        key = self._key("delete", self._part, ids)

        async def run() -> int:
            info = await self._existing()
            if info is None:
                if self._scope == "session":
                    return 0
                raise VectorError(f"no shared vector collection {self.name!r} in the store")
            return await self._backend.delete(info, self._part, ids)

        result: int = await self._ctx.record(key, run, (), {}, site, inputs=(ids,))
        return result


def check_add(
    texts: Sequence[str],
    metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    ids: Sequence[str] | None,
) -> tuple[list[str], list[dict[str, Any]], list[str] | None]:
    """The texts, one metadata object per text and the ids of an add, checked: a
    `VectorError` says what is wrong before anything is embedded or written."""
    if isinstance(texts, str):
        raise VectorError("add takes a list of texts, not one string: add([text])")
    texts = list(texts)
    if not texts:
        raise VectorError("add needs at least one text")
    for n, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise VectorError(f"text {n} is empty or not a string: {text!r}")
        if nul_in(text):
            raise VectorError(f"text {n} {NUL_REFUSED}")
    if metadata is None:
        metas: list[dict[str, Any]] = [{} for _ in texts]
    elif isinstance(metadata, Mapping):
        metas = [dict(metadata) for _ in texts]
    else:
        metas = [dict(m) if isinstance(m, Mapping) else _not_object(m) for m in metadata]
        if len(metas) != len(texts):
            raise VectorError(f"{len(metas)} metadata objects for {len(texts)} texts")
    try:
        codec.dumps(metas)
    except OutputError as exc:
        raise VectorError(f"metadata must be JSON: {exc}") from exc
    if nul_in(metas):
        raise VectorError(f"metadata {NUL_REFUSED}")
    given = None
    if ids is not None:
        if isinstance(ids, str):
            raise VectorError("ids= takes a list of ids, one per text")
        given = list(ids)
        if len(given) != len(texts):
            raise VectorError(f"{len(given)} ids for {len(texts)} texts")
        if not all(isinstance(i, str) and i for i in given):
            raise VectorError("ids must be non-empty strings")
        if len(set(given)) != len(given):
            raise VectorError("ids must be unique within one add")
        if nul_in(given):
            raise VectorError(f"an id {NUL_REFUSED}")
    return texts, metas, given


def _not_object(value: Any) -> dict[str, Any]:
    raise VectorError(f"each metadata item must be a JSON object (dict), not {value!r}")
