"""Replication streams: what the primary sends each secondary, and in which order.

Primary side, one ``OutboundSession`` per secondary:

    BULK_START, RECORDS(bulk)..., BULK_END, then RECORDS(stream)... forever

The bulk walks the store in id order with a resumable cursor while writes go
on; every write made meanwhile is queued in ``pending`` and streamed after
BULK_END, so the secondary ends up exact.  ``pending`` maps each queued
record to the *first* version written while it waited: a record written many
times while queued is sent once, with its newest content (coalescing), and
the queue stays in version order.  That gives each stream message a simple,
correct watermark: every write up to ``first pending version - 1`` (or up to
the primary's current version when nothing is queued) has been sent with
that content or newer.  Once acknowledged, that watermark is what sync-mode
writes wait for.

``Flow`` accounts the replication bytes in flight against the receiver's
window.  Heartbeats and acks bypass it, so they never wait behind more than
one window of bulk data: that is how heartbeats stay prompt during a
million-record snapshot.

The secondary's side, validating and storing what arrives, is
``hasyncd.core.apply``.  A former primary offering its writes to the survivor after a split brain
uses ``hasyncd.core.merge``.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from hasyncd.core.sessionstates import SessionEffect, SessionInput, SessionState, transition
from hasyncd.records import KINDS_BY_CODE
from hasyncd.store import HEADER, Store, unpack_version
from hasyncd.store import HEADER_LEN as VALUE_HEADER
from hasyncd.wire.framing import MAX_TRANSPORT_FRAME
from hasyncd.wire.messages import (
    HEADER_LEN,
    MAX_CHANGES,
    BulkEnd,
    BulkStart,
    Change,
    Message,
    Phase,
    Records,
)

# Plaintext budget of one RECORDS message: the Noise frame limit minus the
# AEAD tag, the message header and a margin for msgpack array headers.  A
# batch never passes it, and one record of the largest legal size always fits.
BATCH_BYTES = MAX_TRANSPORT_FRAME - 16 - HEADER_LEN - 1024
# Per-change msgpack overhead estimate: kind, two 64-bit ints, headers.
CHANGE_OVERHEAD = 32
# Ids looked at per walker step: bounds the time one step can take even when
# few entries match (a merge walk over a large store).
SCAN_STEP = 512

# Backlog entries a resuming session queues per message it builds (a
# snapshot message, or a stream message while fewer are queued): a full
# backlog holds ~590,000, far too many to queue in one event-loop step.
FEED_STEP = 1024

REPLICATED_KIND_CODES: tuple[int, ...] = tuple(sorted(KINDS_BY_CODE))


class WriteLog(Protocol):
    """What a resuming session reads of the primary's backlog (``hasyncd.core.backlog``)."""

    def holds_after(self, version: int) -> bool: ...

    def since(self, version: int, limit: int) -> list[tuple[int, int, str, float]]: ...


class MarkKind(Enum):
    WATERMARK = "watermark"  # stream message: version the peer will hold once acked
    BULK_PROGRESS = "bulk_progress"  # snapshot records: how many the peer holds once acked
    BULK_END = "bulk_end"
    MERGE_PROGRESS = "merge_progress"  # merge records: where the merge walk stands
    MERGE_END = "merge_end"


# Where a store walk stands: (index of the kind, last id looked at).
Position = tuple[int, str | None]


@dataclass(frozen=True, slots=True)
class Mark:
    kind: MarkKind
    version: int = 0
    position: Position | None = None
    count: int = 0  # BULK_PROGRESS: snapshot records sent up to this frame


class Flow:
    """Bytes of ack-eliciting frames in flight to one peer, against its window."""

    __slots__ = ("frames", "in_flight", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.in_flight = 0
        self.frames: deque[tuple[int, int, Mark | None]] = deque()

    @property
    def open(self) -> bool:
        return self.in_flight < self.window

    def sent(self, frame_no: int, size: int, mark: Mark | None) -> None:
        self.frames.append((frame_no, size, mark))
        self.in_flight += size

    def acked(self, frame_no: int) -> list[Mark]:
        marks: list[Mark] = []
        while self.frames and self.frames[0][0] <= frame_no:
            _, size, mark = self.frames.popleft()
            self.in_flight -= size
            if mark is not None:
                marks.append(mark)
        return marks


class Walker:
    """A resumable walk over every stored id, kind by kind, in id order.

    The cursor is the last id looked at, so writes and deletes made between
    two steps neither break the walk nor make it repeat or skip a survivor.
    """

    __slots__ = ("cursor", "kind_idx")

    def __init__(self, start: Position | None = None) -> None:
        self.kind_idx, self.cursor = start if start is not None else (0, None)

    @property
    def position(self) -> Position:
        return self.kind_idx, self.cursor

    @property
    def done(self) -> bool:
        return self.kind_idx >= len(REPLICATED_KIND_CODES)

    def collect(self, store: Store, want: Callable[[bytes], bool], max_scan: int) -> list[Change]:
        """Changes for wanted stored values, up to one batch or ``max_scan`` ids looked at."""
        changes: list[Change] = []
        size = scanned = 0
        while not self.done and scanned < max_scan:
            kind = REPLICATED_KIND_CODES[self.kind_idx]
            ids = store.ids_after(kind, self.cursor, SCAN_STEP)
            entries = store.tables[kind].entries
            for rid in ids:
                value = entries.get(rid)
                if value is not None and want(value):
                    cost = CHANGE_OVERHEAD - VALUE_HEADER + len(rid) + len(value)
                    if changes and not _fits(size, cost, len(changes)):
                        return changes  # the batch is full: resume at this id
                    changes.append(change_from_value(kind, rid, value))
                    size += cost
                self.cursor = rid
                scanned += 1
            if len(ids) < SCAN_STEP:  # this kind is exhausted
                self.kind_idx += 1
                self.cursor = None
        return changes


_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
_INF = math.inf  # a stored value without expiry (see hasyncd.store.pack_value)


def change_from_value(kind: int, rid: str, value: bytes) -> Change:
    """The Change carrying a stored value (see ``hasyncd.store.pack_value``)."""
    seq, epoch, _ = _unpack_header(value)
    blob = value[VALUE_HEADER:] if len(value) > VALUE_HEADER else None
    return Change(kind, rid, epoch, seq, blob)


def _fits(size: int, cost: int, count: int) -> bool:
    """Whether one more change of ``cost`` bytes fits the batch (it must fit one frame)."""
    return size + cost <= BATCH_BYTES and count < MAX_CHANGES


def _is_record(value: bytes) -> bool:
    return len(value) > VALUE_HEADER


# The session input an acknowledged frame's mark is (merge marks are not the session's).
_ACK_INPUT = {
    MarkKind.BULK_PROGRESS: SessionInput.BULK_ACKED,
    MarkKind.BULK_END: SessionInput.END_ACKED,
    MarkKind.WATERMARK: SessionInput.STREAM_ACKED,
}


class OutboundSession:
    """Primary -> one secondary: a snapshot, then the change stream."""

    def __init__(
        self,
        snap_id: int,
        epoch: int = 0,
        start: int = 0,
        *,
        resume: Position | None = None,
        floor: int | None = None,
        bulk_sent: int = 0,
        feed: tuple[WriteLog, int] | None = None,
    ) -> None:
        """A new snapshot, or (``hasyncd.core.backlog``) the resumption of one.

        ``start`` is the primary's version when the snapshot began; a resumed
        snapshot continues its walk after ``resume``; a partial resync
        (``floor``: the peer holds every write up to it) walks nothing.
        ``feed`` (backlog, version): the writes the peer may lack are the
        backlog's after that version; they are queued a step at a time, and
        until the feed has caught up new writes are left to it.
        """
        self.snap_id = snap_id
        self.epoch = epoch  # the primary's epoch: a ticket is valid only within it
        self.start = start
        self.state = SessionState.BULK_START
        self.pending: OrderedDict[tuple[int, str], int] = OrderedDict()
        done = (len(REPLICATED_KIND_CODES), None)
        self._walker = Walker(done if floor is not None else resume)
        self.floor = floor  # the peer holds every write up to it once it processes BULK_END
        self.bulk_sent = bulk_sent
        self.bulk_acked = 0  # snapshot records the peer acknowledged
        self.in_sync = False  # the peer acknowledged BULK_END
        self.acked = 0  # watermark the peer acknowledged
        self._backlog: WriteLog | None = None
        self.feed: int | None = None  # the backlog's writes after it are still to be queued
        if feed is not None:
            self._backlog, self.feed = feed
        self.broken = False  # the backlog lost writes the feed had not queued yet

    def __repr__(self) -> str:
        return (
            f"OutboundSession(snap={self.snap_id}, {self.state.value}, pending={len(self.pending)})"
        )

    def process_input(self, inp: SessionInput) -> SessionEffect:
        """Take one transition of ``sessionstates.TRANSITIONS``; none is an error."""
        effect, self.state = transition(self.state, inp)
        return effect

    def acknowledged(self, mark: Mark) -> bool:
        """The peer acknowledged a frame carrying ``mark``; True if it is in sync only now."""
        effect = self.process_input(_ACK_INPUT[mark.kind])
        if effect is SessionEffect.COUNT_BULK:
            self.bulk_acked = mark.count
            return False
        self.acked = max(self.acked, mark.version)
        if effect is SessionEffect.IN_SYNC and not self.in_sync:
            self.in_sync = True
            return True
        return False

    def enqueue(self, kind: int, rid: str, version: int) -> None:
        if self.feed is not None:
            return  # in the backlog: the feed queues it in version order
        key = (kind, rid)
        if key not in self.pending:
            self.pending[key] = version

    def watermark(self, current: int) -> int:
        if self.pending:
            return next(iter(self.pending.values())) - 1
        return current if self.feed is None else self.feed

    @property
    def idle(self) -> bool:
        return self.state is SessionState.STREAM and not self.pending and self.feed is None

    def _refill(self) -> bool:
        """Queue the next FEED_STEP backlog writes; False if the backlog lost some."""
        backlog, feed = self._backlog, self.feed
        if backlog is None or feed is None:
            return True
        if not backlog.holds_after(feed):
            self.broken = True
            return False
        step = backlog.since(feed, FEED_STEP)
        setdefault = self.pending.setdefault
        for version, kind, rid, _ in step:
            setdefault((kind, rid), version)
        # Fewer than a step left: caught up, and new writes queue live again.
        self.feed = step[-1][0] if len(step) == FEED_STEP else None
        return True

    def next_message(self, store: Store, current: int) -> tuple[Message, Mark | None] | None:
        """The next message to send, or None when there is nothing (yet)."""
        if self.state is SessionState.BULK_START:
            self.process_input(SessionInput.START_SENT)
            return BulkStart(self.snap_id, sum(store.counts().values())), None
        if self.state is SessionState.BULK:
            return self._next_bulk(store, current)
        return self._next_stream(store, current)

    def _next_bulk(self, store: Store, current: int) -> tuple[Message, Mark | None] | None:
        if not self._refill():
            return None
        changes = self._walker.collect(store, _is_record, max_scan=1 << 30)
        if changes:
            self.process_input(SessionInput.BULK_SENT)
            self.bulk_sent += len(changes)
            return Records(Phase.BULK, tuple(changes)), Mark(
                MarkKind.BULK_PROGRESS, count=self.bulk_sent
            )
        wm = self.watermark(current)
        if self.process_input(SessionInput.END_SENT) is SessionEffect.FIX_FLOOR:
            self.floor = wm if self.floor is None else max(self.floor, wm)
        epoch, seq = unpack_version(wm)
        return BulkEnd(self.snap_id, self.bulk_sent, epoch, seq), Mark(MarkKind.BULK_END, wm)

    def _next_stream(self, store: Store, current: int) -> tuple[Message, Mark | None] | None:
        if len(self.pending) < FEED_STEP and not self._refill():
            return None
        if not self.pending:
            return None
        changes: list[Change] = []
        size = 0
        pending = self.pending
        while pending:
            kind, rid = next(iter(pending))
            value = store.get_value(kind, rid)
            if value is not None:
                cost = CHANGE_OVERHEAD - VALUE_HEADER + len(rid) + len(value)
                if changes and not _fits(size, cost, len(changes)):
                    break  # full: this record leads the next message
                changes.append(change_from_value(kind, rid, value))
                size += cost
            # else: expired and swept locally; the peer expires it on its own.
            pending.popitem(last=False)
        self.process_input(SessionInput.STREAM_SENT)
        return Records(Phase.STREAM, tuple(changes)), Mark(
            MarkKind.WATERMARK, self.watermark(current)
        )


def unacknowledged(session: OutboundSession, live: int, current: int) -> int:
    """At most how many of the primary's ``live`` records the peer of ``session`` lacks.

    In sync: the writes it has not acknowledged (each changed at most one
    record).  Loading a snapshot: the records it has not acknowledged yet,
    plus the writes queued meanwhile (some may be counted twice: an upper
    bound, never an underestimate).
    """
    if session.in_sync:
        return writes_behind(session.acked, current)
    return max(0, live - session.bulk_acked) + len(session.pending)


def writes_behind(acked: int, current: int) -> int:
    """Writes of the current epoch not covered by ``acked`` (each changed one record)."""
    epoch, seq = unpack_version(current)
    acked_epoch, acked_seq = unpack_version(acked)
    return max(0, seq - acked_seq) if acked_epoch == epoch else seq
