"""``legion serve`` and ``legion keys`` as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import start_legion, wait_for
from tests.server.process import create_key, legion, serve, write_agents

pytestmark = pytest.mark.slow


def call(url: str, key: str | None, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {key}"} if key else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def events(url: str, key: str) -> list[tuple[str, Any]]:
    """Read an event stream to its end."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    out, name = [], "message"
    with urllib.request.urlopen(request, timeout=30) as resp:
        for raw in resp:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                out.append((name, json.loads(line.removeprefix("data: "))))
    return out


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    made = legion("keys", "create", "--name", "ci", "--store", store)
    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[-1]
    assert key.startswith("lgn_") and len(key) == 60
    key_id = key.split("_")[1]
    assert f"created API key {key_id} (ci)" in made.stderr
    listed = legion("keys", "list", "--store", store)
    assert listed.stdout.startswith(f"{key_id}\tci\tcreated ") and "active" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout  # never the secret
    assert legion("keys", "revoke", key_id, "--store", store).returncode == 0
    as_json = json.loads(legion("keys", "list", "--json", "--store", store).stdout)
    assert as_json["id"] == key_id and as_json["revoked_at"] is not None
    assert (as_json["tenant"], as_json["scope"]) == ("default", "tenant")
    admin = legion(
        "keys", "create", "--name", "ops", "--admin", "--tenant", "acme", "--store", store
    )
    assert admin.returncode == 0 and "admin key" in admin.stderr
    bad = legion("keys", "create", "--tenant", "no spaces", "--store", store)
    assert bad.returncode != 0 and "bad tenant name" in bad.stderr
    # A newline or an escape in a name would forge or colour the lines `keys list` prints.
    forged = legion("keys", "create", "--name", "a\nb\x1b[31m", "--store", store)
    assert forged.returncode == 2 and "--name takes printable text" in forged.stderr
    listed = legion("keys", "list", "--store", store)
    assert "\ttenant acme (admin)" in listed.stdout and "\ttenant default" in listed.stdout
    missing = legion("keys", "revoke", "0123456789ab", "--store", store)
    assert missing.returncode == 1 and "no API key 0123456789ab" in missing.stderr


def test_serve_runs_submitted_tasks_and_stops_on_sigterm(tmp_path: Path) -> None:
    with serve(tmp_path, "--log-format", "json", "-v") as server:
        assert call(f"{server.url}/v1/tasks", None)[0] == 401
        status, sub = call(
            f"{server.url}/v1/tasks", server.key, {"agent": "work", "input": {"n": 3}}
        )
        assert status == 201
        stream = events(f"{server.url}/v1/tasks/{sub['id']}/events", server.key)
        assert stream[-1][0] == "end" and stream[-1][1]["output"]["n"] == 3
        status, task = call(f"{server.url}/v1/tasks/{sub['id']}", server.key)
        assert status == 200 and task["status"] == "succeeded" and len(task["steps"]) == 3
        # A second key made while the server runs works at once.
        other = create_key(server.store, "late")
        assert call(f"{server.url}/v1/workers", other)[0] == 200
    logged = [json.loads(line) for line in server.stderr.splitlines() if line.startswith("{")]
    assert any(r.get("task_id") == sub["id"] and "submitted" in r["message"] for r in logged)
    assert "SIGTERM: stopping the server, then draining the worker" in server.stderr
    assert "no API key" not in server.stderr


def test_access_log_logs_requests_without_verbose(tmp_path: Path) -> None:
    # uvicorn says each request at INFO, and without -v the log shows WARNING and up:
    # --access-log ("Log every HTTP request.") logged nothing.
    with serve(tmp_path, "--access-log") as server:
        assert call(f"{server.url}/v1/workers", server.key)[0] == 200
    assert '"GET /v1/workers HTTP/1.1" 200' in server.stderr


def test_serve_on_a_store_without_keys_says_how_to_make_one(tmp_path: Path) -> None:
    with serve(tmp_path, "--no-worker", with_key=False) as server:
        assert call(f"{server.url}/v1/workers", None)[0] == 401
        key = create_key(server.store)  # as the hint says: it works at once
        assert call(f"{server.url}/v1/workers", key)[0] == 200
    hint = f"legion keys create --store {server.store}"
    assert "no API key in this store yet" in server.stderr and hint in server.stderr
    # Without a worker, there is none to drain.
    assert "SIGTERM: stopping the server\n" in server.stderr.replace("\r", "")
    assert "draining" not in server.stderr


def test_the_readme_example_and_the_serve_flags_work_as_printed(tmp_path: Path) -> None:
    args = ("--metrics-port", "0", "--tenant-rate", "120/m", "--tenant-max-queued", "100")
    capped = (*args, "--tenant-max-priority", "5")
    with serve(tmp_path, *capped) as server:
        assert server.process.stdout is not None
        line = server.process.stdout.readline()
        assert line.startswith("legion serve: metrics on http://127.0.0.1:"), line
        metrics_url = line.split("metrics on ", 1)[1].strip()
        with urllib.request.urlopen(metrics_url, timeout=30) as resp:  # no key
            assert resp.status == 200 and b"legion_tasks" in resp.read()
        # What `curl -H "Authorization: Bearer $KEY" URL -d '{...}'` sends: a form
        # content type (urllib's default for a body, as curl's).
        request = urllib.request.Request(
            f"{server.url}/v1/tasks",
            data=b'{"agent": "work", "input": {"n": 4}, "key": "optional-idempotency-key"}',
            headers={"Authorization": f"Bearer {server.key}"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 201
            sub = json.loads(resp.read())
        stream = events(f"{server.url}/v1/tasks/{sub['id']}/events", server.key)
        assert stream[-1][1]["output"]["n"] == 4
        request = urllib.request.Request(
            f"{server.url}/v1/tasks",
            data=b'{"agent": "work", "input": {"n": 4}, "priority": 6}',
            headers={"Authorization": f"Bearer {server.key}"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:  # (a tenant's key)
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 422
        assert b"priority_not_allowed" in refused.value.read()
    bad = legion("serve", "--app", "x.py", "--tenant-rate", "fast")
    assert bad.returncode == 2 and "bad rate 'fast'" in bad.stderr
    alone = legion("serve", "--app", "x.py", "--tenant-burst", "3")  # (was taken, and ignored)
    assert alone.returncode == 2 and "give that too" in alone.stderr, alone.stderr


def test_serve_exports_spans_when_asked(tmp_path: Path) -> None:
    with serve(tmp_path, "--trace", "console") as server:
        _, sub = call(f"{server.url}/v1/tasks", server.key, {"agent": "work", "input": {"n": 1}})
        events(f"{server.url}/v1/tasks/{sub['id']}/events", server.key)
    assert '"name": "legion.task work"' in server.stderr
    assert '"name": "legion.step"' in server.stderr


def test_serve_refuses_a_public_address_without_the_flag(tmp_path: Path) -> None:
    app = write_agents(tmp_path)
    store = f"sqlite:///{tmp_path / 's.db'}"
    refused = legion("serve", "--app", str(app), "--store", store, "--host", "0.0.0.0")
    assert refused.returncode == 2
    assert "not a loopback address" in refused.stderr and "--allow-remote" in refused.stderr


def test_serve_needs_an_app_with_agents(tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    out = legion("serve", "--app", str(empty), "--store", f"sqlite:///{tmp_path / 'e.db'}")
    assert out.returncode == 2 and "defines no agent" in out.stderr


def test_help_explains_serve_and_keys() -> None:
    serve_help = legion("serve", "--help")
    assert serve_help.returncode == 0
    assert "dashboard" in serve_help.stdout and "--allow-remote" in serve_help.stdout
    keys_help = legion("keys", "--help")
    assert keys_help.returncode == 0
    assert "create" in keys_help.stdout and "revoke" in keys_help.stdout


BULKY = """
import legion


def chunk(i: int) -> str:
    return str(i) * 20_000


@legion.agent(retries=0)
async def bulky(ctx, n: int):
    for i in range(n):
        await ctx.step(f"chunk{i}", chunk, i)
    return n
"""


def test_a_client_that_leaves_an_event_stream_is_no_error(tmp_path: Path) -> None:
    """A client that stops reading a task's events in the middle (a browser tab closed,
    `curl | head`) leaves the stream's keep-alive task sending into a closed stream:
    that is no failure of the server's, and its log says nothing of it."""
    with serve(tmp_path, agents=BULKY) as served:
        status, sub = call(
            f"{served.url}/v1/tasks", served.key, {"agent": "bulky", "input": {"n": 200}}
        )
        assert status == 201, sub
        names = [
            name for name, _ in events(f"{served.url}/v1/tasks/{sub['id']}/events", served.key)
        ]
        assert names.count("step") == 200 and names[-1] == "end"
        host, port = served.url.removeprefix("http://").rsplit(":", 1)
        request = (
            f"GET /v1/tasks/{sub['id']}/events HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {served.key}\r\n\r\n"
        ).encode()
        for _ in range(10):  # 4 MB of events: far more than the sockets buffer
            with socket.create_connection((host, int(port))) as conn:
                conn.sendall(request)
                seen = b""
                while b"event: step" not in seen:
                    seen += conn.recv(65536)
        assert call(f"{served.url}/healthz", None) == (200, {"status": "ok"})
    assert "Traceback" not in served.stderr, served.stderr
    assert "ERROR" not in served.stderr, served.stderr


def test_metrics_on_the_apis_own_port_is_refused_with_a_reason(tmp_path: Path) -> None:
    """Rather than "Address already in use", which sends the user hunting for another
    process on that port."""
    app = write_agents(tmp_path)
    store = f"sqlite:///{tmp_path / 'same.db'}"
    same = legion(
        "serve", "--app", str(app), "--store", store, "--port", "8123", "--metrics-port", "8123"
    )
    assert same.returncode == 2
    assert same.stderr.strip().splitlines()[-1] == (
        "error: --metrics-port 8123 is the API's --port: give the metrics another port "
        "(or leave it out: the API serves /metrics too, to an API key)"
    )


LLM_AGENT = """
import legion


@legion.agent(retries=0)
async def ask(ctx, n: int):
    answer = await ctx.llm.chat([{"role": "user", "content": f"question {n}"}], max_tokens=8)
    return answer.usage.total
"""


def test_a_server_without_a_worker_shows_the_workers_llm_routes(tmp_path: Path) -> None:
    """The deployment of the manifests: `serve --no-worker` and workers apart. The
    server's dashboard, statistics and /metrics showed no LLM route at all ("no LLM route
    in this server", 0 429s) while the workers called the provider."""
    with serve(tmp_path, "--no-worker", agents=LLM_AGENT) as server:
        app = tmp_path / "served_agents.py"
        worker = start_legion(
            "worker", "--app", str(app), "--store", server.store, "--llm", "sim",
            "--lease-seconds", "3",  # (a heartbeat a second)
        )  # fmt: skip
        try:
            n = 20
            tasks = [{"agent": "ask", "input": {"n": i}} for i in range(n)]
            status, sub = call(f"{server.url}/v1/tasks:batch", server.key, {"tasks": tasks})
            assert status in (200, 201), sub
            for t in sub["tasks"]:
                assert (
                    events(f"{server.url}/v1/tasks/{t['id']}/events", server.key)[-1][1]["status"]
                    == "succeeded"
                )
            admin = create_key(server.store, "ops", admin=True)

            def routes() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = call(f"{server.url}/v1/statistics", admin)[1][
                    "routes"
                ]
                return found

            wait_for(lambda: any(r["requests"] >= n for r in routes()), what="the routes")
            (route,) = routes()
            assert (route["route"], route["model"], route["requests"]) == (
                "default",
                "sim-model",
                n,
            )
            assert route["input_tokens"] > 0 and route["output_tokens"] > 0
            metrics = urllib.request.Request(
                f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}"}
            )
            with urllib.request.urlopen(metrics, timeout=30) as resp:
                text = resp.read().decode()
            labels = 'model="sim-model",provider="sim",route="default"'
            assert f"legion_llm_requests_total{{{labels}}} {n}.0" in text
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
