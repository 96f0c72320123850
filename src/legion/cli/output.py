"""Where ``legion run --output`` writes: to what the user named, as results arrive.

- A regular file, or a path that does not exist yet: the lines go to ``NAME.partial``
  beside it as they are ready, and that file is renamed over ``NAME`` when the run ends,
  so ``NAME`` is always either its old content or the complete new one. The new file
  gets the mode the umask gives (as any file a shell redirect creates). A run that dies
  leaves ``NAME`` untouched and ``NAME.partial`` holding whole lines; running the same
  command again resumes the tasks from the store and writes the file anew.
- ``-`` is this process's standard output, as when no output is named.
- Anything else is written through, never replaced: a character device (``/dev/null``,
  a terminal), a FIFO, a socket, a symlink (its target is written, the link stays), and
  ``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N``, which write to this process's own
  open descriptor (so ``>>`` in the shell still appends).

`OrderedLines` keeps the file in input order while results come in any order:
a line is written as soon as every line before it is, so the file grows as the run
goes and holds in memory only the results that finished ahead of an earlier line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from legion.errors import LegionError

_FD_PATH = re.compile(r"^/(?:dev/fd|proc/self/fd)/(\d+)$")
_STD_PATHS = {"/dev/stdout": 1, "/dev/stderr": 2}


class OutputError(LegionError):
    """The output cannot be opened or written."""


class OutputFile:
    """An open output: `write` whole lines, then `commit` (or `abort`)."""

    def __init__(
        self,
        fd: int,
        *,
        path: Path | None,
        partial: Path | None,
        owned: bool,
        stdout: bool = False,
    ) -> None:
        self._fd = fd
        self._stdout = stdout  # ``fd`` is stdout's, moved aside: put back at the end
        self.path = path  # None: this process's stdout
        self.partial = partial  # the file renamed over ``path`` at the end, if any
        self._owned = owned  # close the descriptor at the end
        self._closed = False
        self._held: list[bytes] | None = None
        self._wrote = False  # any line written to the descriptor

    def is_terminal(self) -> bool:
        return os.isatty(self._fd)

    def hold(self) -> None:
        """Keep the lines until `commit`: for a terminal that a live display is
        redrawing, where lines written meanwhile would tear it."""
        self._held = []

    @property
    def replaces(self) -> bool:
        """Whether the target is replaced at the end (a regular file or a new path)."""
        return self.partial is not None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        self._wrote = self._wrote or bool(data)
        # Where the whole lines end in a partial file: a write cut short (a full disk)
        # is undone back to there, so that the file keeps whole lines only.
        whole = os.lseek(self._fd, 0, os.SEEK_CUR) if self.partial is not None else None
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BrokenPipeError:
                raise OutputError(f"cannot write {self._name()}: its reader went away") from None
            except OSError as exc:
                if whole is not None:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._fd, whole)
                raise OutputError(f"cannot write {self._name()}: {exc.strerror}") from None
            view = view[n:]

    def commit(self) -> None:
        """Make the written lines the output (rename over the target where it is replaced)."""
        if self._closed:
            return
        if self._held is not None:
            held, self._held = self._held, None
            self._write(b"".join(held))
        if self.partial is not None and self.path is not None:
            # Renamed while this run still holds the partial file's lock: no other run
            # can take it in between.
            try:
                os.fsync(self._fd)
                os.replace(self.partial, self.path)
            except OSError as exc:
                self._close()
                raise OutputError(
                    f"cannot write {self.path}: {exc.strerror} (every line is in "
                    f"{self.partial}, and every result in the store: the same command, once "
                    "the file can be written, writes it without running a task again)"
                ) from None
        self._close()

    def abort(self) -> None:
        """Leave the target as it was; a partial file keeps the whole lines written (one
        that got none, as when the run could not start, is removed)."""
        self._close()
        if self.partial is not None and not self._wrote:
            self.partial.unlink(missing_ok=True)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._stdout:  # stdout is the results' again
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.flush()
                with contextlib.suppress(OSError):
                    os.dup2(self._fd, 1)
            if self._owned:
                os.close(self._fd)

    def _name(self) -> str:
        return str(self.path) if self.path is not None else "stdout"


def open_output(path: Path | None, keep: Sequence[tuple[Path, str]] = ()) -> OutputFile:
    """Open where the results go (``None``: stdout); a clear error if it cannot be.

    ``keep``: files the run needs, each with what it is (its input, its store, the
    agent's code...): an output that names one of them (itself, through a link, or as
    the file that would be replaced) is refused rather than written over it."""
    if path is None or os.fspath(path) == "-":  # "-": stdout, as --input - is stdin
        if sys.stdout is None:  # started with its standard output closed (>&-)
            raise OutputError("cannot write the results: standard output is closed")
        return _stdout_aside(None)
    _refuse_kept(path, keep)
    text = os.fspath(path)
    fd_number = _STD_PATHS.get(text)
    match = _FD_PATH.match(text)
    if match is not None:
        fd_number = int(match.group(1))
    if fd_number == 1:
        return _stdout_aside(path)
    if fd_number is not None:
        try:
            return OutputFile(os.dup(fd_number), path=path, partial=None, owned=True)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    if info is None or stat.S_ISREG(info.st_mode):
        if info is not None and info.st_size > 0:
            _refuse_foreign(path)
        return _open_replacing(path)
    if stat.S_ISDIR(info.st_mode):
        raise OutputError(f"cannot write {path}: it is a folder")
    return _open_through(path)


def _stdout_aside(path: Path | None) -> OutputFile:
    """The results on stdout, by a descriptor of their own; stdout itself then goes to
    stderr until the end, so that what else prints there (an agent's ``print``, a
    library's) cannot land among the JSON lines."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    try:
        results = os.dup(1)
    except OSError as exc:
        raise OutputError(f"cannot write stdout: {exc.strerror}") from None
    try:
        os.dup2(2, 1)
    except OSError:  # (no stderr to send it to: stdout stays as it was)
        return OutputFile(results, path=path, partial=None, owned=True)
    return OutputFile(results, path=path, partial=None, owned=True, stdout=True)


def _refuse_kept(path: Path, keep: Sequence[tuple[Path, str]]) -> None:
    target: os.stat_result | None = None
    with contextlib.suppress(OSError):
        target = os.stat(path)  # what a link names: writing through it would change that
    for kept, what in keep:
        try:
            found = os.stat(kept)
        except OSError:
            # Not there now, but the run may make it (a SQLite store's -wal file, which
            # SQLite deletes when the store closes): the same name is the same file.
            same = os.path.realpath(path) == os.path.realpath(kept)
        else:
            same = target is not None and os.path.samestat(target, found)
        if same:
            raise OutputError(
                f"cannot write {path}: it is {what}; the results would replace it "
                "(give another --output)"
            )


def _refuse_foreign(path: Path) -> None:
    """Refuse to replace a file that is not the output of a legion run (its first line
    is not a result: ``{"line": N, ..., "status": ...}``): a mistyped ``--output`` was
    replaced without a word. A run's own output (of an earlier run: a resume) goes."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not (
        isinstance(record, dict) and isinstance(record.get("line"), int) and "status" in record
    ):
        raise OutputError(
            f"cannot write {path}: it is not the output of a legion run (its first line is "
            "not a result), and the results would replace it: give another --output, or "
            "remove the file first"
        )


def _open_replacing(path: Path) -> OutputFile:
    """``NAME.partial``, created anew and locked (``flock``) while this run writes it: a
    second run writing the same output is refused rather than left to take the file from
    under the first, whose lines would then be lost. Both are named absolutely: an agent
    that changes the working folder does not move where the results go."""
    path = Path(os.path.abspath(path))
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: {path.parent} does not exist")
    partial = path.with_name(path.name + ".partial")
    try:
        # A leftover of a run that died is ours to replace; never write through a link
        # or a special file that took its name, nor a file another run still writes.
        if os.path.lexists(partial):
            if not stat.S_ISREG(os.lstat(partial).st_mode):
                raise OutputError(f"cannot write {path}: {partial} exists and is not a file")
            _close_unless_locked(path, partial, os.open(partial, os.O_RDONLY | os.O_CLOEXEC))
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except (FileNotFoundError, FileExistsError):  # another run took the name meanwhile
        raise _written_elsewhere(path, partial) from None
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: cannot create {partial.name} beside it to replace it "
            f"whole ({exc.strerror})"
        ) from None
    try:
        _lock(path, partial, fd)
        if not os.path.samestat(os.fstat(fd), os.stat(partial)):  # replaced before our lock
            raise _written_elsewhere(path, partial)
    except BaseException:
        os.close(fd)
        raise
    return OutputFile(fd, path=path, partial=partial, owned=True)


def _lock(path: Path, partial: Path, fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _written_elsewhere(path, partial) from None


def _close_unless_locked(path: Path, partial: Path, fd: int) -> None:
    """Close ``fd`` (a leftover ``NAME.partial``); refuse if a running run holds it."""
    try:
        _lock(path, partial, fd)
    finally:
        os.close(fd)


def _written_elsewhere(path: Path, partial: Path) -> OutputError:
    return OutputError(
        f"cannot write {path}: another run is writing it ({partial.name} is locked); "
        "give this run another --output, or wait for that one to end"
    )


def _open_through(path: Path) -> OutputFile:
    """A symlink, device, FIFO or socket: open what the name points at and write into it
    (a link to a regular file: replace that file)."""
    try:
        target = os.stat(path)
    except FileNotFoundError:
        target = None  # a dangling symlink: create what it names
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    flags = os.O_WRONLY | os.O_CLOEXEC
    if target is None:
        flags |= os.O_CREAT
    elif stat.S_ISREG(target.st_mode) and not _through_a_descriptor(path):
        # A link to a file: that file is replaced as one named itself would be (refused
        # unless it is a run's output; written whole, beside it, then renamed). Through
        # the link it was truncated at once, whatever it held (a link to notes.txt).
        if target.st_size > 0:
            _refuse_foreign(path)
        return _open_replacing(Path(os.path.realpath(path)))
    elif stat.S_ISREG(target.st_mode):
        flags |= os.O_TRUNC  # (a link to /dev/stdout: written through, as by a shell)
    elif stat.S_ISDIR(target.st_mode):
        raise OutputError(f"cannot write {path}: it is a folder")
    try:
        fd = os.open(path, flags, 0o666)  # a FIFO's open waits for its reader, as a shell's does
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    return OutputFile(fd, path=path, partial=None, owned=True)


class OrderedLines:
    """Write line ``n`` as soon as every line before it in ``order`` is written."""

    def __init__(self, out: OutputFile, order: Sequence[int]) -> None:
        self._out = out
        self._order = list(order)
        self._next = 0
        self._ready: dict[int, bytes] = {}

    @property
    def waiting(self) -> int:
        """Lines finished but held back behind an earlier one."""
        return len(self._ready)

    @property
    def written(self) -> int:
        return self._next

    def put(self, line: int, data: bytes) -> None:
        self._ready[line] = data
        chunk: list[bytes] = []
        while self._next < len(self._order) and self._order[self._next] in self._ready:
            chunk.append(self._ready.pop(self._order[self._next]))
            self._next += 1
        if chunk:
            self._out.write(b"".join(chunk))

    def close(self) -> None:
        """Write what is still held back behind a line that never came, in order."""
        rest = [self._ready.pop(n) for n in self._order[self._next :] if n in self._ready]
        self._next = len(self._order)
        if rest:
            self._out.write(b"".join(rest))


def _through_a_descriptor(path: Path) -> bool:
    """Whether the links from ``path`` pass through ``/dev`` or ``/proc`` (a link to
    ``/dev/stdout``): what they name is an open descriptor's file, written through as
    ``/dev/stdout`` itself is, not replaced."""
    name = os.path.abspath(path)
    for _ in range(40):  # (the kernel's own bound on a chain of links)
        if name.startswith(("/dev/", "/proc/")):
            return True
        try:
            link = os.readlink(name)
        except OSError:  # not a link (any more): the chain ends here
            return False
        name = os.path.normpath(os.path.join(os.path.dirname(name), link))
    return False
