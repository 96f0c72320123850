"""One accent across the package: docstrings in Markdown (names in backticks), never
Sphinx roles; imports absolute (ruff's TID252 keeps those, see pyproject.toml)."""

from __future__ import annotations

import re
from pathlib import Path

import legion

PACKAGE = Path(legion.__file__).parent
SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`")


def sphinx_roles(text: str) -> list[int]:
    """The lines of ``text`` that use a Sphinx role."""
    return [n for n, line in enumerate(text.splitlines(), 1) if SPHINX_ROLE.search(line)]


def test_no_sphinx_roles_in_the_package() -> None:
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := sphinx_roles(path.read_text(encoding="utf-8")))
    }
    assert found == {}, "write `name` instead of :class:`name` (see CONTRIBUTING.md)"


def test_the_check_sees_a_role() -> None:
    assert sphinx_roles('"""See :class:`~legion.task.Lease`."""\nx = 1') == [1]
    assert sphinx_roles('"""See `legion.task.Lease`."""') == []
