"""How much of this node any number of API clients can take: connections, time, descriptors.

The HA link must keep working whatever the local API's clients do: slow,
idle or very many.  So:

* a connection that has not sent a complete request head within API_IDLE_S
  of connecting, or of its previous reply, is closed (slowloris, idle
  keep-alive): aiohttp's keep-alive timer, which also runs before the first
  request;
* a request body must arrive within BODY_TIMEOUT_S (408 ``body_timeout``);
* at most ``connection_cap()`` API connections are open at once; beyond it a
  new one gets a 503 ``too_many_connections`` and is closed, so API clients
  can never use up the descriptors the link listener and dials need
  (FD_RESERVE of RLIMIT_NOFILE is kept for them).
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
# Descriptors kept out of the API's reach: the links and dials to 7 peers, the
# proven handshakes (16) and a share of unproven ones, hook pipes, the event
# loop's own, with room to spare.
FD_RESERVE = 96
MIN_API_CONNECTIONS = 8  # even a tiny RLIMIT_NOFILE leaves operators a way in
# Listen backlog of the API sockets.  asyncio accepts up to the backlog in one
# go before a refused connection's descriptor is closed: this bounds that
# burst (part of FD_RESERVE) and is ample for local clients.
API_BACKLOG = 16


def connection_cap() -> int:
    """API connections allowed at once, within what RLIMIT_NOFILE leaves after FD_RESERVE."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_API_CONNECTIONS
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    return max(MIN_API_CONNECTIONS, min(MAX_API_CONNECTIONS, soft - in_use - FD_RESERVE))


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
    """The protocol factory of the API listeners: aiohttp's handler, or _Busy past the cap."""

    def __init__(
        self,
        make: Callable[[], asyncio.BaseProtocol],
        open_count: Callable[[], int],
        refused: Callable[[], None],
    ) -> None:
        self.cap = connection_cap()
        self._make, self._open, self._refused = make, open_count, refused

    def __call__(self) -> asyncio.BaseProtocol:
        if self._open() >= self.cap:
            self._refused()
            return _Busy()
        return self._make()
