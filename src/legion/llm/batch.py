"""The providers' batch APIs: many chat calls in one job, answered later at half price.

`BatchAPI` is what the batch tier (`legion.waiting.batch`) needs of a provider: submit
calls as one job, poll it, read its answers once it ended, cancel it. Two implementations:

* `OpenAIBatches`: OpenAI's Batch API (and any server that serves it, the simulator
  included): the calls are uploaded as a JSONL file (``POST /v1/files``), a batch is made
  of it (``POST /v1/batches``), polled (``GET /v1/batches/{id}``), and its output file
  read (``GET /v1/files/{id}/content``);
* `AnthropicBatches`: Anthropic's Message Batches (``POST /v1/messages/batches``, ``GET
  /v1/messages/batches/{id}`` and its ``/results``).

Each request is built as the standard call builds it (`legion.llm.openai.build_payload`,
`legion.llm.anthropic.build_payload`, never streamed) and each answer parsed as the
standard call parses it, so a batch answer is the `ChatResponse` the standard tier would
have made of the same completion. Calls are named by ``custom_id`` (letters, digits, ``-``
and ``_``, at most 64 characters, as Anthropic requires).

Price: both providers bill batch calls at half their standard price; legion counts a batch
answer at its batch price (`legion.llm.pricing.PriceTable.batch_price`: ``genai-prices``'
batch price where it has one, else the standard price times
`legion.llm.pricing.BATCH_DISCOUNT`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from legion.errors import ProviderError, ProviderRejected, ProviderUnavailable
from legion.llm import anthropic, openai
from legion.llm.types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    import aiohttp  # imported where a session is opened: only a worker with a batch route needs it

_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class BatchPoll:
    """A job's state: ``ended`` (answered, failed, expired or cancelled), and once it
    ended, each call's answer by ``custom_id``: a `ChatResponse`, or why it has none."""

    ended: bool
    results: Mapping[str, ChatResponse | str] = field(default_factory=dict)


class BatchAPI(Protocol):
    """A provider's batch API."""

    async def submit(self, calls: Sequence[tuple[str, ChatRequest]]) -> str:
        """Send ``(custom_id, request)`` pairs as one job; answer the job's id."""
        ...

    async def poll(self, job: str) -> BatchPoll: ...

    async def cancel(self, job: str) -> None: ...

    async def aclose(self) -> None: ...


class _Http:
    """A small HTTP client of a batch API (batch calls are few: no pool to tune)."""

    def __init__(self, base_url: str, headers: Mapping[str, str], provider: str) -> None:
        self._base = base_url.rstrip("/")
        self._headers = dict(headers)
        self.provider = provider
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=_TIMEOUT_SECONDS)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        return self._session

    async def request(self, method: str, path: str, **kw: Any) -> bytes:
        import aiohttp

        try:
            async with self._open().request(method, f"{self._base}{path}", **kw) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderUnavailable(
                f"{self.provider} batch API: {method} {path} failed: {exc!r}",
                provider=self.provider,
            ) from exc
        if status >= 500 or status == 429:
            raise ProviderUnavailable(
                f"{self.provider} batch API answered {status} to {method} {path}",
                provider=self.provider,
                status=status,
            )
        if status >= 400:
            raise ProviderRejected(
                f"{self.provider} batch API refused {method} {path} ({status}): "
                f"{body[:300].decode(errors='replace')}",
                provider=self.provider,
                status=status,
            )
        return body

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        body = await self.request(method, path, **kw)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ProviderUnavailable(
                f"{self.provider} batch API sent invalid JSON for {method} {path}",
                provider=self.provider,
            ) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _lines(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines() if line.strip()]


class OpenAIBatches:
    """OpenAI's Batch API at ``base_url`` (with ``/v1``), for chat completions."""

    def __init__(self, *, base_url: str, headers: Mapping[str, str], name: str = "openai") -> None:
        self._http = _Http(base_url, headers, name)
        self._name = name

    async def submit(self, calls: Sequence[tuple[str, ChatRequest]]) -> str:
        lines = b"".join(
            orjson.dumps(
                {
                    "custom_id": custom_id,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": openai.build_payload(_unstreamed(request)),
                }
            )
            + b"\n"
            for custom_id, request in calls
        )
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field(
            "file", lines, filename="legion-batch.jsonl", content_type="application/jsonl"
        )
        uploaded = await self._http.json("POST", "/files", data=form)
        batch = await self._http.json(
            "POST",
            "/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        return str(batch["id"])

    async def poll(self, job: str) -> BatchPoll:
        batch = await self._http.json("GET", f"/batches/{job}")
        status = batch.get("status")
        if status not in ("completed", "failed", "expired", "cancelled"):
            return BatchPoll(False)
        results: dict[str, ChatResponse | str] = {}
        for key in ("error_file_id", "output_file_id"):  # answers override errors
            file_id = batch.get(key)
            if not file_id:
                continue
            for line in _lines(await self._http.request("GET", f"/files/{file_id}/content")):
                results[str(line["custom_id"])] = self._result(line)
        return BatchPoll(True, results)

    def _result(self, line: Mapping[str, Any]) -> ChatResponse | str:
        response = line.get("response") or {}
        if line.get("error") or response.get("status_code") != 200:
            return f"the batch answered {response.get('status_code')}: {line.get('error')}"
        try:
            return openai.parse_completion(orjson.dumps(response["body"]), self._name)
        except ProviderError as exc:
            return str(exc)

    async def cancel(self, job: str) -> None:
        await self._http.json("POST", f"/batches/{job}/cancel")

    async def aclose(self) -> None:
        await self._http.aclose()


class AnthropicBatches:
    """Anthropic's Message Batches at ``base_url`` (without ``/v1``)."""

    def __init__(
        self,
        *,
        base_url: str,
        headers: Mapping[str, str],
        name: str = "anthropic",
        default_max_tokens: int = 1024,
    ) -> None:
        self._http = _Http(f"{base_url.rstrip('/')}/v1/messages/batches", headers, name)
        self._name = name
        self._default_max_tokens = default_max_tokens

    async def submit(self, calls: Sequence[tuple[str, ChatRequest]]) -> str:
        requests = []
        for custom_id, request in calls:
            params = anthropic.build_payload(
                _unstreamed(request), self._name, self._default_max_tokens
            )
            params.pop("stream", None)
            requests.append({"custom_id": custom_id, "params": params})
        batch = await self._http.json("POST", "", json={"requests": requests})
        return str(batch["id"])

    async def poll(self, job: str) -> BatchPoll:
        batch = await self._http.json("GET", f"/{job}")
        if batch.get("processing_status") != "ended":
            return BatchPoll(False)
        results: dict[str, ChatResponse | str] = {}
        for line in _lines(await self._http.request("GET", f"/{job}/results")):
            result = line.get("result") or {}
            custom_id = str(line["custom_id"])
            if result.get("type") != "succeeded":
                results[custom_id] = f"the batch answered {result.get('type')}: {result}"
                continue
            try:
                message = orjson.dumps(result["message"])
                results[custom_id] = anthropic.parse_message(message, self._name)
            except ProviderError as exc:
                results[custom_id] = str(exc)
        return BatchPoll(True, results)

    async def cancel(self, job: str) -> None:
        await self._http.json("POST", f"/{job}/cancel")

    async def aclose(self) -> None:
        await self._http.aclose()


def has_batch_api(provider: Any) -> bool:
    """Whether a route's provider has a batch API (see `batch_api`)."""
    return isinstance(provider, (openai.OpenAIProvider, anthropic.AnthropicProvider))


def batch_api(provider: Any) -> BatchAPI | None:
    """The batch API of a route's provider (``None``: it has none, e.g. a local model;
    its batch-tier calls go at the standard tier at once)."""
    if isinstance(provider, openai.OpenAIProvider):
        base_url, headers = provider.batch_endpoint
        return OpenAIBatches(base_url=base_url, headers=headers, name=provider.name)
    if isinstance(provider, anthropic.AnthropicProvider):
        base_url, headers = provider.batch_endpoint
        return AnthropicBatches(
            base_url=base_url,
            headers=headers,
            name=provider.name,
            default_max_tokens=provider.default_max_tokens,
        )
    return None


def _unstreamed(request: ChatRequest) -> ChatRequest:
    if not request.stream:
        return request
    return ChatRequest(request.model, request.messages, request.params, False)
