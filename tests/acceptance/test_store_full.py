"""``legion serve`` on a SQLite store whose disk fills up: clear 507s, never a 500, nothing
acknowledged lost, the file intact; and answers again once space is freed.

The disk is a real 2 MB tmpfs (mounting one needs root; elsewhere the test says so and
skips). The store errors themselves are checked without root in
``tests/integration/test_store_errors.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.process import serve

pytestmark = pytest.mark.slow

PAD = "x" * 400  # long keys and sessions: the disk fills after a few hundred tasks


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs of this test's own, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def post(url: str, key: str, body: Any) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def fill(disk: Path, leave: int) -> Path:
    """Take all but about ``leave`` bytes of the disk with a file."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_answers_507_and_loses_nothing(small_disk: Path) -> None:
    acked: dict[str, int] = {}
    answers: list[int] = []
    refusals: list[Any] = []
    with serve(small_disk, "--no-worker") as server:
        filler = fill(small_disk, leave=256 * 1024)
        n = 0
        while len(refusals) < 20:
            assert n < 5000, "the disk never filled up"
            key = f"task-{n}-{PAD}"
            status, _, body = post(
                f"{server.url}/v1/tasks",
                server.key,
                {"agent": "work", "input": {"n": n}, "key": key, "session": PAD},
            )
            answers.append(status)
            if status == 201:
                acked[key] = body["id"]
            elif status == 507:
                refusals.append(body)
            n += 1
        assert set(answers) <= {201, 507}, f"unexpected answers: {sorted(set(answers))}"
        assert acked, "nothing was accepted before the disk filled up"
        assert all("full" in r["detail"] for r in refusals), refusals[0]
        # Space comes back: submissions are accepted again, keys still honoured.
        filler.unlink()
        status, _, body = post(
            f"{server.url}/v1/tasks",
            server.key,
            {"agent": "work", "input": {"n": -1}, "key": "after"},
        )
        assert status == 201, body
        acked["after"] = body["id"]
        first = next(iter(acked))
        status, _, again = post(
            f"{server.url}/v1/tasks", server.key, {"agent": "work", "input": {"n": 0}, "key": first}
        )
        assert status in (200, 201) and again["id"] == acked[first] and not again["created"]
    db = sqlite3.connect(small_disk / "served.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = dict(db.execute("SELECT key, id FROM tasks WHERE key IS NOT NULL"))
    finally:
        db.close()
    assert {k: stored.get(k) for k in acked} == acked  # every acknowledged task is there


def test_a_run_on_a_full_disk_stops_at_the_third_signal(small_disk: Path) -> None:
    # Its writes waited for room for as long as it took: a second SIGTERM, and Ctrl-C,
    # changed nothing, and only SIGKILL (or freeing the disk) ended it.
    import signal

    from tests.acceptance.conftest import start_legion

    agents = small_disk.parent / "agents.py"
    agents.write_text(f"async def pad(ctx, n: int):\n    return {PAD!r} * 3\n")
    lines = small_disk.parent / "in.jsonl"
    lines.write_text("".join(f'{{"n": {n}}}\n' for n in range(2000)))
    run = start_legion(
        "run",
        f"{agents}:pad",
        "-i",
        str(lines),
        "-o",
        str(small_disk.parent / "out.jsonl"),
        "--store",
        f"sqlite:///{small_disk / 'full.db'}",
        "--no-progress",
    )
    try:
        assert run.stderr is not None
        said = []
        for line in run.stderr:  # until its writes fail for want of room
            said.append(line)
            if "store write of" in line and "retrying" in line:
                break
        else:
            raise AssertionError("".join(said))
        # One at a time, each once the run said it took the one before (signals sent
        # together are taken as one).
        for heard in ("SIGTERM: finishing running tasks", "SIGTERM again: giving"):
            run.send_signal(signal.SIGTERM)
            for line in run.stderr:
                said.append(line)
                if heard in line:
                    break
            else:
                raise AssertionError("".join(said))
        run.send_signal(signal.SIGTERM)
        rest = run.communicate(timeout=60)[1]
        assert run.returncode == 128 + signal.SIGTERM
        assert "SIGTERM a third time: exiting now, without waiting for the store" in rest
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
