"""`raised_at`: where the agent's own code raised, from a stored traceback."""

from __future__ import annotations

import importlib.util
import json
import traceback
from pathlib import Path

from legion.diagnostics.report import raised_at


def test_the_innermost_frame_of_the_users_code_is_named(tmp_path: Path) -> None:
    file = tmp_path / "parsing.py"
    file.write_text(
        "import json\n\ndef parse(text):\n    return json.loads(text)\n\n"
        "def agent(text):\n    return parse(text)\n"
    )
    spec = importlib.util.spec_from_file_location("parsing_under_test", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.agent("{not json")
    except json.JSONDecodeError as exc:
        text = "".join(traceback.format_exception(exc))
    # (the innermost frames are the standard library's json: the user's line is named)
    assert raised_at(text) == "parsing.py:4 in parse"


def test_a_traceback_of_library_frames_alone_names_nothing() -> None:
    try:
        json.loads("{")
    except json.JSONDecodeError as exc:
        frames = traceback.format_exception(exc)
    library_only = "".join(f for f in frames if "test_raised_at.py" not in f)
    assert raised_at(library_only) is None
    assert raised_at("") is None


def test_a_frame_within_an_exception_group_is_found(tmp_path: Path) -> None:
    text = (
        "  + Exception Group Traceback (most recent call last):\n"
        '  |   File "/srv/app/agents.py", line 9, in research\n'
        "  |     raise ExceptionGroup('x', [e])\n"
    )
    assert raised_at(text) == "agents.py:9 in research"
