"""The writer of ``legion run --output``: input order, as soon as it can, on real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from legion.cli.output import OrderedLines, OutputError, open_output


def test_lines_are_written_in_input_order_as_the_prefix_completes(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    out = open_output(path)
    assert out.replaces and out.partial == tmp_path / "out.jsonl.partial"
    lines = OrderedLines(out, [1, 2, 4, 5])
    lines.put(2, b"two\n")
    assert out.partial.read_bytes() == b"" and lines.waiting == 1  # line 1 not done yet
    lines.put(1, b"one\n")
    assert out.partial.read_bytes() == b"one\ntwo\n" and lines.waiting == 0
    lines.put(5, b"five\n")
    lines.put(4, b"four\n")
    assert not path.exists()  # the target appears whole, at the end
    out.commit()
    assert path.read_bytes() == b"one\ntwo\nfour\nfive\n"
    assert not out.partial.exists()


def test_an_aborted_run_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    old = '{"line": 1, "status": "succeeded"}\n'  # (an earlier run's output)
    path.write_text(old)
    out = open_output(path)
    OrderedLines(out, [1, 2]).put(1, b"one\n")
    out.abort()
    assert path.read_text() == old
    assert (tmp_path / "out.jsonl.partial").read_text() == "one\n"
    again = open_output(path)  # the leftover is replaced by the next run
    again.write(b"new\n")
    again.commit()
    assert path.read_text() == "new\n" and not (tmp_path / "out.jsonl.partial").exists()


def test_held_lines_wait_for_the_commit(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        out = open_output(Path(f"/dev/fd/{write_end}"))
        assert not out.replaces
        out.hold()
        out.write(b"one\n")
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 100)
        out.commit()
        assert os.read(read_end, 100) == b"one\n"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_leftover_partial_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "out.jsonl.partial").symlink_to(victim)
    with pytest.raises(OutputError, match="is not a file"):
        open_output(tmp_path / "out.jsonl")
    assert victim.read_text() == "keep\n"


def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "out.jsonl"
    link.symlink_to(tmp_path / "real.jsonl")
    out = open_output(link)
    out.write(b"x\n")
    out.commit()
    assert stat.S_ISLNK(os.lstat(link).st_mode)
    assert (tmp_path / "real.jsonl").read_text() == "x\n"


def test_closing_writes_what_waits_behind_a_line_that_never_came(tmp_path: Path) -> None:
    out = open_output(tmp_path / "out.jsonl")
    lines = OrderedLines(out, [1, 2, 3])
    lines.put(3, b"three\n")
    lines.put(2, b"two\n")
    lines.close()
    out.commit()
    assert (tmp_path / "out.jsonl").read_bytes() == b"two\nthree\n"


def test_an_aborted_run_that_wrote_nothing_leaves_no_partial(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    out = open_output(path)  # the run could not start (a missing API key...)
    out.abort()
    assert not path.exists() and not (tmp_path / "out.jsonl.partial").exists()


def test_an_output_naming_a_file_the_run_keeps_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    store.write_bytes(b"the store")
    link = tmp_path / "link.jsonl"
    link.symlink_to(store)
    keep = [(tmp_path / "in.jsonl", "the run's input file"), (store, "the store's database")]
    for target in (store, link, tmp_path / "." / "runs.db"):
        with pytest.raises(OutputError, match="it is the store's database"):
            open_output(target, keep)
    assert store.read_bytes() == b"the store"
    assert not list(tmp_path.glob("*.partial"))
    open_output(tmp_path / "out.jsonl", keep).abort()  # any other file is fine


def test_a_write_cut_short_by_a_full_disk_leaves_whole_lines(tmp_path: Path) -> None:
    # The partial file ended in a torn line ('{"line":') after "No space left on device".
    # A file size limit (RLIMIT_FSIZE) stands in for the full disk, in a process of its own.
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from legion.cli.output import OutputError, open_output
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        out = open_output(Path({str(tmp_path / "out.jsonl")!r}))
        try:
            for i in range(1000):
                out.write(b'{{"line": %d, "output": "%s"}}\\n' % (i, b"x" * 40))
        except OutputError as exc:
            out.abort()
            print(exc)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("cannot write ") and "File too large" in r.stdout
    kept = (tmp_path / "out.jsonl.partial").read_bytes()
    assert kept and kept.endswith(b"\n") and len(kept) <= 1000
    assert not (tmp_path / "out.jsonl").exists()


def test_an_output_that_cannot_take_the_results_at_the_end_says_where_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An immutable output (chattr +i) is found unwritable only at the rename, after every
    # task ran: the error did not say the lines were kept, nor how to get the file.
    path = tmp_path / "out.jsonl"
    out = open_output(path)
    OrderedLines(out, [1]).put(1, b"one\n")

    def refuse(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "replace", refuse)  # (what the file system answers)
    with pytest.raises(OutputError) as refused:
        out.commit()
    assert str(refused.value).startswith(f"cannot write {path}: Operation not permitted")
    assert f"every line is in {out.partial}" in str(refused.value)
    assert out.partial is not None and out.partial.read_bytes() == b"one\n"
