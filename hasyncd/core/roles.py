"""Roles: cold start, following, failure-driven election, promotion, fencing and handover.

The rules, in the order they are applied on every input:

* **Epoch fencing.**  ``epoch`` is the highest epoch this node has heard in
  any authenticated frame.  A primary that hears a higher one steps down at
  once; a secondary stops following a primary of a lower epoch and refuses
  its replication.  An epoch is ``term << 16 | tag``: the minting node's tag
  is part of it, so two nodes can never be primary in the same epoch, even
  when partitioned from each other.
* **Following.**  A non-primary follows the up peer that announces itself
  primary in the current epoch; it merges its own unreplicated writes first
  if it was primary itself, then asks for a snapshot.
* **Election.**  Only when no reachable node is (or is followed as) primary:
  after the hello hold-down at cold start, or once the primary is lost.  The
  pure function in ``hasyncd.core.election`` picks the winner; only the
  winner acts, the others wait for its announcement.
* **Lease.**  A primary that did not run for longer than its peers'
  patience (an event-loop stall, SIGSTOP) may already have been replaced: it
  refuses writes ("fenced") until every reachable peer has confirmed it, in a
  heartbeat echoing a time after the stall, or no peer has been reachable for
  a full detection time.
* **Handover.**  Manual failover, preemption (``override``), link failover
  (monitored interfaces) and shutdown all use one path: the primary stops
  writes, waits until the target acknowledged everything, sends HANDOVER,
  and steps down when the target announces the next epoch.
"""

from __future__ import annotations

import logging

from hasyncd.core.effects import NoteSplit
from hasyncd.core.election import Candidate, elect
from hasyncd.core.epochs import minter
from hasyncd.core.events import (
    FaultChanged,
)
from hasyncd.core.follower import Follower, ReplicaLink
from hasyncd.core.peers import Peer
from hasyncd.core.replication import Position
from hasyncd.core.rolechanges import RoleChanges, RolesHost
from hasyncd.core.settings import CoreSettings
from hasyncd.errors import WriteRefused
from hasyncd.store import unpack_version
from hasyncd.wire.messages import (
    F_IN_SYNC,
    F_OVERRIDE,
    F_SUSPENDED,
    U32,
    BulkEnd,
    BulkStart,
    Handover,
    Heartbeat,
    Records,
    Role,
)

log = logging.getLogger("hasyncd.roles")

INF = float("inf")

__all__ = ["RoleManager", "RolesHost"]


class RoleManager(RoleChanges):
    """When to change roles: the inputs, the election and the views the node reads.

    The changes themselves, and the state, are ``RoleChanges``'
    (``hasyncd.core.rolechanges``).
    """

    # -- views --------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Sliced work can continue right now: the shell should call back at once."""
        if self.promotion is not None:
            return True
        f = self.follower
        if f is None:
            return False
        peer = self.core.peers.get(f.primary)
        return peer is not None and peer.conn is not None and f.has_work(peer)

    def next_deadline(self, now: float) -> float:
        """The earliest future moment a role rule may fire (past ones wait for the next tick)."""
        candidates = [self.holddown_until if self.role is Role.STARTING else INF]
        candidates += self.duties.deadlines()
        if self.stop is not None and not self.stop.ready:
            candidates.append(self.stop.deadline)
        flap_deadline = self.damper.deadline()
        if flap_deadline is not None:
            candidates.append(flap_deadline)
        rekey_deadline = self.governor.deadline()
        if rekey_deadline is not None and self.is_primary:
            candidates.append(rekey_deadline)
        return min((t for t in candidates if t > now), default=INF)

    def heartbeat(self, peer: Peer, now: float) -> Heartbeat:
        flags = F_OVERRIDE if self.s.override else 0
        if self.is_primary or self.in_sync:
            flags |= F_IN_SYNC
        if self.suspended_since is not None:
            flags |= F_SUSPENDED
        flags |= self.duties.flags()
        epoch, seq = unpack_version(self.version)
        t_ms = self.core.now_ms(now) + 1  # 0 means "nothing to echo"
        hold = int((now - peer.echo_rx_at) * 1000) if peer.echo_t_ms else 0
        return Heartbeat(
            self.role,
            self.primary,
            self.s.priority,
            t_ms,
            min(len(self.monitors_down), 255),
            flags,
            epoch,
            seq,
            t_ms,
            peer.echo_t_ms,
            max(0, min(hold, U32)),
            # A primary's applied version stays what it held from its predecessor
            # when it promoted: its base (section 11.1 of PROTOCOL.md).
            *(unpack_version(self.applied) if self.is_primary else (0, 0)),
        )

    # -- inputs from the node core ---------------------------------------------------

    def observe_epoch(self, epoch: int, peer: Peer, now: float) -> None:
        if epoch <= self.epoch:
            return
        old, self.epoch = self.epoch, epoch
        if self.is_primary:
            owner = self._epoch_owner(epoch) or peer.name
            handover = self.duties.handed_to(owner)
            split = handover is None
            if split:
                self.out.add(NoteSplit(peer.name, old, epoch, owner))
            self._step_down(
                now,
                f"{peer.name} reports a newer epoch {epoch} (own {old})",
                merge=split,
                owner=owner,
                planned=handover is not None and handover.planned,
            )
        elif self.follower is not None:
            self._unfollow(f"{peer.name} reports a newer epoch {epoch}")

    def on_heartbeat(self, peer: Peer, epoch: int, hb: Heartbeat, now: float) -> None:
        """A heartbeat from ``peer`` (the node already recorded it on the peer)."""
        self.observe_epoch(epoch, peer, now)
        self.duties.confirm(peer, hb.primary, epoch, hb.echo_ms)
        if bool(hb.flags & F_OVERRIDE) != self.s.override:
            self.out.log_limited(
                ("override", peer.name),
                logging.WARNING,
                "node.override differs between this node and %s: set it alike on all members",
                peer.name,
            )

    def on_link_up(self, peer: Peer, now: float) -> None:
        f = self.follower
        if f is not None and f.primary == peer.name:
            f.link_up()

    def on_link_down(self, peer: Peer, reason: str) -> None:
        f = self.follower
        if f is not None and f.primary == peer.name:
            f.link_down(self)
        self.duties.link_down(peer, reason)

    def peer_lost(self, peer: Peer, reason: str) -> None:
        """The node declared ``peer`` lost (and closed its link): what the roles make of it."""
        if self.follower is not None and self.follower.primary == peer.name:
            self._unfollow(f"primary {peer.name} lost: {reason}")
        elif not self.is_primary and self.primary == peer.name:
            self.primary = None  # the owner of our epoch we were waiting for
        self.announce = True

    # -- replication as a follower ------------------------------------------------------

    def follower_refusal(self, peer: Peer, epoch: int) -> str | None:
        """Why a replication message from ``peer`` is refused now (None: it is our primary's)."""
        f = self.follower
        if self.is_primary or f is None or f.primary != peer.name or epoch != self.epoch:
            return "stale_epoch" if epoch < self.epoch else "not_following"
        return None

    def follower_message(
        self, link: ReplicaLink, peer: Peer, msg: BulkStart | Records | BulkEnd
    ) -> None:
        """Apply a replication message from our primary (``follower_refusal`` said legal).

        ``link``: how the follower stores and sends (the node, passed by the call).
        """
        assert self.follower is not None
        self.follower.handle(self, link, peer, msg)

    def pump_follower(self, link: ReplicaLink, now: float) -> None:
        f = self.follower
        if f is None:
            return
        peer = self.core.peers.get(f.primary)
        if peer is not None and peer.conn is not None:
            f.pump(self, link, peer, now, self.s.handshake_timeout)

    def merge_progress(self, peer: Peer, position: Position | None) -> None:
        f = self.following(peer)
        if f is not None and position is not None:
            f.merge_resume = position

    def following(self, peer: Peer) -> Follower | None:
        """Our follower, if ``peer`` is the primary it follows."""
        f = self.follower
        return f if f is not None and f.primary == peer.name else None

    def merge_acknowledged(self, peer: Peer) -> int | None:
        """The primary acknowledged our whole merge: the records offered (None: no merge)."""
        f = self.following(peer)
        if f is None:
            return None
        merge = f.merge
        if not f.merge_acknowledged(peer):
            return None
        self.out.request_pump()
        return None if merge is None else merge.sent

    # -- writes and failover -------------------------------------------------------------

    def check_writable(self, now: float) -> None:
        if not self.is_primary:
            raise WriteRefused(
                "not_primary", f"this node is {self.role.name.lower()}", primary=self.primary
            )
        self.duties.check_writable(now)

    def request_failover(self, now: float, reason: str = "manual failover") -> str:
        if not self.is_primary:
            raise WriteRefused(
                "not_primary", "only the primary can hand over its role", primary=self.primary
            )
        return self.duties.request_failover(now, reason)

    # -- the decision loop ------------------------------------------------------------------

    def evaluate(self, now: float) -> None:
        self.damper.expire(now)
        if self.is_primary:
            self.duties.run(now)
            self._stop_step(now)
            return
        leader = self._leader()
        if leader is not None:
            if self.follower is None or self.follower.primary != leader.name:
                self._follow(leader, now)
            return
        fresh = [p.name for p in self.core.peers.values() if p.up and p.hb is None]
        if fresh:
            # Decide only on fresh information: a link that just (re)opened has
            # not told us its role yet; it may be the primary we follow (keep
            # following, merge included) or the primary of our epoch.
            if self.follower is None:
                self.reason = f"waiting for the first heartbeat from {', '.join(fresh)}"
            return
        if self.follower is not None:
            self._unfollow(f"{self.follower.primary} no longer announces itself primary")
        if self.shutting_down or (self.role is Role.STARTING and now < self.holddown_until):
            return
        owner = self.core.peers.get(self.primary) if self.primary else None
        if owner is not None and owner.up:
            self.reason = (
                f"waiting for {owner.name}, primary of epoch {self.epoch}, to announce itself"
            )
            return
        seen = self._primary_seen_by_others()
        if seen is not None:
            self.reason = f"no link to primary {seen[0]}, which {seen[1]} still follows"
            return
        decision = elect(self._candidates(now), self.rules(prefer_newest=True))
        if decision.reason != self._last_decision:
            self._last_decision = decision.reason
            log.debug("election: winner %s: %s", decision.winner, decision.reason)
        if decision.winner == self.s.name:
            cold = self.role is Role.STARTING
            cause = "cold start" if cold else "no primary reachable"
            # A node's first role is not a flap; taking over from a lost primary is.
            self._promote(now, f"{cause}: {decision.reason}", planned=cold)
        elif decision.winner is None:
            self.reason = f"no primary: {decision.reason}"
        else:
            self.reason = (
                f"waiting for {decision.winner} to take the primary role ({decision.reason})"
            )

    def _leader(self) -> Peer | None:
        for peer in self.core.peers.values():
            if peer.up and peer.role is Role.PRIMARY and peer.hb_epoch == self.epoch:
                return peer
        return None

    def _primary_seen_by_others(self) -> tuple[str, str] | None:
        for peer in self.core.peers.values():
            hb = peer.hb
            if (
                peer.up
                and hb is not None
                and peer.hb_epoch == self.epoch
                and hb.primary is not None
                and hb.primary not in (self.s.name, peer.name)
            ):
                return hb.primary, peer.name
        return None

    def _candidates(self, now: float) -> list[Candidate]:
        return [self.self_candidate(now)] + [
            peer.candidate(now, peer.in_sync_flag)
            for peer in self.core.peers.values()
            if peer.up and peer.hb is not None and peer.role is not Role.PRIMARY
        ]

    def _epoch_owner(self, epoch: int) -> str | None:
        tag = minter(epoch)
        if tag == self.s.tag:
            return self.s.name
        peer = self.core.peer_by_tag(tag)
        return peer.name if peer is not None else None

    # -- handover (target side) --------------------------------------------------------------

    def handover_refusal(self, peer: Peer, epoch: int, msg: Handover) -> str | None:
        """None if we may take the role ``peer`` hands us: we follow it, in sync, streaming."""
        f = self.follower
        ok = (
            msg.target == self.s.name
            and f is not None
            and f.primary == peer.name
            and epoch == self.epoch
            and self.in_sync
            and f.streaming
        )
        if ok:
            return None
        log.warning(
            "refused a handover from %s: not in sync with it in epoch %d", peer.name, self.epoch
        )
        return "handover"

    def on_handover(self, peer: Peer, msg: Handover, now: float) -> None:
        self._promote(now, f"handover from {peer.name}: {msg.reason}", planned=True)

    # -- settings, health and flap damping ---------------------------------------------------

    def reconfigure(self, settings: CoreSettings) -> None:
        self.s = self.duties.s = settings
        self.damper.max_flaps = settings.max_flaps
        self.governor.rate = settings.rekey_rate
        self.governor.jitter = settings.rekey_jitter

    def set_monitors(self, down: tuple[str, ...], now: float) -> None:
        if down == self.monitors_down:
            return
        was = bool(self.monitors_down)
        self.monitors_down = down
        if bool(down) != was:
            if down:
                log.error("monitored interfaces down: %s", ", ".join(down))
            else:
                log.warning("all monitored interfaces are up again")
            self.out.event(FaultChanged(bool(down), down))
        self.announce = True
