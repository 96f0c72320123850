"""The ``legion`` command (:mod:`legion.cli.app`); ``main`` is its entry point."""

from __future__ import annotations

from .app import app, main

__all__ = ["app", "main"]
