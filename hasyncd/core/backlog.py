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

from bisect import bisect_right
from dataclasses import dataclass
from operator import itemgetter

from hasyncd.core.replication import REPLICATED_KIND_CODES, OutboundSession, Position
from hasyncd.store import unpack_version
from hasyncd.wire.messages import SyncRequest

# Default of [replication] backlog_mib.  128 MiB holds about 590,000 writes
# (ENTRY_OVERHEAD each): 28 s of the fastest ingest measured in README
# (21,138 records/s, NDJSON batches), so even a snapshot of a million records
# (15.5 s there) cut near its end under that load can resume; a gateway's
# ordinary write rate fills it far more slowly.  It is only filled by writes.
BACKLOG_MIB_DEFAULT = 128
# Default of [replication] backlog_s: a drop longer than a minute is an
# outage, not a flake, and a snapshot is then due anyway.  It must stay below
# [store].tombstone_ttl_s (the config refuses otherwise): a resume sends the
# tombstones of the deletes made since the version it resumes from.
BACKLOG_S_DEFAULT = 60
# Bytes charged per backlog entry besides its id's characters: a 4-tuple, a
# 128-bit int, a float, the deque slot and the id's str header.  tracemalloc
# measured 215 B for an entry with a fresh 25-character id; the charge
# (225 B for it) is what the backlog itself holds in memory, rounded up.
ENTRY_OVERHEAD = 200

OUTCOMES = ("partial", "resumed_snapshot", "full")

_version = itemgetter(0)


class Backlog:
    """Recent writes of the current epoch, oldest first, bounded in bytes and age.

    A list with a moving head rather than a deque: a resume looks up its
    starting version by bisection and takes its next step as a slice, both
    without walking the entries before it.
    """

    __slots__ = ("entries", "floor", "head", "max_age", "max_bytes", "size", "trimmed_by")

    def __init__(self, max_bytes: int, max_age: float) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.entries: list[tuple[int, int, str, float]] = []  # version, kind, id, time
        self.head = 0  # entries before it are trimmed (compacted now and then)
        self.size = 0
        self.floor = 0  # every write after this version is in the backlog
        self.trimmed_by: str | None = None  # why the floor last moved: "bytes" or "age"

    def __len__(self) -> int:
        return len(self.entries) - self.head

    def reset(self, floor: int) -> None:
        """A new epoch (promotion) or no longer primary: start empty, covering after ``floor``."""
        self.entries, self.head = [], 0
        self.size, self.floor, self.trimmed_by = 0, floor, None

    def append(self, version: int, kind: int, rid: str, now: float) -> None:
        self.entries.append((version, kind, rid, now))
        self.size += ENTRY_OVERHEAD + len(rid)
        if self.size > self.max_bytes:
            self.trim(now)

    def trim(self, now: float) -> None:
        """Drop the oldest entries beyond the byte budget or older than ``max_age``."""
        entries, head = self.entries, self.head
        oldest = now - self.max_age
        while head < len(entries) and (self.size > self.max_bytes or entries[head][3] < oldest):
            self.trimmed_by = "bytes" if self.size > self.max_bytes else "age"
            version, _, rid, _ = entries[head]
            head += 1
            self.size -= ENTRY_OVERHEAD + len(rid)
            self.floor = version
        if head > 4096 and 2 * head > len(entries):  # amortized: each entry moves once
            del entries[:head]
            head = 0
        self.head = head

    def covers(self, version: int, now: float) -> bool:
        """Every write after ``version`` (of the backlog's epoch) is still held."""
        self.trim(now)
        return self.holds_after(version)

    def holds_after(self, version: int) -> bool:
        """Every write after ``version`` is still held (no trimming first)."""
        return unpack_version(version)[0] == unpack_version(self.floor)[0] and version >= self.floor

    def since(self, version: int, limit: int) -> list[tuple[int, int, str, float]]:
        """Up to ``limit`` held writes after ``version`` (version, kind, id, time), oldest first."""
        start = bisect_right(self.entries, version, lo=self.head, key=_version)
        return self.entries[start : start + limit]

    def status(self, now: float) -> dict[str, object]:
        self.trim(now)
        held = len(self)
        first = self.entries[self.head] if held else None
        epoch, seq = unpack_version(self.floor)
        return {
            "entries": held,
            "bytes": self.size,
            "max_bytes": self.max_bytes,
            "max_age_s": self.max_age,
            "covers_after": {"epoch": epoch, "seq": seq},
            "first_version": None
            if first is None
            else dict(zip(("epoch", "seq"), unpack_version(first[0]), strict=True)),
            "oldest_age_s": None if first is None else round(now - first[3], 3),
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
