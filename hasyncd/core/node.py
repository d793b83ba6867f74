"""The node core: one cluster member's protocol state machine, sans-IO.

Inputs (each carries the monotonic time ``now``):

    connection_made / connect_failed / receive_data / connection_lost
    handle_timer, write, request_failover, set_monitors, begin_shutdown

Outputs:

    data_to_send()  -> [(conn_id, bytes)]   bytes for the shell to write
    events()        -> [Event]              Dial/Close requests and what happened
    next_timer()    -> float                when to call handle_timer next

Roles and the election live in ``hasyncd.core.roles``; this module owns
connections, peers, message dispatch and the replication plumbing.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable

from hasyncd.core import roles
from hasyncd.core.events import (
    Close,
    Dial,
    Event,
    MergeApplied,
    PeerChanged,
    RecordChanged,
    Watermark,
)
from hasyncd.core.peers import Conn, DialState, Peer
from hasyncd.core.replication import (
    Flow,
    Mark,
    MarkKind,
    OutboundSession,
    apply_changes,
    decode_change,
    merge_one,
)
from hasyncd.core.roles import RoleManager
from hasyncd.core.settings import CoreSettings
from hasyncd.errors import HasyncdError, ProtocolError, RecordError, WriteRefused
from hasyncd.policy import KIND_BY_CODE
from hasyncd.records import KINDS_BY_CODE
from hasyncd.store import Entry, Store, pack_version, unpack_version
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
    Phase,
    Records,
    Role,
    SyncRequest,
)

log = logging.getLogger("hasyncd.core")

# Inbound connections still in their handshake: more are refused, so an
# unauthenticated flood cannot exhaust memory or CPU (each costs an X25519).
MAX_HANDSHAKING = 16
# Expired records and old tombstones are swept this many per kind per second.
SWEEP_BUDGET = 4096
# A late timer by less than this is scheduling noise, not a stall.
STALL_NOISE = 0.02


class WriteResult:
    __slots__ = ("created", "version")

    def __init__(self, version: int, created: bool) -> None:
        self.version = version
        self.created = created


class NodeCore:
    def __init__(
        self,
        settings: CoreSettings,
        store: Store,
        *,
        now: float,
        wall: Callable[[], float],
        boot_id: bytes,
        rng: random.Random | None = None,
    ) -> None:
        self.s = settings
        self.store = store
        self.wall = wall
        self.boot_id = boot_id
        self.rng = rng or random.Random()  # noqa: S311 - reconnect jitter, not crypto
        self.started = now
        self.now = now
        self.conns: dict[int, Conn] = {}
        self.peers: dict[str, Peer] = {}
        self.dials = {a: DialState(a) for a in settings.peers}
        self.stats: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.record_events = False
        self.watermark: int | None = None
        self._out: dict[int, list[bytes]] = {}
        self._events: list[Event] = []
        self._next_hb = now
        self._last_hb_sent = now
        self._deadline: float | None = None
        self._next_sweep = now + 1.0
        self._pump_needed = False
        self._snap_ids = 0
        self._log_once: dict[tuple[str, str], float] = {}
        self.roles = RoleManager(self, now)

    # -- small helpers --------------------------------------------------------

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def count(self, metric: str, label: str = "", n: int = 1) -> None:
        self.stats[metric][label] += n

    def log_limited(self, key: tuple[str, str], level: int, msg: str, *args: object) -> None:
        """Log at most once a minute per key: a misconfigured peer retries every second."""
        last = self._log_once.get(key)
        if last is None or self.now - last >= 60.0:
            self._log_once[key] = self.now
            log.log(level, msg, *args)

    @property
    def version(self) -> int:
        """Primary: the newest version it assigned; secondary: the newest it applied."""
        return self.roles.version

    def now_ms(self, now: float) -> int:
        return int((now - self.started) * 1000)

    def up_peers(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.up]

    def peer_by_tag(self, tag: int) -> Peer | None:
        for p in self.peers.values():
            if p.tag == tag:
                return p
        return None

    # -- outputs --------------------------------------------------------------

    def data_to_send(self) -> list[tuple[int, bytes]]:
        out = [(cid, b"".join(chunks)) for cid, chunks in self._out.items() if chunks]
        self._out.clear()
        return out

    def events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def next_timer(self) -> float:
        t = self._next_hb
        if self._pump_needed or self.roles.busy:
            t = self.now
        t = min(t, self._next_sweep, self.roles.next_deadline(self.now))
        lost = self.s.lost_timeout
        for p in self.peers.values():
            if p.up:
                t = min(t, p.last_rx + lost + p.stall)
        for d in self.dials.values():
            if not d.pending and d.next_at > self.now:
                t = min(t, d.next_at)
        self._deadline = t
        return t

    def _flush(self, conn: Conn) -> None:
        data = conn.channel.take_output()
        if data:
            self._out.setdefault(conn.id, []).append(data)

    def send(self, peer: Peer, msg: Message) -> tuple[int, int] | None:
        conn = peer.conn
        if conn is None or conn.channel.state is not State.OPEN:
            return None
        sent = conn.channel.send(msg, self.roles.epoch)
        self._flush(conn)
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
        self._flush(conn)
        del self.conns[conn.id]
        self._detach(conn, reason)
        self.emit(Close(conn.id, reason))

    def _detach(self, conn: Conn, reason: str) -> None:
        dial = self.dials.get(conn.address) if conn.initiator else None
        if dial is not None:
            if conn.peer is None:
                # The handshake never completed (wrong key, group, version...):
                # back off like a failed connect, so a misconfigured peer is
                # not hammered in a tight loop.
                self._backoff(dial)
            else:
                dial.next_at = self.now
        if conn.peer is None:
            return
        peer = self.peers.get(conn.peer)
        if peer is not None and peer.conn is conn:
            peer.conn = None
            peer.reset_link_state()
            self.roles.on_link_down(peer, reason)
            self.recompute_watermark()

    # -- connection inputs ------------------------------------------------------

    def connection_made(self, conn_id: int, *, initiator: bool, address: str, now: float) -> None:
        self.now = now
        if not initiator:
            handshaking = sum(1 for c in self.conns.values() if c.peer is None and not c.initiator)
            if handshaking >= MAX_HANDSHAKING:
                self.count("link_refused", "too_many_handshakes")
                self.emit(Close(conn_id, "too many links in handshake"))
                return
        hello = Hello(self.s.name, self.boot_id, self.s.tag, self.s.window, self.s.listen[:64])
        channel = Channel(
            initiator=initiator,
            psk=self.s.psk,
            group_id=self.s.group_id,
            hello=hello,
            epoch=self.roles.epoch,
        )
        conn = Conn(conn_id, channel, initiator, address, now)
        self.conns[conn_id] = conn
        if initiator:
            dial = self.dials.get(address)
            if dial is not None:
                # Once this connection ends, dial again at once (backoff only on failures).
                dial.pending, dial.next_at = False, now
            channel.start()
            self._flush(conn)

    def connect_failed(self, address: str, now: float, reason: str) -> None:
        self.now = now
        dial = self.dials.get(address)
        if dial is None:
            return
        dial.pending = False
        self._backoff(dial)
        self.count("connect_failures")
        self.log_limited(("connect", address), logging.INFO, "link to %s: %s", address, reason)

    def _backoff(self, dial: DialState) -> None:
        dial.backoff = min(max(dial.backoff * 2, self.s.reconnect_min), self.s.reconnect_max)
        dial.next_at = self.now + dial.backoff * (0.75 + 0.5 * self.rng.random())

    def connection_lost(self, conn_id: int, now: float) -> None:
        self.now = now
        conn = self.conns.pop(conn_id, None)
        if conn is None:
            return
        try:
            conn.channel.receive_eof()
        except ProtocolError as exc:
            self.count("link_errors", exc.code)
        self._detach(conn, "connection closed by peer")
        self._after_input(now)

    def receive_data(self, conn_id: int, data: bytes, now: float) -> None:
        self.now = now
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
        self._flush(conn)
        if conn.ack_frame is not None and conn.id in self.conns:
            frame_no, conn.ack_frame = conn.ack_frame, None
            conn.channel.send(Ack(frame_no), self.roles.epoch)
            self._flush(conn)
        self._after_input(now)

    def _link_error(self, conn: Conn, exc: ProtocolError) -> None:
        self.count("link_errors", exc.code)
        who = conn.peer or conn.address
        if conn.peer is None:
            self.log_limited(
                ("link", f"{conn.address}:{exc.code}"),
                logging.WARNING,
                "link %s refused during handshake: %s: %s",
                who,
                exc.code,
                exc.message,
            )
        else:
            log.warning("link to %s closed: %s: %s", who, exc.code, exc.message)
        self._flush(conn)  # a queued REJECT tells the peer why
        if conn.id in self.conns:
            self.close(conn, f"{exc.code}: {exc.message}")

    # -- adoption: an authenticated peer ------------------------------------------

    def _adopt(self, conn: Conn, hello: Hello, epoch: int, now: float) -> None:
        s = self.s
        conflict = None
        if hello.node == s.name:
            conflict = ("name_conflict", f"peer uses this node's name {s.name!r}")
        elif hello.tag == s.tag:
            conflict = ("tag_conflict", f"peer {hello.node} uses this node's tag {s.tag}")
        else:
            other = self.peer_by_tag(hello.tag)
            if other is not None and other.name != hello.node:
                conflict = ("tag_conflict", f"{hello.node} and {other.name} share tag {hello.tag}")
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
            old = peer.conn
            if peer.boot_id != hello.boot_id:
                self.close(old, "replaced: peer restarted", code="replaced")
            elif self._canonical(conn, hello.node):
                self.close(old, "duplicate link", code="duplicate")
            else:
                self.close(conn, "duplicate link", code="duplicate")
                return
        peer.boot_id, peer.tag, peer.window = hello.boot_id, hello.tag, hello.window
        peer.conn = conn
        peer.hb = None  # what it said on an earlier link is stale: wait for a fresh heartbeat
        peer.reset_link_state()
        conn.peer = peer.name
        # Which configured address is this peer?  The one we dialed, or the
        # listen address it announces: either way, stop dialing it while linked
        # (a second link would only be closed again as a duplicate).
        address = conn.address if conn.initiator else hello.listen
        dial = self.dials.get(address)
        if dial is not None:
            peer.address = address
            dial.name, dial.backoff = peer.name, 0.0
        peer.last_rx, peer.stall, peer.suppressed = now, 0.0, False
        if not peer.up:
            peer.up = True
            log.info("link up: %s (%s)", peer.name, peer.address)
            self.emit(PeerChanged(peer.name, peer.address, True, "authenticated"))
        self.count("links_established")
        self.roles.observe_epoch(epoch, peer, now)
        self.send(peer, self.roles.heartbeat(peer, now))
        self.roles.on_link_up(peer, now)

    def _canonical(self, conn: Conn, peer_name: str) -> bool:
        """Of two links between the same pair, both keep the one the lower name initiated."""
        return conn.initiator == (self.s.name < peer_name)

    # -- message dispatch ---------------------------------------------------------

    def _dispatch(self, conn: Conn, epoch: int, msg: Message, frame_no: int, now: float) -> None:
        assert conn.peer is not None
        peer = self.peers[conn.peer]
        peer.last_rx, peer.stall, peer.suppressed = now, 0.0, False
        self.count("frames_received", type(msg).__name__)
        if isinstance(msg, Heartbeat):
            self.roles.on_heartbeat(peer, epoch, msg, now)
            return
        self.roles.observe_epoch(epoch, peer, now)
        accepted = True  # only what was applied is acknowledged
        if isinstance(msg, Ack):
            self._on_ack(peer, msg.frame)
        elif isinstance(msg, SyncRequest):
            self._on_sync_request(peer, msg)
        elif isinstance(msg, Records) and msg.phase is Phase.MERGE:
            accepted = self._on_merge_records(peer, epoch, msg)
        elif isinstance(msg, MergeEnd):
            accepted = self._on_merge_end(peer, msg)
        elif isinstance(msg, BulkStart | Records | BulkEnd):
            accepted = self.roles.follower_message(peer, epoch, msg, now)
        elif isinstance(msg, Handover):
            self.roles.on_handover(peer, epoch, msg, now)
        elif isinstance(msg, Goodbye):
            self.count("goodbyes", msg.code)
            log.warning("%s closed the link: %s: %s", peer.name, msg.code, msg.text)
            self.close(conn, f"peer said goodbye: {msg.code}")
            if msg.code in ("shutdown", "name_conflict", "tag_conflict"):
                self.roles.peer_lost(peer, now, f"peer said goodbye: {msg.code}")
        else:  # pragma: no cover - Hello is refused by the channel
            raise ProtocolError(f"unexpected {type(msg).__name__}")
        if accepted and isinstance(msg, ACK_ELICITING):
            conn.ack_frame = frame_no

    def _on_ack(self, peer: Peer, frame: int) -> None:
        for mark in peer.flow.acked(frame):
            if mark.kind is MarkKind.MERGE_END:
                self.roles.merge_acknowledged(peer)
                continue
            session = peer.session
            peer.acked_floor = max(peer.acked_floor, mark.version)
            if session is None:
                continue
            session.acked = max(session.acked, mark.version)
            if mark.kind is MarkKind.BULK_END and not session.in_sync:
                session.in_sync = True
                log.info("%s is in sync (%d records in snapshot)", peer.name, session.bulk_sent)
        self.recompute_watermark()
        self._pump_needed = True

    def _on_sync_request(self, peer: Peer, msg: SyncRequest) -> None:
        if not self.roles.is_primary:
            self.count("refused", "sync_request_not_primary")
            return
        self._snap_ids = (self._snap_ids + 1) & 0xFFFFFFFF
        peer.session = OutboundSession(self._snap_ids)
        peer.flow = Flow(peer.window)
        log.info(
            "%s requested a snapshot (%s): sending snapshot %d",
            peer.name,
            msg.reason,
            self._snap_ids,
        )
        self.count("snapshots_started")
        self.recompute_watermark()
        self._pump_needed = True

    def _on_merge_records(self, peer: Peer, epoch: int, msg: Records) -> bool:
        if not self.roles.is_primary or epoch > self.roles.epoch:
            self.count("refused", "merge_not_primary")
            return False
        for change in msg.changes:
            peer.merge_offered += 1
            try:
                decode_change(change)
                decision = merge_one(self.store.get_raw(change.kind, change.id), change)
            except RecordError as exc:
                self.count("records_invalid", "merge")
                log.error(  # noqa: TRY400 - a peer sent bad data; no traceback to show
                    "merge from %s: invalid record %s: %s", peer.name, change.id, exc.message
                )
                continue
            if decision.conflict:
                peer.merge_conflicts += 1
                self.count("merge_conflicts")
                log.warning(
                    "merge conflict on %s %s: changed on both sides, newer version kept",
                    KIND_BY_CODE[change.kind],
                    change.id,
                )
            if decision.write:
                peer.merge_merged += 1
                self.count("merged_records")
                expires = None
                if decision.blob is not None:
                    kind = KINDS_BY_CODE[change.kind]
                    expires = kind.expiry(kind.decode(decision.blob))
                self.local_write(change.kind, change.id, decision.blob, expires)
        return True

    def _on_merge_end(self, peer: Peer, msg: MergeEnd) -> bool:
        if not self.roles.is_primary:
            self.count("refused", "merge_not_primary")
            return False
        log.warning(
            "merge from %s done: %d offered, %d merged, %d conflicts",
            peer.name,
            peer.merge_offered,
            peer.merge_merged,
            peer.merge_conflicts,
        )
        self.emit(
            MergeApplied(peer.name, peer.merge_offered, peer.merge_merged, peer.merge_conflicts)
        )
        self.roles.merge_finished(peer, msg.epoch)
        peer.merge_offered = peer.merge_merged = peer.merge_conflicts = 0
        return True

    # -- applying replicated changes (secondary) ----------------------------------

    def apply_from_primary(self, changes: tuple[Change, ...]) -> int:
        result = apply_changes(self.store, changes, self.wall(), self.s.tombstone_ttl)
        self.count("records_applied", "", result.applied)
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

    def write(
        self, kind: int, rid: str, blob: bytes | None, expires: float | None, now: float
    ) -> WriteResult | None:
        """An API write: a put (``blob``) or a delete (None: returns None if absent)."""
        self.now = now
        self.roles.check_writable(now)
        if blob is None and self.store.get(kind, rid, self.wall()) is None:
            return None
        return self.local_write(kind, rid, blob, expires)

    def local_write(
        self, kind: int, rid: str, blob: bytes | None, expires: float | None
    ) -> WriteResult:
        version = self.roles.next_version()
        if blob is None:
            entry = Entry(version, self.wall() + self.s.tombstone_ttl, None)
        else:
            entry = Entry(version, expires, blob)
        old = self.store.put(kind, rid, entry)
        for peer in self.peers.values():
            if peer.session is not None:
                peer.session.enqueue(kind, rid, version)
        self._pump_needed = True
        if self.record_events:
            epoch, seq = unpack_version(version)
            self.emit(
                RecordChanged(KIND_BY_CODE[kind], rid, "put" if blob else "delete", epoch, seq)
            )
        return WriteResult(version, old is None or old.blob is None)

    def recompute_watermark(self) -> None:
        wm: int | None = None
        for peer in self.peers.values():
            session = peer.session
            if session is not None and session.in_sync and peer.conn is not None:
                wm = session.acked if wm is None else min(wm, session.acked)
        if wm != self.watermark:
            self.watermark = wm
            self.emit(Watermark(wm))

    # -- timers and pumping -------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        self.now = now
        if self._deadline is not None:
            late = now - self._deadline
            if late > STALL_NOISE and late < 3600:
                self.roles.on_own_stall(late, now)
        self._deadline = None
        lost = self.s.lost_timeout
        for conn in list(self.conns.values()):
            if conn.peer is None and now - conn.created > self.s.handshake_timeout:
                self.count("link_errors", "handshake_timeout")
                self.close(conn, "handshake timeout")
        for peer in list(self.peers.values()):
            # The same float expression as in next_timer(): the timer fires exactly here.
            deadline = peer.last_rx + lost
            if not peer.up or now < deadline:
                continue
            silence = now - peer.last_rx
            if now < deadline + peer.stall:
                if not peer.suppressed:
                    peer.suppressed = True
                    self.count("loss_suppressed_own_stall")
                    log.warning(
                        "%s silent for %.0f ms, but this node itself stalled %.0f ms of that: "
                        "not declaring it lost",
                        peer.name,
                        silence * 1000,
                        peer.stall * 1000,
                    )
                continue
            self.roles.peer_lost(peer, now, f"no authenticated frame for {silence * 1000:.0f} ms")
        if now >= self._next_hb:
            self.send_heartbeats(now)
        self._dial_due(now)
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self.store.sweep(self.wall(), SWEEP_BUDGET)
        self._after_input(now)

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
        for dial in self.dials.values():
            if dial.pending or now < dial.next_at:
                continue
            if any(c.initiator and c.address == dial.address for c in self.conns.values()):
                continue
            if dial.name is not None:
                peer = self.peers.get(dial.name)
                if peer is not None and peer.conn is not None:
                    continue
            dial.pending = True
            # Until the connect result arrives, do not dial again.
            dial.next_at = now + self.s.handshake_timeout
            self.emit(Dial(dial.address))

    def _after_input(self, now: float) -> None:
        self.roles.evaluate(now)
        self.pump(now)

    def pump(self, now: float) -> None:
        """Produce replication output while windows allow."""
        self._pump_needed = False
        self.roles.run_slices(now)
        if self.roles.is_primary:
            current = self.version
            for peer in self.peers.values():
                session = peer.session
                if session is None or peer.conn is None:
                    continue
                while peer.flow.open:
                    nxt = session.next_message(self.store, current)
                    if nxt is None:
                        break
                    self.send_tracked(peer, nxt[0], nxt[1])
            self.roles.check_handover_ready(now)
        else:
            self.roles.pump_follower(now)

    def request_pump(self) -> None:
        self._pump_needed = True

    # -- operator inputs ----------------------------------------------------------

    def request_failover(self, now: float) -> str:
        self.now = now
        target = self.roles.request_failover(now)
        self._after_input(now)
        return target

    def set_monitors(self, down: tuple[str, ...], now: float) -> None:
        self.now = now
        self.roles.set_monitors(down, now)
        self._after_input(now)

    def begin_shutdown(self, now: float) -> str | None:
        """Start a graceful stop: a primary hands over first.  Returns the target or None."""
        self.now = now
        target = self.roles.begin_shutdown(now)
        self._after_input(now)
        return target

    def finish_shutdown(self, now: float) -> None:
        self.now = now
        for conn in list(self.conns.values()):
            self.close(conn, "node shutting down", code="shutdown")

    # -- status -------------------------------------------------------------------

    def status(self, now: float) -> dict[str, object]:
        wall = self.wall()
        peers = [
            self._peer_status(p, now) for p in sorted(self.peers.values(), key=lambda p: p.name)
        ]
        counts = {KIND_BY_CODE[k]: n for k, n in self.store.counts().items()}
        epoch, seq = unpack_version(self.version)
        out: dict[str, object] = {
            "node": self.s.name,
            "peers": peers,
            "records": counts,
            "version": {"epoch": epoch, "seq": seq},
            "uptime_s": round(now - self.started, 3),
            "clock": wall,
        }
        out.update(self.roles.status(now))
        return out

    def _peer_status(self, p: Peer, now: float) -> dict[str, object]:
        return {
            "node": p.name,
            "address": p.address,
            "link": "up" if p.conn is not None and p.up else "down",
            "role": p.role.name.lower() if p.role is not None and p.up else None,
            "in_sync": bool(p.up and (p.in_sync_flag or p.role is Role.PRIMARY)),
            "last_seen_ms": round((now - p.last_rx) * 1000) if p.last_rx else None,
            "rtt_ms": round(p.rtt * 1000, 3) if p.rtt is not None else None,
            "replication": self._session_status(p),
        }

    def _session_status(self, peer: Peer) -> dict[str, object] | None:
        session = peer.session
        if session is None:
            return None
        return {
            "state": session.state.value,
            "in_sync": session.in_sync,
            "pending": len(session.pending),
            "in_flight_bytes": peer.flow.in_flight,
            "acked_version": dict(
                zip(("epoch", "seq"), unpack_version(session.acked), strict=True)
            ),
        }


def version_json(version: int) -> dict[str, int]:
    epoch, seq = unpack_version(version)
    return {"epoch": epoch, "seq": seq}


__all__ = [
    "HasyncdError",
    "NodeCore",
    "WriteRefused",
    "WriteResult",
    "pack_version",
    "roles",
    "version_json",
]
