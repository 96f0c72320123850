"""``legion.diagnostics.unawaited.Pending``: a step or call that runs when awaited."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from typing import Any

import pytest

from legion.diagnostics.unawaited import Pending, SiteRef


class Payload:
    """An argument whose lifetime a weak reference can follow."""


async def _work(payload: Payload, n: int, site: SiteRef) -> tuple[int, SiteRef]:
    return n, site


def _make(payload: Payload, n: int) -> Pending[tuple[int, SiteRef]]:
    """As ``ctx.step`` and co. do: the `Pending` is made one frame below the caller's."""
    return Pending("step `work`", _work, (payload, n))


async def test_awaiting_runs_the_work_with_its_arguments_and_the_line_that_made_it() -> None:
    line = sys._getframe().f_lineno + 1
    pending = _make(Payload(), 7)
    assert not pending.awaited
    n, site = await pending
    assert n == 7 and pending.awaited
    assert site == pending.site_ref and site.line == line
    assert site.code is sys._getframe().f_code
    assert pending.site.code == "pending = _make(Payload(), 7)"


async def test_a_second_await_is_refused() -> None:
    pending = _make(Payload(), 1)
    await pending
    with pytest.raises(RuntimeError, match="step `work` was awaited twice"):
        await pending


async def test_once_awaited_it_lets_go_of_its_arguments() -> None:
    # The context keeps every `Pending` it made until the attempt ends (to report the
    # unawaited ones): what a step was given must not live that long.
    payload = Payload()
    gone = weakref.ref(payload)
    kept: list[Pending[Any]] = [_make(payload, 2)]
    del payload
    gc.collect()
    assert gone() is not None  # held until it runs
    await kept[0]
    gc.collect()
    assert gone() is None


async def test_gathered_pendings_each_run_once() -> None:
    ran: list[int] = []

    async def work(n: int, site: SiteRef) -> int:
        ran.append(n)
        return n * n

    made = [Pending("call", work, (n,), depth=1) for n in range(5)]
    assert await asyncio.gather(*made) == [0, 1, 4, 9, 16]
    assert sorted(ran) == [0, 1, 2, 3, 4]


def test_a_call_made_inside_a_library_is_sited_at_the_agents_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An SDK's request becomes ctx.llm.chat inside legion's transport, called from the
    # SDK's code: the line a report names is the agent's, up the stack past them both.
    from legion.diagnostics import unawaited

    library = tmp_path / "a_library"
    library.mkdir()
    (library / "sdk.py").write_text(
        "from legion.diagnostics.unawaited import Pending\n"
        "async def _work(site):\n"
        "    return site\n"
        "def request():\n"
        "    return transport()\n"
        "def transport():\n"
        "    return Pending('call', _work)  # the library's line\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(unawaited, "_LIBRARIES", (*unawaited._LIBRARIES, str(library) + "/"))
    from a_library import sdk  # type: ignore[import-not-found]

    made = sdk.request()  # the agent's line
    assert made.site_ref.code is sys._getframe().f_code
    assert made.site_ref.site().code == "made = sdk.request()  # the agent's line"
