"""Effects: what a sub-machine decided the node should do, queued for the node to apply.

The roles (``hasyncd.core.roles``) and the primary's duties
(``hasyncd.core.primary``) change only their own state.  What they decide
for the node (an event, a counter, a rate-limited log line, the promotion
record to write, the replication to reset, a pump) goes into one
``Effects`` queue that ``NodeCore.apply_effects`` drains, in order, after
each call into them: the node is the only object that emits events and
changes its own state.
"""

from __future__ import annotations

from dataclasses import dataclass

from hasyncd.core.counters import COUNTERS
from hasyncd.core.events import Event
from hasyncd.records import Record


@dataclass(frozen=True, slots=True)
class Count:
    """Add ``n`` to counter ``metric`` (``hasyncd.core.counters``) under ``label``."""

    metric: str
    label: str = ""
    n: int = 1


@dataclass(frozen=True, slots=True)
class LogLimited:
    """A log line at most once a minute per ``key`` (``Outputs.log_limited``)."""

    key: tuple[str, str]
    level: int
    msg: str
    args: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """Store and replicate ``record`` in this node's epoch (``NodeCore.local_write``)."""

    kind: int
    rid: str
    record: Record
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class NoteSplit:
    """``peer`` and this node were both primary (``NodeCore.note_split``)."""

    peer: str
    own_epoch: int
    peer_epoch: int
    survivor: str


@dataclass(frozen=True, slots=True)
class ResetReplication:
    """A role change: the backlog restarts at ``base``; every outbound session ends."""

    base: int


@dataclass(frozen=True, slots=True)
class AbortResync:
    """Promoting with a snapshot cut short: the store keeps what it holds."""


@dataclass(frozen=True, slots=True)
class Pump:
    """Replication output may be ready: the node's ``wants_transmit`` turns true."""


Effect = (
    Event | Count | LogLimited | WriteRecord | NoteSplit | ResetReplication | AbortResync | Pump
)

PUMP = Pump()


class Effects:
    """The queue the sub-machines fill and ``NodeCore.apply_effects`` drains."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: list[Effect] = []

    def event(self, event: Event) -> None:
        self.queue.append(event)

    def count(self, metric: str, label: str = "", n: int = 1) -> None:
        assert metric in COUNTERS, f"undeclared counter {metric}"
        self.queue.append(Count(metric, label, n))

    def log_limited(self, key: tuple[str, str], level: int, msg: str, *args: object) -> None:
        self.queue.append(LogLimited(key, level, msg, args))

    def request_pump(self) -> None:
        self.queue.append(PUMP)

    def add(self, effect: Effect) -> None:
        self.queue.append(effect)

    def take(self) -> list[Effect]:
        out, self.queue = self.queue, []
        return out
