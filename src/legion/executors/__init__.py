"""Executors: where an agent instance's code runs.

The default runs it as an asyncio task in the worker's event loop. Others run it
elsewhere — a subprocess, a Ray cluster — while the worker keeps the lease, the
journal and the context: the store stays the source of truth wherever code runs.
"""

from __future__ import annotations

from .base import Executor

__all__ = ["Executor"]
