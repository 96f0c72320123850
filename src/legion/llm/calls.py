"""``ctx.llm``: LLM calls as recorded steps of the task.

Every call is a step keyed by its route and request, so a task that runs again (a
retry, or another worker after a crash) gets the completions it already paid for from
the store instead of buying them again. The same request made twice in one task is
recorded twice (``#2``), in the order the calls were made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from legion import codec
from legion.diagnostics.unawaited import Pending, SiteRef
from legion.errors import MessagesError, Permanent
from legion.llm.embeddings import Embeddings
from legion.llm.types import ChatResponse, Message
from legion.steps import StepRecorder

if TYPE_CHECKING:
    from legion.llm.client import LLMClient, Route

Tier = Literal["standard", "batch"]
TIERS = ("standard", "batch")


class BatchTier(Protocol):
    """Makes a batch-tier call for the task's context (`legion.waiting.batch.batch_chat`
    with the context's store and clock): a function of the context, so that no method
    bound to each context is held by its ``ctx.llm``."""

    def __call__(
        self,
        ctx: Any,
        /,
        route: Route,
        name: str,
        messages: Sequence[Any],
        params: dict[str, Any],
        deadline: float | None,
        standard: Callable[[], Awaitable[dict[str, Any]]],
        site: SiteRef | None,
    ) -> Awaitable[dict[str, Any]]: ...


class LLMCalls:
    """What ``ctx.llm`` is: the run's LLM client, with every call recorded."""

    __slots__ = ("_batch", "_client", "_ctx", "_sdks")

    def __init__(
        self, ctx: StepRecorder, client: LLMClient, batch: BatchTier | None = None
    ) -> None:
        """``batch``: how batch-tier calls are made (``None``: they go at the standard
        tier)."""
        self._ctx = ctx
        self._client = client
        self._batch = batch
        self._sdks: dict[tuple[str, str | None], Any] | None = None  # SDK clients made

    def chat(
        self,
        messages: Sequence[Message],
        model: str | None = None,
        *,
        timeout: float | None = None,
        stream: bool | None = None,
        tier: Tier = "standard",
        deadline: float | None = None,
        **params: Any,
    ) -> Pending[ChatResponse]:
        """One chat completion, recorded once per task (``await`` it).

        ``model`` names a configured route (or a route's model); ``None`` takes the
        default route. ``params`` pass through to the provider in OpenAI's names
        (``max_tokens``, ``temperature``, ``stop``, ``tools``...). Transient provider
        errors are retried with the client's policy; what still fails raises, and the
        task's own retry policy decides what follows.

        ``tier="batch"``: the call goes out in the provider's batch job (OpenAI's Batch
        API, Anthropic's Message Batches) at half price, and the task waits suspended
        until the answer comes; ``deadline`` seconds after the call was first made (24
        hours by default) it is sent at the standard tier instead (see
        `legion.waiting.batch`). The answer is the one the standard tier gives.
        """
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}, not {tier!r}")
        _check_messages(messages)
        pending: Pending[ChatResponse] = Pending(
            "ctx.llm.chat(...)",
            self._chat,
            (messages, model, timeout, stream, params, tier, deadline),
        )
        self._ctx.made(pending)
        return pending

    def _chat(
        self,
        messages: Sequence[Message],
        model: str | None,
        timeout: float | None,  # per provider attempt
        stream: bool | None,
        params: dict[str, Any],
        tier: Tier,
        deadline: float | None,
        site: SiteRef,
    ) -> Awaitable[ChatResponse]:
        """The call, once awaited. Not a coroutine itself: at the standard tier the step's
        own coroutine awaits the client's call, so a call in flight holds no frame of
        this layer (10,000 calls in flight: ~10,000 frames fewer)."""
        client = self._client
        route = client.route_for(model)
        key = f"llm.{route.name}.{_digest(route.model, messages, params)}"
        if tier == "batch" and self._batch is not None:
            return self._batch_chat(route, key, messages, timeout, stream, params, site, deadline)
        # Every object passed here is held while the call is in flight: the client's
        # ``chat`` unbound (its args carry the client), its keyword arguments (the call's
        # own ``params`` when it sets no timeout or transport, the client's defaults: no
        # copy of them), the encoder made once per route, the answer made by a function
        # shared by all (`record` counts its usage).
        options = params
        if timeout is not None or stream is not None:
            options = {"timeout": timeout, "stream": stream, **params}
        return self._ctx.record(
            key,
            type(client).chat,
            (client, messages, route.name),
            options,
            site,
            inputs=(messages, params),
            encode=client.recorder(route.name),
            decode=_chat_answer,
            usage=True,
        )

    async def _batch_chat(
        self,
        route: Route,
        key: str,
        messages: Sequence[Message],
        timeout: float | None,  # noqa: ASYNC109 - per provider attempt
        stream: bool | None,
        params: dict[str, Any],
        site: SiteRef,
        deadline: float | None,
    ) -> ChatResponse:
        client = self._client
        assert self._batch is not None

        async def call() -> dict[str, Any]:
            response = await client.chat(
                messages, route.name, timeout=timeout, stream=stream, **params
            )
            return client.recorder(route.name)(response)

        data = await self._batch(self._ctx, route, key, messages, params, deadline, call, site)
        self._ctx.usage.add(data)
        return _chat_answer(data)

    def openai(self, model: str | None = None) -> Any:
        """An ``openai.AsyncOpenAI`` whose chat completions and embeddings are calls of
        this task, like `chat` and `embed`: paced, retried by legion's policy (the SDK's
        own retries are off), recorded once per task, streamed too, counted in the
        task's usage and cost. ``model`` sends every request to that route (or route's
        model); ``None``: the route the request's model names, else the default route."""
        from legion.llm.sdk.clients import openai_client

        return self._sdk("openai", model, openai_client)

    def anthropic(self, model: str | None = None) -> Any:
        """An ``anthropic.AsyncAnthropic`` whose messages are calls of this task, like
        `openai` (on any route: the request is translated to legion's chat call)."""
        from legion.llm.sdk.clients import anthropic_client

        return self._sdk("anthropic", model, anthropic_client)

    def _sdk(self, kind: str, model: str | None, make: Any) -> Any:
        """One client per kind and route for the task (making one costs ~0.5 ms)."""
        if self._sdks is None:
            self._sdks = {}
        client = self._sdks.get((kind, model))
        if client is None:
            client = self._sdks[kind, model] = make(self, self._client, model)
        return client

    def embed(
        self, texts: Sequence[str], model: str | None = None, **params: Any
    ) -> Pending[Embeddings]:
        """Embeddings of ``texts`` (one vector each, in order), recorded once per task like
        `chat` (``await`` it). ``model`` names a route (or a route's model); ``None`` takes
        the route named ``embed`` if configured, else the default route."""
        pending: Pending[Embeddings] = Pending(
            "ctx.llm.embed(...)", self._embed, (list(texts), model, params)
        )
        self._ctx.made(pending)
        return pending

    def _embed(
        self, texts: list[str], model: str | None, params: dict[str, Any], site: SiteRef
    ) -> Awaitable[Embeddings]:
        route = self._client.embed_route(model)
        key = f"llm.{route.name}.embed.{_digest(route.model, texts, params)}"
        return self._ctx.record(
            key,
            self.embed_unrecorded,
            (texts, route.name),
            params,
            site,
            inputs=(texts, params),
            decode=_embeddings_answer,
            usage=True,
        )

    def embeds_with(self, model: str | None) -> bool:
        """Whether a route answers embedding calls that name ``model`` (a route's name or
        its model; ``None``: the ``embed`` route, else the default one)."""
        return self.embed_model(model) is not None

    def embed_model(self, model: str | None) -> str | None:
        """The model of the route an embedding call naming ``model`` goes to (``None``: no
        route serves it)."""
        try:
            return self._client.embed_route(model).model
        except Permanent:
            return None

    def route_models(self) -> set[str]:
        """The models this worker's routes are configured with."""
        return {route.model for route in self._client.routes.values()}

    async def embed_unrecorded(
        self, texts: Sequence[str], model: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """Embeddings as recorded JSON (``Embeddings.to_json()`` with ``cost_usd``), not
        recorded: for a step that records them with its own result (``ctx.vectors``), which
        counts them in the task's usage with ``ctx.usage.add``."""
        client = self._client
        route = client.embed_route(model)
        embeddings = await client.embed(texts, route.name, **params)
        return {**embeddings.to_json(), "cost_usd": client.cost_of(route, embeddings.usage)}


_chat_answer = ChatResponse.from_json
"""A recorded call's JSON as its answer (bound once: a classmethod is bound anew at each
lookup)."""

_embeddings_answer = Embeddings.from_json


def _digest(model: str, messages: Sequence[Any], params: dict[str, Any]) -> str:
    raw = codec.dumps([model, list(messages), params], finite=False)  # (a digest, not kept)
    return hashlib.blake2b(raw, digest_size=6).hexdigest()


def _check_messages(messages: object) -> None:
    """Refuse what is not a list of message objects, before anything is sent (a string
    failed inside the client with an AttributeError, retried until the task was dead)."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise MessagesError(
            f"ctx.llm.chat takes a list of messages, such as [{{'role': 'user', 'content': "
            f"'...'}}], not {type(messages).__name__}"
        )
    for n, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise MessagesError(
                f"ctx.llm.chat: message {n} is {type(message).__name__}, not an object such "
                "as {'role': 'user', 'content': '...'}"
            )
