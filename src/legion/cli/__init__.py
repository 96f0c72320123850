"""The ``legion`` command (`legion.cli.app`); ``main`` is its entry point."""

from __future__ import annotations


def main() -> None:
    """The ``legion`` command. A Ctrl-C while it still loads exits 130, quietly, as one
    does later (it printed Python's traceback of the import it cut short)."""
    try:
        from legion.cli.app import main as command
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    command()


__all__ = ["main"]
