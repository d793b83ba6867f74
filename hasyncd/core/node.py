"""The node core: one cluster member's protocol state machine, sans-IO.

Inputs (each carries the monotonic time ``now`` and the Unix time ``wall``;
the core reads no clock of its own):

    connection_made / connect_failed / receive_data / connection_lost
    handle_timer, transmit, write, request_failover, set_monitors, reconfigure,
    begin_shutdown, finish_shutdown

Outputs:

    data_to_send()  -> [(conn_id, bytes)]   bytes for the shell to write
    events()        -> [Event]              Dial/Close requests and what happened
    next_timer()    -> float                when to call handle_timer next (pure)
    wants_transmit  -> bool                 call transmit soon (writes queued; coalesce)

This module owns the inputs (each ends by evaluating the roles, pumping and
deriving state once) and message dispatch, and is the one place that applies
the effects the sub-machines queue (``hasyncd.core.effects``) and emits
events.  Its layers (``hasyncd.core.nodebase``): the write path
(``writes``), replication streams (``streams``), links and liveness
(``connections``); the roles and election live in ``hasyncd.core.roles``.
"""

from __future__ import annotations

import logging
import random

from hasyncd.core.connections import Connections
from hasyncd.core.detector import loss_deadline
from hasyncd.core.dispatch import MERGE_RECORDS, Handler, Refusal, message_key
from hasyncd.core.effects import (
    AbortResync,
    Count,
    Effect,
    LogLimited,
    NoteSplit,
    Pump,
    ResetReplication,
    WriteRecord,
)
from hasyncd.core.events import SyncChanged, Watermark
from hasyncd.core.links import init_overdue
from hasyncd.core.merge import receive_merge
from hasyncd.core.peers import Conn, Peer
from hasyncd.core.roles import RoleManager
from hasyncd.core.settings import CoreSettings
from hasyncd.core.status import node_status
from hasyncd.core.writes import WriteResult
from hasyncd.errors import ProtocolError
from hasyncd.store import Store
from hasyncd.wire.channel import Opened
from hasyncd.wire.messages import (
    ACK_ELICITING,
    Ack,
    BulkEnd,
    BulkStart,
    Goodbye,
    Handover,
    Heartbeat,
    MergeEnd,
    Message,
    Records,
    SyncRequest,
)

log = logging.getLogger("hasyncd.core")

# Expired records and old tombstones are swept this many per kind per second.
SWEEP_BUDGET = 4096

__all__ = ["NodeCore", "WriteResult"]


class NodeCore(Connections):
    def __init__(
        self,
        settings: CoreSettings,
        store: Store,
        *,
        now: float,
        wall: float,
        boot_id: bytes,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(settings, store, now=now, wall=wall, boot_id=boot_id, rng=rng)
        self.roles = RoleManager(self, settings, now, self.governor)
        self._handlers = self._handler_table()

    # -- effects: what the sub-machines decided -------------------------------

    def apply_effects(self) -> None:
        """Apply, in order, what the roles and the primary's duties queued.

        The node calls it after each call into them; they never change the
        node themselves (``hasyncd.core.effects``).  A test that calls a
        sub-machine directly calls it too.
        """
        for effect in self.roles.out.take():
            self._apply(effect)

    def _apply(self, effect: Effect) -> None:
        if isinstance(effect, Count):
            self.count(effect.metric, effect.label, effect.n)
        elif isinstance(effect, Pump):
            self._pump_needed = True
        elif isinstance(effect, LogLimited):
            self.log_limited(effect.key, effect.level, effect.msg, *effect.args)
        elif isinstance(effect, WriteRecord):
            self.local_write(effect.kind, effect.rid, effect.record, quiet=effect.quiet)
        elif isinstance(effect, NoteSplit):
            self.note_split(
                effect.peer, effect.own_epoch, effect.peer_epoch, survivor=effect.survivor
            )
        elif isinstance(effect, ResetReplication):
            self.backlog.reset(effect.base)
            for peer in self.peers.values():
                peer.session = None
        elif isinstance(effect, AbortResync):
            self.store.abort_resync()
        else:
            self.emit(effect)

    # -- outputs --------------------------------------------------------------

    @property
    def wants_transmit(self) -> bool:
        """Output is ready to go now (writes queued, sliced work): the shell calls ``transmit``.

        Several inputs in a row are coalesced into one call, as aioquic's
        ``_transmit_soon`` does with ``loop.call_soon``: writes made together
        are sent together, and no timer tick (the periodic handler) runs for them.
        """
        return self._pump_needed or self.roles.busy

    def next_timer(self) -> float:
        """When the periodic handler (``handle_timer``) is due; ``transmit`` is asked apart."""
        t = min(self._next_hb, self._next_sweep, self.roles.next_deadline(self.now))
        for p in self.peers.values():
            if p.up:
                t = min(t, loss_deadline(p, self.s.lost_timeout))
        return min(t, self.dialer.next_at(self.now))

    # -- connection inputs ------------------------------------------------------

    def connection_lost(self, conn_id: int, now: float, *, wall: float) -> None:
        self._clock(now, wall)
        conn = self.conns.pop(conn_id, None)
        if conn is None:
            return
        try:
            conn.channel.receive_eof()
        except ProtocolError as exc:
            self.count("link_errors", exc.code)
        self._detach(conn, "connection closed by peer")
        self._after_input(now)

    def receive_data(self, conn_id: int, data: bytes, now: float, *, wall: float) -> None:
        self._clock(now, wall)
        conn = self.conns.get(conn_id)
        if conn is None:
            return
        try:
            for ev in conn.channel.receive_data(data):
                if conn.id not in self.conns:
                    break
                if isinstance(ev, Opened):
                    self._adopt(conn, ev.hello, ev.epoch, now)
                else:
                    self._dispatch(conn, ev.epoch, ev.message, ev.frame_no, now)
        except ProtocolError as exc:
            self._link_error(conn, exc)
        if conn.channel.error is not None and conn.id in self.conns:
            self._link_error(conn, conn.channel.error)
        if conn.id in self.conns:
            self._rebudget(conn)
        self.flush_conn(conn)
        if conn.ack_frame is not None and conn.id in self.conns:
            frame_no, conn.ack_frame = conn.ack_frame, None
            conn.channel.send(Ack(frame_no), self.roles.epoch)
            self.flush_conn(conn)
        self._after_input(now)

    # -- message dispatch ---------------------------------------------------------

    def _handler_table(self) -> dict[type[Message] | str, Handler]:
        """Every message a linked peer may send, and when it is legal (core.dispatch)."""
        roles = self.roles

        def unless_primary(label: str) -> Refusal:
            return lambda peer, epoch, msg: None if roles.is_primary else label

        def merge_refusal(peer: Peer, epoch: int, msg: Message) -> str | None:
            legal = roles.is_primary and epoch <= roles.epoch
            return None if legal else "merge_not_primary"

        def follower_refusal(peer: Peer, epoch: int, msg: Message) -> str | None:
            return roles.follower_refusal(peer, epoch)

        def handover_refusal(peer: Peer, epoch: int, msg: Message) -> str | None:
            assert isinstance(msg, Handover)
            return roles.handover_refusal(peer, epoch, msg)

        # The handlers are looked up when called (a test may replace one on the instance).
        def sync_request(conn: Conn, peer: Peer, epoch: int, msg: Message, now: float) -> None:
            assert isinstance(msg, SyncRequest)
            self._on_sync_request(peer, msg)

        def merge_end_(conn: Conn, peer: Peer, epoch: int, msg: Message, now: float) -> None:
            assert isinstance(msg, MergeEnd)
            self._on_merge_end(peer, msg)

        replication = Handler(self._on_replication, follower_refusal)
        return {
            Heartbeat: Handler(self._on_heartbeat, observes_epoch=False),
            Ack: Handler(self._on_ack_message),
            SyncRequest: Handler(sync_request, unless_primary("sync_request_not_primary")),
            MERGE_RECORDS: Handler(self._on_merge_records, merge_refusal),
            MergeEnd: Handler(merge_end_, unless_primary("merge_not_primary")),
            BulkStart: replication,
            Records: replication,
            BulkEnd: replication,
            Handover: Handler(self._on_handover, handover_refusal),
            Goodbye: Handler(self._on_goodbye),
        }

    def _dispatch(self, conn: Conn, epoch: int, msg: Message, frame_no: int, now: float) -> None:
        assert conn.peer is not None
        peer = self.peers[conn.peer]
        peer.last_rx, peer.stall, peer.suppressed = now, 0.0, False
        self.count("frames_received", type(msg).__name__)
        rule = self._handlers.get(message_key(msg))
        if rule is None:  # pragma: no cover - Hello is refused by the channel
            raise ProtocolError(f"unexpected {type(msg).__name__}")
        if rule.observes_epoch:
            self.roles.observe_epoch(epoch, peer, now)
            self.apply_effects()
        why = None if rule.refusal is None else rule.refusal(peer, epoch, msg)
        if why is not None:
            self.count("refused", why)  # not applied, so not acknowledged
            return
        rule.handle(conn, peer, epoch, msg, now)
        self.apply_effects()
        if isinstance(msg, ACK_ELICITING):
            conn.ack_frame = frame_no

    def _on_heartbeat(self, conn: Conn, peer: Peer, epoch: int, msg: Message, now: float) -> None:
        assert isinstance(msg, Heartbeat)
        peer.hb, peer.hb_epoch, peer.hb_at = msg, epoch, now
        peer.echo_t_ms, peer.echo_rx_at = msg.t_ms, now
        if msg.echo_ms:
            rtt = (self.now_ms(now) + 1 - msg.echo_ms - msg.echo_hold_ms) / 1000.0
            if rtt >= 0:
                peer.rtt = rtt
        self.roles.on_heartbeat(peer, epoch, msg, now)

    def _on_ack_message(self, conn: Conn, peer: Peer, epoch: int, msg: Message, now: float) -> None:
        assert isinstance(msg, Ack)
        self._on_ack(peer, msg.frame)

    def _on_merge_records(
        self, conn: Conn, peer: Peer, epoch: int, msg: Message, now: float
    ) -> None:
        assert isinstance(msg, Records)
        receive_merge(self, peer, msg)

    def _on_replication(self, conn: Conn, peer: Peer, epoch: int, msg: Message, now: float) -> None:
        assert isinstance(msg, BulkStart | Records | BulkEnd)
        self.roles.follower_message(self, peer, msg)

    def _on_handover(self, conn: Conn, peer: Peer, epoch: int, msg: Message, now: float) -> None:
        assert isinstance(msg, Handover)
        self.roles.on_handover(peer, msg, now)

    # -- derived state, timers and transmitting ------------------------------------

    def _derive(self) -> None:
        """State derived from the rest, computed once at the end of every input (h11's
        ``_process_event``): the watermark, the version every in-sync secondary
        acknowledged, which sync-mode writes wait for (``Watermark`` when it moved);
        and whether this node holds a complete copy (``SyncChanged`` when that
        changed since the last one told, whichever rule changed it).
        """
        self._announce(self.now)  # an input that did not evaluate the roles
        wm: int | None = None
        for peer in self.peers.values():
            session = peer.session
            if session is not None and session.in_sync and peer.conn is not None:
                wm = session.acked if wm is None else min(wm, session.acked)
        if wm != self.watermark:
            self.watermark = wm
            self.emit(Watermark(wm))
        in_sync = self.roles.in_sync
        if in_sync != self._in_sync_told:
            self._in_sync_told = in_sync
            records = sum(self.store.counts().values())
            self.emit(SyncChanged(in_sync, self.roles.primary, records))

    def handle_timer(self, now: float, due: float | None = None, *, wall: float) -> None:
        """The periodic handler; ``due``: the ``next_timer()`` it was armed for, if any.

        How late it runs after ``due`` is the node's own stall (the detector's
        input); without ``due`` (a call not armed from ``next_timer``) none is measured.
        """
        self._clock(now, wall)
        if due is not None:
            self.note_lateness(now - due, now)
        for conn in list(self.conns.values()):
            if conn.peer is None and now - conn.created > self.s.handshake_timeout:
                self.count("link_errors", "handshake_timeout")
                self.close(conn, "handshake timeout")
            elif conn.peer is None and init_overdue(conn, now, self.s.handshake_timeout):
                self.count("link_errors", "init_timeout")
                self.close(conn, "no INIT in time")
        self.check_peers(now)
        if now >= self._next_hb:
            self.send_heartbeats(now)
        self._dial_due(now)
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self.store.sweep(self.wall, SWEEP_BUDGET)
            self.freshness.run(self.store, self.wall)
        self._after_input(now)

    def _after_input(self, now: float) -> None:
        self.roles.evaluate(now)
        self.apply_effects()
        self._announce(now)  # before pump: a new primary's heartbeat precedes its records
        self.pump(now)
        self._derive()

    def _announce(self, now: float) -> None:
        """The roles decided the heartbeat's content changed: one beat to every peer now."""
        if self.roles.announce:
            self.roles.announce = False
            self.send_heartbeats(now)

    def transmit(self, now: float, *, wall: float) -> None:
        """Send what earlier inputs queued (``wants_transmit``): replication and sliced work."""
        self._clock(now, wall)
        self.pump(now)
        self._derive()

    # -- operator inputs ----------------------------------------------------------

    def request_failover(self, now: float, *, wall: float) -> str:
        self._clock(now, wall)
        try:
            target = self.roles.request_failover(now)
        finally:
            self.apply_effects()
        self._after_input(now)
        return target

    def set_monitors(self, down: tuple[str, ...], now: float, *, wall: float) -> None:
        self._clock(now, wall)
        self.roles.set_monitors(down, now)
        self.apply_effects()
        self._after_input(now)

    def begin_shutdown(self, now: float, snapshot_wait: float, *, wall: float) -> None:
        """Start a planned stop (``hasyncd.core.stopping``); ``StopReady`` says when to close.

        ``snapshot_wait`` bounds how long a primary keeps serving for a
        secondary that is still loading its snapshot, before it hands over.
        """
        self._clock(now, wall)
        self.roles.begin_shutdown(now, snapshot_wait)
        self.apply_effects()
        self._after_input(now)

    def reconfigure(self, settings: CoreSettings, now: float, *, wall: float) -> None:
        """Take reloaded settings; only live ones may differ (``hasyncd.daemon.reload``)."""
        self._clock(now, wall)
        old, self.s = self.s, settings
        assert (old.name, old.tag, old.listen, old.peers, old.window) == (
            settings.name,
            settings.tag,
            settings.listen,
            settings.peers,
            settings.window,
        ), "identity settings change only with a restart"
        self.dialer.s = settings
        self.dialer.rekey_now()
        self._retire_keys(settings)
        self.roles.reconfigure(settings)
        self._next_hb = now  # tell the peers a new priority at once
        self._after_input(now)

    def finish_shutdown(self, now: float, *, wall: float) -> None:
        self._clock(now, wall)
        for conn in list(self.conns.values()):
            self.close(conn, "node shutting down", code="shutdown")
        self._derive()

    # -- status -------------------------------------------------------------------

    def status(self, now: float, *, wall: float) -> dict[str, object]:
        """The node's status at ``now``; ages and expiries against ``wall`` (Unix time)."""
        return node_status(self, now, wall)
