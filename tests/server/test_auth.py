"""API keys over real HTTP: every route but /healthz and /livez needs one; 401 without, 403
revoked."""

from __future__ import annotations

import base64
import time

from legion.server.keys import new_key
from tests.server.conftest import Api

GUARDED = [
    ("GET", "/v1/tasks"),
    ("POST", "/v1/tasks"),
    ("POST", "/v1/tasks:batch"),
    ("GET", "/v1/tasks/1"),
    ("POST", "/v1/tasks/1:cancel"),
    ("POST", "/v1/tasks/1:retry"),
    ("GET", "/v1/tasks/1/events"),
    ("GET", "/v1/progress"),
    ("GET", "/v1/statistics"),
    ("GET", "/v1/workers"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
    ("GET", "/tasks/1"),
    ("GET", "/static/dashboard.js"),
]

BAD_HEADERS = [
    "Bearer nope",
    "Bearer lgn_000000000000_" + "a" * 43,  # well formed, unknown
    "Token x",
    "Basic !!!",
    "Basic " + base64.b64encode(b"no-colon").decode(),
]


async def test_every_route_needs_a_key(api: Api) -> None:
    for method, path in GUARDED:
        async with api.http.request(method, api.url + path, json={}) as resp:
            assert resp.status == 401, (method, path)
            assert resp.headers.getall("WWW-Authenticate") == [
                'Bearer realm="legion"',
                'Basic realm="legion", charset="UTF-8"',
            ]
            assert "API key" in (await resp.json())["detail"]


async def test_healthz_needs_no_key(api: Api) -> None:
    assert await api.call("GET", "/healthz", headers={}) == (200, {"status": "ok"})


async def test_a_bad_key_is_refused_with_401(api: Api) -> None:
    for header in BAD_HEADERS:
        status, body = await api.call("GET", "/v1/tasks", headers={"Authorization": header})
        assert status == 401, (header, body)


async def test_two_authorization_headers_are_refused(api: Api) -> None:
    # The first was read: a proxy in front that reads the last would see another key.
    other = new_key("other", time.time())
    await api.runtime.store.add_api_key(other.record)
    twice = [("Authorization", f"Bearer {api.key}"), ("Authorization", f"Bearer {other.token}")]
    async with api.http.get(api.url + "/v1/key", headers=twice) as resp:
        assert resp.status == 401
        assert (await resp.json())["detail"] == "send one Authorization header, not 2"


async def test_a_wrong_secret_is_refused_even_for_a_known_id(api: Api) -> None:
    key_id = api.key.split("_")[1]
    forged = f"lgn_{key_id}_" + "A" * 43
    assert (await api.call("GET", "/v1/tasks", headers=api.auth(forged)))[0] == 401


async def test_a_revoked_key_is_refused_with_403(any_api: Api) -> None:
    other = new_key("other", time.time())
    await any_api.runtime.store.add_api_key(other.record)
    assert (await any_api.call("GET", "/v1/workers", headers=any_api.auth(other.token)))[0] == 200
    assert await any_api.runtime.store.revoke_api_key(other.record.id, time.time())
    status, body = await any_api.call("GET", "/v1/workers", headers=any_api.auth(other.token))
    assert (status, body) == (403, {"detail": "this API key was revoked"})
    # A revoked key with a wrong secret says nothing about the key: 401.
    forged = f"lgn_{other.record.id}_" + "A" * 43
    assert (await any_api.call("GET", "/v1/workers", headers=any_api.auth(forged)))[0] == 401
    assert (await any_api.call("GET", "/v1/workers"))[0] == 200  # the other key still works


async def test_the_key_works_as_a_basic_password_for_browsers(api: Api) -> None:
    basic = base64.b64encode(f"anyone:{api.key}".encode()).decode()
    async with api.http.get(api.url + "/", headers={"Authorization": f"Basic {basic}"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert "<title>legion</title>" in await resp.text()


async def test_changes_from_another_origin_are_refused(api: Api) -> None:
    status, body = await api.call(
        "POST",
        "/v1/tasks",
        body={"agent": "work", "input": {"n": 1}},
        headers={**api.auth(), "Origin": "http://elsewhere.example"},
    )
    assert status == 403 and "cross-origin" in body["detail"]
    same = {**api.auth(), "Origin": api.url}
    status, _ = await api.call(
        "POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}}, headers=same
    )
    assert status == 201


async def test_the_dashboards_changes_through_a_reverse_proxy_are_its_own(api: Api) -> None:
    # A proxy that sends the backend's own Host (nginx's default) passes the page's host
    # on as X-Forwarded-Host: the dashboard's cancel, retry and approve buttons were
    # refused as cross-origin behind it.
    proxied = {
        **api.auth(),
        "Origin": "https://legion.example.com",
        "X-Forwarded-Host": "legion.example.com",
    }
    status, body = await api.call(
        "POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}}, headers=proxied
    )
    assert status == 201, body
    elsewhere = {**proxied, "Origin": "https://elsewhere.example"}
    status, body = await api.call(
        "POST", "/v1/tasks", body={"agent": "work", "input": {"n": 2}}, headers=elsewhere
    )
    assert status == 403 and "pass the Host header on" in body["detail"]
