"""``StoreTimeouts``: how long a PostgreSQL store call may take, derived from the lease.

A store call that hangs (a server cut off by the network, a proxy that stops forwarding)
must fail before the leases it is meant to keep expire, and an open transaction of a cut
off worker must not hold row locks that healthy workers wait on. So every bound sits
below the lease duration ``L`` (30 s by default):

=====================================  =======================  ===========================
bound                                  value                    at L = 30 s
=====================================  =======================  ===========================
a whole store call, client side        L / 3 (at least 1 s)     10 s
``statement_timeout`` (server)         same as the call         10 s
``idle_in_transaction_session_...``    same as the call         10 s
``connect_timeout`` (libpq)            L / 6, 2 to 10 s         5 s
TCP keepalives (idle, interval, n)     L / 6, L / 30, 3         5 s, 1 s, 3
``tcp_user_timeout``                   the call, in ms          10,000 ms
=====================================  =======================  ===========================

The TCP bounds are set on both ends of the connection (libpq's, and the session's
``tcp_keepalives_*`` and ``tcp_user_timeout``).

One case PostgreSQL's own bounds leave out: a client that stops in the middle of a
pipelined transaction (before its Sync) while its socket stays alive (a paused process,
a frozen VM, a proxy that stops forwarding) leaves its session "active", holding its row
locks, for as long as the connection lives; none of the server's timeouts applies while
it waits for the rest of a pipeline. Every worker's reaper ends such sessions (legion's,
of its own role) once they have waited longer than the idle-in-transaction bound, so
their rows can be reclaimed.

A heartbeat that hangs for a whole call and is then retried still lands before its lease
ends (heartbeats go every L / 3 or 5 s, whichever is shorter). A store URL can set any of
the libpq settings itself (``?connect_timeout=...``, ``options=-cstatement_timeout%3D...``),
and ``call_timeout=SECONDS`` sets the call, statement and idle-in-transaction bounds at
once (for stores with very large batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_LEASE_SECONDS = 30.0


MAX_SECONDS = 86_400.0
"""The longest lease or store call: a day (past it, libpq's and the server's settings do
not hold the number)."""


@dataclass(frozen=True, slots=True)
class StoreTimeouts:
    call: float  # a whole store call: waiting for a connection, statements, results
    connect: int  # libpq connect_timeout, whole seconds
    keepalives_idle: int
    keepalives_interval: int
    keepalives_count: int

    @classmethod
    def for_lease(cls, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> StoreTimeouts:
        if not 0 < lease_seconds <= MAX_SECONDS:  # (NaN too)
            raise ValueError(f"lease_seconds must be > 0 and at most {MAX_SECONDS:,.0f}")
        return cls(
            call=max(1.0, lease_seconds / 3),
            connect=min(10, max(2, math.ceil(lease_seconds / 6))),
            keepalives_idle=max(1, math.ceil(lease_seconds / 6)),
            keepalives_interval=max(1, math.ceil(lease_seconds / 30)),
            keepalives_count=3,
        )

    def with_call(self, seconds: float) -> StoreTimeouts:
        if not 0 < seconds <= MAX_SECONDS:  # (NaN too)
            raise ValueError(f"call_timeout must be > 0 and at most {MAX_SECONDS:,.0f} seconds")
        return StoreTimeouts(
            seconds,
            self.connect,
            self.keepalives_idle,
            self.keepalives_interval,
            self.keepalives_count,
        )

    def libpq(self) -> dict[str, str]:
        """Connection parameters for libpq (a URL's own values win over these)."""
        ms = str(max(1, round(self.call * 1000)))
        return {
            "connect_timeout": str(self.connect),
            "keepalives": "1",
            "keepalives_idle": str(self.keepalives_idle),
            "keepalives_interval": str(self.keepalives_interval),
            "keepalives_count": str(self.keepalives_count),
            "tcp_user_timeout": ms,
        }

    def server_options(self) -> str:
        """Session settings sent at connect (a URL's own ``options`` come after, and win):
        the statement bounds, and the same TCP bounds on the server's end of the socket,
        so that the server also notices a client the network cut off."""
        ms = max(1, round(self.call * 1000))
        return (
            f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms} "
            f"-c tcp_keepalives_idle={self.keepalives_idle} "
            f"-c tcp_keepalives_interval={self.keepalives_interval} "
            f"-c tcp_keepalives_count={self.keepalives_count} -c tcp_user_timeout={ms}"
        )
