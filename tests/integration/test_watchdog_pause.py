"""The loop watchdog tells a process that stood still (SIGSTOP) from a call that held
its event loop: a worker resumed after a pause said its event loop lagged, pointing at
the agents' code."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    from legion.diagnostics.watchdog import LoopWatchdog

    async def main():
        blocks = []
        dog = LoopWatchdog(blocks.append)
        dog.start()
        await asyncio.sleep(0.2)
        time.sleep(0.5)  # a call holding the loop
        await asyncio.sleep(0.2)
        print("blocked", dog.health().paused, blocks[-1].held, flush=True)
        print("ready", flush=True)
        sys.stdin.readline()  # (the test stops this process meanwhile, then lets it go)
        await asyncio.sleep(0.2)
        print("paused", dog.health().paused, flush=True)
        dog.stop()

    asyncio.run(main())
    """
)


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_process_stopped_by_a_signal_is_paused_not_blocked() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().split() == ["blocked", "False", "True"]
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGSTOP)
            while not _stopped(proc.pid):
                time.sleep(0.01)
            time.sleep(0.5)  # (the pause under test: its length is what the process sees)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            proc.send_signal(signal.SIGCONT)
            assert proc.stdout.readline().split() == ["paused", "True"]
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
