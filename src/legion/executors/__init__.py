"""Executors: where an agent instance's code runs.

The default runs it as an asyncio task in the worker's event loop. Others run it
elsewhere — a subprocess (`ProcessExecutor`), a Ray cluster
(`legion.executors.ray.RayExecutor`, with the ``ray`` extra) — while the worker
keeps the lease, the journal and the context: the store stays the source of truth
wherever code runs.
"""

from __future__ import annotations

from legion.agent import EXECUTORS
from legion.errors import ConfigError
from legion.executors.base import Executor
from legion.executors.errors import InstanceLost, MemoryLimitExceeded, ProtocolError, RemoteError
from legion.executors.process import ProcessExecutor

__all__ = [
    "Executor",
    "InstanceLost",
    "MemoryLimitExceeded",
    "ProcessExecutor",
    "ProtocolError",
    "RemoteError",
    "executors_from_options",
]


def executors_from_options(
    executor: str | None,
    ray_address: str | None,
    processes: int | None,
    memory_limit_mb: int | None,
) -> dict[str, Executor]:
    """The executors a worker needs for the command-line options of ``legion run``.

    The process executor is always there (it starts no process until an agent needs
    one), so agents declared with ``executor="process"`` run without an option. The Ray
    executor is there when ``executor`` is ``"ray"`` or a Ray address is given; without
    an address it starts a private local Ray instance. Pass ``executor`` on to the
    runtime as well (``Runtime(executor=...)``): it overrides the agents' own choice.
    """
    if executor is not None and executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    # Options for an executor that --executor keeps every agent off are refused, not
    # ignored (a Ray address given with --executor process connected to Ray for nothing).
    if ray_address is not None and executor in ("async", "process"):
        raise ConfigError(
            f"--ray-address is for the ray executor; --executor {executor} runs no agent on Ray"
        )
    if executor in ("async", "ray") and (processes is not None or memory_limit_mb is not None):
        raise ConfigError(
            "--pool-size and --memory-limit are for the process executor; "
            f"--executor {executor} runs no agent in a child process"
        )
    found: dict[str, Executor] = {
        "process": ProcessExecutor(processes=processes, memory_limit_mb=memory_limit_mb)
    }
    if executor == "ray" or ray_address is not None:
        from legion.executors.ray import RayExecutor

        found["ray"] = RayExecutor(ray_address)
    return found
