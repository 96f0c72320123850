"""What the report of a blocked event loop advises, from the stack the watchdog caught."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import legion
from legion import codec
from legion.diagnostics.report import Site, blocked_loop

LEGION = Path(legion.__file__).parent


@dataclasses.dataclass
class Block:
    stack: list[Site]
    seconds: float = 0.4
    held: bool = True
    busy: bool = True


def test_a_large_value_legion_encodes_is_not_the_agents_blocking_call(tmp_path: Path) -> None:
    """`await ctx.memory.set("blob", 100 MB)`: legion encodes the value on the loop. The
    advice said to use an async call, which the agent already did."""
    app = tmp_path / "app.py"
    app.write_text('async def big(ctx):\n    await ctx.memory.set("blob", "x" * 10**8)\n')
    agent_line = Site(str(app), 2, "big", 'await ctx.memory.set("blob", "x" * 10**8)')
    encoding = [
        Site(codec.__file__, 86, "dumps"),
        Site(str(LEGION / "context.py"), 261, "set"),
        agent_line,
    ]
    report = blocked_loop("big", Block(encoding))
    assert report is not None and report.site is not None and report.site.line == 2
    assert "legion was encoding or decoding a large value for the store" in report.message
    assert "use an async call" not in report.message
    own = blocked_loop("big", Block([Site("/usr/lib/python3.11/time.py", 1, "sleep"), agent_line]))
    assert own is not None and "encoding" not in own.message  # (a call of its own: as before)
