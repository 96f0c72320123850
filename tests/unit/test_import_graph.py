"""The import graph of the package: no loops, and no arrow that runs back up the layers.

The graph is read from the source (every ``import`` in every module of ``src/legion``,
those inside functions and under ``TYPE_CHECKING`` too: a lazy import still makes a
loop), not from what happens to be loaded. CONTRIBUTING.md draws the same layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import legion

PACKAGE = Path(legion.__file__).parent

# The rooms of the package (a top-level module or a subpackage), bottom up. A room may
# import only rooms of lower layers; rooms of one layer do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    # plain values and helpers that import nothing of legion
    (
        "errors",
        "clock",
        "extras",
        "faults",
        "identity",
        "attempt",
        "retry",
        "addresses",
        "resources",
        "while_running",
        "record",
        "exiting",
    ),
    ("codec", "deadline", "heap", "gil", "sim"),
    ("diagnostics", "inputs", "agent"),
    ("task",),
    ("steps", "stats", "telemetry", "store"),
    # the edges: LLM providers and capacity, the journal, loading agents
    ("journal", "llm", "loader"),
    ("vectors", "waiting"),
    ("context",),
    ("executors",),
    ("provision",),
    ("run",),
    # the public face, and what is built on it
    ("__init__", "testing"),
    ("server", "bench"),
    ("gateway", "integrations"),
    ("demo",),
    ("cli",),
    ("__main__",),
)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[str]:
    """The modules of the package that ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("legion") and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imports(name, path, known)) for name, path in known.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_loop(edges: Mapping[str, set[str]]) -> list[str] | None:
    """One loop of the graph (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (loop := visit(nxt)) is not None:
                return loop
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (loop := visit(start)) is not None:
            return loop
    return None


def arrows_back_up(edges: Mapping[str, set[str]]) -> list[str]:
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    wrong = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            a, b = room(source), room(target)
            if a != b and layer[b] >= layer[a]:
                wrong.append(f"{source} -> {target} ({a}: layer {layer[a]}, {b}: layer {layer[b]})")
    return wrong


def test_every_room_of_the_package_has_a_layer() -> None:
    rooms = {room(name) for name in modules()}
    listed = [name for names in LAYERS for name in names]
    assert sorted(rooms) == sorted(listed), "add the new room to LAYERS (and CONTRIBUTING.md)"
    assert len(listed) == len(set(listed))


def test_the_package_has_no_import_loop() -> None:
    assert find_loop(graph()) is None


def test_no_import_runs_back_up_the_layers() -> None:
    assert arrows_back_up(graph()) == []


def test_the_checks_see_a_loop_and_an_arrow_back_up() -> None:
    """The two checks above fail on the graph that has what they look for."""
    edges = graph()
    edges["legion.task"].add("legion.context")  # task -> context -> task: a loop, and up
    loop = find_loop(edges)
    assert loop is not None and loop[0] == loop[-1] and "legion.task" in loop
    assert arrows_back_up(edges) == [
        "legion.task -> legion.context (task: layer 3, context: layer 7)"
    ]


def test_lazy_and_type_checking_imports_count(tmp_path: Path) -> None:
    source = tmp_path / "legion" / "a.py"
    source.parent.mkdir()
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .b import B\n"
        "def f():\n    from legion import c\n"
        "from . import d as dee\n"
    )
    known = {f"legion.{n}": source for n in "abcd"} | {"legion": source}
    assert sorted(imports("legion.a", source, known)) == ["legion.b", "legion.c", "legion.d"]


def dangling() -> list[str]:
    """Imports of a module of the package that does not exist (a lazy import of a module
    that moved fails only when it runs)."""
    known = modules()
    wrong = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                targets = [base]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] == "legion" and target not in known:
                    wrong.append(f"{name}: imports {target}, which does not exist")
    return wrong


def test_every_import_of_the_package_names_a_module_that_exists() -> None:
    assert dangling() == []
