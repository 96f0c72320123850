"""``legion serve`` under overload and under large bodies: what it accepts, sheds and holds.

Starts ``legion serve --no-worker`` (the API alone: submitted tasks stay queued) on a fresh
SQLite store, as a subprocess, and drives it over real HTTP from this process:

1. **Sustainable rate**: a closed loop of ``--clients`` submitters for ``--seconds``; its
   throughput is the rate the server sustains, with its p50/p99 latency.
2. **10x overload**: an open-loop generator offering ``--overload`` times that rate for
   ``--seconds``, with at most ``--outstanding`` requests in flight (the generator is
   bounded too: a request it cannot send is counted as not offered). Run twice in the
   same process three times: with the bound on requests in progress adapted to
   ``--target-latency`` under the ceiling ``--max-in-progress`` (``shedding``, the
   default), with that ceiling as a fixed bound (``fixed``: how it shed before), and with
   the bound out of reach (``unbounded``: how the server behaved before it shed load).
   Counts 201s, 429s and 503s (with or without ``Retry-After``), errors, and the p50/p99
   of the accepted ones and of the refused ones (a refusal is answered as soon as the
   server reads the request: its latency is the wait in front of the server, behind the
   generator's other requests outstanding, which an accepted request waits too); then
   reads the store: every acknowledged task must be there
   (``lost``) and nothing else (``extra``).
3. **Memory**: the server's RSS (``/proc/PID/status``) at rest, after ``--big`` tasks of
   ``--big-mb`` MB submitted one after the other (and, per request, how far its peak RSS
   rose above the RSS before it, in multiples of the body: the copies it made), and after
   two bursts of ``--burst`` concurrent ``--burst-mb`` MB bodies; per accepted task.

The generator's client (``--client``): ``raw`` (the default) writes each request to a
kept-alive connection and scans the answer's status line and headers, at about a quarter
of aiohttp's CPU per request (``aiohttp``, how it was measured before): the generator runs
on the machine the server runs on, and what it costs is taken from the server. Latency is
counted from when a request is written to when its answer is read; how late the generator
wrote each request after it was due is reported too (``send_lag_*``).

``--src PATH`` runs another checkout's ``legion`` (its ``src`` folder) for a before/after
comparison; flags that checkout does not know are left out.

    python benchmarks/api_load.py                      # ~1 min
    python benchmarks/api_load.py --src ../other/src   # the same against another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

AGENT = """
import legion

@legion.agent
async def echo(ctx, text: str = "", n: int = 0):
    return n
"""


ERRORS: Counter[str] = Counter()
"""The client's errors (status 0 in the counts), by exception."""


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Server:
    def __init__(self, folder: Path, src: Path | None, flags: list[str]) -> None:
        self.folder = folder
        self.env = dict(os.environ)
        if src:
            self.env["PYTHONPATH"] = str(src)
        self.store = f"sqlite:///{folder / 'api.db'}"
        (folder / "agents.py").write_text(AGENT)
        made = subprocess.run(
            [sys.executable, "-m", "legion", "keys", "create", "--store", self.store],
            capture_output=True,
            text=True,
            env=self.env,
            check=True,
        )
        self.key = made.stdout.splitlines()[-1]
        help_text = subprocess.run(
            [sys.executable, "-m", "legion", "serve", "--help"],
            capture_output=True,
            text=True,
            env={**self.env, "COLUMNS": "300"},
        ).stdout
        known = [f for f in flags[::2] if f in help_text]
        args = [
            a for f, v in zip(flags[::2], flags[1::2], strict=True) if f in known for a in (f, v)
        ]
        self.flags = args
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "legion", "serve", "--no-worker", "--port", "0"),
                *("--store", self.store, "--app", str(folder / "agents.py"), *args),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self.env,
            cwd=folder,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.url = line.split("listening on ", 1)[1].split()[0]

    def rss_mb(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reset_peak(self) -> None:
        """Start the peak RSS (VmHWM) over from the RSS now."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def stored_ids(self) -> set[int]:
        db = sqlite3.connect(str(self.folder / "api.db"))
        try:
            return {row[0] for row in db.execute("SELECT id FROM tasks")}
        finally:
            db.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def submit(
    http: aiohttp.ClientSession, server: Server, body: bytes
) -> tuple[int, float, bool, int | None]:
    began = time.perf_counter()
    try:
        async with http.post(
            server.url + "/v1/tasks",
            data=body,
            headers={"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"},
        ) as resp:
            data = await resp.read()
            task_id = json.loads(data)["id"] if resp.status == 201 else None
            return resp.status, time.perf_counter() - began, "Retry-After" in resp.headers, task_id
    except (TimeoutError, aiohttp.ClientError) as exc:
        ERRORS[type(exc).__name__] += 1
        return 0, time.perf_counter() - began, False, None


def body(i: int) -> bytes:
    return json.dumps({"agent": "echo", "input": {"n": i}}).encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection of `RawClient`: a request written, its answer read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[int, bool, int] | None = None  # status, Retry-After, body length
        self.answer: asyncio.Future[tuple[int, bool, bytes, float]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            del self.buffer[: end + 4]
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise ValueError(f"an answer without Content-Length: {head!r}")
            ends = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : ends if ends >= 0 else None])
            self.head = (int(head[9:12]), b"\r\nretry-after:" in head, length)
        status, retry, length = self.head
        if len(self.buffer) >= length and self.answer is not None:
            answer, self.answer, self.head = self.answer, None, None
            data = bytes(self.buffer[:length])
            del self.buffer[:length]
            if not answer.done():
                answer.set_result((status, retry, data, time.perf_counter()))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError(str(exc or "closed by the server")))
        self.transport = None


class RawClient:
    """A load generator's HTTP client at a small fraction of aiohttp's CPU per request
    (each request bytes written to a kept-alive connection, the answer's status line and
    headers scanned): on a machine the server shares, what the generator costs is taken
    from the server. A request's latency runs from when it is written to the socket to
    when its answer has been read (`submit` counts from before aiohttp's own work)."""

    def __init__(self, server: Server) -> None:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.head = (
            f"POST /v1/tasks HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {server.key}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.idle: list[_Connection] = []
        self.opened: list[_Connection] = []

    async def open(self, connections: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(connections):
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
            self.idle.append(conn)
            self.opened.append(conn)

    async def submit(self, data: bytes) -> tuple[int, float, bool, int | None]:
        conn = self.idle.pop() if self.idle else None
        if conn is None or conn.transport is None:
            await self.open(1)
            conn = self.idle.pop()
        assert conn.transport is not None
        conn.answer = asyncio.get_running_loop().create_future()
        began = time.perf_counter()
        conn.transport.write(self.head + b"Content-Length: %d\r\n\r\n" % len(data) + data)
        try:
            status, retry, answer, ended = await conn.answer
        except ConnectionError as exc:
            ERRORS[type(exc).__name__] += 1
            return 0, time.perf_counter() - began, False, None
        self.idle.append(conn)
        task_id = json.loads(answer)["id"] if status == 201 else None
        return status, ended - began, retry, task_id

    def close(self) -> None:
        for conn in self.opened:
            if conn.transport is not None:
                conn.transport.close()


Submit = Callable[[bytes], Awaitable[tuple[int, float, bool, "int | None"]]]


@contextlib.asynccontextmanager
async def client(server: Server, kind: str, connections: int) -> AsyncIterator[Submit]:
    """``submit(body)`` over ``connections`` kept-alive connections: `RawClient`'s
    (``raw``), or aiohttp's (``aiohttp``)."""
    if kind == "raw":
        raw = RawClient(server)
        try:
            await raw.open(connections)
            yield raw.submit
        finally:
            raw.close()
        return
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=120),
        connector=aiohttp.TCPConnector(limit=connections),
    ) as http:
        yield functools.partial(submit, http, server)


async def sustainable(
    server: Server, clients: int, seconds: float, kind: str = "raw"
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    async with client(server, kind, clients) as send:
        deadline = time.perf_counter() + seconds

        async def loop(c: int) -> None:
            i = 0
            while time.perf_counter() < deadline:
                status, took, _, _ = await send(body(c * 1_000_000 + i))
                statuses[status] += 1
                if status == 201:
                    latencies.append(took)
                i += 1

        began = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in range(clients)))
        elapsed = time.perf_counter() - began
    return {
        "rate": len(latencies) / elapsed,
        "statuses": dict(statuses),
        "p50_ms": 1000 * (percentile(latencies, 0.5) or 0),
        "p99_ms": 1000 * (percentile(latencies, 0.99) or 0),
    }


async def overload(
    server: Server,
    rate: float,
    seconds: float,
    outstanding: int,
    kind: str = "raw",
    window: float = 10.0,
) -> dict[str, Any]:
    latencies: list[float] = []
    sent_at: list[float] = []  # when each accepted request was sent, from the start
    refused: list[float] = []
    statuses: Counter[int] = Counter()
    retry_after: Counter[int] = Counter()
    acked: list[int] = []
    not_offered = 0
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()
    lag: list[float] = []  # how late the generator sent, after the time it was due
    async with client(server, kind, outstanding) as send:

        async def one(i: int, due: float) -> None:
            nonlocal in_flight
            lag.append(time.perf_counter() - due)
            try:
                status, took, has_retry, task_id = await send(body(10**9 + i))
            finally:
                in_flight -= 1
            statuses[status] += 1
            if has_retry:
                retry_after[status] += 1
            if status == 201 and task_id is not None:
                latencies.append(took)
                sent_at.append(due - began)
                acked.append(task_id)
            elif status in (429, 503):
                refused.append(took)

        began = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - began < seconds:
            due = int((now - began) * rate) - sent
            for _ in range(due):
                if in_flight >= outstanding:
                    not_offered += 1
                else:
                    in_flight += 1
                    t = asyncio.create_task(one(sent, began + sent / rate))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
    stored = server.stored_ids()
    # The accepted requests' p99 in each `window` seconds of the run, by when they were
    # sent: a bound holds if it does not grow as the overload goes on.
    by_window: dict[int, list[float]] = {}
    for at, took in zip(sent_at, latencies, strict=True):
        by_window.setdefault(int(at // window), []).append(took)
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "offered": sent - not_offered,
        "not_offered": not_offered,
        "statuses": dict(statuses),
        "with_retry_after": dict(retry_after),
        "accepted_p50_ms": 1000 * (percentile(latencies, 0.5) or 0),
        "accepted_p99_ms": 1000 * (percentile(latencies, 0.99) or 0),
        "window_s": window,
        "accepted_p99_ms_by_window": [
            round(1000 * (percentile(by_window.get(w, []), 0.99) or 0), 1)
            for w in range(int(seconds // window) + (seconds % window > 0))
        ],
        # A refusal is answered as soon as the server reads the request: its latency is
        # the wait in front of the server (the generator's requests outstanding, in the
        # sockets, behind the others), which every accepted request waits too.
        "refused_p50_ms": 1000 * (percentile(refused, 0.5) or 0),
        "refused_p99_ms": 1000 * (percentile(refused, 0.99) or 0),
        "lost": len(set(acked) - stored),
        "acked": len(acked),
        "client": kind,
        # The generator's own delay: from when a request was due to when it was sent (a
        # generator short of CPU sends late, and what it measures is then its own wait).
        "send_lag_p50_ms": 1000 * (percentile(lag, 0.5) or 0),
        "send_lag_p99_ms": 1000 * (percentile(lag, 0.99) or 0),
    }


async def memory(
    server: Server, big: int, big_mb: float, burst: int, burst_mb: float
) -> dict[str, Any]:
    def payload(mb: float, i: int) -> bytes:
        text = ("x" * 1023 + "\n") * int(mb * 1024)
        return json.dumps({"agent": "echo", "input": {"text": text, "n": i}}).encode()

    out: dict[str, Any] = {"rest_mb": server.rss_mb()}
    # A connection per request: building the next burst's bodies can take longer than the
    # server keeps an idle connection, and a POST on a connection it closed fails.
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=300),
        connector=aiohttp.TCPConnector(force_close=True),
    ) as http:
        accepted = 0
        peak = out["rest_mb"]
        rises = []
        for i in range(big):
            data = payload(big_mb, i)
            before = server.rss_mb()
            server.reset_peak()
            status, _, _, _ = await submit(http, server, data)
            rises.append((server.rss_mb("VmHWM") - before) / (len(data) / 2**20))
            accepted += status == 201
            peak = max(peak, server.rss_mb())
            out.setdefault("rss_after_each_mb", []).append(round(server.rss_mb(), 1))
        # What one request holds at its peak, in multiples of its body: the copies made.
        out["peak_rise_per_body"] = round(sorted(rises)[len(rises) // 2], 2)
        out["after_sequential_mb"] = server.rss_mb()
        out["sequential_accepted"] = accepted
        out["sequential_peak_mb"] = peak
        burst_ok = 0
        for round_ in (1, 2):  # a second burst: does the server keep growing?
            bodies = [payload(burst_mb, 1000 * round_ + i) for i in range(burst)]
            answers = await asyncio.gather(*(submit(http, server, b) for b in bodies))
            del bodies
            out[f"burst{round_}_statuses"] = dict(Counter(a[0] for a in answers))
            out[f"after_burst{round_}_mb"] = server.rss_mb()
            burst_ok += sum(a[0] == 201 for a in answers)
    await asyncio.sleep(2)
    out["settled_mb"] = server.rss_mb()
    out["client_errors"] = dict(ERRORS)
    total = accepted + burst_ok
    out["per_accepted_task_mb"] = (out["settled_mb"] - out["rest_mb"]) / max(1, total)
    return out


def summary(results: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Per configuration, over the rounds: medians of the baseline and overload figures."""

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2] if ordered else float("nan")

    out: dict[str, Any] = {}
    for name in names:
        runs = results.get(name, [])
        overs = [r["overload"] for r in runs]
        statuses: Counter[str] = Counter()
        retry: Counter[str] = Counter()
        for o in overs:
            statuses.update({str(k): v for k, v in o["statuses"].items()})
            retry.update({str(k): v for k, v in o["with_retry_after"].items()})
        out[name] = {
            "rounds": len(runs),
            "baseline_rate": median([r["sustainable"]["rate"] for r in runs]),
            "baseline_p99_ms": median([r["sustainable"]["p99_ms"] for r in runs]),
            "accepted_per_s": median([o["acked"] / o["seconds"] for o in overs]),
            "accepted_p50_ms": median([o["accepted_p50_ms"] for o in overs]),
            "accepted_p99_ms": median([o["accepted_p99_ms"] for o in overs]),
            "p99_ratio_to_baseline": median([o["p99_ratio_to_baseline"] for o in overs]),
            "refused_p50_ms": median([o.get("refused_p50_ms", 0.0) for o in overs]),
            "refused_p99_ms": median([o.get("refused_p99_ms", 0.0) for o in overs]),
            "statuses": dict(statuses),
            "with_retry_after": dict(retry),
            "lost": sum(o["lost"] for o in overs),
        }
    return out


def markdown(summary: dict[str, Any], overload: float = 10.0) -> str:
    lines = [
        f"| bound | baseline/s | baseline p99 ms | accepted/s at {overload:g}x | accepted p50 ms "
        "| accepted p99 ms | p99 / baseline p99 | refused p50 ms | refused p99 ms "
        "| 201 | 429 | 503 | with Retry-After | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        st = s["statuses"]
        lines.append(
            f"| {name} | {s['baseline_rate']:.0f} | {s['baseline_p99_ms']:.0f} "
            f"| {s['accepted_per_s']:.0f} | {s['accepted_p50_ms']:.0f} "
            f"| {s['accepted_p99_ms']:.0f} | {s['p99_ratio_to_baseline']:.1f} "
            f"| {s['refused_p50_ms']:.0f} | {s['refused_p99_ms']:.0f} "
            f"| {st.get('201', 0)} | {st.get('429', 0)} | {st.get('503', 0)} "
            f"| {sum(s['with_retry_after'].values())} | {s['lost']} |"
        )
    return "\n".join(lines)


def windows(results: dict[str, Any], names: list[str]) -> str:
    """The accepted p99 over time, per configuration and round: one row per run."""
    runs = [(n, i, r["overload"]) for n in names for i, r in enumerate(results.get(n, []))]
    if not runs:
        return ""
    width = runs[0][2]["window_s"]
    count = max(len(o["accepted_p99_ms_by_window"]) for _, _, o in runs)
    head = " | ".join(f"{w * width:g}-{(w + 1) * width:g} s" for w in range(count))
    lines = [
        "",
        "Accepted p99 (ms) over the overload, by when each request was sent:",
        "",
        f"| bound | round | {head} |",
        "|---|---:|" + "---:|" * count,
    ]
    for name, i, o in runs:
        cells = " | ".join(f"{v:.0f}" for v in o["accepted_p99_ms_by_window"])
        lines.append(f"| {name} | {i + 1} | {cells} |")
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, help="run the legion of this src folder")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--overload", type=float, default=10.0)
    parser.add_argument("--outstanding", type=int, default=512)
    parser.add_argument("--max-in-progress", type=int, default=128)
    parser.add_argument("--target-latency", type=float, default=0.1)
    parser.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="the generator's HTTP client: raw (requests written to kept-alive sockets, "
        "cheap) or aiohttp (as before; costs the shared CPU as much as the server)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--bounds",
        default="shedding,fixed,unbounded",
        help="the configurations to run, of shedding, fixed and unbounded (default: all)",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=10.0,
        help="seconds per window of the overload's accepted p99 over time",
    )
    parser.add_argument(
        "--name", default="api-load", help="the results' file name, NAME.json and NAME.md"
    )
    parser.add_argument("--big", type=int, default=12)
    parser.add_argument("--big-mb", type=float, default=3.6)
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--burst-mb", type=float, default=10.0)
    parser.add_argument(
        "--phases",
        default="overload,memory",
        help="overload, memory, or both (default)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    shown = ["OTHER_CHECKOUT/src" if a == str(args.src) else a for a in sys.argv]
    results: dict[str, Any] = {"command": " ".join(shown), "load": os.getloadavg()}
    body_flags = ["--max-body", str(int(max(args.big_mb, args.burst_mb) * 1.2 * 2**20))]
    with tempfile.TemporaryDirectory() as tmp:
        wanted = set(args.bounds.split(","))
        bounds = tuple(
            b
            for b in (
                ("shedding", args.max_in_progress, args.target_latency),
                ("fixed", args.max_in_progress, 0.0),
                ("unbounded", 1_000_000, 0.0),
            )
            if b[0] in wanted
        )
        # The configurations take turns, round after round, so that they share whatever
        # else the machine is doing; each overload is compared with the baseline measured
        # on the same server just before it.
        for round_ in range(args.rounds if "overload" in args.phases else 0):
            for name, bound, target in bounds:
                folder = Path(tmp) / f"{name}-{round_}"
                folder.mkdir()
                flags = ["--max-in-progress", str(bound), "--target-latency", str(target)]
                server = Server(folder, args.src, flags)
                try:
                    base = await sustainable(server, args.clients, args.seconds, args.client)
                    over = await overload(
                        server,
                        args.overload * base["rate"],
                        args.seconds,
                        args.outstanding,
                        args.client,
                        args.window,
                    )
                finally:
                    server.stop()
                over["p99_ratio_to_baseline"] = over["accepted_p99_ms"] / max(base["p99_ms"], 1e-9)
                run = {"flags": server.flags, "sustainable": base, "overload": over}
                results.setdefault(name, []).append(run)
                print(name, round_, json.dumps(run), flush=True)
        if "overload" in args.phases:
            results["summary"] = summary(results, [b[0] for b in bounds])
            print(markdown(results["summary"], args.overload), flush=True)
        if "memory" in args.phases:
            folder = Path(tmp) / "memory"
            folder.mkdir()
            server = Server(folder, args.src, body_flags)
            try:
                results["memory"] = await memory(
                    server, args.big, args.big_mb, args.burst, args.burst_mb
                )
            finally:
                server.stop()
            print("memory", json.dumps(results["memory"], indent=1), flush=True)
    args.out.mkdir(exist_ok=True)
    name = args.name + ("-other" if args.src else "")
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1))
    if "summary" in results:
        table = markdown(results["summary"], args.overload)
        (args.out / f"{name}.md").write_text(
            f"# {args.name}\n\n`{results['command']}`\n\n{table}\n"
            + windows(results, [b[0] for b in bounds])
        )
    print(f"wrote {args.out / f'{name}.json'}")


if __name__ == "__main__":
    asyncio.run(main())
