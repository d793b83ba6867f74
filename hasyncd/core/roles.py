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
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from hasyncd.core.election import Candidate, Rules, elect
from hasyncd.core.events import (
    FaultChanged,
    HandoverFinished,
    PeerChanged,
    PromotionDone,
    Reannounce,
    RoleChanged,
    SplitBrain,
    SyncChanged,
)
from hasyncd.core.peers import Fence, HandoverState, Peer
from hasyncd.core.promotion import PromotionWork
from hasyncd.core.replication import MergeSender
from hasyncd.errors import UnexpectedMessage, WriteRefused
from hasyncd.store import pack_version, unpack_version
from hasyncd.wire.messages import (
    F_FENCED,
    F_HANDING_OVER,
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
    SyncRequest,
)

if TYPE_CHECKING:
    from hasyncd.core.node import NodeCore

log = logging.getLogger("hasyncd.roles")

TAG_BITS = 16
TAG_MASK = (1 << TAG_BITS) - 1
INF = float("inf")


def next_epoch(current: int, tag: int) -> int:
    """The epoch a node with ``tag`` mints when it promotes: a higher term, its own tag."""
    return (((current >> TAG_BITS) + 1) << TAG_BITS) | tag


class FollowState(Enum):
    NEED_REQUEST = "need_request"
    MERGING = "merging"
    REQUESTED = "requested"
    BULK = "bulk"
    STREAM = "stream"


@dataclass
class Follower:
    primary: str
    state: FollowState = FollowState.NEED_REQUEST
    merge: MergeSender | None = None
    snap_id: int = -1
    received: int = 0
    requested_at: float = 0.0


class RoleManager:
    def __init__(self, core: NodeCore, now: float) -> None:
        self.core = core
        self.s = core.s
        self.role = Role.STARTING
        self.epoch = 0
        self.primary: str | None = None
        self.seq = 0
        self.minted_max = 0  # newest version this node assigned, in any epoch
        self.applied = 0  # newest version applied from a primary
        self.in_sync = False  # holds a complete copy (as of its last primary)
        self.holddown_until = now + self.s.holddown
        self.reason = "starting: hello hold-down, discovering peers"
        self.follower: Follower | None = None
        self.promotion: PromotionWork | None = None
        self.last_promotion: dict[str, object] | None = None
        self.handover: HandoverState | None = None
        self.fence: Fence | None = None
        self.preempt_since: float | None = None
        self.monitors_down: tuple[str, ...] = ()
        self.flaps: deque[float] = deque()
        self.suspended_since: float | None = None
        self.split_brain: dict[str, object] | None = None
        self.merge_pending = False
        self.primary_epoch = 0  # the last epoch this node was primary in
        self.shutting_down = False

    # -- views --------------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        return self.role is Role.PRIMARY

    @property
    def version(self) -> int:
        return pack_version(self.epoch, self.seq) if self.is_primary else self.applied

    @property
    def busy(self) -> bool:
        """Sliced work can continue right now: the shell should call back at once."""
        if self.promotion is not None:
            return True
        f = self.follower
        if f is None or not self._peer_conn(f.primary):
            return False
        if f.state is FollowState.NEED_REQUEST:
            return True
        return f.state is FollowState.MERGING and f.merge is not None and not f.merge.finished

    @property
    def fence_threshold(self) -> float:
        # Peers declare us lost after lost_timeout of silence; one interval of
        # margin covers the network and their own timer granularity.
        return self.s.lost_timeout - self.s.heartbeat_interval

    def _peer_conn(self, name: str) -> bool:
        peer = self.core.peers.get(name)
        return peer is not None and peer.conn is not None

    def next_deadline(self, now: float) -> float:
        """The earliest future moment a role rule may fire (past ones wait for the next tick)."""
        candidates = [self.holddown_until if self.role is Role.STARTING else INF]
        if self.handover is not None:
            candidates.append(self.handover.deadline)
        if self.fence is not None:
            candidates.append(self.fence.since + self.s.lost_timeout)
        if self.preempt_since is not None:
            candidates.append(self.preempt_since + self.s.preempt_delay)
        if self.flaps:
            candidates.append(self.flaps[0] + self.s.flap_window)
        return min((t for t in candidates if t > now), default=INF)

    def heartbeat(self, peer: Peer, now: float) -> Heartbeat:
        flags = F_OVERRIDE if self.s.override else 0
        if self.is_primary or self.in_sync:
            flags |= F_IN_SYNC
        if self.suspended_since is not None:
            flags |= F_SUSPENDED
        if self.fence is not None:
            flags |= F_FENCED
        if self.handover is not None:
            flags |= F_HANDING_OVER
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
        )

    # -- inputs from the node core ---------------------------------------------------

    def observe_epoch(self, epoch: int, peer: Peer, now: float) -> None:
        if epoch <= self.epoch:
            return
        old, self.epoch = self.epoch, epoch
        if self.is_primary:
            h = self.handover
            owner = self._epoch_owner(epoch) or peer.name
            split = h is None or not h.sent or h.target != owner
            if split:
                self._record_split(peer, epoch, survivor=owner, own_epoch=old)
            self._step_down(
                now, f"{peer.name} reports a newer epoch {epoch} (own {old})", merge=split
            )
        elif self.follower is not None:
            self._unfollow(f"{peer.name} reports a newer epoch {epoch}")

    def on_heartbeat(self, peer: Peer, epoch: int, hb: Heartbeat, now: float) -> None:
        peer.hb, peer.hb_epoch, peer.hb_at = hb, epoch, now
        peer.echo_t_ms, peer.echo_rx_at = hb.t_ms, now
        if hb.echo_ms:
            rtt = (self.core.now_ms(now) + 1 - hb.echo_ms - hb.echo_hold_ms) / 1000.0
            if rtt >= 0:
                peer.rtt = rtt
        self.observe_epoch(epoch, peer, now)
        fence = self.fence
        if (
            fence is not None
            and hb.primary == self.s.name
            and epoch == self.epoch
            and hb.echo_ms >= fence.since_ms
        ):
            fence.confirmed.add(peer.name)
        if bool(hb.flags & F_OVERRIDE) != self.s.override:
            self.core.log_limited(
                ("override", peer.name),
                logging.WARNING,
                "node.override differs between this node and %s: set it alike on all members",
                peer.name,
            )

    def on_link_up(self, peer: Peer, now: float) -> None:
        f = self.follower
        if f is not None and f.primary == peer.name:
            self._restart_follower(f, peer)

    def on_link_down(self, peer: Peer, reason: str) -> None:
        f = self.follower
        if f is not None and f.primary == peer.name:
            if f.state is FollowState.BULK:
                self.core.store.abort_resync()
                self._set_in_sync(False)
            f.state = FollowState.NEED_REQUEST if f.merge is None else FollowState.MERGING
        h = self.handover
        if h is not None and h.target == peer.name and not h.sent:
            self._abort_handover(f"link to {peer.name} went down: {reason}")

    def _restart_follower(self, f: Follower, peer: Peer) -> None:
        if f.state is FollowState.BULK:
            self.core.store.abort_resync()
        if f.merge is not None:
            f.merge = MergeSender(self.s.tag, peer.acked_floor, self.primary_epoch)
            f.state = FollowState.MERGING
        else:
            f.state = FollowState.NEED_REQUEST

    def peer_lost(self, peer: Peer, now: float, reason: str) -> None:
        if not peer.up:
            return
        core = self.core
        peer.up = False
        log.warning("peer %s lost: %s", peer.name, reason)
        core.count("peers_lost")
        if peer.conn is not None:
            core.close(peer.conn, f"peer lost: {reason}")
        peer.reset_link_state()
        core.emit(PeerChanged(peer.name, peer.address, False, reason))
        if self.follower is not None and self.follower.primary == peer.name:
            self._unfollow(f"primary {peer.name} lost: {reason}")
        core.recompute_watermark()
        core.send_heartbeats(now)

    def on_own_stall(self, late: float, now: float) -> None:
        core = self.core
        core.count("loop_stalls")
        for peer in core.peers.values():
            if peer.up:
                peer.stall += late
        if late >= self.s.heartbeat_interval:
            log.warning("this node's event loop stalled for %.0f ms", late * 1000)
        silent = now - core.last_heartbeat_sent
        if self.is_primary and silent > self.fence_threshold and self.fence is None:
            self._enter_fence(now, f"own stall: no heartbeat sent for {silent * 1000:.0f} ms")

    # -- replication as a follower ------------------------------------------------------

    def follower_message(
        self, peer: Peer, epoch: int, msg: BulkStart | Records | BulkEnd, now: float
    ) -> bool:
        """Apply a replication message from our primary; False if refused (not acked)."""
        core = self.core
        f = self.follower
        if self.is_primary or f is None or f.primary != peer.name or epoch != self.epoch:
            core.count("refused", "stale_epoch" if epoch < self.epoch else "not_following")
            return False
        if isinstance(msg, BulkStart):
            if core.store.resyncing:
                core.store.abort_resync()
            core.store.begin_resync()
            f.state, f.snap_id, f.received = FollowState.BULK, msg.snap_id, 0
            self._set_in_sync(False)
            log.info(
                "snapshot %d from %s started (%d records)", msg.snap_id, peer.name, msg.records
            )
        elif isinstance(msg, BulkEnd):
            if f.state is not FollowState.BULK or msg.snap_id != f.snap_id:
                raise UnexpectedMessage(f"BULK_END in state {f.state.value}")
            purged = core.store.end_resync()
            f.state = FollowState.STREAM
            self.applied = max(self.applied, pack_version(msg.epoch, msg.seq))
            log.info(
                "in sync with %s: snapshot %d delivered %d records, %d stale purged",
                peer.name,
                msg.snap_id,
                f.received,
                purged,
            )
            self._set_in_sync(True)
        elif msg.phase.name == "BULK":
            if f.state is not FollowState.BULK:
                raise UnexpectedMessage(f"bulk RECORDS in state {f.state.value}")
            core.apply_from_primary(msg.changes)
            f.received += len(msg.changes)
        else:
            if f.state is not FollowState.STREAM:
                raise UnexpectedMessage(f"stream RECORDS in state {f.state.value}")
            self.applied = max(self.applied, core.apply_from_primary(msg.changes))
        return True

    def pump_follower(self, now: float) -> None:
        f = self.follower
        if f is None:
            return
        core = self.core
        peer = core.peers.get(f.primary)
        if peer is None or peer.conn is None:
            return
        if f.state is FollowState.MERGING and f.merge is not None:
            while peer.flow.open:
                nxt = f.merge.next_message(core.store)
                if nxt is None:
                    if not f.merge.finished:
                        core.request_pump()
                    break
                core.send_tracked(peer, nxt[0], nxt[1])
        elif f.state is FollowState.NEED_REQUEST:
            if core.send(peer, SyncRequest("follow")) is not None:
                f.state, f.requested_at = FollowState.REQUESTED, now
        elif (
            f.state is FollowState.REQUESTED and now - f.requested_at > 2 * self.s.handshake_timeout
        ):
            f.state = FollowState.NEED_REQUEST  # the primary did not answer: ask again

    def merge_acknowledged(self, peer: Peer) -> None:
        f = self.follower
        if f is not None and f.primary == peer.name and f.state is FollowState.MERGING:
            log.warning(
                "merge into %s acknowledged (%d records offered)",
                peer.name,
                f.merge.sent if f.merge else 0,
            )
            f.merge = None
            f.state = FollowState.NEED_REQUEST
            self.core.request_pump()

    def merge_finished(self, peer: Peer, loser_epoch: int) -> None:
        """Survivor side: a former primary finished offering its writes."""
        if not self.is_primary:
            return
        if self.split_brain is None or self.split_brain.get("peer") != peer.name:
            self._record_split(peer, loser_epoch, survivor=self.s.name)
        sb = self.split_brain
        assert sb is not None
        sb["offered"], sb["merged"] = peer.merge_offered, peer.merge_merged
        sb["conflicts"] = peer.merge_conflicts
        # Both nodes told the data plane they were primary: the survivor says it again.
        reason = f"split brain with {peer.name} resolved: re-announcing"
        log.warning("%s", reason)
        self.core.emit(Reannounce(self.epoch, reason))

    # -- writes -------------------------------------------------------------------------

    def check_writable(self, now: float) -> None:
        if not self.is_primary:
            raise WriteRefused(
                "not_primary", f"this node is {self.role.name.lower()}", primary=self.primary
            )
        if self.handover is not None:
            raise WriteRefused(
                "handover_in_progress",
                f"handing the primary role to {self.handover.target}",
                primary=self.handover.target,
            )
        silent = now - self.core.last_heartbeat_sent
        if self.fence is None and silent > self.fence_threshold:
            self._enter_fence(now, f"no heartbeat sent for {silent * 1000:.0f} ms")
        if self.fence is not None:
            raise WriteRefused("fenced", f"re-verifying primacy after {self.fence.reason}")

    def next_version(self) -> int:
        self.seq += 1
        self.minted_max = pack_version(self.epoch, self.seq)
        return self.minted_max

    # -- the decision loop ------------------------------------------------------------------

    def evaluate(self, now: float) -> None:
        self._expire_flaps(now)
        if self.is_primary:
            self._primary_duties(now)
            return
        leader = self._leader()
        if leader is not None:
            if self.follower is None or self.follower.primary != leader.name:
                self._follow(leader, now)
            return
        if self.follower is not None:
            self._unfollow(f"{self.follower.primary} no longer announces itself primary")
        if self.shutting_down or (self.role is Role.STARTING and now < self.holddown_until):
            return
        fresh = [p.name for p in self.core.peers.values() if p.up and p.hb is None]
        if fresh:
            # Elect only on fresh information: a link that just (re)opened has
            # not told us its role yet, and it may be the primary of our epoch.
            self.reason = f"waiting for the first heartbeat from {', '.join(fresh)}"
            return
        seen = self._primary_seen_by_others()
        if seen is not None:
            self.reason = f"no link to primary {seen[0]}, which {seen[1]} still follows"
            return
        decision = elect(self._candidates(now), self._rules())
        if decision.winner == self.s.name:
            cause = "cold start" if self.role is Role.STARTING else "no primary reachable"
            self._promote(now, f"{cause}: {decision.reason}")
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

    def _rules(self) -> Rules:
        return Rules(override=self.s.override, uptime_margin_s=self.s.uptime_margin)

    def _self_candidate(self, now: float, *, incumbent: bool = False) -> Candidate:
        eligible = self.fence is None and (incumbent or self.suspended_since is None)
        return Candidate(
            self.s.name,
            self.s.priority,
            now - self.core.started,
            len(self.monitors_down),
            self.in_sync or self.is_primary,
            eligible,
        )

    @staticmethod
    def _peer_candidate(peer: Peer, now: float, in_sync: bool) -> Candidate:
        hb = peer.hb
        assert hb is not None
        return Candidate(
            peer.name, hb.priority, peer.uptime(now), hb.monitors_down, in_sync, peer.eligible
        )

    def _candidates(self, now: float) -> list[Candidate]:
        return [self._self_candidate(now)] + [
            self._peer_candidate(peer, now, peer.in_sync_flag)
            for peer in self.core.peers.values()
            if peer.up and peer.hb is not None and peer.role is not Role.PRIMARY
        ]

    # -- transitions ----------------------------------------------------------------------

    def _set_role(self, new: Role, primary: str | None, reason: str) -> None:
        old = self.role
        self.role, self.primary, self.reason = new, primary, reason
        if old is not new:
            self.core.emit(
                RoleChanged(old.name.lower(), new.name.lower(), self.epoch, primary, reason)
            )

    def _set_in_sync(self, value: bool) -> None:
        if value != self.in_sync:
            self.in_sync = value
            records = sum(self.core.store.counts().values())
            self.core.emit(SyncChanged(value, self.primary, records))

    def _promote(self, now: float, reason: str) -> None:
        core = self.core
        if self.follower is not None:
            self._unfollow("promoting")
        if core.store.resyncing:
            core.store.abort_resync()
            log.warning("promoting with an incomplete snapshot: some records may be missing")
        if not self.in_sync and self.role is Role.SECONDARY:
            log.warning("promoting although this node was not in sync with the lost primary")
        self.epoch = self.primary_epoch = next_epoch(self.epoch, self.s.tag)
        self.seq = 0
        self.fence = self.handover = self.preempt_since = None
        for peer in core.peers.values():
            peer.session = None
        self._note_role_change(now)
        self._set_role(Role.PRIMARY, self.s.name, reason)
        self.in_sync = True
        self.promotion = PromotionWork(self.epoch, reason, now, self.s.esp_seq_margin)
        core.count("promotions")
        log.warning("PROMOTED to primary in epoch %d: %s", self.epoch, reason)
        core.send_heartbeats(now)
        core.recompute_watermark()

    def run_slices(self, now: float) -> None:
        work = self.promotion
        if work is None or not self.is_primary:
            return
        core = self.core
        work.run_slice(core.store, lambda k, rid, blob, exp: _write(core, k, rid, blob, exp))
        if work.done:
            self.promotion = None
            duration = now - work.started
            self.last_promotion = {
                **work.progress(),
                "reason": work.reason,
                "duration_ms": round(duration * 1000, 3),
            }
            log.warning(
                "promotion to epoch %d complete: %d outbound SAs advanced by %d (%d need rekey), "
                "%d IKE SAs flagged for message-ID sync",
                work.epoch,
                work.esp_advanced,
                work.margin,
                work.esp_rekey_required,
                work.ike_flagged,
            )
            core.emit(
                PromotionDone(
                    work.epoch,
                    work.reason,
                    work.esp_advanced,
                    work.esp_rekey_required,
                    work.ike_flagged,
                    duration,
                )
            )

    def _step_down(self, now: float, reason: str, *, merge: bool) -> None:
        core = self.core
        if self.promotion is not None:
            log.warning("promotion to epoch %d interrupted", self.promotion.epoch)
            self.promotion = None
        h = self.handover
        self.handover = self.fence = self.preempt_since = None
        for peer in core.peers.values():
            peer.session = None
        self.merge_pending = merge
        self.in_sync = False
        self._note_role_change(now)
        self._set_role(Role.SECONDARY, None, reason)
        if h is not None:
            core.emit(HandoverFinished(h.target, True, reason))
        core.count("step_downs")
        log.warning("stepped down to secondary: %s", reason)
        core.recompute_watermark()
        core.send_heartbeats(now)

    def _follow(self, leader: Peer, now: float) -> None:
        f = Follower(leader.name)
        if self.merge_pending:
            # A former primary offers its writes (possibly none) before resyncing:
            # the survivor merges them and learns that two primaries overlapped.
            self.merge_pending = False
            f.merge = MergeSender(self.s.tag, leader.acked_floor, self.primary_epoch)
            f.state = FollowState.MERGING
            log.warning(
                "offering %s this node's writes newer than %s before resyncing",
                leader.name,
                unpack_version(leader.acked_floor),
            )
        self.follower = f
        self._set_in_sync(False)
        self._set_role(
            Role.SECONDARY, leader.name, f"following {leader.name}, primary in epoch {self.epoch}"
        )
        self.core.request_pump()

    def _unfollow(self, reason: str) -> None:
        # A complete copy stays complete (as of the loss) for the election;
        # only a snapshot cut short leaves this node without one.
        self.follower = None
        if self.core.store.resyncing:
            self.core.store.abort_resync()
            self._set_in_sync(False)
        self.primary = None
        self.reason = reason

    # -- primary duties ------------------------------------------------------------------

    def _primary_duties(self, now: float) -> None:
        if self.fence is not None:
            self._check_fence(now)
        h = self.handover
        if h is not None:
            if now >= h.deadline:
                self._abort_handover(
                    f"{h.target} did not take over within {self.s.handover_timeout:g} s"
                )
            return
        if self.fence is not None or self.shutting_down:
            return
        in_sync = [
            p
            for p in self.core.peers.values()
            if p.up
            and p.conn is not None
            and p.hb is not None
            and p.session is not None
            and p.session.in_sync
        ]
        if not in_sync:
            self.preempt_since = None
            return
        me = self._self_candidate(now, incumbent=True)
        cands = [me] + [self._peer_candidate(p, now, True) for p in in_sync]
        decision = elect(cands, self._rules(), None if self.s.override else self.s.name)
        winner = decision.winner
        if winner is None or winner == self.s.name:
            self.preempt_since = None
            return
        best = next(c for c in cands if c.name == winner)
        if best.monitors_down < me.monitors_down:
            self._begin_handover(winner, f"link failover: {decision.reason}", now)
        elif self.s.override:
            if self.preempt_since is None:
                self.preempt_since = now
                log.info(
                    "%s should be primary (%s): preempting in %g s",
                    winner,
                    decision.reason,
                    self.s.preempt_delay,
                )
            elif now - self.preempt_since >= self.s.preempt_delay:
                self._begin_handover(winner, f"preemption: {decision.reason}", now)

    def _enter_fence(self, now: float, reason: str) -> None:
        self.fence = Fence(now, self.core.now_ms(now), reason, set())
        self.core.count("fenced")
        log.warning("FENCED: refusing writes until peers confirm this node as primary (%s)", reason)

    def _check_fence(self, now: float) -> None:
        fence = self.fence
        assert fence is not None
        ups = [p.name for p in self.core.peers.values() if p.up]
        if not ups and now - fence.since >= self.s.lost_timeout:
            why = "no peer reachable for a full detection time"
        elif ups and all(name in fence.confirmed for name in ups):
            why = "every reachable peer confirmed this node as primary"
        else:
            return
        self.fence = None
        log.warning("fence lifted: %s", why)

    def _begin_handover(self, target: str, reason: str, now: float) -> None:
        self.handover = HandoverState(target, reason, now + self.s.handover_timeout)
        self.preempt_since = None
        self.reason = f"handing over to {target}: {reason}"
        log.warning("handing the primary role to %s: %s", target, reason)
        self.core.request_pump()

    def _abort_handover(self, reason: str) -> None:
        h, self.handover = self.handover, None
        if h is None:
            return
        log.warning("handover to %s aborted: %s", h.target, reason)
        self.core.count("handovers_aborted")
        self.reason = f"primary (handover to {h.target} aborted: {reason})"
        self.core.emit(HandoverFinished(h.target, False, reason))

    def check_handover_ready(self, now: float) -> None:
        h = self.handover
        if h is None or h.sent or not self.is_primary:
            return
        target = self.core.peers.get(h.target)
        if target is None or not target.up or target.session is None:
            return
        session = target.session
        if not session.in_sync or session.pending or session.acked < self.version:
            return
        epoch, seq = unpack_version(self.version)
        if self.core.send(target, Handover(h.target, epoch, seq, h.reason[:64])) is not None:
            h.sent = True

    def on_handover(self, peer: Peer, epoch: int, msg: Handover, now: float) -> None:
        f = self.follower
        ok = (
            msg.target == self.s.name
            and f is not None
            and f.primary == peer.name
            and epoch == self.epoch
            and self.in_sync
            and f.state is FollowState.STREAM
        )
        if not ok:
            self.core.count("refused", "handover")
            log.warning(
                "refused a handover from %s: not in sync with it in epoch %d", peer.name, self.epoch
            )
            return
        self._promote(now, f"handover from {peer.name}: {msg.reason}")

    def request_failover(self, now: float, reason: str = "manual failover") -> str:
        if not self.is_primary:
            raise WriteRefused(
                "not_primary", "only the primary can hand over its role", primary=self.primary
            )
        if self.handover is not None:
            raise WriteRefused(
                "handover_in_progress",
                f"already handing over to {self.handover.target}",
                primary=self.handover.target,
            )
        cands = [
            self._peer_candidate(p, now, True)
            for p in self.core.peers.values()
            if p.up
            and p.conn is not None
            and p.hb is not None
            and p.session is not None
            and p.session.in_sync
        ]
        decision = elect(cands, self._rules())
        if decision.winner is None:
            why = "no eligible secondary is in sync" if cands else "no secondary is in sync"
            raise WriteRefused("no_in_sync_secondary", f"{why}: a handover now would lose data")
        self._begin_handover(decision.winner, reason, now)
        return decision.winner

    def begin_shutdown(self, now: float) -> str | None:
        self.shutting_down = True
        if not self.is_primary:
            return None
        try:
            return self.request_failover(now, "primary shutting down")
        except WriteRefused:
            return None

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
            self.core.emit(FaultChanged(bool(down), down))
        self.core.send_heartbeats(now)

    def _note_role_change(self, now: float) -> None:
        self.flaps.append(now)
        self._expire_flaps(now)
        if len(self.flaps) > self.s.max_flaps and self.suspended_since is None:
            self.suspended_since = now
            self.core.count("suspended")
            log.error(
                "SUSPENDED automatic promotion: %d role changes within %g s (node.max_flaps = %d)",
                len(self.flaps),
                self.s.flap_window,
                self.s.max_flaps,
            )

    def _expire_flaps(self, now: float) -> None:
        while self.flaps and now - self.flaps[0] > self.s.flap_window:
            self.flaps.popleft()
        if self.suspended_since is not None and len(self.flaps) <= self.s.max_flaps:
            self.suspended_since = None
            log.warning("automatic promotion resumed: role changes back under node.max_flaps")

    def _epoch_owner(self, epoch: int) -> str | None:
        tag = epoch & TAG_MASK
        if tag == self.s.tag:
            return self.s.name
        peer = self.core.peer_by_tag(tag)
        return peer.name if peer is not None else None

    def _record_split(
        self, peer: Peer, peer_epoch: int, survivor: str, own_epoch: int | None = None
    ) -> None:
        own = self.epoch if own_epoch is None else own_epoch
        self.split_brain = {
            "peer": peer.name,
            "own_epoch": own,
            "peer_epoch": peer_epoch,
            "survivor": survivor,
            "detected_at": self.core.wall(),
            "offered": None,
            "merged": None,
            "conflicts": None,
        }
        self.core.count("split_brains")
        self.core.emit(SplitBrain(peer.name, own, peer_epoch, survivor))
        log.error(
            "SPLIT BRAIN: %s and this node were both primary (epochs %d and %d); survivor: %s",
            peer.name,
            peer_epoch,
            own,
            survivor,
        )

    # -- status ---------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, object]:
        f = self.follower
        promo: dict[str, object] | None
        if self.promotion is not None:
            promo = {
                **self.promotion.progress(),
                "reason": self.promotion.reason,
                "complete": False,
            }
        elif self.last_promotion is not None:
            promo = {**self.last_promotion, "complete": True}
        else:
            promo = None
        return {
            "role": self.role.name.lower(),
            "epoch": self.epoch,
            "primary": self.primary,
            "role_reason": self.reason,
            "in_sync": self.is_primary or self.in_sync,
            "sync": None
            if f is None
            else {"primary": f.primary, "state": f.state.value, "snapshot_records": f.received},
            "fenced": None
            if self.fence is None
            else {"reason": self.fence.reason, "since_s": round(now - self.fence.since, 3)},
            "handover": None
            if self.handover is None
            else {"target": self.handover.target, "reason": self.handover.reason},
            "suspended": None
            if self.suspended_since is None
            else {
                "since_s": round(now - self.suspended_since, 3),
                "role_changes": len(self.flaps),
                "window_s": self.s.flap_window,
            },
            "role_changes_in_window": len(self.flaps),
            "monitors": {"configured": list(self.s.monitors), "down": list(self.monitors_down)},
            "split_brain": self.split_brain,
            "promotion": promo,
        }


def _write(core: NodeCore, kind: int, rid: str, blob: bytes, expires: float | None) -> None:
    core.local_write(kind, rid, blob, expires)
