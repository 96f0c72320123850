"""Request bodies of the submit and signal routes: read once, parsed once, strictly.

The body is read into one buffer (the size limit of `legion.server.body_limit`
applies as it arrives) and parsed by orjson, which follows RFC 8259: ``NaN``,
``Infinity`` and numbers out of a double's range (``1e400``) are refused, as is text that
is not UTF-8. Any content type is read as JSON, so ``curl -d '{...}'`` (which sends
``application/x-www-form-urlencoded``) works as printed. What cannot be parsed answers
422 with one error at ``["body"]``: ``json_invalid`` (with orjson's position), or
``utf8`` for bytes that are not UTF-8.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect

from legion import codec


async def json_body(request: Request) -> Any:
    """The request's body as JSON, or a 422 saying why it is not."""
    buffer = bytearray()
    try:
        async for chunk in request.stream():
            buffer += chunk
    except ClientDisconnect:  # (gone: nothing failed, and no one reads the answer)
        raise HTTPException(400, "the client left before its body arrived") from None
    if not buffer:
        raise _invalid("missing", "a JSON body is required")
    try:
        # (a byte order mark, which some clients write before UTF-8 text, is not JSON's)
        return codec.loads_given(bytes(buffer).removeprefix(b"\xef\xbb\xbf"))
    except codec.TooDeep as exc:
        raise _invalid("json_too_deep", f"the body is {exc.msg}") from None
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            raise _invalid("utf8", "the body is not UTF-8 text") from None
        wrong = codec.json_error(exc)
        raise _invalid("json_invalid", f"the body is not valid JSON: {wrong}") from None
    finally:
        del buffer


def _invalid(kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ["body"], "msg": message}])
