"""Who a worker process is, beyond its host name, and whether it is still running.

A host name does not identify a machine's process table: containers with host
networking and cloned VMs share host names, and a PID seen from one PID namespace means
another process (or nothing) in the next. A worker records the kernel's boot id, its PID
namespace and its process's start time; another worker may conclude that it is gone only
when all three are its own (same kernel, same namespace) and the PID is free or belongs
to a process started at another time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    boot_id: str  # /proc/sys/kernel/random/boot_id; "" where unknown
    pid_ns: str  # the target of /proc/self/ns/pid, e.g. "pid:[4026531836]"; "" where unknown
    pid: int
    start: int  # the process's start time, clock ticks after boot (0 where unknown)


def current() -> ProcessIdentity:
    pid = os.getpid()
    return ProcessIdentity(_boot_id(), _pid_ns(), pid, start_time(pid) or 0)


def start_time(pid: int) -> int | None:
    """When process ``pid`` (as this process sees it) started, in clock ticks after boot;
    None if there is no such process (or /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def is_gone(other: ProcessIdentity, me: ProcessIdentity) -> bool:
    """Whether ``other`` certainly no longer runs: it ran under this kernel boot and in
    this PID namespace (both known), and its PID is free or another process's now."""
    if not (other.boot_id and other.pid_ns and other.start):
        return False
    if (other.boot_id, other.pid_ns) != (me.boot_id, me.pid_ns):
        return False
    return start_time(other.pid) != other.start


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
