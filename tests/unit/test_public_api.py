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


def test_all_names_the_llm_client_and_every_provider_error() -> None:
    from legion import errors
    from legion.llm.client import LLMClient

    assert legion.LLMClient is LLMClient
    provider_errors = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, errors.LegionError)
        and issubclass(value, errors.ProviderError | errors.ProviderRejected)
    }
    assert provider_errors >= {
        "ProviderError",
        "RateLimited",
        "ProviderRejected",
        "EmptyCompletion",
    }
    assert provider_errors <= set(legion.__all__)
    assert "LLMClient" in legion.__all__


def test_the_package_says_it_is_typed() -> None:
    from pathlib import Path

    assert (Path(legion.__file__).parent / "py.typed").is_file()


def test_subpackages_the_readme_names_are_reached_from_import_legion() -> None:
    # `legion.llm.open_client`, `legion.sim.Simulator` and
    # `legion.integrations.pydantic_ai.model` raised AttributeError after `import legion`.
    code = (
        "import sys, legion\n"
        "assert 'legion.llm' not in sys.modules\n"  # still loaded only when named
        "print(legion.llm.open_client.__name__, legion.sim.Simulator.__name__,\n"
        "      legion.integrations.pydantic_ai.__name__)\n"
        "for missing in ('nope', '_private'):\n"
        "    try:\n"
        "        getattr(legion, missing)\n"
        "    except AttributeError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "open_client Simulator legion.integrations.pydantic_ai",
        "module 'legion' has no attribute 'nope'",
        "module 'legion' has no attribute '_private'",
    ]
