"""Replication streams between linked peers: what a node sends and what acknowledges it.

Tracked sends (accounted against the peer's window), the primary's answer
to a SYNC_REQUEST (a snapshot, or a resumed session: ``hasyncd.core.backlog``),
the pump that produces replication output while windows allow, the
acknowledgements that advance sessions and a follower's merge, and the
survivor's end of a merge from a former primary (split brain).
"""

from __future__ import annotations

import logging

from hasyncd.core.backlog import plan_resync, resumed_session
from hasyncd.core.events import Reannounce
from hasyncd.core.merge import merge_end
from hasyncd.core.peers import Peer
from hasyncd.core.replication import Flow, Mark, MarkKind, OutboundSession
from hasyncd.core.writes import WritePath
from hasyncd.store import unpack_version
from hasyncd.wire.channel import State
from hasyncd.wire.messages import MergeEnd, Message, Records, SyncRequest

log = logging.getLogger("hasyncd.core")


class Streams(WritePath):
    """Replication output and its acknowledgements (the pump, SYNC_REQUEST, ACK, MERGE_END)."""

    def send(self, peer: Peer, msg: Message) -> tuple[int, int] | None:
        conn = peer.conn
        if conn is None or conn.channel.state is not State.OPEN:
            return None
        sent = conn.channel.send(msg, self.roles.epoch)
        self.flush_conn(conn)
        return sent

    def send_tracked(self, peer: Peer, msg: Message, mark: Mark | None) -> bool:
        """Send an ack-eliciting message and account it against the peer's window."""
        sent = self.send(peer, msg)
        if sent is None:
            return False
        frame_no, size = sent
        peer.flow.sent(frame_no, size, mark)
        return True

    def pump(self, now: float) -> None:
        """Produce replication output while windows allow."""
        self._pump_needed = False
        self.roles.run_slices(now)
        self.apply_effects()
        if self.roles.is_primary:
            current = self.version
            for peer in self.peers.values():
                session = peer.session
                if session is None or peer.conn is None:
                    continue
                while peer.flow.open:
                    nxt = session.next_message(self.store, current)
                    if nxt is None:
                        if session.broken:
                            self._resume_broken(peer, session)
                            self._pump_needed = True
                        break
                    self.send_tracked(peer, nxt[0], nxt[1])
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("replication to %s: %s", peer.name, _describe(nxt[0]))
            self.roles.duties.check_handover_ready()
        else:
            self.roles.pump_follower(self, now)

    def request_pump(self) -> None:
        self._pump_needed = True

    def _on_sync_request(self, peer: Peer, msg: SyncRequest) -> None:
        epoch, now = self.roles.epoch, self.now
        ticket = peer.resume
        plan = plan_resync(msg, ticket, peer.boot_id, epoch, backlog=self.backlog, now=now)
        if plan.refused is not None:
            self.count("resync_refused", plan.refused)
        self.count("resyncs", plan.outcome)
        if plan.outcome == "full" or ticket is None:
            taken = {msg.resume_snap if msg.resume_epoch else -1}
            why = f"; resume refused: {plan.refused}" if plan.refused else ""
            session = self._new_snapshot(peer, taken, f"{msg.reason}{why}")
        else:
            session = resumed_session(plan, ticket, epoch, self.backlog)
            log.info(
                "%s resumes snapshot %d (%s) after version %s",
                peer.name,
                ticket.snap_id,
                plan.outcome,
                unpack_version(plan.since),
            )
        peer.session = session
        peer.flow = Flow(peer.window)
        self._pump_needed = True

    def _new_snapshot(self, peer: Peer, taken: set[int], why: str) -> OutboundSession:
        """A new snapshot session; its snap_id is none of ``taken`` nor the peer's ticket's."""
        if peer.resume is not None:
            taken.add(peer.resume.snap_id)  # a resumed session's id means "resumed"
        self._snap_ids = (self._snap_ids + 1) & 0xFFFFFFFF
        while self._snap_ids in taken:
            self._snap_ids = (self._snap_ids + 1) & 0xFFFFFFFF
        self.count("snapshots_started")
        log.info("%s: sending snapshot %d (%s)", peer.name, self._snap_ids, why)
        return OutboundSession(self._snap_ids, self.roles.epoch, self.version)

    def _resume_broken(self, peer: Peer, session: OutboundSession) -> None:
        """The backlog dropped writes a resuming session had not queued: a snapshot instead."""
        reason = f"backlog_{self.backlog.trimmed_by or 'bytes'}"
        self.count("resync_refused", reason)
        self.count("resyncs", "full")
        peer.session = self._new_snapshot(peer, {session.snap_id}, f"resume cut short: {reason}")
        peer.flow = Flow(peer.window)  # the old session's frames are no longer tracked

    def _on_ack(self, peer: Peer, frame: int) -> None:
        for mark in peer.flow.acked(frame):
            if mark.kind is MarkKind.MERGE_END:
                offered = self.roles.merge_acknowledged(peer)
                if offered is not None:
                    self.split_brain.offered(offered)
                self.apply_effects()
                continue
            if mark.kind is MarkKind.MERGE_PROGRESS:
                self.roles.merge_progress(peer, mark.position)
                continue
            session = peer.session
            if session is None:
                continue
            if session.acknowledged(mark):  # the session's transition table
                log.info("%s is in sync (%d records in snapshot)", peer.name, session.bulk_sent)
        if peer.session is not None:
            peer.lag.acked(peer.session.acked)
        self._pump_needed = True

    def _on_merge_end(self, peer: Peer, msg: MergeEnd) -> None:
        done = merge_end(peer)
        self.emit(done)
        if msg.epoch == 0:
            return  # a secondary's catch-up offer, not a former primary's
        sb = self.split_brain.current
        if sb is None or sb.peer != peer.name:
            self.note_split(peer.name, self.roles.epoch, msg.epoch, survivor=self.s.name)
        self.split_brain.merged(peer.name, done.offered, done.merged, done.conflicts)
        # Both nodes told the data plane they were primary: the survivor says it again.
        reason = f"split brain with {peer.name} resolved: re-announcing"
        log.warning("%s", reason)
        self.emit(Reannounce(self.roles.epoch, reason))

    def note_split(self, peer: str, own_epoch: int, peer_epoch: int, *, survivor: str) -> None:
        """``peer`` and this node were both primary (status, metrics, events, log)."""
        event = self.split_brain.detected(peer, own_epoch, peer_epoch, survivor, self.wall)
        self.count("split_brains")
        self.emit(event)


def _describe(msg: Message) -> str:
    """A replication message for a debug line: its type and size, never its records."""
    if isinstance(msg, Records):
        return f"{msg.phase.name.lower()} records x{len(msg.changes)}"
    return type(msg).__name__
