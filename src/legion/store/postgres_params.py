"""Statement parameters shared by the PostgreSQL store and its waiting mixin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from legion.store.postgres_arrays import byteas, float8s, int4s, texts
from legion.task import NewTask


def submit_params(
    tasks: Sequence[tuple[NewTask, str | None, bytes | None]], now: float
) -> dict[str, Any]:
    """The parameters of ``insert_tasks`` for ``(task, stored key, input hash)`` triples."""
    return {
        "agent": texts([t.agent for t, _, _ in tasks]),
        "input": byteas([t.input for t, _, _ in tasks]),
        "key": texts([k for _, k, _ in tasks]),
        "session": texts([t.session for t, _, _ in tasks]),
        "priority": int4s([t.priority for t, _, _ in tasks]),
        "max_attempts": int4s([t.max_attempts for t, _, _ in tasks]),
        "not_before": float8s([float(t.not_before) for t, _, _ in tasks]),
        "tenant": texts([t.tenant for t, _, _ in tasks]),
        "input_hash": byteas([h for _, _, h in tasks]),
        "needs": texts([t.needs for t, _, _ in tasks]),
        "now": float(now),
    }
