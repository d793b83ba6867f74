"""Outbound HA links: one connection attempt per ``Dial`` the core asks for.

The core decides when and whom to dial (and backs off); the dialer only
opens the TCP connection within the handshake timeout and reports a failure
back with a short reason (``connect timed out``, the OS error).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Dialer:
    def __init__(
        self,
        protocol: Callable[[str], asyncio.Protocol],
        timeout: Callable[[], float],
        failed: Callable[[str, str], None],
    ) -> None:
        self._protocol = protocol  # the link protocol for a connection to ``address``
        self._timeout = timeout  # seconds (the current handshake timeout: a reload changes it)
        self._failed = failed  # (address, reason): back to the core

    async def dial(self, address: str) -> None:
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout()):
                await loop.create_connection(lambda: self._protocol(address), host, port)
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                reason = "connect timed out"
            elif exc.errno:  # asyncio's message is "Connect call failed (address)": no reason
                reason = os.strerror(exc.errno)
            else:
                reason = exc.strerror or str(exc)
            self._failed(address, reason)
