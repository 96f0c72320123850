"""Times as the command line shows them: in UTC, marked so (``2026-12-07T04:42:00Z``),
as cron schedules are read; a time no calendar holds (a wait of 1e300 seconds) as its
count of seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(epoch: float) -> str:
    """``epoch`` (seconds) as an ISO 8601 UTC time to the second."""
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # past year 9999, or before year 1
        return f"{epoch:g} s since 1970"
