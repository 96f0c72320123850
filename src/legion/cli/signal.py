"""``legion signal TASK EVENT --data JSON``: wake a task that waits for an event."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from legion import codec
from legion.cli.options import DEFAULT_STORE, TASK_ID_MAX, StoreOpt, _fail, _run
from legion.errors import NotAwaited
from legion.task import TaskStatus


def register(app: typer.Typer) -> None:
    """Add the ``signal`` command to ``app``."""

    @app.command("signal")
    def signal_cmd(
        task_id: Annotated[int, typer.Argument(min=1, max=TASK_ID_MAX, help="The task to signal.")],
        event: Annotated[
            str,
            typer.Argument(
                metavar="EVENT", help="The event name the task waits for (ctx.wait_for)."
            ),
        ],
        data: Annotated[
            str,
            typer.Option(
                "--data",
                "-d",
                help="The signal's data, as JSON (ctx.wait_for answers it). For an approval: "
                "'{\"approved\": true}'. @FILE reads it from a file, - from standard input.",
            ),
        ] = "null",
        waiting: Annotated[
            int | None,
            typer.Option(
                "--waiting",
                min=1,
                max=2**31 - 1,
                help="Answer one wait alone: the task's wait for EVENT's signal number N (its "
                "`count` in GET /v1/waiting). Unless the task waits for it now, nothing is "
                "kept and the command exits 1.",
            ),
        ] = None,
        store: StoreOpt = DEFAULT_STORE,
    ) -> None:
        """Send a signal to a task: if it waits for EVENT it is queued again and receives
        the data; if it waits for it later, it receives it then (signals are kept).

        Prints the task's status after; exits 1 if there is no such task or it has finished.
        """
        from legion.waiting.calls import MAX_EVENT

        given, where = _data_text(data)
        try:  # strict JSON, as the HTTP API reads it: no NaN or Infinity, no integer past
            value: Any = codec.loads_given(given)  # 64 bits (read as a float)
        except codec.JSONDecodeError as exc:
            raise _fail(f"{where} is not JSON: {codec.json_error(exc)}") from None
        if not event:
            raise _fail("the event name is empty")
        if len(event) > MAX_EVENT:
            raise _fail(f"the event name is {len(event)} characters; at most {MAX_EVENT}")

        async def main() -> TaskStatus | NotAwaited | None:
            from legion.cli.status import opened

            async with opened(store) as s:
                data = codec.dumps(value)
                try:
                    return await s.signal(task_id, event, data, time.time(), waiting=waiting)
                except NotAwaited as exc:  # (not the exit 2 of a failed command)
                    return exc

        status = _run(main())
        if isinstance(status, NotAwaited):
            raise _fail(str(status), code=1)
        if status is None:
            raise _fail(f"not found: task {task_id}", code=1)
        if status.terminal:
            raise _fail(f"task {task_id} is {status}: it takes no more signals", code=1)
        print(f"{task_id}\t{status}")


def _data_text(data: str) -> tuple[bytes, str]:
    """The JSON text ``--data`` gives (itself, ``@FILE``'s content or standard input's
    for ``-``: no JSON text begins with either) and what to call it in an error. Data too
    large for a command line (the shell's "Argument list too long") goes in a file."""
    if data == "-":
        if sys.stdin is None:
            raise _fail("cannot read --data -: standard input is closed")
        return sys.stdin.buffer.read(), "the data read from standard input"
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            return path.read_bytes(), f"the data in {path}"
        except OSError as exc:
            raise _fail(f"cannot read --data {data}: {exc.strerror or exc}") from None
    return data.encode(), "--data"
