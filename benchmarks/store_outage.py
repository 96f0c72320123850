"""A store outage longer than the lease: how long a fleet takes to finish its work after it.

Starts a private PostgreSQL cluster (``initdb`` into a temporary folder, its own port, run
as the ``postgres`` user when this runs as root), two ``legion worker`` processes on it,
and ``legion run --no-local-worker`` of ``--tasks`` tasks of three 1.5 s steps each; two
seconds in, the server is stopped (``-m immediate``) for ``--outage`` seconds, then started
again. The makespan is the run's, from its start to its exit, next to the ideal: the 2 s
before the outage, the outage, and the whole work at the fleet's concurrency (a step done
in the first 2 s is counted in both, so a short run can come in under it).

Before workers told the store that they lived (``Store.absolve``), every task taken back
after the outage ran alone, one at a time a worker. Writes ``results/store-outage.json``
and ``results/store-outage.md``.

    python benchmarks/store_outage.py --tasks 40 --outage 12
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LEGION = [sys.executable, "-m", "legion"]
STEP_SECONDS = 1.5
AGENT = f"""
import asyncio

import legion


@legion.agent(timeout=120, retries=3)
async def work(ctx, n: int) -> int:
    for i in range(3):
        await ctx.step(f"s{{i}}", asyncio.sleep, {STEP_SECONDS})
    return n
"""


def _bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    if found is None:
        raise SystemExit(f"store_outage: no {name} (install PostgreSQL's server binaries)")
    return found


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--outage", type=float, default=12.0, help="seconds the store is down")
    parser.add_argument("--lease", type=float, default=10.0, help="the workers' lease (s)")
    parser.add_argument("--concurrency", type=int, default=20, help="per worker")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="legion-outage-"))
    os.chmod(folder, 0o777)
    data, port = folder / "pg", _free_port()
    subprocess.run(_as_postgres([_bin("initdb"), "-D", str(data)]), check=True, capture_output=True)
    ctl = [_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "pg.log")]
    start = [*ctl, "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start", "-w"]
    subprocess.run(_as_postgres(start), check=True, capture_output=True)
    store = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    (folder / "agent.py").write_text(AGENT)
    (folder / "in.jsonl").write_text("".join(f"{i}\n" for i in range(args.tasks)))
    workers = [
        subprocess.Popen(
            [
                *LEGION,
                "worker",
                "--app",
                str(folder / "agent.py"),
                "--store",
                store,
                "--concurrency",
                str(args.concurrency),
                "--lease-seconds",
                str(args.lease),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        time.sleep(3)  # (the workers open the store and register)
        t0 = time.perf_counter()
        run = subprocess.Popen(
            [
                *LEGION,
                "run",
                f"{folder / 'agent.py'}:work",
                "-i",
                str(folder / "in.jsonl"),
                "-o",
                str(folder / "out.jsonl"),
                "--store",
                store,
                "--no-local-worker",
                "--no-progress",
            ],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(2)
        subprocess.run(_as_postgres([*ctl, "-m", "immediate", "stop"]), capture_output=True)
        time.sleep(args.outage)
        subprocess.run(_as_postgres(start), check=True, capture_output=True)
        code = run.wait(timeout=900)
        makespan = time.perf_counter() - t0
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=120)
        subprocess.run(_as_postgres([*ctl, "-m", "fast", "stop"]), capture_output=True)
    rows = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    succeeded = sum(r["status"] == "succeeded" for r in rows)
    rounds = -(-args.tasks // (2 * args.concurrency))
    ideal = 2 + args.outage + rounds * 3 * STEP_SECONDS
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "tasks": args.tasks,
        "outage_s": args.outage,
        "lease_s": args.lease,
        "exit_code": code,
        "succeeded": succeeded,
        "makespan_s": round(makespan, 1),
        "ideal_s": ideal,
    }
    shutil.rmtree(folder, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store-outage.json").write_text(json.dumps(result, indent=2) + "\n")
    table = (
        f"# store outage: {args.tasks} tasks of 3 x {STEP_SECONDS} s steps, 2 workers, "
        f"PostgreSQL down {args.outage:g} s (lease {args.lease:g} s)\n\n"
        f"`{result['command']}`\n\n"
        "| succeeded | makespan | ideal (2 s + the outage + the work) | vs ideal |\n"
        "|---:|---:|---:|---:|\n"
        f"| {succeeded} / {args.tasks} | {makespan:.1f} s | {ideal:.1f} s | "
        f"{makespan / ideal:.2f}x |\n"
    )
    (RESULTS / "store-outage.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
