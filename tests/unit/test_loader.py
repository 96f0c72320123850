"""`legion.loader`: what a wrong agent reference says."""

from __future__ import annotations

from pathlib import Path

import pytest

from legion.errors import AgentLoadError
from legion.loader import load_agent

SCRIPT = """
import legion

@legion.agent
async def review(ctx: legion.Context, text: str) -> str:
    return text

async def main(path: str) -> None:  # the script's own entry point
    pass
"""


def test_a_module_name_of_a_file_here_says_to_give_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "loader_pipeline_x.py").write_text(SCRIPT)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AgentLoadError) as caught:
        load_agent("loader_pipeline_x:review")
    assert str(caught.value) == (
        "cannot import loader_pipeline_x: ModuleNotFoundError: No module named "
        "'loader_pipeline_x' (the file loader_pipeline_x.py is here: give it as a path, "
        "loader_pipeline_x.py, not as a module name)"
    )
    with pytest.raises(AgentLoadError) as caught:  # (no such file: no hint)
        load_agent("loader_nothing_here_x:review")
    assert str(caught.value).endswith("No module named 'loader_nothing_here_x'")


def test_an_async_def_that_cannot_be_an_agent_names_the_modules_agents(tmp_path: Path) -> None:
    file = tmp_path / "loader_script_y.py"
    file.write_text(SCRIPT)
    with pytest.raises(AgentLoadError) as caught:
        load_agent(f"{file}:main")
    said = str(caught.value)
    assert said.startswith(f"{file}:main is not an agent (agent 'main': its first parameter")
    assert said.endswith(f"{file}'s agents: review")
    assert load_agent(f"{file}:review").name == "review"


def test_a_file_of_one_agent_may_be_named_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "loader_one_x.py").write_text(SCRIPT)
    monkeypatch.chdir(tmp_path)
    assert load_agent("loader_one_x.py").name == "review"
    (tmp_path / "loader_two_x.py").write_text(
        SCRIPT + "\n@legion.agent\nasync def second(ctx: legion.Context) -> None:\n    pass\n"
    )
    with pytest.raises(AgentLoadError) as caught:
        load_agent("loader_two_x.py")
    assert str(caught.value) == (
        "loader_two_x.py defines 2 agents (review, second): name one, loader_two_x.py:NAME"
    )


def test_an_error_at_import_says_where_and_a_missing_framework_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "loader_raises_x.py").write_text("import legion\n\nraise RuntimeError('no key')\n")
    (tmp_path / "loader_needs_x.py").write_text("import legion_missing_framework_x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AgentLoadError) as caught:
        load_agent("loader_raises_x.py:a")
    assert str(caught.value) == (
        "cannot import loader_raises_x.py: RuntimeError: no key (at loader_raises_x.py:3)"
    )
    from legion import loader

    monkeypatch.setitem(loader._EXTRAS, "legion_missing_framework_x", "pydantic-ai")
    with pytest.raises(AgentLoadError) as caught:
        load_agent("loader_needs_x.py:a")
    assert "(install it: pip install 'legion-runtime[pydantic-ai]'" in str(caught.value)
