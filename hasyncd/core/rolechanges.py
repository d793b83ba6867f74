"""Role changes: promotion, step-down, following and a planned stop, and the role state.

``RoleManager`` (``hasyncd.core.roles``) decides *when* (the election, the
epoch fencing, the inputs); this layer holds the role state and carries out
the change: a promotion mints the next epoch and queues the promotion record,
a step-down keeps what this node wrote as its own history and marks a merge
due after a split, following starts the follower (merging first if due), a
planned stop hands over or says what would be lost.  What a change means for
the node (events, counters, the replication reset, the promotion record) is
queued in ``out`` (``hasyncd.core.effects``); the node applies it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hasyncd.core.damping import FlapDamper
from hasyncd.core.effects import AbortResync, Effects, ResetReplication, WriteRecord
from hasyncd.core.election import Candidate, Rules
from hasyncd.core.epochs import next_epoch
from hasyncd.core.events import (
    HandoverFinished,
    RekeyRelease,
    RoleChanged,
    StopReady,
)
from hasyncd.core.follower import Claim, Follower, FollowState
from hasyncd.core.governor import RekeyGovernor
from hasyncd.core.history import RoleChange, RoleHistory
from hasyncd.core.merge import MergeSender, catch_up_floor
from hasyncd.core.peers import Fence, HandoverState, Peer
from hasyncd.core.primary import DutiesHost, PrimaryDuties
from hasyncd.core.promotion import PromotionRule, PromotionWork, promotion_record
from hasyncd.core.seqview import PROMO, History
from hasyncd.core.settings import CoreSettings
from hasyncd.core.stopping import StopState, least_unreplicated, loading_peers
from hasyncd.errors import WriteRefused
from hasyncd.store import Store, pack_version, unpack_version
from hasyncd.wire.messages import Role

log = logging.getLogger("hasyncd.roles")


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


class RoleChanges:
    """The role state of one node, and the transitions between roles."""

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

    def next_version(self) -> int:
        self.seq += 1
        return pack_version(self.epoch, self.seq)

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

    def _note_role_change(self, now: float, *, planned: bool) -> None:
        # Only unplanned changes are flaps: a manual failover, a handover at
        # shutdown, a preemption or a link failover is the operator's (or the
        # configuration's) choice, and must not switch off automatic failover.
        if planned:
            return
        if self.damper.note(now):
            self.out.count("suspended")

    # -- a planned stop -----------------------------------------------------------------

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
