"""The README's "An agent" program runs as printed: against the simulator, in a fresh
folder, with nothing left unclosed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def section_code(title: str) -> str:
    """The python code blocks of the README section ``title``, joined."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)
    assert blocks, f"no python code in the README section {title!r}"
    return "\n".join(blocks)


def run_program(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    (cwd / "program.py").write_text(code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-W", "always", "program.py"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "always"},
    )


def test_the_readme_agent_runs_as_printed(tmp_path: Path) -> None:
    done = run_program(section_code("An agent"), tmp_path)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    for line in lines:
        assert " succeeded {'question': " in line, line
        assert "'llm_calls': 4" in line, line
    assert "Unclosed" not in done.stderr, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert (tmp_path / "runs.db").is_file()


def test_the_readme_agent_shows_why_a_task_failed(tmp_path: Path) -> None:
    code = section_code("An agent").replace(
        '    await ctx.memory.set("last_question", question)',
        '    raise ValueError(f"no answer to {question!r}")\n'
        '    await ctx.memory.set("last_question", question)',
    )
    assert "raise ValueError" in code

    done = run_program(code, tmp_path)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout
    for line in lines:
        assert " dead ValueError: no answer to '" in line, line
    assert "Unclosed" not in done.stderr, done.stderr


def test_the_readme_agent_file_serves_legion_run_without_running_its_main(
    tmp_path: Path,
) -> None:
    (tmp_path / "program.py").write_text(section_code("An agent"), encoding="utf-8")
    (tmp_path / "in.jsonl").write_text('{"question": "What is a coroutine?"}\n')
    done = subprocess.run(
        [
            *(sys.executable, "-m", "legion", "run", "program.py:research", "-i", "in.jsonl"),
            *("-o", "out.jsonl", "--store", "sqlite:///other.db", "--llm", "sim", "--no-progress"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert '"status":"succeeded"' in (tmp_path / "out.jsonl").read_text()
    assert not (tmp_path / "runs.db").exists()  # the program's own main() did not run
