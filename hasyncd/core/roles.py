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
from typing import Protocol

from hasyncd.core.damping import FlapDamper
from hasyncd.core.effects import AbortResync, Effects, NoteSplit, ResetReplication, WriteRecord
from hasyncd.core.election import Candidate, Rules, elect
from hasyncd.core.epochs import minter, next_epoch
from hasyncd.core.events import (
    FaultChanged,
    HandoverFinished,
    RekeyRelease,
    RoleChanged,
    StopReady,
)
from hasyncd.core.follower import Claim, Follower, FollowState, ReplicaLink
from hasyncd.core.governor import RekeyGovernor
from hasyncd.core.history import RoleChange, RoleHistory
from hasyncd.core.merge import MergeSender, catch_up_floor
from hasyncd.core.peers import Fence, HandoverState, Peer
from hasyncd.core.primary import DutiesHost, PrimaryDuties
from hasyncd.core.promotion import PromotionRule, PromotionWork, promotion_record
from hasyncd.core.replication import Position
from hasyncd.core.seqview import PROMO, History
from hasyncd.core.settings import CoreSettings
from hasyncd.core.stopping import StopState, least_unreplicated, loading_peers
from hasyncd.errors import WriteRefused
from hasyncd.store import Store, pack_version, unpack_version
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


class RolesHost(DutiesHost, Protocol):
    """What the roles read of the node core (``hasyncd.core.node.NodeCore``).

    Only reads: what the roles decide for the node goes into ``out``
    (``hasyncd.core.effects``), which the node applies after each call.
    """

    store: Store  # read: counts, resyncing (the promotion scan reads records)
    promotions: History
    started: float
    wall: float  # the Unix time of the input being handled

    def peer_by_tag(self, tag: int) -> Peer | None: ...


class RoleManager:
    def __init__(
        self, core: RolesHost, settings: CoreSettings, now: float, governor: RekeyGovernor
    ) -> None:
        self.core = core
        self.s = settings
        self.out = Effects()  # what the node applies after each call (hasyncd.core.effects)
        self.governor = governor  # the rekey pacing of this node's promotions
        self.role = Role.STARTING
        self.epoch = 0
        self.primary: str | None = None
        self.seq = 0
        self.applied = 0  # newest version applied from a primary
        self.in_sync = False  # holds a complete copy (as of its last primary)
        # A decision for the node: what the heartbeat says changed (a role, a peer
        # lost, a fault), so the peers are told now rather than at the next beat.
        self.announce = False
        self.holddown_until = now + self.s.holddown
        self.reason = "starting: hello hold-down, discovering peers"
        self.follower: Follower | None = None
        self.resume_claim: Claim | None = None  # what it holds of its primary's last session
        self.resume_failures = 0  # resume requests in a row that got no BULK_START
        self.promotion: PromotionWork | None = None
        self.last_promotion: dict[str, object] | None = None
        self.monitors_down: tuple[str, ...] = ()
        self.damper = FlapDamper(self.s.max_flaps, self.s.flap_window)
        self.merge_pending = False
        self.primary_epoch = 0  # the last epoch this node was primary in
        self.shutting_down = False
        self.stop: StopState | None = None
        self._last_decision = ""  # logged at debug when it changes
        self.history = RoleHistory()
        self.duties = PrimaryDuties(self, core, self.s, self.out)

    # -- views --------------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        return self.role is Role.PRIMARY

    @property
    def version(self) -> int:
        return pack_version(self.epoch, self.seq) if self.is_primary else self.applied

    @property
    def suspended_since(self) -> float | None:
        return self.damper.suspended_since

    @property
    def fence(self) -> Fence | None:
        return self.duties.fence

    @property
    def handover(self) -> HandoverState | None:
        return self.duties.handover

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

    def peer_lost(self, peer: Peer, reason: str) -> None:
        """The node declared ``peer`` lost (and closed its link): what the roles make of it."""
        if self.follower is not None and self.follower.primary == peer.name:
            self._unfollow(f"primary {peer.name} lost: {reason}")
        elif not self.is_primary and self.primary == peer.name:
            self.primary = None  # the owner of our epoch we were waiting for
        self.announce = True

    # -- writes -------------------------------------------------------------------------

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

    def begin_shutdown(self, now: float, snapshot_wait: float) -> None:
        if self.stop is not None:
            return
        self.shutting_down = True
        self.stop = StopState(now, now + snapshot_wait)
        if not self.is_primary:
            self._stop_ready(None, 0, f"stopping as {self.role.name.lower()}")

    def _stop_step(self, now: float) -> None:
        """A stopping primary: hand over, wait for a loading secondary, or give up (once)."""
        st = self.stop
        if st is None or st.ready or self.duties.handover is not None:
            return
        core = self.core
        if not st.handover_tried and self.duties.in_sync_peers():
            st.handover_tried = True
            try:
                target = self.duties.request_failover(now, "primary shutting down")
            except WriteRefused as exc:
                log.warning("cannot hand over before stopping: %s", exc.message)
            else:
                st.waiting_for = f"handover to {target}"
                return
        live = sum(core.store.counts().values())
        lost, best = least_unreplicated(core.peers.values(), live, self.version)
        st.unreplicated = lost
        loading = loading_peers(core.peers.values())
        if loading and not st.handover_tried and now < st.deadline:
            p = loading[0]
            assert p.session is not None
            st.waiting_for = (
                f"{p.name} to finish loading its snapshot "
                f"({p.session.bulk_acked} of {live} records acknowledged)"
            )
            self.reason = f"stopping: waiting for {st.waiting_for}"
            return
        if best is None:
            why = "no secondary is linked"
        elif loading and now >= st.deadline:
            why = f"{best.name} did not finish loading its snapshot in time"
        else:
            why = f"the handover to {best.name} did not complete"
        self._stop_ready(None, lost, why)

    def _stop_ready(self, handed_to: str | None, lost: int, why: str) -> None:
        st = self.stop
        assert st is not None
        st.ready, st.handed_to, st.unreplicated, st.waiting_for = True, handed_to, lost, None
        if lost:
            log.error(
                "STOPPING WITHOUT A HANDOVER: %s; up to %d of %d records exist only on this "
                "node and are lost with it",
                why,
                lost,
                sum(self.core.store.counts().values()),
            )
        else:
            log.info("ready to stop: %s", why)
        self.out.event(StopReady(handed_to, lost, why))

    def next_version(self) -> int:
        self.seq += 1
        return pack_version(self.epoch, self.seq)

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

    def rules(self, *, prefer_newest: bool = False) -> Rules:
        return Rules(self.s.override, self.s.uptime_margin, prefer_newest)

    def self_candidate(self, now: float, *, incumbent: bool = False) -> Candidate:
        eligible = self.fence is None and (incumbent or self.suspended_since is None)
        return Candidate(
            self.s.name,
            self.s.priority,
            now - self.core.started,
            len(self.monitors_down),
            self.in_sync or self.is_primary,
            eligible,
            self.version,
        )

    def _candidates(self, now: float) -> list[Candidate]:
        return [self.self_candidate(now)] + [
            peer.candidate(now, peer.in_sync_flag)
            for peer in self.core.peers.values()
            if peer.up and peer.hb is not None and peer.role is not Role.PRIMARY
        ]

    # -- transitions ----------------------------------------------------------------------

    def _set_role(self, new: Role, primary: str | None, reason: str) -> None:
        old = self.role
        self.role, self.primary, self.reason = new, primary, reason
        if old is not new:
            self.history.add(
                RoleChange(
                    self.core.wall,
                    old.name.lower(),
                    new.name.lower(),
                    self.epoch,
                    primary,
                    reason,
                )
            )
            self.out.event(
                RoleChanged(old.name.lower(), new.name.lower(), self.epoch, primary, reason)
            )

    def set_in_sync(self, value: bool) -> None:
        """Whether this node holds a complete copy; the node tells a change (``SyncChanged``)
        once, at the end of the input, from its own snapshot."""
        self.in_sync = value

    def _promote(self, now: float, reason: str, *, planned: bool) -> None:
        core = self.core
        if self.follower is not None:
            self._unfollow("promoting")
        if core.store.resyncing:
            self.out.add(AbortResync())
            log.warning("promoting with an incomplete snapshot: some records may be missing")
        if not self.in_sync and self.role is Role.SECONDARY:
            log.warning("promoting although this node was not in sync with the lost primary")
        self.epoch = self.primary_epoch = next_epoch(self.epoch, self.s.tag, self.core.wall)
        self.seq = 0
        self.resume_claim = None
        self.out.add(ResetReplication(pack_version(self.epoch, 0)))
        self.duties.reset()
        self._note_role_change(now, planned=planned)
        self._set_role(Role.PRIMARY, self.s.name, reason)
        self.set_in_sync(True)  # a primary holds a complete copy by definition
        rule = PromotionRule(
            self.s.esp_seq_margin,
            self.s.seq_safety_factor,
            self.s.lost_timeout,
            self.s.inbound_window,
        )
        # Step 2 in O(1): one promotion record; every SA reads through it (seqview).
        record = promotion_record(self.epoch, core.wall, rule)
        self.out.add(WriteRecord(PROMO, record.id, record, quiet=True))  # promotion_done tells
        work = PromotionWork(self.epoch, reason, now, rule)
        self.promotion = work
        self.out.count("promotions")
        log.warning("PROMOTED to primary in epoch %d: %s", self.epoch, reason)
        self.out.event(work.event(core.store, now))
        self.announce = True

    def run_slices(self, now: float) -> None:
        if not self.is_primary:
            return
        core = self.core
        work = self.promotion
        if work is not None:
            work.run_slice(core.store, core.promotions)
            if work.done:
                self.promotion = None
                work.finish()
                self.last_promotion = work.summary(now)
                self.governor.add(work.rekey, now)
                work.rekey = []
        released = self.governor.run(now, core.wall)
        if released:
            self.out.count("rekey_released", "", len(released))
            self.out.event(RekeyRelease(tuple(released), len(self.governor.queue)))

    def _step_down(
        self, now: float, reason: str, *, merge: bool, owner: str | None, planned: bool
    ) -> None:
        if self.promotion is not None:
            log.warning("promotion scan in epoch %d interrupted", self.promotion.epoch)
            self.promotion = None
        self.governor.clear()
        h = self.duties.reset()
        self.out.add(ResetReplication(0))
        self.merge_pending = merge
        # It holds everything it wrote: its data's history is now its own epoch.
        self.applied = max(self.applied, pack_version(self.primary_epoch, self.seq))
        self.set_in_sync(False)
        self._note_role_change(now, planned=planned)
        # Name the new epoch's owner if we can see it: a third node that cannot
        # (a partial partition) then knows a primary exists and does not elect.
        linked = owner is not None and owner in self.core.peers and self.core.peers[owner].up
        self._set_role(Role.SECONDARY, owner if linked else None, reason)
        if h is not None:
            self.out.event(HandoverFinished(h.target, True, reason))
        self.out.count("step_downs")
        log.warning("stepped down to secondary: %s", reason)
        if self.stop is not None and not self.stop.ready:
            if planned:
                self._stop_ready(owner, 0, f"handed the primary role to {owner}")
            else:
                self._stop_ready(None, 0, f"stepped down: {reason}")
        self.announce = True

    def _follow(self, leader: Peer, now: float) -> None:
        f = Follower(leader.name)
        hb = leader.hb
        floor = None if hb is None else catch_up_floor(self.applied, leader.hb_epoch, hb)
        if self.merge_pending or floor is not None:
            # Before a resync replaces our store, offer the new primary what it
            # may lack.  A former primary always does (possibly nothing): the
            # survivor learns that two primaries overlapped.
            split_epoch = self.primary_epoch if self.merge_pending else 0
            self.merge_pending = False
            f.merge = MergeSender(split_epoch, floor or 0)
            f.state = FollowState.MERGING
            log.warning(
                "offering %s this node's records newer than %s before resyncing",
                leader.name,
                unpack_version(floor or 0),
            )
        self.follower = f
        self.set_in_sync(False)
        self._set_role(
            Role.SECONDARY, leader.name, f"following {leader.name}, primary in epoch {self.epoch}"
        )
        self.out.request_pump()

    def _unfollow(self, reason: str) -> None:
        # A complete copy stays complete (as of the loss) for the election;
        # only a snapshot cut short leaves this node without one.
        f, self.follower = self.follower, None
        if f is not None and f.merge is not None and f.merge.epoch:
            # A former primary's offer not delivered yet: make it to the next
            # primary.  (A catch-up offer is recomputed for whoever that is.)
            self.merge_pending = True
        if self.core.store.resyncing:
            # Kept open: if this primary returns in the same epoch it may resume
            # the snapshot; any other answer starts a new one (or a promotion ends it).
            self.set_in_sync(False)
        self.primary = None
        self.reason = reason

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

    def reconfigure(self, settings: CoreSettings) -> None:
        self.s = self.duties.s = settings
        self.damper.max_flaps = settings.max_flaps
        self.governor.rate = settings.rekey_rate
        self.governor.jitter = settings.rekey_jitter

    # -- health and flap damping -------------------------------------------------------------

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

    def _note_role_change(self, now: float, *, planned: bool) -> None:
        # Only unplanned changes are flaps: a manual failover, a handover at
        # shutdown, a preemption or a link failover is the operator's (or the
        # configuration's) choice, and must not switch off automatic failover.
        if planned:
            return
        if self.damper.note(now):
            self.out.count("suspended")

    def _epoch_owner(self, epoch: int) -> str | None:
        tag = minter(epoch)
        if tag == self.s.tag:
            return self.s.name
        peer = self.core.peer_by_tag(tag)
        return peer.name if peer is not None else None
