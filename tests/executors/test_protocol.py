"""Errors on their way between processes, and how agents name themselves: no processes."""

from __future__ import annotations

import pickle
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import legion
from legion import AgentCrash, ConfigError, Permanent
from legion.errors import is_retryable
from legion.executors import (
    InstanceLost,
    MemoryLimitExceeded,
    ProcessExecutor,
    RemoteError,
    executors_from_options,
)
from legion.executors import protocol as p
from tests.executors import agents


def raised(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("nothing was raised")


def test_an_error_comes_back_as_itself_with_the_original_traceback() -> None:
    def fail() -> None:
        raise ValueError("bad value")

    copy = p.unpack_error(p.pack_error(raised(fail)))
    assert type(copy) is ValueError and str(copy) == "bad value" and is_retryable(copy)
    assert isinstance(copy.__cause__, p.RemoteTraceback)
    assert "in fail" in str(copy.__cause__) and "ValueError: bad value" in str(copy.__cause__)


def test_an_error_that_does_not_unpickle_stands_in_under_its_own_name() -> None:
    envelope = p.pack_error(agents.Unpicklable("no way", code=2))
    assert envelope.pickled is not None  # it pickles; it is unpickling that fails
    copy = p.unpack_error(envelope)
    assert isinstance(copy, RemoteError) and type(copy).__name__ == "Unpicklable"
    assert str(copy) == "no way" and not is_retryable(copy)  # still permanent
    again = pickle.loads(pickle.dumps(copy))  # it can travel on, to another process
    assert type(again) is type(copy) and not again.retryable


def test_reading_an_error_never_imports_a_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "side_effect.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Boom(Exception): pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    envelope = p.ErrorEnvelope(
        module="side_effect",
        qualname="Boom",
        message="boom",
        traceback="Traceback ...",
        retryable=True,
        fatal=True,
        pickled=b"cside_effect\nBoom\n(tR.",  # Boom(), in pickle's protocol 0
    )
    copy = p.unpack_error(envelope)
    assert not marker.exists() and "side_effect" not in sys.modules
    assert isinstance(copy, RemoteError) and type(copy).__name__ == "Boom"
    assert copy.fatal and is_retryable(copy)


def test_outcomes_answer_results_or_raise() -> None:
    assert p.outcome_value((True, b'{"a": [1, 2]}')) == {"a": [1, 2]}
    crash = AgentCrash(SystemExit(3))
    with pytest.raises(AgentCrash) as info:
        p.outcome_value((False, p.pack_error(crash)))
    assert type(info.value.original) is SystemExit and info.value.original.code == 3
    memory = p.pack_error(MemoryError())
    with pytest.raises(MemoryError):
        p.outcome_value((False, memory))
    with pytest.raises(MemoryLimitExceeded, match="memory limit of 64 MB"):
        p.outcome_value((False, memory), memory_limit_mb=64)
    assert issubclass(MemoryLimitExceeded, InstanceLost) and InstanceLost.retryable


def test_an_agent_names_its_function_for_other_processes() -> None:
    assert agents.echo.ref == "tests.executors.agents:echo"

    async def plain(ctx: legion.Context, n: int) -> int:
        return n

    with pytest.raises(ConfigError, match="define it at module level"):
        _ = legion.agent(plain).ref
    renamed = legion.agent(name="other")(agents.echo.fn)  # the module still finds echo's fn
    assert renamed.ref == "tests.executors.agents:echo"


def test_an_agent_whose_name_now_means_something_else_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fn = agents.takes_model.fn
    monkeypatch.setattr(agents, "takes_model", agents.echo)
    with pytest.raises(ConfigError, match="would not find this agent's function"):
        _ = legion.agent(fn).ref


def test_an_agent_of_a_script_run_as_main_is_named_by_its_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text("")  # (a file: one on standard input is refused)
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    exec(
        "import legion\n@legion.agent\nasync def work(ctx, n: int) -> int:\n    return n\n",
        main.__dict__,
    )
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert main.work.ref == f"{script}:work"


def test_the_options_of_legion_run_make_the_executors() -> None:
    plain = executors_from_options(None, None, None, None)
    assert list(plain) == ["process"] and isinstance(plain["process"], ProcessExecutor)
    sized = executors_from_options("process", None, 3, 256)["process"]
    assert isinstance(sized, ProcessExecutor)
    assert (sized.processes, sized.memory_limit_mb) == (3, 256)
    on_ray = executors_from_options("ray", "ray://head:10001", None, None)
    assert sorted(on_ray) == ["process", "ray"] and on_ray["ray"].name == "ray"
    assert "ray" in executors_from_options(None, "auto", None, None)
    with pytest.raises(ConfigError, match="unknown executor 'gpu'"):
        executors_from_options("gpu", None, None, None)
    with pytest.raises(ConfigError, match="processes must be >= 1"):
        executors_from_options("process", None, 0, None)
    with pytest.raises(ConfigError, match="memory_limit_mb must be from 1 to"):
        executors_from_options("process", None, None, 0)


def test_without_the_ray_extra_the_ray_executor_says_how_to_get_it() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from legion.executors import executors_from_options\n"
        "executors_from_options('ray', None, None, None)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert (
        "ConfigError: the ray executor needs Ray: pip install 'legion-runtime[ray]'" in done.stderr
    )


def test_the_executors_import_no_ray_until_asked() -> None:
    code = "import sys, legion.executors; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_permanent_error_stays_permanent_across_the_trip() -> None:
    copy = p.unpack_error(p.pack_error(Permanent("never")))
    assert type(copy) is Permanent and not is_retryable(copy)
