"""Every message of the ``legion`` command is printed as written: square brackets in a
path, an input file's name, a config table, an install hint or an agent's own error
reach the user intact, and nothing ends in a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.conftest import legion, read_jsonl, write_jsonl

pytestmark = pytest.mark.slow

AGENT = """
import legion


@legion.agent(retries=0)
async def echo(ctx, question: str):
    if question == "fail":
        raise RuntimeError("[bold]boom[/] in [red]x")
    return question
"""


@pytest.fixture
def bracketed(tmp_path: Path) -> Path:
    """An agent file at ``data[/v2].py`` (a folder named ``data[``): rich markup would
    read ``[/v2]`` as a closing tag and fail."""
    folder = tmp_path / "data["
    folder.mkdir()
    path = folder / "v2].py"
    path.write_text(AGENT)
    return path


def _clean(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert "MarkupError" not in r.stderr, r.stderr


def test_a_wrong_agent_name_in_a_bracketed_path(tmp_path: Path, bracketed: Path) -> None:
    inp = tmp_path / "in[1].jsonl"
    inp.write_text('"q"\n')
    r = legion("run", f"{bracketed}:nope", "-i", str(inp), cwd=tmp_path)
    _clean(r)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {bracketed} has no attribute 'nope'; its agents: echo"


def test_a_missing_file_with_brackets(tmp_path: Path, bracketed: Path) -> None:
    r = legion("run", f"{bracketed}:echo", "-i", "nope[1].jsonl", cwd=tmp_path)
    _clean(r)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: no such input file: nope[1].jsonl"
    r = legion("run", "gone[/v2].py:echo", "-i", "nope[1].jsonl", cwd=tmp_path)
    _clean(r)
    assert "error: no such input file: nope[1].jsonl" in r.stderr


def test_a_config_error_keeps_its_table_name(tmp_path: Path, bracketed: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('"q"\n')
    (tmp_path / "legion.toml").write_text('[llm.cheap]\nprovider = "sim"\nrmp = 5\n')
    r = legion("run", f"{bracketed}:echo", "-i", str(inp), cwd=tmp_path)
    _clean(r)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: [llm.cheap]: unknown option(s) rmp"


def test_an_install_hint_keeps_its_extra(tmp_path: Path) -> None:
    # The server's modules made unimportable in a real `legion serve` process.
    code = (
        "import sys; sys.modules['uvicorn'] = None; "
        "sys.argv = ['legion', 'serve', '--app', 'x.py']; "
        "from legion.cli import main; main()"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    _clean(r)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: this command needs uvicorn: pip install 'legion-runtime[server]' "
        "(in a clone: pip install -e '.[server]')"
    )


def test_a_ctrl_c_while_the_command_loads_exits_quietly(tmp_path: Path) -> None:
    """A Ctrl-C in the first few tenths of a second, as the command's modules load,
    printed Python's traceback of the import it cut short (the process then died of the
    signal). The interrupt is raised where the command's module is imported."""
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'legion.cli.app':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['legion', '--help']\n"
        "from legion.cli import main; main()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert (r.returncode, r.stdout, r.stderr) == (130, "", "")


def test_bad_lines_and_task_errors_with_brackets(tmp_path: Path, bracketed: Path) -> None:
    inp = tmp_path / "in[1].jsonl"
    inp.write_text('"fine"\n{"q"\n"fail"\n')
    out = tmp_path / "out[x].jsonl"
    r = legion(
        "run",
        f"{bracketed}:echo",
        "-i",
        str(inp),
        "-o",
        str(out),
        "--store",
        f"sqlite:///{tmp_path / 'db'}",
        cwd=tmp_path,
    )
    _clean(r)
    assert r.returncode == 1
    assert f"skipped {inp}:2: line 2 is not valid JSON" in r.stderr
    assert "line 3: dead RuntimeError: [bold]boom[/] in [red]x (at v2].py:" in r.stderr
    rows = read_jsonl(out)
    assert rows[0]["output"] == "fine"
    assert rows[2]["error"]["message"] == "[bold]boom[/] in [red]x"
    st = legion("status", "--store", f"sqlite:///{tmp_path / 'db'}", env={"COLUMNS": "200"})
    _clean(st)
    assert st.returncode == 0
    assert "RuntimeError: [bold]boom[/] in [red]x (at v2].py:" in st.stdout


def _unwrapped(help_text: str) -> str:
    """Help text with its wrapping undone (the wrapper breaks lines after a hyphen too)."""
    return "".join(line.strip() if line.strip() else "\n" for line in help_text.splitlines())


def test_help_keeps_its_brackets() -> None:
    r = legion("run", "--help")
    assert r.returncode == 0
    assert "legion-runtime[local]" in _unwrapped(r.stdout)
    r = legion("bench", "overhead", "--help")
    assert r.returncode == 0
    assert "legion-runtime[bench]" in _unwrapped(r.stdout)


def test_a_postgres_url_with_a_parameter_libpq_does_not_know(tmp_path: Path) -> None:
    r = legion("status", "--store", "postgresql://u@127.0.0.1/db?schema=mine", cwd=tmp_path)
    _clean(r)
    assert r.returncode == 2
    assert r.stderr.startswith("error: bad PostgreSQL URL postgresql://u@127.0.0.1/db?schema=mine")
    assert "options=-csearch_path%3Dname" in r.stderr


ECHO = """
import legion


@legion.agent
async def echo(ctx, x: int):
    return x
"""


@pytest.mark.parametrize(
    ("store", "said"),
    [
        ("sqlite:///", "error: bad SQLite URL 'sqlite:///'"),
        ("sqlite:///q.db?mode=ro", "a SQLite store takes no parameters"),
        ("postgresql://u@[::1:5432/db", "error: bad PostgreSQL URL: Invalid IPv6 URL"),
        # a raw '@' in a password: libpq sends the password's tail as the host name
        ("postgresql://u:pa@ss@127.0.0.1/db", "write a '@' of a password as %40"),
        # no database: the server took the user's, and legion's tables went into
        # `postgres`, the maintenance database
        ("postgresql://postgres@127.0.0.1:5432", "names no database: add one"),
    ],
)
def test_a_malformed_store_url_is_one_line(tmp_path: Path, store: str, said: str) -> None:
    (tmp_path / "ag.py").write_text(ECHO)
    (tmp_path / "in.jsonl").write_text('{"x": 1}\n')
    r = legion("run", "ag.py:echo", "-i", "in.jsonl", "-s", store, cwd=tmp_path)
    _clean(r)
    assert r.returncode == 2
    assert said in r.stderr.splitlines()[-1]
    assert "ss@" not in r.stderr  # (no part of a password printed)
    assert not (tmp_path / "q.db?mode=ro").exists()


def test_a_config_that_is_not_utf8_and_a_closed_stdout_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "ag.py").write_text(ECHO)
    (tmp_path / "in.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe[llm]\n")
    store = f"sqlite:///{tmp_path / 'db'}"
    run = ("run", "ag.py:echo", "-i", "in.jsonl", "-s", store)
    r = legion(*run, "--config", "bad.toml", cwd=tmp_path)
    _clean(r)
    assert r.returncode == 2
    assert (
        r.stderr.strip() == "error: cannot read bad.toml: it is not UTF-8 text (byte 0: b'\\xff')"
    )
    closed = subprocess.run(
        [sys.executable, "-m", "legion", *run],
        cwd=tmp_path,
        stdout=None,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(1),
    )
    _clean(closed)
    assert closed.returncode == 2
    assert closed.stderr.strip().endswith(
        "error: cannot write the results: standard output is closed"
    )


def test_a_count_past_what_a_store_holds_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "ag.py").write_text(ECHO)
    (tmp_path / "in.jsonl").write_text('{"x": 1}\n')
    r = legion("run", "ag.py:echo", "-i", "in.jsonl", "-c", "99999999999999999999", cwd=tmp_path)
    assert r.returncode == 2  # (it used to wait for good, the store refusing the count)
    assert "Invalid value for '--concurrency'" in r.stderr


def test_a_bad_llm_route_is_refused_before_the_store_is_made(tmp_path: Path) -> None:
    # It was refused with a good line, after an empty ./legion.db had been made.
    (tmp_path / "ag.py").write_text(ECHO)
    (tmp_path / "in.jsonl").write_text('{"x": 1}\n')
    for spec in ("simm", "openai"):
        r = legion("run", "ag.py:echo", "-i", "in.jsonl", "--llm", spec, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.splitlines()[-1].startswith("error: ")
        assert not (tmp_path / "legion.db").exists()


def test_agent_filters_of_retry_and_cancel_say_what_they_go_with(tmp_path: Path) -> None:
    # `retry 1 --agent other` queued task 1 whatever its agent; `cancel --agent x` alone
    # was told to give task ids.
    store = f"sqlite:///{tmp_path / 'legion.db'}"
    retried = legion("retry", "1", "--agent", "other", "--store", store)
    assert retried.returncode == 2
    assert "--agent goes with --dead, --failed or --cancelled" in retried.stderr
    cancelled = legion("cancel", "--agent", "x", "--store", store)
    assert cancelled.returncode == 2
    assert "--agent goes with --tenant" in cancelled.stderr
    retried = legion("retry", "1", "--tenant", "acme", "--store", store)
    assert retried.returncode == 2
    assert "--tenant goes with --dead, --failed or --cancelled" in retried.stderr


def test_retry_by_status_keeps_to_a_tenant_and_names_one_mistyped(
    tmp_path: Path, agents_file: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'legion.db'}"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": 1}, {"i": 2}])
    ran = legion("run", f"{agents_file}:doomed", "-i", str(inp), "--store", store)
    assert ran.returncode == 1  # both dead, of the tenant `default`
    typo = legion("retry", "--dead", "--tenant", "defualt", "--store", store)
    assert typo.returncode == 1
    assert "no tasks of tenant 'defualt' in the store (its tenants: default)" in typo.stderr
    retried = legion("retry", "--dead", "--tenant", "default", "--store", store)
    assert retried.returncode == 0, retried.stderr
    assert "queued again: 2 task(s)" in retried.stderr
