"""Group commit of the SQLite store's submissions: those that arrive while one is being
written are written together next, in one transaction, each in a savepoint of its own
(see `SQLiteSubmissions.submit`). Under load this is one commit for many submissions
(the HTTP API's, above all), instead of each waiting in line for its own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from legion.errors import IdempotencyConflict, StoreError
from legion.store.waits import QueueWaits
from legion.task import NewTask, Submitted

T = TypeVar("T")
Submit = Callable[[sqlite3.Connection, Sequence[NewTask], float], list[Submitted]]


class SQLiteSubmissions:
    """The ``submit`` of ``SQLiteStore``, with what it needs to batch submissions."""

    if TYPE_CHECKING:  # what it uses of SQLiteStore
        _thread: ThreadPoolExecutor
        _waits: QueueWaits

        def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        def _store_error(self, exc: sqlite3.Error) -> StoreError: ...

        @staticmethod
        def _submit(
            db: sqlite3.Connection, tasks: Sequence[NewTask], now: float
        ) -> list[Submitted]: ...

    def _init_submissions(self) -> None:
        self._submitting = threading.Lock()  # guards the next two
        self._submissions: list[_Submission] = []
        self._writing_submissions = False

    async def submit(self, tasks: Sequence[NewTask], now: float) -> list[Submitted]:
        """Queue ``tasks`` in one transaction. Submissions that arrive while one is being
        written are written together next, in one transaction, each in a savepoint of its
        own: one refused (an idempotency conflict) leaves the others in; a transaction that
        fails as a whole (a full disk...) is written again one submission at a time, so that
        each fails or succeeds by itself as if it had been alone. Under load this is one
        commit for many submissions, instead of each waiting in line for its own.

        The store's thread takes the next batch as soon as it has written one (it queues
        itself again, behind the other calls waiting for the thread): a busy event loop
        delays the answers, not the writing."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Submitted]] = loop.create_future()
        with self._submitting:
            self._submissions.append(_Submission(tasks, now, done, loop, time.monotonic()))
            idle = not self._writing_submissions
            self._writing_submissions = True
        if idle:
            try:
                self._thread.submit(self._write_submissions)
            except RuntimeError as exc:  # the store was closed
                with self._submitting:
                    self._writing_submissions = False
                    self._submissions.clear()
                raise StoreError(f"the store is closed: {exc}") from exc
        return await done

    def _write_submissions(self) -> None:
        """(the store's thread) Write the submissions waiting, answer them, and come back
        for the next ones if more have arrived."""
        with self._submitting:
            batch, self._submissions = self._submissions, []
        began = time.monotonic()
        self._waits.add(sum(began - s.queued_at for s in batch), len(batch))
        self._post(batch, self._submit_batch(batch))
        with self._submitting:
            more = bool(self._submissions)
            self._writing_submissions = more
        if more:
            try:
                self._thread.submit(self._write_submissions)
            except RuntimeError:  # the store is closing: the rest is answered so
                with self._submitting:
                    batch, self._submissions = self._submissions, []
                    self._writing_submissions = False
                self._post(batch, [StoreError("the store is closed")] * len(batch))

    def _post(self, batch: list[_Submission], results: Sequence[Any]) -> None:
        """(the store's thread) Hand each submission's result to its event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Submission, Any]]] = {}
        for s, result in zip(batch, results, strict=True):
            by_loop.setdefault(s.loop, []).append((s, result))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(self._answer, answers)

    def _answer(self, answers: list[tuple[_Submission, list[Submitted] | Exception]]) -> None:
        for s, result in answers:
            if s.done.done():  # given up by its caller
                continue
            if isinstance(result, sqlite3.Error):
                error = self._store_error(result)
                error.__cause__ = result
                s.done.set_exception(error)
            elif isinstance(result, Exception):
                s.done.set_exception(result)
            else:
                s.done.set_result(result)

    def _submit_batch(self, batch: list[_Submission]) -> list[list[Submitted] | Exception]:
        """(the store's thread) Write ``batch``: what each submission got, or its error."""
        if len(batch) > 1:
            try:
                return self._transaction(
                    lambda db: [
                        _submit_in_savepoint(self._submit, db, s.tasks, s.now) for s in batch
                    ]
                )
            except Exception:
                pass  # written again one at a time below: each gets its own answer
        out: list[list[Submitted] | Exception] = []
        for s in batch:
            try:
                out.append(self._transaction(functools.partial(_submit_alone, self._submit, s)))
            except Exception as exc:
                out.append(exc)
        return out


@dataclasses.dataclass(slots=True)
class _Submission:
    """A `SQLiteStore.submit` call waiting for its transaction."""

    tasks: Sequence[NewTask]
    now: float
    done: asyncio.Future[list[Submitted]]
    loop: asyncio.AbstractEventLoop
    queued_at: float  # time.monotonic() when it was queued


def _submit_alone(
    submit: Submit, submission: _Submission, db: sqlite3.Connection
) -> list[Submitted]:
    return submit(db, submission.tasks, submission.now)


def _submit_in_savepoint(
    submit: Submit, db: sqlite3.Connection, tasks: Sequence[NewTask], now: float
) -> list[Submitted] | Exception:
    """One submission of a batch, in a savepoint: a conflicting idempotency key undoes it
    alone (and is its answer)."""
    db.execute("SAVEPOINT submission")
    try:
        submitted = submit(db, tasks, now)
    except IdempotencyConflict as exc:
        db.execute("ROLLBACK TO submission")
        db.execute("RELEASE submission")
        return exc
    db.execute("RELEASE submission")
    return submitted
