"""The node core's outputs: bytes per connection, events, counters and rate-limited logs.

Everything the core produces for its shell accumulates here between two
inputs; the shell drains it with ``data_to_send()`` and ``events()``.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, defaultdict

from hasyncd.core.counters import COUNTERS
from hasyncd.core.events import Event
from hasyncd.core.peers import Conn

log = logging.getLogger("hasyncd.core")

LOG_EVERY = 60.0  # seconds between two identical rate-limited log lines
# Rate-limit keys remembered: a flood from many source hosts evicts the
# oldest keys (each of which may then log once more), never grows memory.
LOG_KEYS = 4096


class Outputs:
    def __init__(self, now: float) -> None:
        self.now = now
        self.stats: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._out: dict[int, list[bytes]] = {}
        self._events: list[Event] = []
        self._log_once: OrderedDict[tuple[str, str], float] = OrderedDict()

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def count(self, metric: str, label: str = "", n: int = 1) -> None:
        assert metric in COUNTERS, f"undeclared counter {metric}"
        self.stats[metric][label] += n

    def log_limited(self, key: tuple[str, str], level: int, msg: str, *args: object) -> None:
        """Log at most once a minute per key: a misconfigured peer retries every second."""
        last = self._log_once.get(key)
        if last is None or self.now - last >= LOG_EVERY:
            self._log_once[key] = self.now
            self._log_once.move_to_end(key)
            if len(self._log_once) > LOG_KEYS:
                self._log_once.popitem(last=False)
            log.log(level, msg, *args)

    def flush_conn(self, conn: Conn) -> None:
        """Move what a connection's channel sealed into the output."""
        data = conn.channel.take_output()
        if data:
            self._out.setdefault(conn.id, []).append(data)

    def data_to_send(self) -> list[tuple[int, bytes]]:
        out = [(cid, b"".join(chunks)) for cid, chunks in self._out.items() if chunks]
        self._out.clear()
        return out

    def events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev
