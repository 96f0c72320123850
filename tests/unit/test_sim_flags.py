"""``legion sim`` (typer) and ``python -m legion.sim`` (argparse) take the same flags."""

from __future__ import annotations

import typer.main

from legion.cli.app import app
from legion.sim.cli import build_parser


def _argparse_flags() -> set[str]:
    flags: set[str] = set()
    for action in build_parser()._actions:
        flags.update(s for s in action.option_strings if s.startswith("--") and s != "--help")
    return flags


def _typer_flags() -> set[str]:
    command = typer.main.get_command(app).commands["sim"]  # type: ignore[attr-defined]
    flags: set[str] = set()
    for param in command.params:
        flags.update(s for s in (*param.opts, *param.secondary_opts) if s.startswith("--"))
    return flags - {"--help"}


def test_both_commands_know_the_same_flags() -> None:
    assert _typer_flags() == _argparse_flags()
