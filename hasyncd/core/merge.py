"""Merge before resync: a node offers a new primary what it may lack; the primary resolves it.

Two cases (``RoleManager._follow`` decides which):

* a former primary that stepped down because of a higher epoch (a split
  brain: a cut link, a frozen primary) offers every entry it holds, then
  MERGE_END with the epoch it was primary in, so the survivor records the
  split and re-announces itself;
* a secondary whose data has a history the new primary lacks (it applied
  writes the new primary never received, or it followed another primary
  during a partition) offers the part the primary may lack, then MERGE_END
  with epoch 0.

The primary applies each offered change with ``merge_one`` as an ordinary
local write, so the result replicates to every secondary, the offering node
included, once it resynchronizes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from hasyncd.core.apply import decode_change
from hasyncd.core.epochs import minter
from hasyncd.core.events import MergeApplied
from hasyncd.core.peers import Peer
from hasyncd.core.replication import Mark, MarkKind, Position, Walker
from hasyncd.core.seqview import History, merge_view
from hasyncd.errors import RecordError
from hasyncd.policy import KIND_BY_CODE, shown_id
from hasyncd.records import KINDS_BY_CODE, Record
from hasyncd.store import HEADER, Entry, Store, pack_version, unpack_version
from hasyncd.wire.messages import Change, Heartbeat, MergeEnd, Message, Phase, Records

# (kind code, id, version, wire value) -> the value as the survivor reads it.
View = Callable[[int, str, int, Any], Any]

log = logging.getLogger("hasyncd.core")

# Ids looked at per merge step when few entries match: bounds one step's time.
MERGE_SCAN = 4096


class MergeSender:
    """A former primary offers the survivor every write it made that the survivor may lack.

    It offers every entry it holds, tombstones included, not only those it
    minted: it may hold writes of a third node (a primary that died) that the
    survivor never received, and an acknowledgement the survivor once gave
    may have been undone by a resync since.  The survivor skips what it
    already has (equal versions), so the cost is one store walk, and split
    brains are rare.  A merge cut short by a lost link resumes from the last
    position the survivor acknowledged.
    """

    def __init__(self, epoch: int, floor: int = 0, start: Position | None = None) -> None:
        self.epoch = epoch  # the epoch the sender was primary in (0: it was not)
        self.floor = floor  # offer entries newer than this version
        self._walker = Walker(start)
        self.sent = 0
        self.finished = False

    def _wanted(self, value: bytes) -> bool:
        seq, epoch, _ = HEADER.unpack_from(value)
        return bool((epoch << 64 | seq) > self.floor)

    def next_message(self, store: Store) -> tuple[Message, Mark | None] | None:
        if self.finished:
            return None
        changes = self._walker.collect(store, self._wanted, max_scan=MERGE_SCAN)
        if changes:
            self.sent += len(changes)
            progress = Mark(MarkKind.MERGE_PROGRESS, position=self._walker.position)
            return Records(Phase.MERGE, tuple(changes)), progress
        if self._walker.done:
            self.finished = True
            return MergeEnd(self.sent, self.epoch), Mark(MarkKind.MERGE_END)
        return None  # scanned a stretch without matches: continue on the next pump


def catch_up_floor(applied: int, leader_epoch: int, leader: Heartbeat) -> int | None:
    """What a node holding ``applied`` offers a new primary: entries newer than this, or None.

    Our data comes from the history of the epoch ``applied`` was minted in.
    If the new primary promoted from that same history (its base is in that
    epoch), it holds everything up to its base and we offer only the newer
    tail; if it is that primary, nothing; if its history is another one (a
    cold start during a partition, a split brain), all (floor 0).
    """
    ours = unpack_version(applied)[0]
    if applied == 0 or ours == leader_epoch:
        return None
    if ours == leader.base_epoch:
        base = pack_version(leader.base_epoch, leader.base_seq)
        return base if applied > base else None
    return 0


@dataclass(frozen=True, slots=True)
class MergeDecision:
    """What the survivor does with one offered change."""

    record: Record | None  # the content to write (None: delete)
    write: bool  # False: keep ours untouched
    conflict: bool  # both sides changed the record during the split


def merge_one(
    mine: Entry | None, theirs: Change, loser_tag: int, view: View | None = None
) -> MergeDecision:
    """Resolve one offered change against the survivor's entry.

    The newer version wins per record (versions are unique: equal means the
    same write).  When the survivor's entry is newer and the offer was minted
    by the loser itself, both sides changed the record during the split: a
    conflict.  The survivor's content wins, but counters (ESP sequence, IKE
    message IDs, last_seen) take the larger value so they never go backwards.
    An older offer minted by anyone else is just a stale copy.  Every record
    written is validated (``Kind.from_blob`` / ``from_wire``), merged ones too.
    ``view`` maps each side's value to how the survivor reads it (the
    promotion history, ``hasyncd.core.seqview.merge_view``) before merging.
    """
    kind = KINDS_BY_CODE[theirs.kind]
    rid = theirs.id
    v_theirs = pack_version(theirs.epoch, theirs.seq)
    offered = None if theirs.blob is None else kind.from_blob(theirs.blob, rid)
    if mine is None:
        if offered is not None and view is not None:
            seen = view(kind.code, rid, v_theirs, offered.value)
            if seen is not offered.value:
                offered = kind.from_wire(seen, rid)
        return MergeDecision(offered, offered is not None, False)
    if mine.version == v_theirs:
        return MergeDecision(None, False, False)
    theirs_newer = v_theirs > mine.version
    if theirs_newer:
        if offered is None or mine.blob is None:
            return MergeDecision(offered, True, False)
        a, b = offered.value, kind.decode(mine.blob)
        if view is not None:
            a, b = view(kind.code, rid, v_theirs, a), view(kind.code, rid, mine.version, b)
        merged = kind.merge(a, b)
        return MergeDecision(kind.from_wire(merged, rid), True, False)
    # Ours is newer: keep ours, with counters that never go back.
    conflict = minter(theirs.epoch) == loser_tag
    if offered is None or mine.blob is None:
        return MergeDecision(None, False, conflict)
    a, b = kind.decode(mine.blob), offered.value
    if view is not None:
        a, b = view(kind.code, rid, mine.version, a), view(kind.code, rid, v_theirs, b)
    record = kind.from_wire(kind.merge(a, b), rid)
    return MergeDecision(record, record.blob != mine.blob, conflict)


class MergeHost(Protocol):
    """What a survivor's merge needs of the node: its store, promotion history and writer."""

    store: Store
    promotions: History

    def count(self, metric: str, label: str = "", n: int = 1) -> None: ...

    def local_write(
        self, kind: int, rid: str, record: Record | None, *, quiet: bool = False
    ) -> object: ...


def receive_merge(host: MergeHost, peer: Peer, msg: Records) -> None:
    """Survivor: apply offered changes (the handler table checked that we are primary)."""
    for change in msg.changes:
        peer.merge_offered += 1
        try:
            decode_change(change)
            decision = merge_one(
                host.store.get_raw(change.kind, change.id),
                change,
                peer.tag,
                partial(merge_view, host.promotions),
            )
        except RecordError as exc:
            host.count("records_invalid", "merge")
            log.error(  # noqa: TRY400 - a peer sent bad data; no traceback to show
                "merge from %s: invalid record %s: %s",
                peer.name,
                shown_id(change.kind, change.id),
                exc.message,
            )
            continue
        if decision.conflict:
            peer.merge_conflicts += 1
            host.count("merge_conflicts")
            log.warning(
                "merge conflict on %s %s: changed on both sides, newer version kept",
                KIND_BY_CODE[change.kind],
                shown_id(change.kind, change.id),
            )
        if decision.write:
            peer.merge_merged += 1
            host.count("merged_records")
            host.local_write(change.kind, change.id, decision.record)


def merge_end(peer: Peer) -> MergeApplied:
    """Survivor: the merge from ``peer`` is complete; its figures.

    The caller emits the event, and for a former primary's merge (epoch not
    0) notes the split brain and re-announces.
    """
    log.warning(
        "merge from %s done: %d offered, %d merged, %d conflicts",
        peer.name,
        peer.merge_offered,
        peer.merge_merged,
        peer.merge_conflicts,
    )
    done = MergeApplied(peer.name, peer.merge_offered, peer.merge_merged, peer.merge_conflicts)
    peer.merge_offered = peer.merge_merged = peer.merge_conflicts = 0
    return done
