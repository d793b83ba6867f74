"""What only the primary does: keep its lease (fencing), hand over, preempt, fail over links.

**Lease.**  Peers declare a silent primary lost after ``lost_timeout``.  A
primary that did not send a heartbeat for ``lost_timeout - interval`` (its
loop stalled, or it was SIGSTOPped) may already have been replaced, so it
*fences* itself: no writes until every reachable peer confirms it in a
heartbeat that echoes a time after the fence began, or no peer has been
reachable for a full detection time.

**Handover.**  Manual failover, preemption (``override``), link failover
(monitored interfaces) and shutdown share one path: stop writes, wait until
the target acknowledged everything, send HANDOVER, step down when the target
announces the next epoch; abort (and resume) after ``handover_timeout``.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hasyncd.core.effects import Effects
from hasyncd.core.election import Candidate, Rules, elect
from hasyncd.core.events import HandoverFinished
from hasyncd.core.peers import Fence, HandoverState, Peer
from hasyncd.core.settings import CoreSettings
from hasyncd.core.stopping import loading_peers
from hasyncd.errors import WriteRefused
from hasyncd.store import unpack_version
from hasyncd.wire.messages import F_FENCED, F_HANDING_OVER, Handover, Message

log = logging.getLogger("hasyncd.roles")


class DutiesRoles(Protocol):
    """The role state a primary's duties read (``hasyncd.core.roles.RoleManager``)."""

    epoch: int
    shutting_down: bool
    reason: str  # why the node holds its role (status); the duties say so while handing over

    @property
    def version(self) -> int: ...

    def self_candidate(self, now: float, *, incumbent: bool = False) -> Candidate: ...

    def rules(self, *, prefer_newest: bool = False) -> Rules: ...


class DutiesHost(Protocol):
    """What the duties read of the node (the peers, its heartbeat clock), and its sender.

    Everything else they decide for the node (counters, events, a pump) goes
    into their ``Effects`` queue, which the node applies.
    """

    peers: dict[str, Peer]

    @property
    def last_heartbeat_sent(self) -> float: ...

    def now_ms(self, now: float) -> int: ...

    def send(self, peer: Peer, msg: Message) -> tuple[int, int] | None: ...


class PrimaryDuties:
    def __init__(
        self, roles: DutiesRoles, core: DutiesHost, settings: CoreSettings, out: Effects
    ) -> None:
        self.roles = roles
        self.core = core
        self.s = settings
        self.out = out  # what the node applies (hasyncd.core.effects)
        self.fence: Fence | None = None
        self.handover: HandoverState | None = None
        self.preempt_since: float | None = None

    def reset(self) -> HandoverState | None:
        """On a role change: forget fence, handover and preemption; returns the handover."""
        h = self.handover
        self.fence = self.handover = self.preempt_since = None
        return h

    @property
    def fence_threshold(self) -> float:
        # Peers declare us lost after lost_timeout of silence; one interval of
        # margin covers the network and their own timer granularity.
        return self.s.lost_timeout - self.s.heartbeat_interval

    def deadlines(self) -> list[float]:
        out = []
        if self.handover is not None:
            out.append(self.handover.deadline)
        if self.fence is not None:
            out.append(self.fence.since + self.s.lost_timeout)
        if self.preempt_since is not None:
            out.append(self.preempt_since + self.s.preempt_delay)
        return out

    def flags(self) -> int:
        return (F_FENCED if self.fence else 0) | (F_HANDING_OVER if self.handover else 0)

    def in_sync_peers(self) -> list[Peer]:
        return [
            p
            for p in self.core.peers.values()
            if p.up
            and p.conn is not None
            and p.hb is not None
            and p.session is not None
            and p.session.in_sync
        ]

    # -- writes and the lease ---------------------------------------------------------------

    def check_writable(self, now: float) -> None:
        if self.handover is not None:
            raise WriteRefused(
                "handover_in_progress",
                f"handing the primary role to {self.handover.target}",
                primary=self.handover.target,
            )
        self._fence_if_silent(now, "")
        if self.fence is not None:
            raise WriteRefused("fenced", f"re-verifying primacy after {self.fence.reason}")

    def after_stall(self, now: float) -> None:
        self._fence_if_silent(now, "own stall: ")

    def _fence_if_silent(self, now: float, cause: str) -> None:
        silent = now - self.core.last_heartbeat_sent
        if self.fence is None and silent > self.fence_threshold:
            self.enter_fence(now, f"{cause}no heartbeat sent for {silent * 1000:.0f} ms")

    def confirm(self, peer: Peer, primary: str | None, epoch: int, echo_ms: int) -> None:
        fence = self.fence
        if (
            fence is not None
            and primary == self.s.name
            and epoch == self.roles.epoch
            and echo_ms >= fence.since_ms
        ):
            fence.confirmed.add(peer.name)

    def enter_fence(self, now: float, reason: str) -> None:
        self.fence = Fence(now, self.core.now_ms(now), reason, set())
        self.out.count("fenced")
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

    # -- the periodic duties ------------------------------------------------------------

    def run(self, now: float) -> None:
        roles = self.roles
        if self.fence is not None:
            self._check_fence(now)
        h = self.handover
        if h is not None:
            if now >= h.deadline:
                self.abort_handover(
                    f"{h.target} did not take over within {self.s.handover_timeout:g} s"
                )
            return
        if self.fence is not None or roles.shutting_down:
            return
        in_sync = self.in_sync_peers()
        if not in_sync:
            self.preempt_since = None
            return
        me = roles.self_candidate(now, incumbent=True)
        cands = [me] + [p.candidate(now, True) for p in in_sync]
        decision = elect(cands, roles.rules(), None if self.s.override else self.s.name)
        winner = decision.winner
        if winner is None or winner == self.s.name:
            self.preempt_since = None
            return
        best = next(c for c in cands if c.name == winner)
        if best.monitors_down < me.monitors_down:
            self.begin_handover(winner, f"link failover: {decision.reason}", now, planned=False)
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
                self.begin_handover(winner, f"preemption: {decision.reason}", now)

    # -- handover -----------------------------------------------------------------------

    def begin_handover(self, target: str, reason: str, now: float, *, planned: bool = True) -> None:
        self.handover = HandoverState(
            target, reason, now + self.s.handover_timeout, planned=planned
        )
        self.preempt_since = None
        self.roles.reason = f"handing over to {target}: {reason}"
        log.warning("handing the primary role to %s: %s", target, reason)
        self.out.request_pump()

    def abort_handover(self, reason: str) -> None:
        h, self.handover = self.handover, None
        if h is None:
            return
        log.warning("handover to %s aborted: %s", h.target, reason)
        self.out.count("handovers_aborted")
        self.roles.reason = f"primary (handover to {h.target} aborted: {reason})"
        self.out.event(HandoverFinished(h.target, False, reason))

    def link_down(self, peer: Peer, reason: str) -> None:
        h = self.handover
        if h is not None and h.target == peer.name and not h.sent:
            self.abort_handover(f"link to {peer.name} went down: {reason}")

    def check_handover_ready(self) -> None:
        """Send HANDOVER once the target acknowledged every write (writes are stopped)."""
        h = self.handover
        if h is None or h.sent:
            return
        target = self.core.peers.get(h.target)
        if target is None or not target.up or target.session is None:
            return
        session = target.session
        version = self.roles.version
        if not session.in_sync or session.pending or session.acked < version:
            return
        epoch, seq = unpack_version(version)
        if self.core.send(target, Handover(h.target, epoch, seq, h.reason[:64])) is not None:
            h.sent = True

    def handed_to(self, owner: str) -> HandoverState | None:
        """Our own handover, if a new epoch minted by ``owner`` is its end."""
        h = self.handover
        return h if h is not None and h.sent and h.target == owner else None

    def request_failover(self, now: float, reason: str) -> str:
        if self.handover is not None:
            raise WriteRefused(
                "handover_in_progress",
                f"already handing over to {self.handover.target}",
                primary=self.handover.target,
            )
        roles = self.roles
        cands = [p.candidate(now, True) for p in self.in_sync_peers()]
        decision = elect(cands, roles.rules())
        if decision.winner is None:
            why = "no eligible secondary is in sync" if cands else "no secondary is in sync"
            loading = loading_peers(self.core.peers.values())
            if loading and loading[0].session is not None:
                why += (
                    f" ({loading[0].name} is loading its snapshot: "
                    f"{loading[0].session.bulk_acked} records acknowledged so far; "
                    "retry once it is in sync)"
                )
            raise WriteRefused("no_in_sync_secondary", f"{why}: a handover now would lose data")
        self.begin_handover(decision.winner, reason, now)
        return decision.winner

    def status(self, now: float) -> dict[str, object]:
        return {
            "fenced": None
            if self.fence is None
            else {"reason": self.fence.reason, "since_s": round(now - self.fence.since, 3)},
            "handover": None
            if self.handover is None
            else {"target": self.handover.target, "reason": self.handover.reason},
        }
