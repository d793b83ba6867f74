"""The primary's replication backlog, and the choice to resume a secondary instead of a snapshot.

``Backlog`` keeps the (version, kind, id) of the primary's recent writes in
version order, bounded in bytes and in age like Redis's repl-backlog.  It
holds no record content: a resumed secondary is sent each changed record's
*current* stored value, exactly as the stream does (coalescing), so an old
blob would only cost memory.  The backlog *covers* a version ``v`` of the
current epoch when every write after ``v`` is still in it.

When a secondary's link ends, its peer keeps a ``Ticket``: what the primary
knows the secondary holds (the session's snapshot identity and start
version, and the version up to which it acknowledged or was sent
everything).  A reconnecting secondary that still holds that session's data
says so in SYNC_REQUEST; ``plan_resync`` then picks one of:

* ``partial``: it had the whole snapshot: stream every write after the
  version it is known to hold (PROTOCOL.md 10.7);
* ``resumed_snapshot``: it was loading the snapshot: continue the walk after
  the last record it applied, then stream every write made since the
  snapshot started (ids before the cursor that changed meanwhile included);
* ``full``: anything else (another epoch, an unknown or inconsistent session,
  a restarted peer, a backlog that no longer covers it): a new snapshot.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from hasyncd.core.replication import REPLICATED_KIND_CODES, OutboundSession, Position
from hasyncd.store import SEQ_BITS, SEQ_MASK, unpack_version
from hasyncd.wire.messages import SyncRequest

# Default of [replication] backlog_mib.  128 MiB holds about 2,000,000 writes
# of 25-character ids (ENTRY_OVERHEAD + the id each): over a minute and a half
# of the fastest ingest measured in README, so even a snapshot of a million
# records cut near its end under that load can resume; a gateway's ordinary
# write rate fills it far more slowly.  It is only filled by writes.
BACKLOG_MIB_DEFAULT = 128
# Default of [replication] backlog_s: a drop longer than a minute is an
# outage, not a flake, and a snapshot is then due anyway.  It must stay below
# [store].tombstone_ttl_s (the config refuses otherwise): a resume sends the
# tombstones of the deletes made since the version it resumes from.
BACKLOG_S_DEFAULT = 60
# Bytes charged per backlog entry besides its id's bytes: the epoch, seq, time
# and id end (8 each) and the kind (1) in typed arrays, plus their growth
# slack.  No Python object per entry: the cycle collector has nothing to walk
# (a list of 590,000 tuples cost every full collection 16-20 ms).
ENTRY_OVERHEAD = 40
# Trimmed entries are compacted away (one memmove per array) once there are
# more of them than this and than entries held: each entry moves at most once.
COMPACT_AFTER = 4096
# Entries a trim steps over one by one before it bisects (a full backlog
# drops one or two per write; a bisection costs about 20 steps).
TRIM_STEPS = 16

OUTCOMES = ("partial", "resumed_snapshot", "full")


class Backlog:
    """Recent writes of the current epoch, oldest first, bounded in bytes and age.

    Column arrays with a moving head rather than objects: a write costs a
    few appends, a resume finds its starting version by bisection and takes
    its next step as a slice, and nothing in it is a container the cycle
    collector walks.
    """

    __slots__ = (
        "_ends",
        "_epochs",
        "_ids",
        "_kinds",
        "_seqs",
        "_shift",
        "_times",
        "floor",
        "head",
        "max_age",
        "max_bytes",
        "size",
        "trimmed_by",
    )

    def __init__(self, max_bytes: int, max_age: float) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.reset(0)

    def reset(self, floor: int) -> None:
        """A new epoch (promotion) or no longer primary: start empty, covering after ``floor``."""
        self._epochs, self._seqs = array("Q"), array("Q")
        self._kinds, self._times = array("B"), array("d")
        self._ids = bytearray()  # every held id's UTF-8, back to back
        self._ends = array("Q")  # entry i's id ends at _ends[i] - _shift in _ids
        self._shift = 0  # bytes compacted away from the front of _ids
        self.head = 0  # entries before it are trimmed (compacted now and then)
        self.size, self.floor = 0, floor
        self.trimmed_by: str | None = None  # why the floor last moved: "bytes" or "age"

    def __len__(self) -> int:
        return len(self._seqs) - self.head

    def append(self, version: int, kind: int, rid: str, now: float) -> None:
        raw = rid.encode()
        self._epochs.append(version >> SEQ_BITS)
        self._seqs.append(version & SEQ_MASK)
        self._kinds.append(kind)
        self._times.append(now)
        self._ids += raw
        self._ends.append(len(self._ids) + self._shift)
        self.size += ENTRY_OVERHEAD + len(raw)
        if self.size > self.max_bytes:
            self.trim(now)

    def _version(self, i: int) -> int:
        return self._epochs[i] << SEQ_BITS | self._seqs[i]

    def _id_span(self, i: int) -> tuple[int, int]:
        start = self._ends[i - 1] - self._shift if i else 0
        return start, self._ends[i] - self._shift

    def _bytes(self, a: int, b: int) -> int:
        """The charge of entries ``a`` to ``b - 1`` (their ids' ends are cumulative)."""
        if b <= a:
            return 0
        start = self._ends[a - 1] if a else self._shift
        return ENTRY_OVERHEAD * (b - a) + self._ends[b - 1] - start

    def trim(self, now: float) -> None:
        """Drop the oldest entries beyond the byte budget or older than ``max_age``.

        Bounded work however many entries go (a quiet minute after a burst
        ages out all of it at once): the age cut is a bisection of the
        times, the byte cut one of the cumulative charges.
        """
        head, n = self.head, len(self._seqs)
        if head >= n:
            return
        cut = head
        if self._times[head] < now - self.max_age:
            cut = bisect_left(self._times, now - self.max_age, head, n)
        excess = self.size - self.max_bytes
        if self._bytes(head, cut) < excess:
            while cut < n and self._bytes(head, cut) < excess and cut - head < TRIM_STEPS:
                cut += 1  # the common case: one write over the budget drops one or two
            if self._bytes(head, cut) < excess:
                cut = bisect_left(range(n), excess, cut, n, key=lambda c: self._bytes(head, c))
        if cut == head:
            return
        # Why the floor moved: as of the last entry dropped (over the budget then, or only old).
        self.trimmed_by = "bytes" if self._bytes(head, cut - 1) < excess else "age"
        self.size -= self._bytes(head, cut)
        self.floor = self._version(cut - 1)
        self.head = cut
        if cut > COMPACT_AFTER and 2 * cut > n:  # amortized: each entry moves once
            cut_bytes = self._ends[cut - 1] - self._shift
            for column in (self._epochs, self._seqs, self._kinds, self._times, self._ends):
                del column[:cut]
            del self._ids[:cut_bytes]
            self._shift += cut_bytes
            self.head = 0

    def covers(self, version: int, now: float) -> bool:
        """Every write after ``version`` (of the backlog's epoch) is still held."""
        self.trim(now)
        return self.holds_after(version)

    def holds_after(self, version: int) -> bool:
        """Every write after ``version`` is still held (no trimming first)."""
        return unpack_version(version)[0] == unpack_version(self.floor)[0] and version >= self.floor

    def since(self, version: int, limit: int) -> list[tuple[int, int, str, float]]:
        """Up to ``limit`` held writes after ``version`` (version, kind, id, time), oldest first."""
        n = len(self._seqs)
        start = bisect_right(range(n), version, lo=self.head, key=self._version)
        ids, kinds, times = self._ids, self._kinds, self._times
        out = []
        for i in range(start, min(n, start + limit)):
            a, b = self._id_span(i)
            out.append((self._version(i), kinds[i], ids[a:b].decode(), times[i]))
        return out

    def status(self, now: float) -> dict[str, object]:
        self.trim(now)
        held = len(self)
        epoch, seq = unpack_version(self.floor)
        first = None if not held else unpack_version(self._version(self.head))
        return {
            "entries": held,
            "bytes": self.size,
            "max_bytes": self.max_bytes,
            "max_age_s": self.max_age,
            "covers_after": {"epoch": epoch, "seq": seq},
            "first_version": None
            if first is None
            else dict(zip(("epoch", "seq"), first, strict=True)),
            "oldest_age_s": None if not held else round(now - self._times[self.head], 3),
        }


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a primary knows one secondary holds, kept when that secondary's session ended."""

    boot_id: bytes  # the secondary's process: a restart loses everything
    epoch: int  # the primary's epoch the session belonged to
    snap_id: int
    start: int  # the primary's version when the snapshot started
    bulk_sent: int
    synced: int | None  # it holds every write up to this, once it processed BULK_END


def ticket_of(session: OutboundSession, boot_id: bytes) -> Ticket:
    synced = session.floor
    if synced is not None:
        synced = max(synced, session.acked)
    return Ticket(boot_id, session.epoch, session.snap_id, session.start, session.bulk_sent, synced)


@dataclass(frozen=True, slots=True)
class Plan:
    outcome: str  # one of OUTCOMES
    refused: str | None = None  # why a requested resume was refused (a full snapshot instead)
    since: int = 0  # partial: stream every write after this version
    position: Position | None = None  # resumed_snapshot: continue the walk after this


def plan_resync(
    req: SyncRequest,
    ticket: Ticket | None,
    boot_id: bytes,
    epoch: int,
    *,
    backlog: Backlog,
    now: float,
) -> Plan:
    """How to answer a SYNC_REQUEST (PROTOCOL.md 10.7)."""
    if not req.resume_epoch:
        return Plan("full")
    if req.resume_epoch != epoch:
        return Plan("full", "epoch_changed")
    if (
        ticket is None
        or ticket.boot_id != boot_id
        or ticket.epoch != epoch
        or ticket.snap_id != req.resume_snap
    ):
        return Plan("full", "unknown_session")
    if req.resume_kind == 0:  # it holds the whole snapshot and part of the stream
        if ticket.synced is None:
            return Plan("full", "unknown_session")  # it never was sent BULK_END
        if not backlog.covers(ticket.synced, now):
            return Plan("full", f"backlog_{backlog.trimmed_by or 'bytes'}")
        return Plan("partial", since=ticket.synced)
    if not backlog.covers(ticket.start, now):
        return Plan("full", f"backlog_{backlog.trimmed_by or 'bytes'}")
    position = (REPLICATED_KIND_CODES.index(req.resume_kind), req.resume_after)
    return Plan("resumed_snapshot", since=ticket.start, position=position)


def resumed_session(plan: Plan, ticket: Ticket, epoch: int, backlog: Backlog) -> OutboundSession:
    """The session that resumes ``ticket``'s as ``plan`` says, fed from the backlog."""
    partial = plan.outcome == "partial"
    return OutboundSession(
        ticket.snap_id,
        epoch,
        ticket.start,
        resume=plan.position,
        floor=plan.since if partial else None,
        bulk_sent=ticket.bulk_sent,
        feed=(backlog, plan.since),
    )
