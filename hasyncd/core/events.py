"""What the node core tells its shell: connections to open or close, and things that happened.

Events are plain frozen dataclasses.  The shell acts on the first two kinds
(``Dial``, ``Close``) and forwards the rest to logs, hooks, metrics and the
``/v1/events`` stream.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a link connection to ``address`` ("host:port")."""

    address: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close connection ``conn_id`` after sending what is queued for it."""

    conn_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class RoleChanged:
    old: str
    new: str
    epoch: int
    primary: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class PromotionDone:
    """Promotion step 2 finished: the data plane may now be told (``on_primary``).

    One event per promotion, never one per record: every ``ipsec_sa`` and
    ``ike_sa`` stored reads through the jump ``rule`` from now on.
    """

    epoch: int
    reason: str
    rule: dict[str, object]  # the jump rule: margin, safety factor, detection time, inbound
    ipsec_sa: int  # SAs stored: outbound ones read advanced, inbound per the rule
    ike_sa: int  # IKE SAs stored: older ones read mid_sync_required
    duration_s: float  # from the election to this event


@dataclass(frozen=True, slots=True)
class RekeyRelease:
    """The rekey governor releases these SAs to the IKE daemon (``hasyncd.core.governor``).

    ``items`` are ``(kind, id)``: an ``ipsec_sa`` marked ``rekey_required``
    (rekey the CHILD_SA) or an ``ike_sa`` needing RFC 6311 message-ID sync.
    """

    items: tuple[tuple[str, str], ...]
    pending: int  # still queued after this release


@dataclass(frozen=True, slots=True)
class Reannounce:
    """The survivor of a dual-primary period must re-run its primary hook."""

    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class FaultChanged:
    active: bool
    monitors_down: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PeerChanged:
    node: str
    address: str
    up: bool
    reason: str


@dataclass(frozen=True, slots=True)
class SyncChanged:
    in_sync: bool
    primary: str | None
    records: int


@dataclass(frozen=True, slots=True)
class SplitBrain:
    peer: str
    my_epoch: int
    peer_epoch: int
    survivor: str


@dataclass(frozen=True, slots=True)
class MergeApplied:
    peer: str
    offered: int
    merged: int
    conflicts: int


@dataclass(frozen=True, slots=True)
class HandoverFinished:
    target: str
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RecordChanged:
    kind: str
    id: str
    op: str  # "put" | "delete"
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class StopReady:
    """A planned stop may proceed: handed over, or not, and how many records are lost."""

    handed_to: str | None
    unreplicated: int  # records no other node acknowledged (at most): lost with this node
    reason: str


@dataclass(frozen=True, slots=True)
class Watermark:
    """Every in-sync secondary holds every write up to ``version`` (None: no secondary in sync)."""

    version: int | None


Event = (
    Dial
    | Close
    | RoleChanged
    | PromotionDone
    | RekeyRelease
    | Reannounce
    | FaultChanged
    | PeerChanged
    | SyncChanged
    | SplitBrain
    | MergeApplied
    | HandoverFinished
    | RecordChanged
    | StopReady
    | Watermark
)
