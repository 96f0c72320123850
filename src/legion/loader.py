"""Find agents by name: ``path/to/file.py:function`` or ``package.module:function``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections import Counter
from pathlib import Path
from types import ModuleType

from legion.agent import Agent, agent
from legion.errors import AgentLoadError, ConfigError
from legion.extras import install_hint

_GIVE_MODULE = "give a file (app.py) or a module (package.module)"
_GIVE_AGENT = "give the agent as FILE.py:NAME or package.module:NAME"


def load_module(ref: str, *, hint: str = _GIVE_MODULE) -> ModuleType:
    """Import a module given as a file path (``app.py``) or a dotted name (``pkg.mod``).

    An existing file that is not Python (``in.jsonl``) is refused as such, with ``hint``
    (how to name a module), rather than imported as the dotted name ``in.jsonl``."""
    if ref.endswith(".py") or "/" in ref or "\\" in ref:
        path = Path(ref).resolve()
        if not path.is_file():
            raise AgentLoadError(f"no such file: {ref}")
        name = path.stem
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "__file__", None) == str(path):
            return loaded
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise AgentLoadError(f"{ref} is not a Python file: {hint}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(name, None)
            raise AgentLoadError(f"cannot import {ref}: {_describe(exc)}") from exc
        return module
    if Path(ref).is_file():  # a data file given where the code goes
        raise AgentLoadError(f"{ref} is not a Python file: {hint}")
    try:
        return importlib.import_module(ref)
    except (Exception, SystemExit) as exc:
        raise AgentLoadError(
            f"cannot import {ref}: {_describe(exc)}{_file_here(ref, exc)}"
        ) from exc


def load_agent(ref: str) -> Agent:
    """The agent named by ``ref``; a plain ``async def`` is made an agent with defaults."""
    module_ref, sep, attr = ref.rpartition(":")
    if not sep and ref.endswith(".py"):
        return _only_agent(ref)
    if not sep or not module_ref or not attr:
        raise AgentLoadError(
            f"bad agent name {ref!r}: expected path/to/file.py:function or package.module:function"
        )
    module = load_module(module_ref, hint=_GIVE_AGENT)
    found = getattr(module, attr, None)
    if found is None:
        raise AgentLoadError(f"{module_ref} has no attribute {attr!r}; {_found_here(module)}")
    if isinstance(found, Agent):
        _refuse_namesakes(found, module, module_ref)
        return found
    names = _agent_names(module)
    if inspect.iscoroutinefunction(found):
        try:
            return agent(found)
        except ConfigError as exc:  # (not meant as one: the script's own entry point, say)
            if not names:
                raise
            raise AgentLoadError(
                f"{ref} is not an agent ({exc}); {module_ref}'s agents: {', '.join(names)}"
            ) from exc
    if not names:
        raise AgentLoadError(
            f"{ref} is not an agent, and {module_ref} defines none: decorate an `async def` "
            "with @legion.agent"
        )
    raise AgentLoadError(f"{ref} is not an agent; {module_ref}'s agents: {', '.join(names)}")


def _refuse_namesakes(found: Agent, module: ModuleType, module_ref: str) -> None:
    """Tasks name their agent by its name: another agent of the module under the same
    name would answer for this one's tasks (a worker serving the module refuses it too)."""
    for other in agents_in(module):
        if other is not found and other.name == found.name:
            raise AgentLoadError(
                f"two different agents of {module_ref} are named {found.name!r}: give one "
                "another name (@legion.agent(name=...))"
            )


def _agent_names(module: ModuleType) -> list[str]:
    """The names of ``module``'s agents, sorted."""
    return sorted(
        name
        for name, value in vars(module).items()
        if isinstance(value, Agent) and not name.startswith("_")
    )


def _found_here(module: ModuleType) -> str:
    """What a wrong name could have been: the agents of ``module``, by the name to give."""
    names = _agent_names(module)
    if not names:
        return "it defines no agent (an `async def` decorated with @legion.agent)"
    return "its agents: " + ", ".join(names)


def _only_agent(ref: str) -> Agent:
    """The one agent a file defines, named without its ``:NAME``; else why not."""
    module = load_module(ref, hint=_GIVE_AGENT)
    found = list({id(a): a for a in agents_in(module)}.values())
    if len(found) == 1:
        return found[0]
    if not found:
        raise AgentLoadError(f"{ref} defines no agent (@legion.agent): {_GIVE_AGENT}")
    names = ", ".join(sorted(a.fn.__name__ for a in found))
    raise AgentLoadError(f"{ref} defines {len(found)} agents ({names}): name one, {ref}:NAME")


def agents_in(module: ModuleType) -> list[Agent]:
    """Every agent defined at the top level of ``module``."""
    return [v for v in vars(module).values() if isinstance(v, Agent)]


def peers_of(found: Agent) -> list[Agent]:
    """The other agents defined at the top level of ``found``'s module, each under a name
    of its own and other than ``found``'s: those a task of ``found`` can start as its
    children (``ctx.spawn``, ``ctx.map``), which a worker serving its file serves too."""
    module = sys.modules.get(found.fn.__module__)
    if module is None:
        return []
    others = list({id(a): a for a in agents_in(module) if a.name != found.name}.values())
    names = Counter(a.name for a in others)
    return [a for a in others if names[a.name] == 1]


def _file_here(ref: str, exc: BaseException) -> str:
    """A hint when the module ``ref`` was not found but a file of that name is: a module
    name is looked up on Python's path, which a script's folder is not on."""
    if not isinstance(exc, ModuleNotFoundError) or exc.name != ref.partition(".")[0]:
        return ""
    file = Path(*ref.split(".")).with_suffix(".py")
    if not file.is_file():
        return ""
    return f" (the file {file} is here: give it as a path, {file}, not as a module name)"


_EXTRAS = {
    "pydantic_ai": "pydantic-ai",
    "agents": "openai-agents",
    "langchain_core": "langchain",
    "langchain_openai": "langchain",
    "langgraph": "langchain",
    "openai": "openai",
    "anthropic": "anthropic",
    "ray": "ray",
}
"""The extra that installs a module the framework examples and integrations import."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        where = f" at line {exc.lineno}" if exc.lineno is not None else ""
        return f"syntax error{where}: {exc.msg}"
    if isinstance(exc, SystemExit):  # sys.exit() at import: its code, whatever it is
        return f"it called sys.exit({exc.code!r}) while being imported"
    said = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        extra = _EXTRAS.get(exc.name.partition(".")[0])
        if extra is not None:
            return f"{said} (install it: {install_hint(extra)})"
    # Where the user's code raised it: the last of the traceback's frames in a file of
    # theirs (not the import system's, the standard library's or a package's).
    from legion.diagnostics.report import is_library_file

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not is_library_file(f.filename)]
    if frames:
        last = frames[-1]
        said += f" (at {_shown(last.filename)}:{last.lineno})"
    return said


def _shown(file: str) -> str:
    """``file`` relative to the working directory when it lies below it."""
    relative = os.path.relpath(file)
    return file if relative.startswith("..") else relative
