"""Per-connection and per-peer state the node core keeps.

A ``Conn`` is one transport connection (authenticated or still in its
handshake).  A ``Peer`` is another cluster member, known by name; it outlives
its connections, because liveness ("lost" after the heartbeat threshold) is
about the node, not a TCP connection, and because a merge in progress
continues on the peer's next connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from hasyncd.core.backlog import Ticket, ticket_of
from hasyncd.core.election import Candidate
from hasyncd.core.history import LagClock
from hasyncd.core.replication import Flow, OutboundSession
from hasyncd.store import pack_version
from hasyncd.wire.channel import Channel
from hasyncd.wire.messages import F_FENCED, F_IN_SYNC, F_SUSPENDED, Heartbeat, Role


class Conn:
    __slots__ = ("ack_frame", "address", "channel", "created", "id", "initiator", "peer")

    def __init__(self, conn_id: int, channel: Channel, initiator: bool, address: str, now: float):
        self.id = conn_id
        self.channel = channel
        self.initiator = initiator
        self.address = address  # the dialed address, or the remote address of an inbound link
        self.created = now
        self.peer: str | None = None  # set once authenticated and adopted
        self.ack_frame: int | None = None  # newest ack-eliciting frame processed, not yet acked

    def __repr__(self) -> str:
        return f"Conn({self.id}, {self.address}, peer={self.peer!r})"


class Peer:
    def __init__(self, name: str, tag: int, boot_id: bytes, window: int, address: str) -> None:
        self.name = name
        self.tag = tag
        self.boot_id = boot_id
        self.window = window
        self.address = address
        self.conn: Conn | None = None
        self.up = False  # alive: not declared lost
        self.last_rx = 0.0  # last authenticated frame
        self.stall = 0.0  # own event-loop stall accumulated since last_rx
        self.suppressed = False  # a loss was suppressed because of our own stall
        self.hb: Heartbeat | None = None
        self.hb_epoch = 0
        self.hb_at = 0.0
        self.rtt: float | None = None
        self.echo_t_ms = 0  # newest t_ms received from the peer, echoed back
        self.echo_rx_at = 0.0
        self.flow = Flow(window)
        self.session: OutboundSession | None = None  # when we are primary and it follows us
        self.resume: Ticket | None = None  # what its last session left it holding
        self.lag = LagClock()  # how long its oldest unacknowledged write has waited
        self.merge_offered = 0
        self.merge_merged = 0
        self.merge_conflicts = 0

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, up={self.up})"

    def reset_link_state(self) -> None:
        """A connection ended or was replaced: in-flight accounting and sessions start over.

        What the ended session delivered is kept as a ticket: the peer may
        resume from it on its next link (``hasyncd.core.backlog``).
        """
        if self.session is not None:
            self.resume = ticket_of(self.session, self.boot_id)
        self.flow = Flow(self.window)
        self.session = None
        self.lag = LagClock()

    @property
    def role(self) -> Role | None:
        return self.hb.role if self.hb is not None else None

    def flag(self, bit: int) -> bool:
        return self.hb is not None and bool(self.hb.flags & bit)

    @property
    def in_sync_flag(self) -> bool:
        return self.flag(F_IN_SYNC)

    @property
    def eligible(self) -> bool:
        return not (self.flag(F_SUSPENDED) or self.flag(F_FENCED))

    def uptime(self, now: float) -> float:
        if self.hb is None:
            return 0.0
        return self.hb.uptime_ms / 1000.0 + (now - self.hb_at)

    def candidate(self, now: float, in_sync: bool) -> Candidate:
        """This peer in an election, from its newest heartbeat (which it must have sent)."""
        hb = self.hb
        assert hb is not None
        return Candidate(
            self.name,
            hb.priority,
            self.uptime(now),
            hb.monitors_down,
            in_sync,
            self.eligible,
            pack_version(hb.applied_epoch, hb.applied_seq),
        )


@dataclass
class DialState:
    address: str
    next_at: float = 0.0
    backoff: float = 0.0
    pending: bool = False
    name: str | None = None  # learned from the first successful handshake
    refused_kid: bytes | None = None  # the key id this address last refused (psk_mismatch)
    refused_at: float = 0.0
    rekey_at: float = 0.0  # no re-key dial (core.keys) before this


@dataclass
class Fence:
    """A primary that stalled past its peers' patience refuses writes until re-confirmed."""

    since: float
    since_ms: int
    reason: str
    confirmed: set[str]


@dataclass
class HandoverState:
    target: str
    reason: str
    deadline: float
    sent: bool = False
    # Chosen (manual failover, shutdown, preemption), not forced by a failure
    # (link failover): only a forced one counts as a flap.
    planned: bool = True
