"""The two internal replicated kinds behind read-time ESP sequence numbers.

* ``promotion``: one small record per promotion, written once by the node
  that promoted (id: its epoch as 16 hex digits).  It holds the jump rule in
  force (margin, safety factor, detection time, inbound policy) and when the
  promotion happened.  Every node reads outbound SAs through the replicated
  history of these records (``hasyncd.core.seqview``), so a promotion writes
  one record instead of one per SA, and secondaries see the same view.
* ``sa_counters``: what the data plane reports for one ``ipsec_sa`` (id: the
  SA's id): last sequence number, bytes, packets, the replay bitmap of an
  inbound SA, the send-rate estimate, when the last update arrived, and the
  highest lease ceiling granted.  Kept apart from the SA record so the IKE
  daemon's writes never lose a counter or a lease, and a counter update never
  re-encodes the SA's keys and selectors.

Neither kind is written through the records API (``Kind.api_writable``);
both are read there, and both go through the same validation on the link as
every other record.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hasyncd.kinds import MAX_REPLAY_WINDOW, MAX_TIME, U64
from hasyncd.schema import Enum, Field, Hex, Int, Nullable, Num, Struct

# A promotion's safety factor and detection time: far above any sane value,
# small enough that rate x time x factor stays a float well inside u64.
MAX_SAFETY = 1000.0
MAX_DETECTION_S = 3600.0
# Packets per second one SA can send: a 400 Gbit/s link of 64-byte packets
# is ~0.8e9; the bound leaves room without letting a bogus rate overflow.
MAX_RATE = 1e10
INBOUND_POLICIES = ("replicated", "advance")

PROMOTION = Struct(
    "Promotion",
    Field("epoch", Int(1, 2**63 - 1)),
    Field("at", Num(0, MAX_TIME)),  # wall clock of the promoting node
    Field("margin", Int(0, U64)),
    Field("safety", Num(1, MAX_SAFETY)),
    Field("detection_s", Num(0, MAX_DETECTION_S)),
    Field("inbound", Enum(*INBOUND_POLICIES)),
)

SA_COUNTERS = Struct(
    "SaCounters",
    Field("seq", Int(0, U64), 0),
    Field("bytes", Int(0, U64), 0),
    Field("packets", Int(0, U64), 0),
    Field("replay_bitmap", Nullable(Hex(0, MAX_REPLAY_WINDOW // 8)), None),
    Field("rate", Num(0, MAX_RATE), 0.0),  # packets (sequence numbers) per second
    Field("at", Nullable(Num(0, MAX_TIME)), None),  # wall clock of the last counter update
    Field("seq_limit", Int(0, U64), 0),  # highest lease ceiling granted; 0: none
    # The SA's own expiry, copied at each update: the counters go with their SA.
    Field("expires", Nullable(Num(0, MAX_TIME)), None),
)

_replace = msgspec.structs.replace


def promotion_id(epoch: int) -> str:
    return f"{epoch:016x}"


def _promotion_id(w: Any) -> str:
    return promotion_id(w.epoch)


def _no_check(w: Any, lists: bool = True) -> None:
    return None


def _never(w: Any) -> float | None:
    return None


def _counters_expiry(w: Any) -> float | None:
    return None if w.expires is None else float(w.expires)


def _promotion_merge(winner: Any, loser: Any) -> Any:
    return winner  # written once by the promoting node: both copies are the same


def _counters_merge(winner: Any, loser: Any) -> Any:
    """Counters and lease ceilings never go backwards; the winner's rate and time."""
    changes: dict[str, Any] = {
        "bytes": max(winner.bytes, loser.bytes),
        "packets": max(winner.packets, loser.packets),
        "seq_limit": max(winner.seq_limit, loser.seq_limit),
        "rate": max(winner.rate, loser.rate),
    }
    if winner.expires is not None and loser.expires is not None:
        changes["expires"] = max(winner.expires, loser.expires)
    if loser.seq > winner.seq:
        changes["seq"] = loser.seq
        changes["replay_bitmap"] = loser.replay_bitmap
    return _replace(winner, **changes)
