"""Statement parameters shared by the PostgreSQL store and its waiting mixin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from legion.task import NewTask


def submit_params(
    tasks: Sequence[tuple[NewTask, str | None, bytes | None]], now: float
) -> dict[str, Any]:
    """The parameters of ``insert_tasks`` for ``(task, stored key, input hash)`` triples."""
    return {
        "agent": [t.agent for t, _, _ in tasks],
        "input": [t.input for t, _, _ in tasks],
        "key": [k for _, k, _ in tasks],
        "session": [t.session for t, _, _ in tasks],
        "priority": [t.priority for t, _, _ in tasks],
        "max_attempts": [t.max_attempts for t, _, _ in tasks],
        "not_before": [float(t.not_before) for t, _, _ in tasks],
        "tenant": [t.tenant for t, _, _ in tasks],
        "input_hash": [h for _, _, h in tasks],
        "needs": [t.needs for t, _, _ in tasks],
        "now": float(now),
    }
