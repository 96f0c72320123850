"""``legion run --output``: written to what it names, as results arrive, never destroyed.

A regular file (or a new path) is replaced atomically, with the umask's mode; a device,
a FIFO, a symlink and ``/dev/stdout`` are written through. Lines reach the file in input
order as soon as every earlier line is done: a gated agent proves it, since the run
cannot finish until the test has read the first line.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from tests.acceptance.conftest import (
    LEGION,
    legion,
    read_jsonl,
    start_legion,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow

GATED = """
import asyncio
import os

import legion


@legion.agent(timeout=120, retries=2)
async def gated(ctx, i: int):
    # Line 1 answers at once; the others wait until the test opens the gate.
    gate = os.environ["GATE"]
    while i > 1 and not os.path.exists(gate):
        await asyncio.sleep(0.01)
    return i * 10
"""


@pytest.fixture
def gated(tmp_path: Path) -> Path:
    path = tmp_path / "gated.py"
    path.write_text(GATED)
    return path


PREVIOUS = '{"line": 1, "status": "succeeded", "output": 0}\n'  # an earlier run's output


def _run(agent: str, inp: Path, out: str, tmp_path: Path) -> list[str]:
    return [
        "run",
        agent,
        "-i",
        str(inp),
        "-o",
        out,
        "--store",
        f"sqlite:///{tmp_path / 'runs.db'}",
        "--no-progress",
    ]


def _null_device(tmp_path: Path) -> Path:
    """A character device that is safe to write: a private node of the null device where
    this process may make one (so a regression destroys only that node), else /dev/null."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        return Path("/dev/null")
    return node


def test_a_character_device_stays_a_character_device(tmp_path: Path, agents_file: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": i} for i in range(5)])
    for device in (_null_device(tmp_path), Path("/dev/null")):
        r = legion(*_run(f"{agents_file}:typed", inp, str(device), tmp_path))
        assert r.returncode == 0, r.stderr
        assert stat.S_ISCHR(os.stat(device).st_mode)
        assert os.stat(device).st_rdev == os.makedev(1, 3)
        assert not Path(f"{device}.partial").exists()


def test_a_fifo_is_written_through_as_lines_finish(tmp_path: Path, gated: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in (1, 2, 3)])
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    gate = tmp_path / "gate"
    lines: list[str] = []
    first = threading.Event()

    def read() -> None:
        with open(fifo) as f:
            for line in f:
                lines.append(line)
                first.set()

    reader = threading.Thread(target=read)
    reader.start()
    proc = start_legion(*_run(f"{gated}:gated", inp, str(fifo), tmp_path), env={"GATE": str(gate)})
    try:
        # Line 1 arrives while lines 2 and 3 still wait for the gate: the file streams.
        assert first.wait(timeout=60), "no line arrived before the run ended"
        assert [json.loads(line)["output"] for line in lines] == [10]
        gate.touch()
        _, err = proc.communicate(timeout=60)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=60)
    assert proc.returncode == 0, err
    assert [json.loads(line)["output"] for line in lines] == [10, 20, 30]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_stays_and_its_target_is_written(tmp_path: Path, agents_file: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": i} for i in range(3)])
    target = tmp_path / "data" / "answers.jsonl"
    target.parent.mkdir()
    target.write_text("my notes\n")
    link = tmp_path / "answers.jsonl"
    link.symlink_to(target)
    # A link to a file that is not a run's output: refused, as the file itself is (it
    # was truncated through the link and written over, exit 0).
    r = legion(*_run(f"{agents_file}:typed", inp, str(link), tmp_path))
    assert r.returncode == 2 and "it is not the output of a legion run" in r.stderr, r.stderr
    assert target.read_text() == "my notes\n"
    target.write_text('{"line": 1, "status": "queued"}\n')  # an earlier run's output
    r = legion(*_run(f"{agents_file}:typed", inp, str(link), tmp_path))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert [row["output"] for row in read_jsonl(target)] == [1, 2, 3]
    assert not list(target.parent.glob("*.partial"))
    # A link to /dev/stdout, stdout a file: written through, as /dev/stdout itself is.
    to_stdout = tmp_path / "to-stdout"
    to_stdout.symlink_to("/dev/stdout")
    shown = tmp_path / "shown.jsonl"
    other = write_jsonl(tmp_path / "other.jsonl", [{"n": 7}])
    with shown.open("w") as f:
        run = [*LEGION, *_run(f"{agents_file}:typed", other, str(to_stdout), tmp_path)]
        done = subprocess.run(run, stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [row["output"] for row in read_jsonl(shown)] == [8]
    assert to_stdout.is_symlink() and not list(tmp_path.glob("*.partial"))


def test_dev_stdout_writes_to_the_open_stdout(tmp_path: Path, agents_file: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": i} for i in range(3)])
    out = tmp_path / "out.jsonl"
    out.write_text("kept\n")
    with out.open("a") as f:  # as `>> out.jsonl` in a shell: appended, never truncated
        r = subprocess.run(
            [*LEGION, *_run(f"{agents_file}:typed", inp, "/dev/stdout", tmp_path)],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert r.returncode == 0, r.stderr
    text = out.read_text().splitlines()
    assert text[0] == "kept"
    assert [json.loads(line)["output"] for line in text[1:]] == [1, 2, 3]


def test_what_an_agent_prints_stays_out_of_the_results_on_stdout(tmp_path: Path) -> None:
    # An agent's print() (a library's too) went to stdout among the JSON lines.
    agents = tmp_path / "chatty.py"
    agents.write_text(
        "import legion\n\n\n@legion.agent\nasync def chatty(ctx, n: int):\n"
        "    print(f'debug {n}')\n    return n\n"
    )
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": i} for i in range(3)])
    for i, output in enumerate(("-", "/dev/stdout")):
        r = legion(
            "run", f"{agents}:chatty", "-i", str(inp), "-o", output, "--no-progress",
            "--store", f"sqlite:///{tmp_path / f'c{i}.db'}",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert [json.loads(line)["output"] for line in r.stdout.splitlines()] == [0, 1, 2]
        assert {"debug 0", "debug 1", "debug 2"} <= set(r.stderr.splitlines())


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_umask_mode(
    tmp_path: Path, agents_file: Path, umask: int, mode: int
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    out = tmp_path / "out.jsonl"
    r = subprocess.run(
        [*LEGION, *_run(f"{agents_file}:typed", inp, str(out), tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(umask),
    )
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == mode
    assert read_jsonl(out)[0]["output"] == 2


def test_an_existing_file_is_replaced_atomically(tmp_path: Path, agents_file: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": i} for i in range(20)])
    out = tmp_path / "out.jsonl"
    out.write_text(PREVIOUS)
    with out.open() as held:  # a reader of the old file keeps seeing all of it
        before = os.fstat(held.fileno()).st_ino
        r = legion(*_run(f"{agents_file}:typed", inp, str(out), tmp_path))
        assert r.returncode == 0, r.stderr
        assert held.read() == PREVIOUS
    assert os.stat(out).st_ino != before
    assert [row["output"] for row in read_jsonl(out)] == list(range(1, 21))
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_a_killed_run_leaves_the_file_whole_and_resumes(tmp_path: Path, gated: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in (1, 2, 3)])
    out = tmp_path / "out.jsonl"
    out.write_text(PREVIOUS)
    partial = tmp_path / "out.jsonl.partial"
    gate = tmp_path / "gate"
    args = _run(f"{gated}:gated", inp, str(out), tmp_path)
    proc = start_legion(*args, env={"GATE": str(gate)})
    try:
        wait_for(lambda: partial.exists() and partial.read_text().endswith("\n"), what="line 1")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.read_text() == PREVIOUS  # untouched
    assert [row["output"] for row in read_jsonl(partial)] == [10]  # whole lines only

    gate.touch()
    again = legion(*args, env={"GATE": str(gate)})
    assert again.returncode == 0, again.stderr
    assert [row["output"] for row in read_jsonl(out)] == [10, 20, 30]
    assert not partial.exists()


def test_a_second_run_writing_the_same_output_is_refused_and_the_first_keeps_its_lines(
    tmp_path: Path, gated: Path
) -> None:
    """Both runs used to write: the second took NAME.partial from under the first, whose
    own results were then lost (its rename found nothing to move, or moved the other's)."""
    inp = write_jsonl(tmp_path / "in.jsonl", [{"i": i} for i in (1, 2, 3)])
    other = write_jsonl(tmp_path / "other.jsonl", [{"i": i} for i in (1, 7)])
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    gate = tmp_path / "gate"
    first = start_legion(*_run(f"{gated}:gated", inp, str(out), tmp_path), env={"GATE": str(gate)})
    try:
        wait_for(lambda: partial.exists() and partial.read_text().endswith("\n"), what="line 1")
        second = legion(*_run(f"{gated}:gated", other, str(out), tmp_path), env={"GATE": "-"})
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith(f"error: cannot write {out}: another run is writing it")
        assert "Traceback" not in second.stderr
        assert [row["output"] for row in read_jsonl(partial)] == [10]  # the first's, kept
        gate.touch()
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert [row["output"] for row in read_jsonl(out)] == [10, 20, 30]
    assert not partial.exists()


def test_an_output_that_cannot_be_written_is_one_line(tmp_path: Path, agents_file: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    for target, why in ((tmp_path / "nope" / "out.jsonl", "does not exist"), (tmp_path, "folder")):
        r = legion(*_run(f"{agents_file}:typed", inp, str(target), tmp_path))
        assert r.returncode == 2
        assert r.stderr.startswith("error: cannot write"), r.stderr
        assert why in r.stderr
        assert "Traceback" not in r.stderr


def test_an_output_naming_the_runs_own_files_is_refused_and_they_stay(
    tmp_path: Path, agents_file: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}, {"n": 2}])
    store = tmp_path / "runs.db"
    first = legion(*_run(f"{agents_file}:typed", inp, str(tmp_path / "out.jsonl"), tmp_path))
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in (inp, store, agents_file)}
    for target, what in (
        (store, "the store's database"),
        (inp, "the run's input file"),
        (agents_file, "the code of agent 'typed'"),
    ):
        r = legion(*_run(f"{agents_file}:typed", inp, str(target), tmp_path))
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"error: cannot write {target}: it is {what}"), r.stderr
        assert "Traceback" not in r.stderr
    assert {p: p.read_bytes() for p in before} == before
    assert not list(tmp_path.glob("*.partial"))
    status = legion("status", "--store", f"sqlite:///{store}")
    assert status.returncode == 0, status.stderr


def test_an_output_naming_a_file_the_store_makes_later_is_refused(
    tmp_path: Path, agents_file: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}])
    # Not there between runs: SQLite makes its -wal while the store is open and deletes
    # it when the store closes (results written there would be deleted with it); the
    # vectors file, when a task first uses ctx.vectors.
    for name in ("runs.db-wal", "runs.db-shm", "runs.vectors.db"):
        target = tmp_path / name
        r = legion(*_run(f"{agents_file}:typed", inp, str(target), tmp_path))
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"error: cannot write {target}: it is the store's database")
        assert not target.exists() and not list(tmp_path.glob("*.partial"))
    ok = legion(*_run(f"{agents_file}:typed", inp, str(tmp_path / "runs.jsonl"), tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert [r["status"] for r in read_jsonl(tmp_path / "runs.jsonl")] == ["succeeded"]


def test_an_output_of_dash_is_stdout_as_an_input_of_dash_is_stdin(
    tmp_path: Path, agents_file: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"n": 1}, {"n": 2}])
    r = legion(*_run(f"{agents_file}:typed", inp, "-", tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row["line"], row["output"]) for row in rows] == [(1, 2), (2, 3)]
    assert not (tmp_path / "-").exists() and not (tmp_path / "-.partial").exists()
