"""How much of this node any number of API clients can take: connections, time, descriptors.

The HA link must keep working whatever the local API's clients do: slow,
idle or very many; and the Unix socket's clients (the IKE daemon, the
portal) must keep working whatever the TCP listener's clients do.  So:

* a connection that has not sent a complete request head within API_IDLE_S
  of connecting, or of its previous reply, is closed (slowloris, idle
  keep-alive): aiohttp's keep-alive timer, which also runs before the first
  request;
* a request body must arrive within BODY_TIMEOUT_S (408 ``body_timeout``);
* each listener has its own budget of connections open at once
  (``budgets()``): the Unix socket's share can never be taken by TCP
  connections, which anyone on the host can open without a token; beyond a
  listener's cap a new connection gets a 503 ``too_many_connections`` and is
  closed.  Together the caps stay within what RLIMIT_NOFILE leaves after
  FD_RESERVE, so API clients can never use up the descriptors the link
  listener and dials need.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
from collections.abc import Callable

API_IDLE_S = 10.0  # far above any local client's think time, far below a descriptor leak's
BODY_TIMEOUT_S = 30.0  # a 64 MiB batch over a local socket takes well under a second
MAX_API_CONNECTIONS = 256  # local clients: an IKE daemon, a portal, a few operators' tools
# The Unix socket's share when a TCP listener is configured too: the trusted
# local clients (the IKE daemon's connection pool, the portal's workers, the
# CLI).  Without a TCP listener the socket has all MAX_API_CONNECTIONS.
MAX_UNIX_CONNECTIONS = 192
# The TCP listener's cap: monitoring scrapes and operators' tools with the
# token.  Anyone on the host can connect to it, so it is the smaller share and
# can never eat into the socket's.
MAX_TCP_CONNECTIONS = MAX_API_CONNECTIONS - MAX_UNIX_CONNECTIONS
# Descriptors kept out of the API's reach: the links and dials to 7 peers, the
# proven handshakes (16) and a share of unproven ones, hook pipes, the event
# loop's own, with room to spare.
FD_RESERVE = 96
MIN_API_CONNECTIONS = 8  # per listener: even a tiny RLIMIT_NOFILE leaves operators a way in
# Listen backlog of the API sockets.  asyncio accepts up to the backlog in one
# go before a refused connection's descriptor is closed, and counts a
# connection as open one loop pass after admitting it: this bounds that burst
# per listener (part of FD_RESERVE) and is ample for local clients.
API_BACKLOG = 16

UNIX, TCP = "unix", "tcp"  # the listeners, as named in status and metrics


def split_caps(available: int | None, tcp: bool) -> dict[str, int]:
    """Each listener's cap, from the descriptors the API may use (None: unlimited).

    Without a TCP listener the socket has the whole allowance.  With one, the
    allowance is shared in the ratio of the maxima, each at least
    MIN_API_CONNECTIONS; so the caps add up to at most ``available`` unless it
    is below twice that minimum.
    """
    if not tcp:
        whole = MAX_API_CONNECTIONS if available is None else min(MAX_API_CONNECTIONS, available)
        return {UNIX: max(MIN_API_CONNECTIONS, whole)}
    if available is None or available >= MAX_API_CONNECTIONS:
        return {UNIX: MAX_UNIX_CONNECTIONS, TCP: MAX_TCP_CONNECTIONS}
    if available < 2 * MIN_API_CONNECTIONS:
        return {UNIX: MIN_API_CONNECTIONS, TCP: MIN_API_CONNECTIONS}
    unix = available * MAX_UNIX_CONNECTIONS // MAX_API_CONNECTIONS
    unix = min(max(unix, MIN_API_CONNECTIONS), available - MIN_API_CONNECTIONS)
    return {UNIX: unix, TCP: available - unix}


def available_descriptors() -> int | None:
    """What RLIMIT_NOFILE leaves the API after the descriptors in use and FD_RESERVE (None: all)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    return soft - in_use - FD_RESERVE


def budgets(*, unix: bool, tcp: bool) -> dict[str, Budget]:
    """One Budget per configured listener, within what RLIMIT_NOFILE leaves."""
    caps = split_caps(available_descriptors(), tcp)
    return {name: Budget(name, cap) for name, cap in caps.items() if unix or name != UNIX}


class Budget:
    """One listener's share: its cap, the connections open on it, the ones refused."""

    __slots__ = ("cap", "listener", "open", "refused")

    def __init__(self, listener: str, cap: int) -> None:
        self.listener, self.cap = listener, cap
        self.open = 0  # connections made (connection_made) and not yet lost
        self.refused = 0  # connections answered 503 past the cap

    def admit(self) -> bool:
        """Whether a new connection fits; a refusal is counted."""
        if self.open >= self.cap:
            self.refused += 1
            return False
        return True

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1

    def open_now(self) -> float:
        """The open connections, for a gauge read at scrape time."""
        return float(self.open)

    def as_json(self) -> dict[str, int]:
        return {"open": self.open, "cap": self.cap, "refused": self.refused}


_BUSY_BODY = json.dumps(
    {"error": "too_many_connections", "message": "too many API connections: try again later"}
).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\n\r\n"
    + _BUSY_BODY
)


class _Busy(asyncio.Protocol):
    """Answers 503 and closes: a connection over the cap never reaches aiohttp."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY)
        transport.close()


class Admission:
    """One listener's protocol factory: aiohttp's handler within its Budget, else _Busy.

    ``make(budget)`` returns a handler that calls ``budget.opened()`` when its
    connection is made and ``budget.closed()`` when it is lost.
    """

    def __init__(
        self,
        make: Callable[[Budget], asyncio.BaseProtocol],
        budget: Budget,
        refused: Callable[[str], None],
    ) -> None:
        self.budget = budget
        self._make, self._refused = make, refused

    def __call__(self) -> asyncio.BaseProtocol:
        if not self.budget.admit():
            self._refused(self.budget.listener)
            return _Busy()
        return self._make(self.budget)
