"""docs/testing.md's test of an agent runs as printed, under pytest, every time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def test_the_documented_agent_test_passes_as_printed(tmp_path: Path) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    for n in range(3):  # (three times: it passes every time, not once in a while)
        (tmp_path / f"test_triage_{n}.py").write_text(code, encoding="utf-8")
    (tmp_path / "conftest.py").write_text("")  # (its own root: not legion's conftest)
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-o", "asyncio_mode=auto", ".",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout, done.stdout
