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

Roles and the election live in ``hasyncd.core.roles``; this module owns
connections, peers, message dispatch and the replication plumbing.
"""

from __future__ import annotations

import logging
import random

from hasyncd.core.backlog import Backlog, plan_resync, resumed_session
from hasyncd.core.detector import check_peers, loss_deadline, own_lateness
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
from hasyncd.core.events import (
    Close,
    Dial,
    PeerChanged,
    Reannounce,
    RecordChanged,
    SyncChanged,
    Watermark,
)
from hasyncd.core.freshness import Freshness
from hasyncd.core.governor import RekeyGovernor
from hasyncd.core.links import (
    MAX_HANDSHAKING,
    MAX_UNPROVEN,
    WHY_CLOSED,
    Dialer,
    HandshakeBudget,
    admission_conflict,
    host_of,
    init_overdue,
    keep_new_link,
    link_kid,
    under_retired_key,
)
from hasyncd.core.merge import merge_end, receive_merge
from hasyncd.core.outputs import Outputs
from hasyncd.core.peers import Conn, Peer
from hasyncd.core.replication import (
    Flow,
    Mark,
    MarkKind,
    OutboundSession,
    apply_changes,
)
from hasyncd.core.roles import RoleManager
from hasyncd.core.seqview import CTR, PROMO, History
from hasyncd.core.seqview import SA as SA_CODE
from hasyncd.core.settings import CoreSettings
from hasyncd.core.splitbrain import SplitBrainState
from hasyncd.core.status import node_status
from hasyncd.errors import (
    HasyncdError,
    PeerRejected,
    ProtocolError,
    RecordError,
    RecordExpired,
)
from hasyncd.policy import KIND_BY_CODE
from hasyncd.records import KINDS_BY_CODE, Record
from hasyncd.store import Store, pack_value, unpack_version, value_is_record
from hasyncd.wire.channel import Channel, Opened, State
from hasyncd.wire.messages import (
    ACK_ELICITING,
    Ack,
    BulkEnd,
    BulkStart,
    Change,
    Goodbye,
    Handover,
    Heartbeat,
    Hello,
    MergeEnd,
    Message,
    Records,
    SyncRequest,
)

log = logging.getLogger("hasyncd.core")

# Expired records and old tombstones are swept this many per kind per second.
SWEEP_BUDGET = 4096


def _validated(record: Record) -> Record:
    if type(record) is not Record:
        raise TypeError("NodeCore writes take a hasyncd.records.Record (validated), nothing else")
    return record


def _check_expiry(record: Record, wall: float) -> None:
    if record.expires is not None and record.expires <= wall:
        raise RecordExpired("the record has already expired", field="expires")


class WriteResult:
    __slots__ = ("created", "version")

    def __init__(self, version: int, created: bool) -> None:
        self.version = version
        self.created = created


class NodeCore(Outputs):
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
        super().__init__(now)
        self.s = settings
        self.store = store
        # Both clocks are inputs: every input call passes ``now`` (monotonic,
        # counting suspend) and ``wall`` (Unix time); the core reads no clock.
        self.wall = wall
        self.boot_id = boot_id
        self.rng = rng or random.Random()  # noqa: S311 - reconnect jitter, not crypto
        self.started = now
        self.conns: dict[int, Conn] = {}
        self.peers: dict[str, Peer] = {}
        self.dialer = Dialer(settings, self.rng)
        # Inbound handshakes: before a valid INIT, and after it until confirmed.
        self.unproven = HandshakeBudget(MAX_UNPROVEN)
        self.proven = HandshakeBudget(MAX_HANDSHAKING)
        self.record_events = False
        self.watermark: int | None = None
        self._in_sync_told = False  # the in_sync the last SyncChanged said (none: False)
        self._next_hb = now
        self._last_hb_sent = now
        self._next_sweep = now + 1.0
        self._pump_needed = False
        self._snap_ids = 0
        self.backlog = Backlog(settings.backlog_bytes, settings.backlog_s)
        self.promotions = History(store)  # read-time ESP sequence numbers (seqview)
        self.governor = RekeyGovernor(settings.rekey_rate, settings.rekey_jitter, self.rng)
        self.freshness = Freshness()  # how stale the replicated SA counters are
        self.split_brain = SplitBrainState()  # two primaries overlapped (status)
        self.roles = RoleManager(self, settings, now, self.governor)
        self._handlers = self._handler_table()

    # -- small helpers --------------------------------------------------------

    @property
    def version(self) -> int:
        """Primary: the newest version it assigned; secondary: the newest it applied."""
        return self.roles.version

    def _clock(self, now: float, wall: float) -> None:
        """The two clocks of the input being handled, for everything it calls."""
        self.now = now
        self.wall = wall

    def now_ms(self, now: float) -> int:
        return int((now - self.started) * 1000)

    def peer_by_tag(self, tag: int) -> Peer | None:
        for p in self.peers.values():
            if p.tag == tag:
                return p
        return None

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

    def peer_lost(self, peer: Peer, now: float, reason: str) -> None:
        """Declare ``peer`` lost: close its link, tell the shell, then the roles."""
        if not peer.up:
            return
        peer.up = False
        log.warning("peer %s lost: %s", peer.name, reason)
        self.count("peers_lost")
        if peer.conn is not None:
            self.close(peer.conn, f"peer lost: {reason}")
        peer.reset_link_state()
        self.emit(PeerChanged(peer.name, peer.address, False, reason))
        self.roles.peer_lost(peer, reason)
        self.apply_effects()

    def check_writable(self, now: float) -> None:
        """Raise ``WriteRefused`` unless this node takes writes now (it may fence itself)."""
        try:
            self.roles.check_writable(now)
        finally:
            self.apply_effects()

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

    def close(self, conn: Conn, reason: str, code: str | None = None) -> None:
        """Close a connection (with an authenticated GOODBYE when it is open)."""
        if conn.id not in self.conns:
            return
        if code is not None and conn.channel.state is State.OPEN:
            conn.channel.send(Goodbye(code, reason[:200]), self.roles.epoch)
        self.flush_conn(conn)
        del self.conns[conn.id]
        self._detach(conn, reason)
        self.emit(Close(conn.id, reason))

    def _detach(self, conn: Conn, reason: str) -> None:
        self.unproven.discard(conn)
        self.proven.discard(conn)
        self.dialer.ended(conn, self.now)
        if conn.peer is None:
            return
        peer = self.peers.get(conn.peer)
        if peer is not None and peer.conn is conn:
            peer.conn = None
            peer.reset_link_state()
            self.roles.on_link_down(peer, reason)
            self.apply_effects()

    # -- connection inputs ------------------------------------------------------

    def connection_made(
        self, conn_id: int, *, initiator: bool, address: str, now: float, wall: float
    ) -> None:
        self._clock(now, wall)
        if not initiator:
            self._make_room(self.unproven, address)
        hello = Hello(self.s.name, self.boot_id, self.s.tag, self.s.window, self.s.listen[:64])
        keys = self.s.keyring()
        channel = Channel(
            initiator=initiator,
            psk=self.dialer.dial_key(address, keys, now) if initiator else keys.preferred,
            group_id=self.s.group_id,
            hello=hello,
            epoch=self.roles.epoch,
            accept=() if initiator else keys.others,
        )
        conn = Conn(conn_id, channel, initiator, address, now)
        self.conns[conn_id] = conn
        log.debug("link %d %s %s: handshake", conn_id, "to" if initiator else "from", address)
        if not initiator:
            self.unproven.add(conn)
        if initiator:
            self.dialer.connected(address, now)
            channel.start()
            self.flush_conn(conn)

    def _make_room(self, budget: HandshakeBudget, address: str) -> None:
        """A full budget of inbound handshakes evicts one: the newcomer is always admitted."""
        if not budget.full:
            return
        victim = budget.victim()
        assert victim is not None
        self.count("link_refused", "handshake_evicted")
        self.log_limited(
            ("evict", host_of(victim.address)),
            logging.WARNING,
            "%d inbound links in handshake (%s): evicted one from %s for a newer one from %s",
            budget.size,
            victim.channel.state.value,
            host_of(victim.address),
            host_of(address),
        )
        self.close(victim, "evicted: too many links in handshake")

    def connect_failed(self, address: str, now: float, reason: str, *, wall: float) -> None:
        self._clock(now, wall)
        if not self.dialer.failed(address, now):
            return
        self.count("connect_failures")
        self.log_limited(("connect", address), logging.INFO, "link to %s: %s", address, reason)

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

    def _rebudget(self, conn: Conn) -> None:
        """After input: an inbound handshake whose INIT decrypted moves to the proven budget."""
        state = conn.channel.state
        if state is not State.AWAIT_INIT and conn in self.unproven:
            self.unproven.discard(conn)
            if state is State.AWAIT_CONFIRM and conn.peer is None:
                self._make_room(self.proven, conn.address)
                self.proven.add(conn)
        elif state is not State.AWAIT_CONFIRM and conn in self.proven:
            self.proven.discard(conn)

    def _link_error(self, conn: Conn, exc: ProtocolError) -> None:
        self.count("link_errors", exc.code)
        who = conn.peer or conn.address
        keys = self.s.keyring()
        # The peer refused the next key we dialed with: it does not hold it yet.
        fallback = (
            isinstance(exc, PeerRejected)
            and exc.code == "psk_mismatch"
            and conn.initiator
            and conn.channel.key_id == keys.next_id
        )
        if fallback:
            self.log_limited(
                ("fallback", conn.address),
                logging.INFO,
                "link to %s: the peer does not hold the next key (key id %s) yet; "
                "dialing with the current key (key id %s)",
                conn.address,
                link_kid(conn),
                keys.current_id.hex(),
            )
        elif conn.peer is None:
            # One line a minute per source host and error, whatever its port:
            # a flood of wrong-key attempts must not flood the log.
            self.log_limited(
                ("link", f"{host_of(conn.address)}:{exc.code}"),
                logging.WARNING,
                "link %s refused during handshake: %s: %s (logged once a minute per host)",
                who,
                exc.code,
                exc.message,
            )
        else:
            log.warning("link to %s closed: %s: %s", who, exc.code, exc.message)
        self.flush_conn(conn)  # a queued REJECT tells the peer why
        if conn.id in self.conns:
            self.close(conn, f"{exc.code}: {exc.message}")
        if fallback:
            self.dialer.key_refused(conn, keys, self.now)

    # -- adoption: an authenticated peer ------------------------------------------

    def _adopt(self, conn: Conn, hello: Hello, epoch: int, now: float) -> None:
        conflict = admission_conflict(self.s, hello, self.peers)
        if conflict is not None:
            self.count("link_refused", conflict[0])
            self.log_limited(("adopt", conflict[0]), logging.ERROR, "link refused: %s", conflict[1])
            self.close(conn, conflict[1], code=conflict[0])
            return
        peer = self.peers.get(hello.node)
        if peer is None:
            peer = Peer(hello.node, hello.tag, hello.boot_id, hello.window, conn.address)
            self.peers[hello.node] = peer
        elif peer.conn is not None and peer.conn is not conn:
            keep, code = keep_new_link(self.s, peer, conn, hello)
            why = WHY_CLOSED[code]
            if not keep:
                self.close(conn, why, code=code)
                return
            if code == "rekeyed":
                log.info("link to %s re-keyed: now under key id %s", peer.name, link_kid(conn))
            self.close(peer.conn, why, code=code)
        peer.boot_id, peer.tag, peer.window = hello.boot_id, hello.tag, hello.window
        log.debug(
            "link %d authenticated: %s (%s, epoch %d)",
            conn.id,
            peer.name,
            "dialed" if conn.initiator else "accepted",
            epoch,
        )
        peer.conn = conn
        peer.hb = None  # what it said on an earlier link is stale: wait for a fresh heartbeat
        peer.reset_link_state()
        conn.peer = peer.name
        # Which configured address is this peer?  The one we dialed, or the
        # listen address it announces: either way, stop dialing it while linked
        # (a second link would only be closed again as a duplicate).
        address = conn.address if conn.initiator else hello.listen
        if self.dialer.learned(address, peer.name):
            peer.address = address
        peer.last_rx, peer.stall, peer.suppressed = now, 0.0, False
        if not peer.up:
            peer.up = True
            log.info("link up: %s (%s)", peer.name, peer.address)
            self.emit(PeerChanged(peer.name, peer.address, True, "authenticated"))
        self.count("links_established")
        self.roles.observe_epoch(epoch, peer, now)
        self.apply_effects()
        self.send(peer, self.roles.heartbeat(peer, now))
        self.roles.on_link_up(peer, now)

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

    def _on_goodbye(self, conn: Conn, peer: Peer, epoch: int, msg: Message, now: float) -> None:
        assert isinstance(msg, Goodbye)
        self.count("goodbyes", msg.code)
        level = logging.INFO if msg.code == "rekeyed" else logging.WARNING
        log.log(level, "%s closed the link: %s: %s", peer.name, msg.code, msg.text)
        self.close(conn, f"peer said goodbye: {msg.code}")
        if msg.code in ("shutdown", "name_conflict", "tag_conflict"):
            self.peer_lost(peer, now, f"peer said goodbye: {msg.code}")

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

    # -- applying replicated changes (secondary) ----------------------------------

    def apply_from_primary(self, changes: tuple[Change, ...]) -> int:
        result = apply_changes(self.store, changes, self.wall, self.s.tombstone_ttl)
        if any(c.kind == PROMO for c in changes):
            self.promotions.invalidate()
        self.count("records_applied", "", result.applied)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "applied %d replicated changes, newest %s",
                result.applied,
                unpack_version(result.max_version),
            )
        if result.invalid:
            self.count("records_invalid", "replicated", result.invalid)
            log.error(
                "skipped %d invalid replicated records (first: %s)",
                result.invalid,
                result.first_error,
            )
        if self.record_events:
            for c in changes:
                op = "put" if c.blob is not None else "delete"
                self.emit(RecordChanged(KIND_BY_CODE[c.kind], c.id, op, c.epoch, c.seq))
        return result.max_version

    # -- local writes (primary) ---------------------------------------------------

    def write(self, record: Record, now: float, *, wall: float) -> WriteResult:
        """An API write of a validated record (made by ``hasyncd.records``, nothing else)."""
        self._clock(now, wall)
        _validated(record)
        self.check_writable(now)
        _check_expiry(record, self.wall)
        return self.local_write(record.kind.code, record.id, record)

    def delete(self, kind: int, rid: str, now: float, *, wall: float) -> WriteResult | None:
        """An API delete; None if there is no live record ``rid``."""
        self._clock(now, wall)
        KINDS_BY_CODE[kind].check_id_pattern(rid)
        self.check_writable(now)
        if self.store.get(kind, rid, self.wall) is None:
            return None
        return self.local_write(kind, rid, None)

    def write_batch(
        self, ops: list[tuple[int, str, Record | None]], now: float, *, wall: float
    ) -> list[WriteResult | HasyncdError | None]:
        """Puts (a Record) and deletes (None) in one store pass; a result per op, in order.

        Writability is checked once (nothing can change it within one call);
        an op that fails (expired record, refused id) fails alone, a delete of
        an absent record gives None.
        """
        self._clock(now, wall)
        self.check_writable(now)
        out: list[WriteResult | HasyncdError | None] = []
        for kind, rid, record in ops:
            try:
                if record is None:
                    KINDS_BY_CODE[kind].check_id_pattern(rid)
                    if self.store.get(kind, rid, wall) is None:
                        out.append(None)
                        continue
                else:
                    _check_expiry(_validated(record), wall)
                out.append(self.local_write(kind, rid, record))
            except RecordError as exc:
                out.append(exc)
        return out

    def local_write(
        self, kind: int, rid: str, record: Record | None, *, quiet: bool = False
    ) -> WriteResult:
        """Store and replicate a validated record (or a delete) in this node's epoch.

        ``quiet``: no ``record_changed`` event (counter updates: many a second).
        """
        version = self.roles.next_version()
        if record is None:
            value = pack_value(version, self.wall + self.s.tombstone_ttl, None)
        else:
            value = pack_value(version, record.expires, record.blob)
        old = self.store.put_value(kind, rid, value)
        self.backlog.append(version, kind, rid, self.now)
        if kind == PROMO:
            self.promotions.invalidate()
        for peer in self.peers.values():
            if peer.session is not None:
                peer.session.enqueue(kind, rid, version)
                peer.lag.wrote(version, self.now)
        self._pump_needed = True
        if self.record_events and not quiet:
            epoch, seq = unpack_version(version)
            self.emit(
                RecordChanged(KIND_BY_CODE[kind], rid, "put" if record else "delete", epoch, seq)
            )
        if record is None and kind == SA_CODE and self.store.get(CTR, rid, self.wall):
            self.local_write(CTR, rid, None)  # its counters go with it (a reused id starts afresh)
        return WriteResult(version, old is None or not value_is_record(old))

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

    # -- timers and pumping -------------------------------------------------------

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

    def note_lateness(self, late: float, now: float) -> None:
        """The timer ran ``late`` s after its deadline (``hasyncd.core.detector``)."""
        if own_lateness(self.peers.values(), late, self.s.heartbeat_interval):
            self.count("loop_stalls")
            if self.roles.is_primary:
                self.roles.duties.after_stall(now)
                self.apply_effects()

    def check_peers(self, now: float) -> None:
        """Declare lost the peers the detector finds silent for too long."""
        verdicts = check_peers(list(self.peers.values()), self.s.lost_timeout, now)
        if verdicts.suppressed:
            self.count("loss_suppressed_own_stall", "", verdicts.suppressed)
        for peer, why in verdicts.lost:
            self.peer_lost(peer, now, why)

    def send_heartbeats(self, now: float) -> None:
        for peer in self.peers.values():
            if peer.conn is not None and peer.conn.channel.state is State.OPEN:
                self.send(peer, self.roles.heartbeat(peer, now))
                self.count("heartbeats_sent")
        self._last_hb_sent = now
        self._next_hb = now + self.s.heartbeat_interval

    @property
    def last_heartbeat_sent(self) -> float:
        return self._last_hb_sent

    def _dial_due(self, now: float) -> None:
        if self.roles.shutting_down:
            return
        for address in self.dialer.due(now, self.conns.values(), self.peers):
            log.debug("dialing %s", address)
            self.emit(Dial(address))
        keys = self.s.keyring()
        for address in self.dialer.rekey_due(now, self.conns.values(), self.peers, keys):
            log.info(
                "re-keying the link to %s: dialing under key id %s",
                address,
                keys.preferred_id.hex(),
            )
            self.emit(Dial(address))

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

    def transmit(self, now: float, *, wall: float) -> None:
        """Send what earlier inputs queued (``wants_transmit``): replication and sliced work."""
        self._clock(now, wall)
        self.pump(now)
        self._derive()

    def request_pump(self) -> None:
        self._pump_needed = True

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

    def _retire_keys(self, settings: CoreSettings) -> None:
        """Close every link and handshake under a key this node no longer holds."""
        for conn in under_retired_key(self.conns.values(), settings.keyring()):
            self.count("link_refused", "key_retired")
            who = conn.peer or conn.address
            log.warning("link %s was under key id %s, no longer held: closed", who, link_kid(conn))
            self.close(conn, "key retired", code="key_retired")

    def finish_shutdown(self, now: float, *, wall: float) -> None:
        self._clock(now, wall)
        for conn in list(self.conns.values()):
            self.close(conn, "node shutting down", code="shutdown")
        self._derive()

    # -- status -------------------------------------------------------------------

    def status(self, now: float, *, wall: float) -> dict[str, object]:
        """The node's status at ``now``; ages and expiries against ``wall`` (Unix time)."""
        return node_status(self, now, wall)


def _describe(msg: Message) -> str:
    """A replication message for a debug line: its type and size, never its records."""
    if isinstance(msg, Records):
        return f"{msg.phase.name.lower()} records x{len(msg.changes)}"
    return type(msg).__name__
