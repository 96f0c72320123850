"""The public names: sorted, complete and importable; the core imports no heavy edges."""

from __future__ import annotations

import subprocess
import sys

import legion


def test_all_is_sorted_and_importable() -> None:
    assert legion.__all__ == sorted(legion.__all__)
    for name in legion.__all__:
        assert hasattr(legion, name), name


def test_importing_legion_pulls_in_no_cli_or_server_code() -> None:
    heavy = ("typer", "rich", "aiohttp", "openai")
    code = f"import sys, legion; print([m for m in sys.modules if m.split('.')[0] in {heavy}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
