"""What each API key has spent through one gateway process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from legion.llm.types import Usage


@dataclass(slots=True)
class KeyUsage:
    """One key's calls, tokens and cost (``unpriced_calls``: calls whose cost is unknown),
    and its calls per ``X-Legion-Task``."""

    calls: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0
    tasks: dict[str, int] = field(default_factory=dict)

    def add(self, usage: Usage, cost: float | None, task: str | None) -> None:
        self.calls += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd += cost
        if task is not None:
            self.tasks[task] = self.tasks.get(task, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 9),
            "cost_known": not self.unpriced_calls,
            "tasks": dict(self.tasks),
        }
