"""Translation of HTTP statuses and error bodies into legion errors. No sockets."""

from __future__ import annotations

import pickle

import pytest

from legion.errors import (
    EndpointNotFound,
    LegionError,
    MalformedResponse,
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from legion.llm import RateLimitInfo
from legion.llm.transport import decode_json, error_detail, error_for_status

OPENAI_BODY = b'{"error": {"message": "Nope.", "type": "invalid_request_error", "code": "x"}}'


def translate(
    status: int, body: bytes = OPENAI_BODY, headers: dict[str, str] | None = None
) -> LegionError:
    return error_for_status(
        "p", status, body, headers or {}, RateLimitInfo(retry_after=2.0), auth_hint="Set P_KEY."
    )


@pytest.mark.parametrize(
    ("body", "detail", "code"),
    [
        (OPENAI_BODY, "Nope.", "x"),
        (
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "Busy"}}',
            "Busy",
            "overloaded_error",
        ),
        (b'{"object": "error", "message": "vLLM says no", "code": 400}', "vLLM says no", None),
        (b'{"error": "model \\"x\\" not found"}', 'model "x" not found', None),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>", None),
        (b"", "(empty body)", None),
        (b"x" * 600, "x" * 500 + "...", None),
    ],
)
def test_error_detail_reads_every_common_body(body: bytes, detail: str, code: str | None) -> None:
    assert error_detail(body) == (detail, code)


def test_a_404_page_that_is_no_api_error_names_the_url_and_stops_the_run() -> None:
    url = "http://127.0.0.1:8000/v1/v1/messages"
    page = error_for_status("p", 404, b"404: Not Found", {}, RateLimitInfo(), auth_hint="", url=url)
    assert isinstance(page, EndpointNotFound) and page.fatal  # every call would meet it
    assert f"nothing serves POST {url} (404: 404: Not Found); check the route's base URL" in str(
        page
    )
    assert isinstance(translate(405, b"<html>405</html>"), ProviderRejected)  # (no url given)
    # The provider's own error (an unknown model) is a refusal of this call alone.
    model = error_for_status("p", 404, OPENAI_BODY, {}, RateLimitInfo(), auth_hint="", url=url)
    assert type(model) is ProviderRejected and not model.fatal


def test_statuses() -> None:
    limited = translate(429)
    assert isinstance(limited, RateLimited) and limited.retry_after == 2.0
    assert str(limited) == "p rate limit hit (429): Nope."
    for status in (408, 409, 500, 502, 503, 529):
        error = translate(status)
        assert isinstance(error, ProviderUnavailable) and error.status == status
        assert error.retry_after == 2.0
    assert str(translate(401)) == "p rejected the API key (401): Nope. Set P_KEY."
    forbidden = translate(403)
    assert isinstance(forbidden, ProviderAuthError) and "denied access (403)" in str(forbidden)
    for status in (400, 404, 413, 422):
        rejected = translate(status)
        assert type(rejected) is ProviderRejected and rejected.status == status
    redirect = translate(301, b"", {"location": "https://elsewhere/v1"})
    assert isinstance(redirect, ProviderRejected)
    assert "redirect (301) to https://elsewhere/v1" in str(redirect)


def test_429s_that_no_retry_can_fix() -> None:
    too_large = translate(429, headers={"x-should-retry": "false"})
    assert type(too_large) is ProviderRejected and "retrying cannot help" in str(too_large)
    quota = (
        b'{"error": {"message": "You exceeded your current quota.", "code": "insufficient_quota"}}'
    )
    out_of_quota = translate(429, quota)
    assert isinstance(out_of_quota, ProviderAuthError) and out_of_quota.fatal
    assert "out of quota" in str(out_of_quota)


def test_decode_json_accepts_objects_only() -> None:
    assert decode_json(b'{"a": 1}', "p") == {"a": 1}
    with pytest.raises(MalformedResponse, match="invalid JSON"):
        decode_json(b'{"a":', "p")
    with pytest.raises(MalformedResponse, match="not an object: list"):
        decode_json("[1]", "p")


def test_the_providers_code_and_param_are_kept_and_cross_processes() -> None:
    # What a client decides on (trim the history on context_length_exceeded): the
    # gateway and ctx.llm.openai() pass them on to their callers.
    body = (
        b'{"error": {"message": "too long", "type": "invalid_request_error", '
        b'"param": "messages", "code": "context_length_exceeded"}}'
    )
    for status in (400, 429, 500):
        error = translate(status, body)
        assert isinstance(error, (ProviderRejected, ProviderError))
        assert (error.code, error.param) == ("context_length_exceeded", "messages")
        again = pickle.loads(pickle.dumps(error))
        assert (again.code, again.param, str(again)) == (error.code, error.param, str(error))
    plain = translate(400, b'{"error": {"message": "no", "code": 7}}')
    assert isinstance(plain, ProviderRejected) and (plain.code, plain.param) == (None, None)
