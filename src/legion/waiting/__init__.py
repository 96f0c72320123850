"""Durable waiting: an agent instance that waits gives back its slot and lease.

``ctx.wait_for``, ``ctx.sleep``, ``ctx.approval``, ``ctx.spawn`` and ``ctx.map`` suspend
the task (it becomes ``waiting``) unless what they wait for is there already; the task is
queued again when a signal comes, its timer passes or its children end, and it replays
from its recorded steps to the same point (see `legion.waiting.calls`). Schedules
(`legion.waiting.schedules`) submit a task per cron tick.
"""

from __future__ import annotations

from legion.waiting.calls import Approval
from legion.waiting.suspend import Suspended

__all__ = ["Approval", "Suspended"]
