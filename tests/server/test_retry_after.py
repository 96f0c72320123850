"""Every 503 carries Retry-After, whoever answered it; a 503 that names its wait keeps it."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message

from legion.server.retry_after import RETRY_AFTER_SECONDS, RetryAfter


async def busy(_: Any) -> JSONResponse:
    return JSONResponse({"detail": "busy"}, status_code=503)


async def named(_: Any) -> JSONResponse:
    return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "30"})


async def fine(_: Any) -> JSONResponse:
    return JSONResponse({"ok": True})


APP = RetryAfter(Starlette(routes=[Route("/busy", busy), Route("/named", named), Route("/", fine)]))


async def get(path: str) -> tuple[int, dict[str, str]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
    }
    await APP(scope, receive, send)
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


async def test_a_503_without_a_wait_gets_one() -> None:
    status, headers = await get("/busy")
    assert status == 503 and headers["retry-after"] == str(RETRY_AFTER_SECONDS)


async def test_a_503_keeps_its_own_wait_and_other_answers_are_untouched() -> None:
    status, headers = await get("/named")
    assert status == 503 and headers["retry-after"] == "30"
    assert [k for k in headers if k == "retry-after"] == ["retry-after"]
    status, headers = await get("/")
    assert status == 200 and "retry-after" not in headers
