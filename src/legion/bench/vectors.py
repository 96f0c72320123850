"""``legion bench vectors``: vector collections on SQLite (sqlite-vec, exact) and
PostgreSQL (pgvector, HNSW) next to a brute-force numpy baseline, in one run.

Unit vectors (a seed, ``dims`` dimensions; clustered like embeddings of text by default,
or uniformly random: see `_points`) are inserted in batches through the
collection backends (the path ``ctx.vectors`` and ``legion vectors load`` take), then
``queries`` single searches for the ``k`` nearest are timed one after the other. Reported
per store: insert throughput (PostgreSQL: rows, then the HNSW index build, both counted),
queries per second, p50/p95 latency, recall@k against numpy's exact answer, the space
the vectors take (numpy: the array; SQLite: the file; PostgreSQL: table and index), and
process memory: the benchmark process's resident memory at its peak during each store's
run and its growth over that run (sampled every 20 ms), and for a private PostgreSQL server
the proportional memory (PSS) of its processes after the queries.

PostgreSQL runs on ``postgres`` when that server has pgvector, else on a private server
from the ``pgserver`` wheels when installed, else it is left out with a note.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legion.bench.results import BenchResult, Meter, Table, quiet
from legion.errors import ConfigError
from legion.extras import install_hint
from legion.store.urls import redact_url


@dataclass(frozen=True, slots=True)
class VectorBenchOptions:
    vectors: int = 10_000
    dims: int = 384
    queries: int = 200
    k: int = 10
    batch: int = 1000
    postgres: str | None = ""
    """A server with pgvector (or one from the pgserver wheels); ``None``: SQLite only."""
    seed: int = 7
    data: str = "clustered"
    """``clustered`` (like text embeddings, which group by topic) or ``random``."""

    def __post_init__(self) -> None:
        if min(self.vectors, self.dims, self.queries, self.k, self.batch) < 1:
            raise ValueError("vectors, dims, queries, k and batch must be >= 1")
        if self.k >= self.vectors:
            raise ValueError(f"k ({self.k}) must be below the number of vectors ({self.vectors})")
        if self.data not in ("clustered", "random"):
            raise ValueError(f"data must be 'clustered' or 'random', not {self.data!r}")


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(opts: VectorBenchOptions, progress: Callable[[str], None] = quiet) -> BenchResult:
    try:
        import numpy as np
    except ImportError as exc:
        raise ConfigError(f"legion bench vectors needs numpy: {install_hint('bench')}") from exc
    rng = np.random.default_rng(opts.seed)
    data = _points(np, rng, opts, opts.vectors)
    queries = _points(np, rng, opts, opts.queries)

    rows: list[dict[str, Any]] = []
    progress(f"numpy: {opts.vectors:,} x {opts.dims} brute force")
    rows_in = [tuple(v) for v in data.tolist()]  # what the stores are given: Python floats
    with Meter() as meter:
        started = time.perf_counter()
        matrix = np.array(rows_in, dtype=np.float32)
        insert_s = time.perf_counter() - started
        exact: list[set[int]] = []
        latencies = []
        for q in queries:
            t = time.perf_counter()
            scores = matrix @ q
            top = np.argpartition(-scores, opts.k)[: opts.k]
            latencies.append(time.perf_counter() - t)
            exact.append({int(i) for i in top})
    rows.append(_row("numpy (brute force)", opts, insert_s, latencies, 1.0, matrix.nbytes))
    _memory(rows[-1], meter)
    del rows_in

    with tempfile.TemporaryDirectory(prefix="legion-bench-vectors-") as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        progress("SQLite + sqlite-vec (exact search)")
        with Meter() as meter:
            rows.append(await _store_run("SQLite (sqlite-vec)", url, data, queries, exact, opts))
        _memory(rows[-1], meter)
        files = [Path(folder) / "bench.db", Path(folder) / "bench.vectors.db"]
        rows[-1]["size_mb"] = (
            sum(p.stat().st_size for db in files for p in (db, Path(f"{db}-wal")) if p.exists())
            / 1e6
        )

    notes: list[str] = []
    pg_server_dir: dict[str, str] = {}
    if opts.postgres is None:
        notes.append("PostgreSQL left out (--sqlite-only)")
    async with _pgvector(opts.postgres, notes, pg_server_dir) as pg:
        if pg is not None:
            progress("PostgreSQL + pgvector (HNSW)")
            with Meter() as meter:
                rows.append(
                    await _store_run("PostgreSQL (pgvector HNSW)", pg, data, queries, exact, opts)
                )
            _memory(rows[-1], meter)
            server_mb = _server_pss_mb(pg_server_dir.get("dir"))
            if server_mb is not None:
                rows[-1]["server_pss_mb"] = server_mb

    table = Table(
        f"{opts.vectors:,} {opts.data} vectors x {opts.dims} dims, {opts.queries} queries, "
        f"k={opts.k}",
        (
            "store",
            "insert vec/s",
            "query/s",
            "p50 ms",
            "p95 ms",
            f"recall@{opts.k}",
            "size MB",
            "process peak MB",
            "process growth MB",
            "server MB",
        ),
        tuple(
            (
                r["store"],
                f"{r['insert_per_s']:,.0f}",
                f"{r['query_per_s']:,.1f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
                f"{r['recall']:.3f}",
                f"{r['size_mb']:.1f}",
                f"{r['rss_peak_mb']:.0f}",
                f"{r['rss_growth_mb']:.0f}",
                f"{r['server_pss_mb']:.0f}" if "server_pss_mb" in r else "",
            )
            for r in rows
        ),
    )
    notes.append(
        "numpy holds the matrix in memory and answers from it; the stores write every vector "
        "durably (one transaction per batch of "
        f"{opts.batch:,}) and search through SQL"
    )
    notes.append(
        "process peak/growth: this benchmark's own resident memory (the test data, "
        f"{data.nbytes / 2**20:.0f} MB of float32, is held throughout); server MB: the "
        "private PostgreSQL server's processes (PSS, shared pages split among them), left "
        "empty for a server this process did not start"
    )
    return BenchResult(
        "vectors",
        "vector collections: SQLite and PostgreSQL next to brute-force numpy",
        {"options": _opts(opts), "rows": rows},
        [table],
        notes,
    )


CENTRES = 1000
"""Clusters of the ``clustered`` data: 100 vectors each at 100,000."""


def _points(np: Any, rng: Any, opts: VectorBenchOptions, count: int) -> Any:
    """``count`` unit vectors. ``random``: uniform on the sphere, where in 384 dimensions
    every vector is almost equally far from every other, the worst case of an approximate
    index (and unlike embeddings of text). ``clustered``: around ``CENTRES`` random centres
    (drawn once from the seed), each vector its centre plus noise of about half its length,
    so that near neighbours exist as they do among texts on one topic."""
    if opts.data == "random":
        points = rng.standard_normal((count, opts.dims), dtype=np.float32)
    else:
        centres = np.random.default_rng(opts.seed + 1).standard_normal(
            (CENTRES, opts.dims), dtype=np.float32
        )
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        noise = rng.standard_normal((count, opts.dims), dtype=np.float32)
        points = centres[rng.integers(0, CENTRES, count)] + noise * (0.5 / opts.dims**0.5)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def _memory(row: dict[str, Any], meter: Meter) -> None:
    if meter.result is not None:
        row["rss_peak_mb"] = meter.result.rss_peak / 2**20
        row["rss_growth_mb"] = meter.result.rss_growth / 2**20


def _server_pss_mb(data_dir: str | None) -> float | None:
    """The PSS of a private PostgreSQL server's processes (postmaster and children)."""
    if not data_dir:
        return None
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return None
    total = 0
    for proc in psutil.process_iter(["cmdline"]):
        if data_dir not in " ".join(proc.info.get("cmdline") or ()):
            continue
        try:
            family = [proc, *proc.children(recursive=True)]
            for member in family:
                total += member.memory_full_info().pss
        except (psutil.Error, AttributeError):
            return None
        return total / 2**20
    return None


def _opts(opts: VectorBenchOptions) -> dict[str, Any]:
    return {name: getattr(opts, name) for name in opts.__slots__}


def _row(
    store: str,
    opts: VectorBenchOptions,
    insert_s: float,
    latencies: list[float],
    recall: float,
    size_bytes: float,
    **extra: Any,
) -> dict[str, Any]:
    total = sum(latencies)
    return {
        "store": store,
        "insert_seconds": insert_s,
        "insert_per_s": opts.vectors / max(insert_s, 1e-9),
        "query_per_s": len(latencies) / max(total, 1e-9),
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p95_ms": _percentile(latencies, 95) * 1000,
        "recall": recall,
        "size_mb": size_bytes / 1e6,
        **extra,
    }


async def _store_run(
    name: str, url: str, data: Any, queries: Any, exact: list[set[int]], opts: VectorBenchOptions
) -> dict[str, Any]:
    from legion.store import store_from_url
    from legion.vectors.backend import vectors_for
    from legion.vectors.types import CollectionInfo, Item

    store = store_from_url(url)
    await store.open()
    try:
        backend = vectors_for(store)
        info = CollectionInfo("bench", "shared", "random", opts.dims)
        started = time.perf_counter()
        for start in range(0, opts.vectors, opts.batch):
            items = [
                Item(str(i), f"v{i}", {}, tuple(data[i].tolist()))
                for i in range(start, min(opts.vectors, start + opts.batch))
            ]
            await backend.write(info, "", items, index=False)
        rows_s = time.perf_counter() - started
        await backend.build_index(info)
        insert_s = time.perf_counter() - started
        latencies, found = [], 0
        for q, truth in zip(queries, exact, strict=True):
            vector = tuple(q.tolist())
            t = time.perf_counter()
            hits = await backend.search(info, "", vector, opts.k, {})
            latencies.append(time.perf_counter() - t)
            found += len(truth & {int(h.id) for h in hits})
        size = await _size(store, backend)
        await backend.aclose()
    finally:
        await store.aclose()
    recall = found / (opts.k * len(exact))
    return _row(
        name,
        opts,
        insert_s,
        latencies,
        recall,
        size,
        rows_seconds=rows_s,
        index_seconds=insert_s - rows_s,
    )


async def _size(store: Any, backend: Any) -> float:
    pg = getattr(backend, "_pg", None)
    if pg is None:
        return 0.0
    async with pg()._connection() as conn:
        cur = await conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relname LIKE 'vector_items_%' "
            "AND c.relkind = 'r'"
        )
        row = await cur.fetchone()
    return float(row[0]) if row else 0.0


@asynccontextmanager
async def _pgvector(
    url: str | None, notes: list[str], server_dir: dict[str, str]
) -> AsyncIterator[str | None]:
    """A store URL on a fresh schema of a server with pgvector, or ``None`` with a note
    (``url`` ``None``: none)."""
    if url is None:
        yield None
        return
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        notes.append("PostgreSQL left out: psycopg is not installed (legion[postgres])")
        yield None
        return
    server: Any = None
    base = url if url and _has_pgvector(psycopg, url, notes) else ""
    if not base:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pgserver = importlib.import_module("pgserver")
        except ImportError:
            notes.append(
                f"PostgreSQL left out: {url or 'no server'} has no pgvector and pgserver is "
                "not installed"
            )
            yield None
            return
        folder = Path(tempfile.gettempdir()) / f"legion-bench-pg-{uuid.uuid4().hex[:8]}"
        try:
            server = pgserver.get_server(str(folder), cleanup_mode="delete")
        except BaseException as exc:
            # (a Ctrl-C reaches initdb too: pgserver then raises its failure, not the
            # interrupt, and leaves its folder behind)
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, subprocess.CalledProcessError):
                raise RuntimeError(
                    f"could not start a private PostgreSQL server for pgvector ({exc})"
                ) from None
            raise
        base = str(server.get_uri())
        server_dir["dir"] = str(folder)
        if not _has_pgvector(psycopg, base, notes):
            server.cleanup()
            notes.append("PostgreSQL left out: the pgserver server has no pgvector")
            yield None
            return
        notes.append("PostgreSQL: a private server from the pgserver wheels (PostgreSQL 16)")
    schema = f"legion_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema},public"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        if server is not None:
            server.cleanup()


def _has_pgvector(psycopg: Any, url: str, notes: list[str]) -> bool:
    """Whether the server at ``url`` has pgvector (made in its database); one that cannot
    be reached is noted, not taken for one without it."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        said = " ".join(str(exc).split())
        notes.append(f"PostgreSQL at {redact_url(url)} could not be reached: {said}")
        return False
    try:
        with conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')"
            ).fetchone()
            if not (row and row[0]):
                return False
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
            return True
    except psycopg.Error:
        return False


__all__ = ["VectorBenchOptions", "run"]
