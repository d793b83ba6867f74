"""Read-time ESP sequence numbers: the promotion history applied to what is stored.

A promotion writes one ``promotion`` record (``hasyncd.counterkinds``)
instead of rewriting every SA.  Every reader -- the API, the merge, the
counter path, the rekey scan -- sees an SA through ``sa_view``, which applies
every promotion newer than what is stored, on the primary and on the
secondaries alike (they hold the same records).

What a stored value means: an ``ipsec_sa``'s ``seq`` and an ``sa_counters``
``seq`` are what was written in their version's epoch.  Each promotion
*after* that epoch may have let another data plane send past it, so the view
adds that promotion's jump, once per promotion, in epoch order:

* no lease: ``max(margin, rate x (promotion time - last update + detection) x safety)``;
* and never below a lease ceiling (``seq_limit``) granted before the
  promotion: the old data plane never sent past it, so with leases no number
  is used twice by construction.  The rate bound still applies on top, for a
  data plane that went on without a lease (none can be granted while no
  secondary is in sync) and reported counters instead.

A write in a newer epoch (a counter update, a lease, the IKE daemon's PUT)
is newer than the promotions before it and gets no jump from them; the view
takes the larger of the two sources, so a counter never goes backwards.  A
non-ESN SA that would pass 2^32-1 is pinned there and reads ``rekey_required``.

Inbound SAs read the replicated highest-received ``seq`` and bitmap, or with
``inbound = "advance"`` the floor moved up by the same bound (the whole
window marked as seen).  IKE SAs older than the newest promotion read
``mid_sync_required``.  Sans-IO: it reads no clock (promotion times are in
the records).
"""

from __future__ import annotations

import bisect
import math
from typing import Any, NamedTuple

import msgspec

from hasyncd.kinds import U32, U64
from hasyncd.policy import KIND_CODES
from hasyncd.records import KINDS_BY_CODE
from hasyncd.store import HEADER, HEADER_LEN, SEQ_BITS, Store

SA = KIND_CODES["ipsec_sa"]
IKE = KIND_CODES["ike_sa"]
PROMO = KIND_CODES["promotion"]
CTR = KIND_CODES["sa_counters"]
_DIR_OUT = 1
_replace = msgspec.structs.replace
_NONE: list[Any] = []
_unpack_from = HEADER.unpack_from
_CTR_DECODE = msgspec.msgpack.Decoder(KINDS_BY_CODE[CTR].schema.wire).decode


class History:
    """The promotion records in the store, decoded once each time the table changes.

    A change is seen by the table's size (a record added or dropped) or told
    by ``invalidate`` (the node core calls it when it writes or applies a
    promotion record: a resync may drop one and add another).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._table = store.tables[PROMO]
        self._n = -1
        self._entries: list[Any] = []
        self._epochs: list[int] = []

    def invalidate(self) -> None:
        self._n = -1

    def entries(self) -> list[Any]:
        table = self._table
        if len(table.entries) != self._n:
            kind = KINDS_BY_CODE[PROMO]
            items = []
            for rid in table.order:
                raw = self.store.get_raw(PROMO, rid)
                if raw is not None and raw.blob is not None:
                    items.append(kind.decode(raw.blob))
            items.sort(key=lambda p: p.epoch)
            self._entries, self._epochs = items, [p.epoch for p in items]
            self._n = len(table.entries)
        return self._entries

    def after(self, epoch: int) -> list[Any]:
        """Promotions to an epoch newer than ``epoch``, oldest first."""
        entries = self.entries()
        if not entries or self._epochs[-1] <= epoch:
            return _NONE  # the common case: written since the last promotion
        return entries[bisect.bisect_right(self._epochs, epoch) :]

    def latest(self) -> Any | None:
        entries = self.entries()
        return entries[-1] if entries else None


def jump(p: Any, ctr: Any | None) -> int:
    """How far promotion ``p`` moves a counter: the rate bound or the margin, the larger."""
    j = int(p.margin)
    if ctr is not None and ctr.at is not None and ctr.rate > 0:
        age = max(0.0, p.at - ctr.at)
        bound = ctr.rate * (age + p.detection_s) * p.safety
        j = max(j, min(U64, math.ceil(bound)))
    return j


class SaView(NamedTuple):
    wire: Any  # the ipsec_sa as the API shows it
    advanced: bool  # a promotion moved its counter
    leased: bool  # the lease ceiling decided it (above the rate bound)


def _epoch(version: int) -> int:
    return version >> SEQ_BITS


def sa_view(
    sa: Any, sa_version: int, ctr: Any | None, ctr_version: int, history: History
) -> SaView:
    """The ipsec_sa ``sa`` (wire value) as read now; ``ctr``: its sa_counters or None.

    Every write of ``sa_counters`` stores at least the view as it read then
    (the counter path and leases only move it up), so promotions older than
    the counters record are already in its ``seq``: the SA record's own
    ``seq`` gets the jumps of later promotions only.
    """
    if ctr is None:
        sa_after, ctr_after = history.after(sa_version >> SEQ_BITS), _NONE
    else:
        ctr_after = history.after(ctr_version >> SEQ_BITS)
        sa_after = history.after(max(sa_version, ctr_version) >> SEQ_BITS) if ctr_after else _NONE
    if sa.direction == _DIR_OUT:
        return _outbound(sa, sa_after, ctr, ctr_after)
    return _inbound(sa, sa_after, ctr, ctr_after)


def _jumps(after: list[Any], ctr: Any | None) -> int:
    return sum(jump(p, ctr) for p in after) if after else 0


def _outbound(sa: Any, sa_after: list[Any], ctr: Any | None, ctr_after: list[Any]) -> SaView:
    seq = sa.seq + _jumps(sa_after, ctr) if sa_after else sa.seq
    leased = False
    if ctr is not None:
        if ctr_after:
            seq = max(seq, ctr.seq + _jumps(ctr_after, ctr))
            # A lease granted before a promotion: the old data plane never sent past it.
            leased = ctr.seq_limit > 0 and ctr.seq_limit >= seq
            seq = max(seq, ctr.seq_limit)
        elif ctr.seq > seq:
            seq = ctr.seq
    if seq == sa.seq:
        return SaView(sa, False, False)
    if seq > (U64 if sa.esn else U32):
        return SaView(_replace(sa, seq=U64 if sa.esn else U32, rekey_required=True), True, leased)
    return SaView(_replace(sa, seq=seq), True, leased)


def _inbound(sa: Any, sa_after: list[Any], ctr: Any | None, ctr_after: list[Any]) -> SaView:
    seq, bitmap, after = sa.seq, sa.replay_bitmap, sa_after
    if ctr is not None and ctr.seq >= sa.seq and ctr.at is not None:
        seq, after = ctr.seq, ctr_after
        if ctr.replay_bitmap is not None:
            bitmap = ctr.replay_bitmap
    advance = [p for p in after if p.inbound == 1]  # INBOUND_POLICIES[1] == "advance"
    if advance:
        seq += sum(jump(p, ctr) for p in advance)
        # Everything at or below the new floor reads as already received.
        bitmap = b"\xff" * (sa.replay_window // 8) if sa.replay_window else None
    if seq == sa.seq and bitmap is sa.replay_bitmap:
        return SaView(sa, False, False)
    limit = U64 if sa.esn else U32
    if seq > limit:
        return SaView(
            _replace(sa, seq=limit, replay_bitmap=bitmap, rekey_required=True), True, False
        )
    return SaView(_replace(sa, seq=seq, replay_bitmap=bitmap), bool(advance), False)


def ike_view(ike: Any, version: int, history: History) -> Any:
    if ike.mid_sync_required or not history.after(_epoch(version)):
        return ike
    return _replace(ike, mid_sync_required=True)


def counters_view(ctr: Any, version: int, outbound: bool, history: History) -> Any:
    """An sa_counters value with the promotions after it applied (merges materialize it)."""
    after = history.after(_epoch(version))
    if not after:
        return ctr
    if outbound and ctr.seq_limit > 0:
        seq = max(ctr.seq, ctr.seq_limit)
    elif outbound:
        seq = ctr.seq + sum(jump(p, ctr) for p in after)
    else:
        seq = ctr.seq + sum(jump(p, ctr) for p in after if p.inbound == 1)
    return ctr if seq == ctr.seq else _replace(ctr, seq=min(seq, U64))


def merge_view(history: History, kind: int, rid: str, version: int, wire: Any) -> Any:
    """A value offered to or held by a merge survivor, as the survivor reads it.

    The merged record is written in the survivor's epoch, where no earlier
    promotion applies any more: both sides are compared as they read, so the
    jumps they carried are kept.
    """
    if kind == CTR:
        sa = history.store.get_raw(SA, rid)
        outbound = True  # no SA to tell: the conservative reading
        if sa is not None and sa.blob is not None:
            outbound = KINDS_BY_CODE[SA].decode(sa.blob).direction == _DIR_OUT
        return counters_view(wire, version, outbound, history)
    return view(history, kind, rid, version, wire)


def read_counters(store: Store, rid: str) -> tuple[Any | None, int]:
    """The sa_counters of SA ``rid`` (expired ones included: they only raise the view).

    Stored values were validated on their way in: decoding checks their types
    again, nothing more is needed on this hot path.
    """
    value = store.get_value(CTR, rid)
    if value is None or len(value) <= HEADER_LEN:
        return None, 0
    seq, epoch = _unpack_from(value)[:2]
    return _CTR_DECODE(memoryview(value)[HEADER_LEN:]), epoch << SEQ_BITS | seq


def view(history: History, kind: int, rid: str, version: int, wire: Any) -> Any:
    """A record's wire value as the API shows it (only ipsec_sa and ike_sa change)."""
    if kind == SA:
        ctr, ctr_version = read_counters(history.store, rid)
        return sa_view(wire, version, ctr, ctr_version, history).wire
    if kind == IKE:
        return ike_view(wire, version, history)
    return wire
