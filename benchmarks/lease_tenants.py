"""What tenants taking turns costs a lease (`legion.store.turns`): the same 2,000 queued
tasks of one agent, held by 1, 20, 200 or 1,000 tenants, leased 120 at a time until none
is left, on a SQLite file and on PostgreSQL (a database of its own, made and dropped):

    python benchmarks/lease_tenants.py [sqlite|postgres] [POSTGRES_URL]

Prints the time to lease them all and the longest lease. With one tenant queued the store
leases in queue order, as before turns; each lease over several tenants first finds them
(a seek each), then reads an even share of each one's tasks. See benchmarks/README.md for
what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg

from legion import codec
from legion.store import store_from_url
from legion.task import NewTask

LAYOUTS = ((1, 2000), (20, 100), (200, 10), (1000, 2))
LEASE = 120


async def drain(url: str, tenants: int, each: int) -> tuple[int, float, float]:
    store = store_from_url(url)
    await store.open()
    try:
        tasks = [
            NewTask("a", codec.dumps({"i": i}), tenant=f"t{k}")
            for k in range(tenants)
            for i in range(each)
        ]
        await store.submit(tasks, 1.0)
        leased, longest, began = 0, 0.0, time.perf_counter()
        while True:
            t = time.perf_counter()
            got = await store.lease("bench", {"a": LEASE}, LEASE, 1e12, 2.0)
            longest = max(longest, time.perf_counter() - t)
            if not got:
                return leased, time.perf_counter() - began, longest
            leased += len(got)
    finally:
        await store.aclose()


def fresh_database(server: str) -> str:
    parts = urlsplit(server)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS legion_lease_tenants")
        conn.execute("CREATE DATABASE legion_lease_tenants")
    return urlunsplit(parts._replace(path="/legion_lease_tenants"))


def drop_database(server: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS legion_lease_tenants")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", nargs="?", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "server",
        nargs="?",
        default=os.environ.get("LEGION_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1/postgres"),
        help="the PostgreSQL server (a database legion_lease_tenants is made and dropped on it)",
    )
    args = parser.parse_args()
    kind, server = args.kind, args.server
    for tenants, each in LAYOUTS:
        if kind == "sqlite":
            url = f"sqlite:///{tempfile.mkdtemp()}/lease.db"
        else:
            url = fresh_database(server)
        try:
            leased, took, longest = await drain(url, tenants, each)
        finally:
            if kind != "sqlite":
                drop_database(server)
        print(
            f"{kind}: {tenants:>5} tenants x {each:>5}: {leased} leased in {took * 1000:.0f} ms,"
            f" the longest lease {longest * 1000:.1f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
