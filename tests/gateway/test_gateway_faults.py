"""The gateway when what it stands on fails: its store stops (a private PostgreSQL
cluster, stopped and started for real), its provider cannot be reached, a caller asks
for a path it does not serve. Every answer is one an OpenAI client reads: JSON, with
``Retry-After`` on a 503; never a text page or a two-minute wait."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import legion, start_sim
from tests.gateway.test_gateway import new_key, start_gateway, stop
from tests.pg_cluster import PrivateCluster, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    c = PrivateCluster()
    c.init()
    c.start()
    yield c
    c.remove()


def call(
    url: str, path: str, key: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON body of one request to the gateway."""
    request = urllib.request.Request(
        url.removesuffix("/v1") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_a_store_that_stops_answers_503_and_health_says_so(cluster: PrivateCluster) -> None:
    sim, sim_url = start_sim()
    gateway, url = start_gateway("--llm", f"openai:sim-model@{sim_url}", "--store", cluster.url)
    try:
        key = new_key(cluster.url, "before")  # (never used: its check goes to the store)
        assert call(url, "/healthz", key)[0] == 200
        cluster.stop()
        status, headers, body = call(url, "/v1/chat/completions", key, CHAT)
        assert status == 503, body  # was a 500 text page: "Server got itself in trouble"
        assert "the store is unavailable" in body["error"]["message"]
        assert headers["Retry-After"] == "5"
        status, headers, body = call(url, "/healthz", key)
        assert status == 503 and body["ok"] is False  # was 200 {"ok": true}
        assert "Retry-After" in headers
        cluster.start()
        assert call(url, "/v1/chat/completions", key, CHAT)[0] == 200
        assert call(url, "/healthz", key)[0] == 200
    finally:
        stop(gateway)
        stop(sim)


def test_a_provider_that_cannot_be_reached_answers_502_within_max_outage(
    store_file: str,
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    gateway, url = start_gateway(
        "--llm", f"openai:sim-model@{nowhere}", "--store", store_file, "--max-outage", "1"
    )
    try:
        key = new_key(store_file, "k")
        status, _, body = call(url, "/v1/chat/completions", key, CHAT)
        assert status == 502, body
        assert body["error"]["message"]
    finally:
        stop(gateway)


def test_paths_and_methods_it_does_not_serve_answer_openai_errors(store_file: str) -> None:
    sim, sim_url = start_sim()
    gateway, url = start_gateway("--llm", f"openai:sim-model@{sim_url}", "--store", store_file)
    try:
        key = new_key(store_file, "k")
        status, _, body = call(url, "/v1/completions", key, {"prompt": "x"})  # legacy API
        assert status == 404 and "serves no POST /v1/completions" in body["error"]["message"]
        assert "POST /v1/chat/completions" in body["error"]["message"]
        # The models a caller may name, as SDKs and tools list them at their start.
        status, _, body = call(url, "/v1/models", key)
        assert status == 200 and body["object"] == "list", body
        assert {m["id"] for m in body["data"]} == {"sim-model", "default"}
        # A message that is no object is the caller's error (it was a 500 and a traceback);
        # "n": null is OpenAI's default, taken.
        odd = {"model": "sim-model", "messages": [1, 2]}
        status, _, body = call(url, "/v1/chat/completions", key, odd)
        assert status == 400 and "messages[0]" in body["error"]["message"], body
        nulled = {"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "n": None}
        status, _, body = call(url, "/v1/chat/completions", key, nulled)
        assert status == 200, body
        status, headers, body = call(url, "/v1/usage", key, {"x": 1})  # POST on a GET
        assert status == 405 and "GET" in headers["Allow"] and body["error"]
        # Nested past what legion takes: refused as the caller's error (300 levels were
        # read, then failed to be sent on: a 500 and a traceback in the gateway's log).
        deep: Any = "x"
        for _ in range(300):
            deep = [deep]
        status, _, body = call(url, "/v1/chat/completions", key, {**CHAT, "metadata": deep})
        assert status == 400 and "deeper than 200 levels" in body["error"]["message"], body
    finally:
        stop(gateway)
        stop(sim)


def test_a_provider_refusing_the_gateways_key_is_no_401_to_the_caller(
    store_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller's key is good; the provider refused the gateway's own. A 401 (with
    # WWW-Authenticate) made an SDK raise AuthenticationError about the legion key.
    sim, sim_url = start_sim("--api-key", "sk-the-providers")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-the-providers")
    gateway, url = start_gateway("--llm", f"openai:sim-model@{sim_url}", "--store", store_file)
    try:
        key = new_key(store_file, "k")
        status, headers, body = call(url, "/v1/chat/completions", key, CHAT)
        assert status == 502, body
        assert "WWW-Authenticate" not in headers and body["error"]["code"] is None
        assert "rejected the API key" in body["error"]["message"], body
        assert "sk-not-the-providers" not in json.dumps(body)
    finally:
        stop(gateway)
        stop(sim)


def test_a_bad_route_config_is_one_line(tmp_path: Path, store_file: str) -> None:
    config = tmp_path / "routes.toml"
    config.write_text('[llm.default]\nprovider = "openai"\nmodle = "m"\n')
    out = legion("gateway", "--config", str(config), "--store", store_file, "--port", "0")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "error: [llm.default]: unknown option(s) modle"
