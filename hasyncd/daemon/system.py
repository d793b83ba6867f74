"""What the daemon learns from and tells the operating system.

* ``SystemdNotifier``: sd_notify READY/STATUS/STOPPING/WATCHDOG (no library:
  one datagram to $NOTIFY_SOCKET);
* ``InterfaceMonitor``: Linux operstate of the monitored interfaces;
* ``LoopLagMonitor``: how late this node's own event loop runs, the number
  that tells "the peer is silent" apart from "we were not listening";
* ``GcPauses``: how long each cycle-collector run held the loop, by generation
  (a loop stall with a cause: the store is built so that full collections
  stay short at millions of records, and this shows that they do).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("hasyncd.system")

SYS_NET = Path("/sys/class/net")
MONITOR_INTERVAL = 0.1  # seconds between operstate reads: one heartbeat interval
LAG_PROBE = 0.05  # seconds between loop-lag probes
STATUS_MAX = 400  # characters of STATUS=: one line of `systemctl status`, up to 7 peers


class SystemdNotifier:
    def __init__(self) -> None:
        self._addr = os.environ.get("NOTIFY_SOCKET")
        usec = os.environ.get("WATCHDOG_USEC")
        self._watchdog = int(usec) / 1e6 if usec and usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def _send(self, msg: str) -> None:
        if not self._addr:
            return
        addr = "\0" + self._addr[1:] if self._addr.startswith("@") else self._addr
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(msg.encode(), addr)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status[:STATUS_MAX]}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status[:STATUS_MAX]}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    async def watchdog(self) -> None:
        # Pinged from the event loop itself: a stalled loop stops the pings.
        if not self._watchdog:
            return
        while True:
            self._send("WATCHDOG=1")
            await asyncio.sleep(self._watchdog / 2)


def status_line(st: dict[str, object]) -> str:
    """systemd's STATUS=: role, sync state and every peer, as ``systemctl status`` shows."""
    role = str(st["role"])
    sync = "" if role == "primary" else (" in sync" if st["in_sync"] else " not in sync")
    peers = []
    for p in st["peers"]:  # type: ignore[attr-defined]
        name = p["node"] or p["address"]
        state = p["link"] + (", in sync" if p["in_sync"] else "")
        peers.append(f"{name} {state}")
    return f"{role}{sync} in epoch {st['epoch']}; peers: {'; '.join(peers) or 'none'}"


def operstate(ifname: str) -> str:
    try:
        return (SYS_NET / ifname / "operstate").read_text().strip()
    except OSError:
        return "absent"


def is_up(state: str) -> bool:
    # Loopback and some virtual devices report "unknown" while passing traffic.
    return state in ("up", "unknown")


class InterfaceMonitor:
    def __init__(self, names: tuple[str, ...], changed: Callable[[tuple[str, ...]], None]) -> None:
        self.names = names
        self.changed = changed
        self.down: tuple[str, ...] | None = None

    def poll(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if not is_up(operstate(n)))

    async def run(self) -> None:
        while True:
            down = self.poll()
            if down != self.down:
                self.down = down
                self.changed(down)
            await asyncio.sleep(MONITOR_INTERVAL)


class LoopLagMonitor:
    def __init__(self, observe: Callable[[float], None]) -> None:
        self.observe = observe  # seconds late: Metrics.loop_lag

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_PROBE)
            self.observe(max(0.0, loop.time() - start - LAG_PROBE))


class GcPauses:
    """Times every run of CPython's cycle collector (``gc.callbacks``) while installed."""

    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self.observe = observe  # (generation, seconds): Metrics.gc_pause
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.observe(info["generation"], time.perf_counter() - self._started)

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)


def freeze_startup_heap() -> None:
    """Collect once, then keep every object alive now out of all later collections.

    Once started, the daemon's modules, classes, functions and its API app
    live as long as the process: about 50,000 tracked objects that every
    full collection walked again, 13 ms each on the development machine.
    ``gc.freeze`` moves them to the permanent generation (they are still
    freed by reference counting); the collection before it makes sure no
    garbage cycle is frozen with them.
    """
    gc.collect()
    gc.freeze()
