"""The command line given what a careless user or a script gives it: every refusal a line
that says what to do, with the documented exit code, never a traceback; and what it
cannot write (a full disk, a closed standard output) never silently lost."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.acceptance.conftest import LEGION, legion, write_jsonl

pytestmark = pytest.mark.slow

AGENT = "import legion\n\n@legion.agent\nasync def echo(ctx, x: int) -> int:\n    return x\n"


def _raw(*args: str, stdin: int | None = None, stdout: int | None = None) -> tuple[int, str]:
    """Run ``legion`` with these file descriptors for its standard input and output
    (``-1``: closed); answer its exit code and its standard error."""

    def child() -> None:
        for target, fd in ((0, stdin), (1, stdout)):
            if fd == -1:
                os.close(target)
            elif fd is not None:
                os.dup2(fd, target)

    done = subprocess.run(
        [*LEGION, *args],
        stderr=subprocess.PIPE,
        stdout=None if stdout is not None else subprocess.DEVNULL,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        preexec_fn=child,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stderr


def test_a_full_or_closed_standard_output_is_an_error_line_and_a_key_is_not_lost(
    tmp_path: Path,
) -> None:
    # A traceback in every command but `run`; `keys create` with its output on a full disk
    # left the key active, its secret (shown once) lost; with it closed, exit 0.
    store = f"sqlite:///{tmp_path / 's.db'}"
    assert legion("status", "--store", store, "--json").returncode == 2  # (no store yet)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        for args in (["--version"], ["--help"], ["keys", "create", "--store", store]):
            code, err = _raw(*args, stdout=full)
            assert code == 1 and "Traceback" not in err, (args, err)
            assert "cannot write" in err and "No space left on device" in err, (args, err)
    finally:
        os.close(full)
    assert "revoked" in err
    code, err = _raw("keys", "create", "--store", store, stdout=-1)
    assert code == 2 and "standard output is closed" in err, err
    listed = legion("keys", "list", "--store", store, "--json")
    keys = [line for line in listed.stdout.splitlines() if line.strip()]
    assert len(keys) == 1 and '"revoked_at": null' not in keys[0]  # the lost one, revoked


def test_arguments_and_inputs_no_command_can_take_are_refused_in_a_line(tmp_path: Path) -> None:
    agents = tmp_path / "agents.py"
    agents.write_text(AGENT)
    store = f"sqlite:///{tmp_path / 's.db'}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"x": 1}])
    cases = [
        (["status", "--store", "sqlite:///" + os.fsdecode(b"\xff.db")], 2, "not UTF-8 text"),
        (["purge", "--older-than", "1000000d", "--store", store], 2, "100 years"),
        (
            ["worker", "--app", str(agents), "--store", store, "--offer", "memory_mb=nan"],
            2,
            "finite number",
        ),
        (
            [
                "run",
                f"{agents}:echo",
                "-i",
                str(inp),
                "--store",
                store,
                "--executor",
                "process",
                "--memory-limit",
                "99999999999999",
            ],
            2,
            "--memory-limit",
        ),
        (["run", f"{agents}:echo", "-i", str(inp), "--store", store, "--llm", "=sim"], 2, "empty"),
        (
            [
                "run",
                f"{agents}:echo",
                "-i",
                str(inp),
                "--store",
                "postgresql://postgres@127.0.0.1/test?call_timeout=nan",
            ],
            2,
            "call_timeout must be",
        ),
        (["schedule", "add", "n", "", "--cron", "* * * * *", "--store", store], 2, "AGENT"),
        (
            ["worker", "--app", str(agents), "--store", store, "--autoscale", "1:99999999999"],
            2,
            "at most 1024",
        ),
    ]
    for args, code, said in cases:
        r = legion(*args)
        assert r.returncode == code and said in r.stderr, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, (args, r.stderr)
    code, err = _raw("run", f"{agents}:echo", "-i", "-", "--store", store, stdin=-1)
    assert code == 2 and "standard input is closed" in err, err


def test_the_demo_replaces_no_file_but_its_own_reports(tmp_path: Path) -> None:
    # `legion demo --report agents.py` wrote its HTML over the agent's code, after the
    # whole demo had run; a folder was a traceback.
    code = tmp_path / "agents.py"
    code.write_text(AGENT)
    r = legion("demo", "--tasks", "2", "--scaled-only", "--report", str(code), cwd=tmp_path)
    assert r.returncode == 2 and "is not a legion demo report" in r.stderr, r.stderr
    assert code.read_text() == AGENT
    r = legion("demo", "--tasks", "2", "--scaled-only", "--report", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "it is a folder" in r.stderr, r.stderr
    # --report and --json on one path: the JSON was written, then the HTML over it.
    both = str(tmp_path / "out.html")
    r = legion("demo", "--tasks", "2", "--scaled-only", "--report", both, "--json", both)
    assert r.returncode == 2 and "give each its own file" in r.stderr, r.stderr
    assert not (tmp_path / "out.html").exists()
