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
