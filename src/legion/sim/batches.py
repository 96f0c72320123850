"""The providers' batch APIs, simulated: OpenAI's Batch API and Anthropic's Message Batches.

OpenAI (the input is a JSONL file of ``{"custom_id", "method", "url", "body"}`` lines):

* ``POST /v1/files`` (multipart, ``purpose=batch``): keep a file; ``GET /v1/files/{id}``
  describes it, ``GET /v1/files/{id}/content`` answers its bytes (an output file is JSONL
  of ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``);
* ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``): a batch;
  ``GET /v1/batches/{id}`` its state, ``POST /v1/batches/{id}/cancel`` cancels it.

Anthropic (the requests travel in the body, ``{"requests": [{"custom_id", "params"}]}``):

* ``POST /v1/messages/batches``: a batch; ``GET /v1/messages/batches/{id}`` its state,
  ``POST /v1/messages/batches/{id}/cancel`` cancels it, ``GET
  /v1/messages/batches/{id}/results`` answers JSONL of ``{"custom_id", "result"}``.

A batch ends ``batch_turnaround`` seconds after it was created, by the simulator's clock
(a fake clock in tests: no background work, the state is worked out when asked). Each
request is answered as the standard endpoint answers the same body (the same
deterministic completion, usage and finish reason), without the rate limits and faults of
the standard endpoint. A batch cancelled before it ends answers none of its requests
(OpenAI: no output file; Anthropic: every result ``canceled``).
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from legion.sim.behaviour import estimate_prompt_tokens
from legion.sim.config import SimConfig
from legion.sim.dialect import BadRequest, Dialect
from legion.sim.limits import Clock
from legion.sim.tools import answer

_CHAT_PATH = "/v1/chat/completions"


@dataclass(slots=True)
class _Batch:
    id: str
    dialect: str  # "openai" or "anthropic"
    requests: list[tuple[str, bytes]]  # (custom_id, the request's body)
    created_at: float
    input_file_id: str | None = None
    cancelled_at: float | None = None
    results: list[tuple[str, int, bytes]] | None = None  # (custom_id, status, body)
    output_file_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class BatchBook:
    """The simulator's files and batches, and the routes that serve them."""

    def __init__(
        self,
        config: SimConfig,
        clock: Clock,
        openai: Dialect,
        anthropic: Dialect,
    ) -> None:
        self._config = config
        self._clock = clock
        self._epoch = time.time() - clock()
        """What makes a time of ``clock`` (monotonic) a Unix time, for the answers."""
        self._openai = openai
        self._anthropic = anthropic
        self._files: dict[str, tuple[str, str, bytes, float]] = {}  # name, purpose, bytes, at
        self._batches: dict[str, _Batch] = {}
        self._tag = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self.created = 0
        """Batches created."""
        self.requests = 0
        """Requests answered by batches."""
        self.cancelled = 0
        """Batches cancelled before they ended."""

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{id}", self._file)
        r.add_get("/v1/files/{id}/content", self._file_content)
        r.add_post("/v1/batches", self._create_openai)
        r.add_get("/v1/batches/{id}", self._get_openai)
        r.add_post("/v1/batches/{id}/cancel", self._cancel_openai)
        r.add_post("/v1/messages/batches", self._create_anthropic)
        r.add_get("/v1/messages/batches/{id}", self._get_anthropic)
        r.add_post("/v1/messages/batches/{id}/cancel", self._cancel_anthropic)
        r.add_get("/v1/messages/batches/{id}/results", self._results_anthropic)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{self._tag}{next(self._ids):x}"

    # -- OpenAI: files ---------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        denied = self._openai.authorize(request)
        if denied is not None:
            return denied
        purpose, name, data = "", "upload.jsonl", b""
        try:
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "purpose":
                    purpose = (await part.read()).decode()
                elif part.name == "file":
                    name = part.filename or name
                    data = bytes(await part.read())
        except (ValueError, AssertionError, UnicodeDecodeError):
            return self._openai.error(400, "The upload must be multipart/form-data.")
        if purpose != "batch":
            return self._openai.error(400, "The simulator keeps files of purpose 'batch' only.")
        file_id = self._new_id("file-sim")
        self._files[file_id] = (name, purpose, data, self._clock())
        return _json(self._file_object(file_id))

    def _file_object(self, file_id: str) -> dict[str, Any]:
        name, purpose, data, at = self._files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": self._unix(at),
            "filename": name,
            "purpose": purpose,
        }

    async def _file(self, request: web.Request) -> web.Response:
        denied = self._openai.authorize(request)
        if denied is not None:
            return denied
        file_id = request.match_info["id"]
        if file_id not in self._files:
            return self._openai.error(404, f"No such File object: {file_id}")
        return _json(self._file_object(file_id))

    async def _file_content(self, request: web.Request) -> web.Response:
        denied = self._openai.authorize(request)
        if denied is not None:
            return denied
        found = self._files.get(request.match_info["id"])
        if found is None:
            return self._openai.error(404, f"No such File object: {request.match_info['id']}")
        return web.Response(body=found[2], content_type="application/jsonl")

    # -- OpenAI: batches -------------------------------------------------------------

    async def _create_openai(self, request: web.Request) -> web.Response:
        dialect = self._openai
        denied = dialect.authorize(request)
        if denied is not None:
            return denied
        try:
            body = orjson.loads(await request.read())
            file_id = body["input_file_id"]
            endpoint = body["endpoint"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return dialect.error(400, "A batch needs an input_file_id and an endpoint.")
        if not isinstance(file_id, str) or not isinstance(endpoint, str):
            return dialect.error(400, "input_file_id and endpoint must be strings.")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(value, str) for value in metadata.values()
        ):
            return dialect.error(400, "metadata must be an object of strings.", param="metadata")
        if endpoint != _CHAT_PATH:
            return dialect.error(400, f"The simulator batches {_CHAT_PATH} only.", param="endpoint")
        found = self._files.get(file_id)
        if found is None:
            return dialect.error(404, f"No such File object: {file_id}", param="input_file_id")
        requests = []
        try:
            for n, line in enumerate(found[2].splitlines(), 1):
                if not line.strip():
                    continue
                item = orjson.loads(line)
                if item.get("url") != _CHAT_PATH or item.get("method", "POST") != "POST":
                    return dialect.error(400, f"line {n}: the url must be POST {_CHAT_PATH}")
                requests.append((str(item["custom_id"]), orjson.dumps(item["body"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return dialect.error(400, "The input file is not JSONL of batch requests.")
        if len({custom_id for custom_id, _ in requests}) != len(requests):
            return dialect.error(400, "custom_id values must be unique within a batch.")
        batch = _Batch(self._new_id("batch_sim"), "openai", requests, self._clock(), file_id)
        batch.metadata = metadata
        self._batches[batch.id] = batch
        self.created += 1
        return _json(self._openai_object(batch))

    def _find(self, request: web.Request, kind: str) -> _Batch | web.Response:
        """The batch a request names, once its caller is authorized; else the error."""
        dialect = self._openai if kind == "openai" else self._anthropic
        denied = dialect.authorize(request)
        if denied is not None:
            return denied
        batch = self._batches.get(request.match_info["id"])
        if batch is None or batch.dialect != kind:
            return dialect.error(404, f"No such batch: {request.match_info['id']}")
        return batch

    async def _get_openai(self, request: web.Request) -> web.Response:
        batch = self._find(request, "openai")
        if isinstance(batch, web.Response):
            return batch
        return _json(self._openai_object(batch))

    async def _cancel_openai(self, request: web.Request) -> web.Response:
        batch = self._find(request, "openai")
        if isinstance(batch, web.Response):
            return batch
        self._cancel(batch)
        return _json(self._openai_object(batch))

    def _openai_object(self, batch: _Batch) -> dict[str, Any]:
        ended = self._settle(batch)
        cancelled = batch.cancelled_at is not None
        if ended and not cancelled and batch.output_file_id is None:
            assert batch.results is not None
            lines = [
                orjson.dumps(
                    {
                        "id": f"batch_req_{batch.id}_{n}",
                        "custom_id": custom_id,
                        "response": {
                            "status_code": status,
                            "request_id": f"req_{batch.id}_{n}",
                            "body": orjson.loads(body),
                        },
                        "error": None,
                    }
                )
                for n, (custom_id, status, body) in enumerate(batch.results)
            ]
            batch.output_file_id = self._new_id("file-sim")
            self._files[batch.output_file_id] = (
                f"{batch.id}_output.jsonl",
                "batch_output",
                b"\n".join(lines) + b"\n",
                self._clock(),
            )
        total = len(batch.requests)
        done = len(batch.results or ()) if not cancelled else 0
        failed = sum(1 for _, status, _ in batch.results or () if status != 200)
        status = "cancelled" if cancelled else "completed" if ended else "in_progress"
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": _CHAT_PATH,
            "errors": None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": None,
            "created_at": self._unix(batch.created_at),
            "in_progress_at": self._unix(batch.created_at),
            "completed_at": self._unix(self._ends_at(batch)) if ended and not cancelled else None,
            "cancelled_at": (
                self._unix(batch.cancelled_at) if batch.cancelled_at is not None else None
            ),
            "request_counts": {"total": total, "completed": done - failed, "failed": failed},
            "metadata": batch.metadata,
        }

    # -- Anthropic --------------------------------------------------------------------

    async def _create_anthropic(self, request: web.Request) -> web.Response:
        dialect = self._anthropic
        denied = dialect.authorize(request)
        if denied is not None:
            return denied
        try:
            body = orjson.loads(await request.read())
            requests = [(str(r["custom_id"]), orjson.dumps(r["params"])) for r in body["requests"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return dialect.error(400, "requests: a list of {custom_id, params} is required.")
        if not requests:
            return dialect.error(400, "requests: at least one request is required.")
        if len({custom_id for custom_id, _ in requests}) != len(requests):
            return dialect.error(400, "custom_id values must be unique within a batch.")
        batch = _Batch(self._new_id("msgbatch_sim"), "anthropic", requests, self._clock())
        self._batches[batch.id] = batch
        self.created += 1
        return _json(self._anthropic_object(batch, request))

    async def _get_anthropic(self, request: web.Request) -> web.Response:
        batch = self._find(request, "anthropic")
        if isinstance(batch, web.Response):
            return batch
        return _json(self._anthropic_object(batch, request))

    async def _cancel_anthropic(self, request: web.Request) -> web.Response:
        batch = self._find(request, "anthropic")
        if isinstance(batch, web.Response):
            return batch
        self._cancel(batch)
        return _json(self._anthropic_object(batch, request))

    async def _results_anthropic(self, request: web.Request) -> web.Response:
        batch = self._find(request, "anthropic")
        if isinstance(batch, web.Response):
            return batch
        if not self._settle(batch):
            return self._anthropic.error(400, f"Batch {batch.id} has not ended yet.")
        lines = []
        if batch.cancelled_at is not None:
            for custom_id, _ in batch.requests:
                lines.append({"custom_id": custom_id, "result": {"type": "canceled"}})
        else:
            for custom_id, status, body in batch.results or ():
                result: dict[str, Any]
                if status == 200:
                    result = {"type": "succeeded", "message": orjson.loads(body)}
                else:
                    result = {"type": "errored", "error": orjson.loads(body)}
                lines.append({"custom_id": custom_id, "result": result})
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        return web.Response(body=data, content_type="application/binary")

    def _anthropic_object(self, batch: _Batch, request: web.Request) -> dict[str, Any]:
        ended = self._settle(batch)
        cancelled = batch.cancelled_at is not None
        results = batch.results or ()
        succeeded = 0 if cancelled else sum(1 for _, s, _ in results if s == 200)
        errored = 0 if cancelled else len(results) - succeeded
        url = f"{request.scheme}://{request.host}/v1/messages/batches/{batch.id}/results"
        ended_at = batch.cancelled_at if cancelled else self._ends_at(batch)
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else len(batch.requests),
                "succeeded": succeeded,
                "errored": errored,
                "canceled": len(batch.requests) if cancelled else 0,
                "expired": 0,
            },
            "ended_at": _iso(self._epoch + ended_at) if ended and ended_at is not None else None,
            "created_at": _iso(self._epoch + batch.created_at),
            "expires_at": _iso(self._epoch + batch.created_at + 86400),
            "cancel_initiated_at": (
                _iso(self._epoch + batch.cancelled_at) if batch.cancelled_at is not None else None
            ),
            "results_url": url if ended else None,
        }

    # -- both ------------------------------------------------------------------------

    def _unix(self, at: float) -> int:
        """A time of the clock as whole seconds since the Unix epoch."""
        return int(self._epoch + at)

    def _ends_at(self, batch: _Batch) -> float:
        return batch.created_at + self._config.batch_turnaround

    def _settle(self, batch: _Batch) -> bool:
        """Whether the batch has ended (cancelled, or its turnaround passed); answers its
        requests the first time it is found ended."""
        if batch.cancelled_at is not None:
            return True
        if self._clock() < self._ends_at(batch):
            return False
        if batch.results is None:
            dialect = self._openai if batch.dialect == "openai" else self._anthropic
            batch.results = [(cid, *self._answer(dialect, raw)) for cid, raw in batch.requests]
        return True

    def _cancel(self, batch: _Batch) -> None:
        if not self._settle(batch):
            batch.cancelled_at = self._clock()
            self.cancelled += 1

    def _answer(self, dialect: Dialect, raw: bytes) -> tuple[int, bytes]:
        """One request answered as the standard endpoint answers it (no limits, no
        faults): ``(status, body)``."""
        try:
            chat = dialect.parse(raw)
        except BadRequest as exc:
            return 400, dialect.error(400, exc.message, param=exc.param).body  # type: ignore[return-value]
        if chat.model not in self._config.models:
            message = f"The model `{chat.model}` does not exist or you do not have access to it."
            error = dialect.error(404, message, code="model_not_found")
            return 404, error.body  # type: ignore[return-value]
        config = self._config
        completion = answer(
            config,
            chat.model,
            chat.messages,
            limit=chat.max_tokens,
            stop=chat.stop,
            script=chat.script,
        )
        prompt_tokens = estimate_prompt_tokens(chat.messages)
        cached = int(prompt_tokens * config.cached_prompt_share)
        self.requests += 1
        return 200, dialect.completion(chat.model, completion, prompt_tokens, cached)


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
