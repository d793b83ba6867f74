"""Split-brain state: the one record of two primaries having overlapped, and who changes it.

``SplitBrainState`` is the only owner of the record: the node core asks it
to note a detection (a primary hearing a newer epoch that was no handover,
or a survivor receiving a former primary's MERGE_END) and to add the merge's
figures; it returns the ``SplitBrain`` event to emit, and the core counts
and emits it.  Status shows ``current.status()``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from hasyncd.core.events import SplitBrain

log = logging.getLogger("hasyncd.core")


@dataclass(frozen=True, slots=True)
class SplitRecord:
    """``peer`` and this node were both primary (in ``peer_epoch`` and ``own_epoch``)."""

    peer: str
    own_epoch: int
    peer_epoch: int
    survivor: str
    detected_at: float  # wall clock
    offered: int | None = None  # the merge's figures, once known
    merged: int | None = None
    conflicts: int | None = None

    def status(self) -> dict[str, object]:
        return {
            "peer": self.peer,
            "own_epoch": self.own_epoch,
            "peer_epoch": self.peer_epoch,
            "survivor": self.survivor,
            "detected_at": self.detected_at,
            "offered": self.offered,
            "merged": self.merged,
            "conflicts": self.conflicts,
        }


class SplitBrainState:
    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: SplitRecord | None = None

    def detected(
        self, peer: str, own_epoch: int, peer_epoch: int, survivor: str, wall: float
    ) -> SplitBrain:
        """Note the overlap; returns the event to emit (the caller counts ``split_brains``)."""
        self.current = SplitRecord(peer, own_epoch, peer_epoch, survivor, wall)
        log.error(
            "SPLIT BRAIN: %s and this node were both primary (epochs %d and %d); survivor: %s",
            peer,
            peer_epoch,
            own_epoch,
            survivor,
        )
        return SplitBrain(peer, own_epoch, peer_epoch, survivor)

    def merged(self, peer: str, offered: int, merged: int, conflicts: int) -> None:
        """The survivor's figures of a merge from ``peer`` (noted as detected first).

        A loser whose merge was not acknowledged (its link was replaced
        before the ACK) offers it again: the second offer finds its records
        already merged.  So the figures of one split brain accumulate: the
        records merged add up; offered and conflicts are the largest offer's,
        since a repeated offer carries the same records again.
        """
        cur = self.current
        assert cur is not None and cur.peer == peer
        if cur.merged is not None:
            assert cur.offered is not None and cur.conflicts is not None
            offered, conflicts = max(offered, cur.offered), max(conflicts, cur.conflicts)
            merged += cur.merged
        self.current = replace(cur, offered=offered, merged=merged, conflicts=conflicts)

    def offered(self, n: int) -> None:
        """The loser's figure: its merge of ``n`` records was acknowledged."""
        if self.current is not None:
            self.current = replace(self.current, offered=n)

    def status(self) -> dict[str, object] | None:
        return None if self.current is None else self.current.status()
