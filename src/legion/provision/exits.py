"""The exit codes of a worker process that its supervisors (``--processes``,
``--autoscale``) act on: those after which another worker would stop the same way; and
the mark a worker process knows its supervisor by."""

from __future__ import annotations

EXIT_FINAL = 2  # bad options, a store that refuses the worker
EXIT_STORE = 3  # the store stayed unavailable past --store-wait
EXIT_BUDGET = 5  # the worker's LLM budget is spent
EXIT_CODE_CHANGED = 6  # the agent's file changed under it: a new worker runs the new code
EXIT_EXECUTOR = 7  # its executor died (Ray on this node): a new worker starts it again
EXIT_MEMORY = 8  # past --max-memory with nothing running: a new process starts afresh
FINAL_EXITS = (0, EXIT_FINAL, EXIT_BUDGET)
"""Exit codes after which a supervisor starts no other worker (0: drained)."""
DEPLOY_GRACE = 120.0
"""Seconds after a worker exited because its agent's file changed during which another
that cannot start (its file missing or broken half-way through a deploy: exit 2) is
started again, as after a crash, rather than stopping the fleet for good."""
WHILE_DEPLOYING = (
    " (its agent's file changed moments ago and cannot be loaded yet: a deploy under way?)"
)


def final(rc: int, changed_at: float | None, now: float) -> bool:
    """Whether a worker's exit code ``rc`` stops its supervisor's fleet (another worker
    would stop the same way); ``changed_at``: when a worker of the fleet last exited
    because its agent's file changed (`EXIT_CODE_CHANGED`), if it did."""
    if rc == EXIT_FINAL and changed_at is not None and now - changed_at < DEPLOY_GRACE:
        return False  # (the new code may not be whole yet: a deploy moves files)
    return rc in FINAL_EXITS and rc != 0


WHY_FINAL = {
    EXIT_FINAL: " (a reason a restart won't mend: bad options, a store that refuses it)",
    EXIT_BUDGET: " (its LLM budget is spent)",
}

SUPERVISOR_ENV = "LEGION_SUPERVISOR_PID"
"""Set by a supervisor for its worker processes: a worker whose parent is another
process by the time it starts lost its supervisor and exits."""
