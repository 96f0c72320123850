"""Vector collections of a SQLite store, in a file beside the store's, searched with
sqlite-vec.

Python's ``sqlite3`` often cannot load extensions (``enable_load_extension`` is compiled
out, as in the interpreters pyenv and many distributions build); then the vectors use
``pysqlite3`` (the ``pysqlite3-binary`` wheel: SQLite built with extension loading). Two
copies of SQLite in one process must never open the same database file (each keeps its
own POSIX locks and its own map of the WAL index: together they corrupt it or crash the
process), so the vectors live in a file of their own (`vectors_path`: ``runs.db`` ->
``runs.vectors.db``), with a connection and a thread of their own. A ``:memory:`` store
gets a private in-memory database of vectors, for as long as the store object.

Search is exact (``vec_distance_cosine`` over the collection's rows, in SQL): every
row is compared, so recall is 1.0 and time grows with the collection.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sqlite3
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from legion import codec
from legion.errors import VectorError
from legion.store.queries import migrations, queries
from legion.vectors.types import CollectionInfo, Hit, Item, Scalar, check_dims, check_same

T = TypeVar("T")
Q = queries("sqlite", "vectors")
_FIX = (
    "pip install 'legion-runtime[vectors]' (sqlite-vec, and pysqlite3-binary where "
    "Python's sqlite3 cannot load extensions)"
)


def connect(path: str, busy_ms: int = 30_000) -> Any:
    """A connection to ``path`` with sqlite-vec loaded; `VectorError` naming the fix if
    that cannot be had."""
    try:
        sqlite_vec = importlib.import_module("sqlite_vec")
    except ImportError as exc:
        raise VectorError(f"vector collections on SQLite need sqlite-vec: {_FIX}") from exc
    module: Any = sqlite3
    if not hasattr(sqlite3.Connection, "enable_load_extension"):
        try:
            module = importlib.import_module("pysqlite3.dbapi2")
        except ImportError as exc:
            raise VectorError(
                "this Python's sqlite3 cannot load extensions, and pysqlite3 is not "
                f"installed: {_FIX}"
            ) from exc
    db = module.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.enable_load_extension(True)
        sqlite_vec.load(db)
        db.enable_load_extension(False)
    except Exception as exc:
        db.close()
        raise VectorError(f"cannot load sqlite-vec into SQLite: {exc}; {_FIX}") from exc
    db.execute(f"PRAGMA busy_timeout = {busy_ms}")
    if path != ":memory:":
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
    return db


def vectors_path(store_path: str) -> str:
    """The file of a SQLite store's vectors: ``runs.db`` -> ``runs.vectors.db``, beside the
    store's file itself (a store named through a symbolic link kept its vectors beside the
    link: one store, two files of vectors, as it was named). ``:memory:`` stays private to
    the process. A file made beside the link by an earlier legion is kept using."""
    if store_path == ":memory:":
        return store_path
    named = _beside(Path(store_path))
    real = _beside(Path(os.path.realpath(store_path)))
    if real != named and os.path.exists(named) and not os.path.exists(real):
        return named
    return real


def _beside(path: Path) -> str:
    suffix = path.suffix or ".db"
    return str(path.with_name(f"{path.stem if path.suffix else path.name}.vectors{suffix}"))


_OWNER_TABLE = "CREATE TABLE IF NOT EXISTS vector_owner (store INTEGER NOT NULL)"
"""The store a vectors file belongs to (`SQLiteStore.identity`): one row."""


def _write_owner(db: Any, store: int | None, *, replace: bool) -> None:
    """Record ``store`` as the file's owner under the write lock: in place of any other
    (``replace``), or only if none is recorded yet (two processes may claim it at once)."""
    db.execute(_OWNER_TABLE)
    db.execute("BEGIN IMMEDIATE")
    try:
        if replace:
            db.execute("DELETE FROM vector_owner")
        if db.execute("SELECT store FROM vector_owner").fetchone() is None:
            db.execute("INSERT INTO vector_owner VALUES (?)", (store,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def pack(vector: Sequence[float]) -> bytes:
    return array("f", vector).tobytes()


class SQLiteVectors:
    """A `~legion.vectors.backend.VectorBackend` in one SQLite file beside the store's.

    The vectors live in a file of their own (`vectors_path`), not in the store's: they are
    written through another SQLite library (one that can load sqlite-vec), and two copies
    of SQLite in one process must never open the same database file (each has its own
    POSIX locks and its own map of the WAL index; together they can crash the process).
    """

    def __init__(self, path: str, store_identity: int | None = None) -> None:
        self.path = vectors_path(path)
        self._store_identity = store_identity
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="legion-vectors")
        self._db: Any = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _conn(self) -> Any:
        if self._db is None:
            db = connect(self.path)
            _, script = next(m for m in migrations("sqlite") if m[0] == 9)
            db.executescript(script)  # idempotent: CREATE TABLE IF NOT EXISTS
            try:
                self._claim(db)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    async def adopt(self) -> None:
        """Tie the vectors file to this store whatever store it was tied to (a store
        restored from a backup made before stores had their number, or rebuilt, has
        another): ``legion vectors adopt``."""

        def run() -> None:
            db = connect(self.path)
            try:
                _write_owner(db, self._store_identity, replace=True)
            finally:
                db.close()

        await self._call(lambda: self._guard(run))

    def _claim(self, db: Any) -> None:
        """Tie the file to its store (`SQLiteStore.identity`), or refuse one that another
        store made: a store deleted and made again at the same path left its vectors
        behind, and they would be served to the new store's tasks (its ids start at 1
        again, and so do the sessions named after them)."""
        mine = self._store_identity
        if mine is None:
            return
        db.execute(_OWNER_TABLE)
        found = db.execute("SELECT store FROM vector_owner").fetchone()
        if found is None:  # (a new file, or one an older legion made: its store's)
            _write_owner(db, mine, replace=False)
            found = db.execute("SELECT store FROM vector_owner").fetchone()
        if found[0] != mine:
            raise VectorError(
                f"{self.path} holds the vectors of another store, made at this path before "
                "this one (its file deleted, this file left behind): delete it (with its -wal "
                "and -shm files), or move it away, to start this store's vectors afresh; if "
                "they are this store's (restored from a backup, or rebuilt), `legion vectors "
                "adopt` ties them to it"
            )

    def _transaction(self, fn: Callable[[Any], T]) -> T:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except sqlite3.Error as exc:  # pragma: no cover - pysqlite3 errors below
            raise _store_error(exc) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("pysqlite3") or isinstance(exc, sqlite3.Error):
                raise _store_error(exc) from exc
            raise

    # -- the backend -----------------------------------------------------------------

    async def collection(self, name: str) -> CollectionInfo | None:
        return await self._call(lambda: self._guard(lambda: self._collection(self._conn(), name)))

    def _collection(self, db: Any, name: str) -> CollectionInfo | None:
        row = db.execute(Q["collection_get"], {"name": name}).fetchone()
        return None if row is None else CollectionInfo(row[0], row[1], row[2], int(row[3]))

    async def collections(self) -> list[CollectionInfo]:
        def run() -> list[CollectionInfo]:
            rows = self._conn().execute(Q["collections"]).fetchall()
            return [CollectionInfo(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

        return await self._call(lambda: self._guard(run))

    async def write(
        self, info: CollectionInfo, session: str, items: Sequence[Item], *, index: bool = True
    ) -> None:
        """Create the collection if need be and upsert ``items`` (``index``: unused here,
        search is exact)."""
        rows = [
            (
                info.name,
                session,
                it.id,
                it.text,
                codec.dumps(dict(it.metadata)).decode(),
                pack(it.embedding),
            )
            for it in items
        ]

        def run(db: Any) -> None:
            found = self._collection(db, info.name)
            if found is None:
                params = {"name": info.name, "scope": info.scope, "model": info.model}
                db.execute(
                    Q["collection_insert"], {**params, "dims": info.dims, "now": time.time()}
                )
            else:
                check_same(found, info)
            db.executemany(Q["upsert"], rows)

        await self._call(lambda: self._guard(lambda: self._transaction(run)))

    async def search(
        self,
        info: CollectionInfo,
        session: str,
        vector: Sequence[float],
        k: int,
        where: Mapping[str, Scalar],
    ) -> list[Hit]:
        check_dims(info, len(vector))
        clauses: list[str] = []
        params: list[Any] = [pack(vector), info.name, session]
        for key, value in where.items():
            # A value equals one of its own JSON type (json_extract answers 1 for true, as
            # for 1): as PostgreSQL's jsonb containment compares them.
            path = f'$."{key}"'
            if isinstance(value, bool):
                clauses.append("AND json_type(metadata, ?) = ?")
                params += [path, "true" if value else "false"]
            else:
                types = "'text'" if isinstance(value, str) else "'integer', 'real'"
                clauses.append(
                    f"AND json_type(metadata, ?) IN ({types}) AND json_extract(metadata, ?) = ?"
                )
                params += [path, path, value]
        sql = Q["search"].replace("/*where*/", " ".join(clauses))
        params.append(k)

        def run() -> list[Hit]:
            rows = self._conn().execute(sql, params).fetchall()
            return [Hit(r[0], r[1], json.loads(r[2]), 1.0 - float(r[3])) for r in rows]

        return await self._call(lambda: self._guard(run))

    async def delete(self, info: CollectionInfo, session: str, ids: Sequence[str]) -> int:
        params = {"collection": info.name, "session": session, "ids": json.dumps(list(ids))}
        return await self._call(
            lambda: self._guard(
                lambda: self._transaction(lambda db: int(db.execute(Q["delete"], params).rowcount))
            )
        )

    async def stored(
        self, info: CollectionInfo, session: str, ids: Sequence[str]
    ) -> dict[str, tuple[str, dict[str, Any]]]:
        params = {"collection": info.name, "session": session, "ids": json.dumps(list(ids))}

        def run() -> dict[str, tuple[str, dict[str, Any]]]:
            rows = self._conn().execute(Q["stored"], params)
            return {r[0]: (r[1], json.loads(r[2])) for r in rows}

        return await self._call(lambda: self._guard(run))

    async def set_metadata(
        self, info: CollectionInfo, session: str, metadata: Mapping[str, Mapping[str, Any]]
    ) -> None:
        rows = [
            (codec.dumps(dict(meta)).decode(), info.name, session, item)
            for item, meta in metadata.items()
        ]

        def run(db: Any) -> None:
            db.executemany(Q["set_metadata"], rows)

        await self._call(lambda: self._guard(lambda: self._transaction(run)))

    async def count(self, info: CollectionInfo, session: str) -> int:
        params = {"collection": info.name, "session": session}
        return await self._call(
            lambda: self._guard(lambda: int(self._conn().execute(Q["count"], params).fetchone()[0]))
        )

    async def drop_collection(self, name: str) -> int | None:
        def run(db: Any) -> int | None:
            if self._collection(db, name) is None:
                return None
            dropped = int(db.execute(Q["drop_items"], {"name": name}).rowcount)
            db.execute(Q["drop_collection"], {"name": name})
            return dropped

        return await self._call(lambda: self._guard(lambda: self._transaction(run)))

    async def drop_sessions(self, sessions: Sequence[str], *, dry_run: bool = False) -> int:
        params = {"sessions": json.dumps(list(sessions))}

        def run() -> int:
            if self._db is None and self.path != ":memory:" and not Path(self.path).exists():
                return 0  # (never held vectors: no file is made for nothing)
            if dry_run:
                return self._transaction(
                    lambda db: int(db.execute(Q["count_sessions"], params).fetchone()[0])
                )
            return self._transaction(
                lambda db: int(db.execute(Q["drop_sessions"], params).rowcount)
            )

        return await self._call(lambda: self._guard(run))

    async def aclose(self) -> None:
        await self._call(self._close)
        self._thread.shutdown(wait=False)

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    async def build_index(self, info: CollectionInfo) -> None:
        """Nothing to build: SQLite's search is exact."""

    def close_now(self) -> None:
        """Close from outside the event loop (when the store object goes away)."""
        try:
            self._thread.submit(self._close)
        except RuntimeError:  # already shut down by aclose
            return
        self._thread.shutdown(wait=False)


def _store_error(exc: Exception) -> Exception:
    from legion.errors import StoreError

    return StoreError(f"the vector store failed: {exc}")
