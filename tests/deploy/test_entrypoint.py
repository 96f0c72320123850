"""The deployment's commands, run as the containers run them but outside a container (no
image builder can reach a registry here): the compose file's ``serve`` and ``worker``
commands, with the example agents and the simulator as the provider. ``serve`` answers
``/healthz`` and serves ``legion_workers_desired`` on its metrics port; the autoscaled
workers run a burst of tasks and drain on SIGTERM, exiting 0 with nothing lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import yaml  # type: ignore[import-untyped]

from tests.acceptance.conftest import LEGION, legion, read_jsonl, start_sim

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())


def command(service: str, **replace: str) -> list[str]:
    """The service's command with some option values replaced (``--port`` -> ``port``)."""
    args = list(COMPOSE["services"][service]["command"])
    for option, value in replace.items():
        i = args.index("--" + option.replace("_", "-"))
        args[i + 1] = value
    return args


def test_serve_as_deployed_answers_health_and_the_desired_workers(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    args = command("serve", app=str(ROOT / "examples" / "research.py"), port="0", metrics_port="0")
    proc = subprocess.Popen(
        [*LEGION, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LEGION_STORE": store},
    )
    try:
        assert proc.stdout is not None
        metrics = url = ""
        while not (metrics and url):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            if "metrics on " in line:
                metrics = line.split("metrics on ", 1)[1].strip()
            elif "listening on " in line:
                url = line.split("listening on ", 1)[1].split()[0].strip()
        port = url.rsplit(":", 1)[1].strip("/")
        for probe in ("/healthz", "/livez"):  # (the manifest's readiness and liveness)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=30) as resp:
                assert resp.status == 200
        with urllib.request.urlopen(metrics, timeout=30) as resp:
            assert b"legion_workers_desired" in resp.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_workers_as_deployed_run_a_burst_and_drain_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = f"sqlite:///{db}"
    sim, sim_url = start_sim("--rpm", "600", "--window-seconds", "1", "--latency", "0.02")
    app = str(ROOT / "examples" / "research.py")
    args = command("worker", app=app, llm=f"openai:sim-model@{sim_url}")
    workers = subprocess.Popen(
        [*LEGION, *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LEGION_STORE": store},
    )
    try:
        out = tmp_path / "answers.jsonl"
        run = legion(
            "run", f"{app}:research", "--input", str(ROOT / "examples" / "questions.jsonl"),
            "--output", str(out), "--store", store, "--no-local-worker", "--no-progress",
            timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert {r["status"] for r in read_jsonl(out)} == {"succeeded"}
        with sqlite3.connect(db) as conn:
            ((desired,),) = conn.execute("SELECT desired FROM autoscalers").fetchall()
        assert 1 <= desired <= 4
    finally:
        workers.send_signal(signal.SIGTERM)
        _, err = workers.communicate(timeout=120)
        sim.send_signal(signal.SIGTERM)
        sim.communicate(timeout=30)
    assert workers.returncode == 0, err
    with sqlite3.connect(db) as conn:
        attempts = {a for (a,) in conn.execute("SELECT attempt FROM tasks")}
        left = conn.execute("SELECT count(*) FROM workers").fetchone()[0]
    assert attempts == {1} and left == 0
