"""The event stream behind ``GET /v1/events``: numbered events, a replay buffer, subscribers.

Each event gets a sequence number.  A client that reconnects with
``Last-Event-ID`` gets what it missed from the replay buffer; if that is no
longer there it gets a ``reset`` event first and should re-read state.
Record events are only produced by the core while a subscriber wants them,
so an idle daemon pays nothing for them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable

import msgspec

from hasyncd.core.events import Event, RecordChanged

REPLAY = 10_000  # events kept for reconnecting clients
QUEUE = 100_000  # per-subscriber backlog before it is dropped as too slow
SHUTDOWN = "shutdown"  # the last event of every stream when the node stops


class Subscriber:
    def __init__(self, types: frozenset[str] | None) -> None:
        self.types = types
        # None: dropped as too slow; an item of type SHUTDOWN ends the stream.
        self.queue: asyncio.Queue[tuple[int, str, bytes] | None] = asyncio.Queue(QUEUE)

    def wants(self, etype: str) -> bool:
        return self.types is None or etype in self.types


def event_type_name(cls: type) -> str:
    """RoleChanged -> role_changed: the SSE ``event:`` field and the ``types`` filter."""
    return "".join("_" + c.lower() if c.isupper() else c for c in cls.__name__).lstrip("_")


_TYPE_NAMES: dict[type, str] = {}


def event_type(ev: Event) -> str:
    cls = type(ev)
    name = _TYPE_NAMES.get(cls)
    if name is None:
        name = _TYPE_NAMES[cls] = event_type_name(cls)
    return name


# Events are flat frozen dataclasses: msgspec encodes them in field order, with
# no per-event dict (a record event costs ~1 µs instead of ~10 with asdict + json).
_encode = msgspec.json.Encoder().encode


RECORD_EVENTS = event_type_name(RecordChanged)


class EventHub:
    def __init__(self, on_subscribers: Callable[[bool], None]) -> None:
        self._seq = itertools.count(1)
        self._replay: deque[tuple[int, str, bytes]] = deque(maxlen=REPLAY)
        self._subs: set[Subscriber] = set()
        self._on_subscribers = on_subscribers
        self.closed = False

    def publish(self, ev: Event) -> None:
        etype = event_type(ev)
        item = (next(self._seq), etype, _encode(ev))
        self._replay.append(item)
        for sub in list(self._subs):
            if sub.wants(etype):
                try:
                    sub.queue.put_nowait(item)
                except asyncio.QueueFull:
                    self._drop(sub)

    def subscribe(
        self, types: frozenset[str] | None, last_id: int | None
    ) -> tuple[Subscriber, bool]:
        """Returns the subscriber and whether its Last-Event-ID could not be honoured."""
        sub = Subscriber(types)
        reset = False
        if last_id is not None:
            if self._replay and self._replay[0][0] > last_id + 1:
                reset = True
            for item in self._replay:
                if item[0] > last_id and sub.wants(item[1]):
                    sub.queue.put_nowait(item)
        self._subs.add(sub)
        self._update()
        return sub, reset

    def close(self, reason: str) -> None:
        """The node stops: end every stream with a SHUTDOWN event (even a full queue)."""
        self.closed = True
        data = _encode({"reason": reason})
        for sub in list(self._subs):
            while sub.queue.full():
                sub.queue.get_nowait()
            sub.queue.put_nowait((0, SHUTDOWN, data))
        self._subs.clear()
        self._update()

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)
        self._update()

    def _drop(self, sub: Subscriber) -> None:
        self._subs.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)
        self._update()

    def _update(self) -> None:
        self._on_subscribers(any(s.wants(RECORD_EVENTS) for s in self._subs))
