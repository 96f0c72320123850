"""The ``legion`` command (`legion.cli.app`); ``main`` is its entry point."""

from __future__ import annotations

from legion.cli.app import app, main

__all__ = ["app", "main"]
