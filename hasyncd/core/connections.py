"""Links and liveness: handshakes, adopting an authenticated peer, closing, losing a peer.

Connections are made and lost by the shell; a handshake runs under the
budgets of ``hasyncd.core.links`` (which also picks the key and the link to
keep).  An authenticated link is adopted as its peer's link.  Liveness is
the heartbeat this node sends and the detector's verdicts on the peers'
(``hasyncd.core.detector``): a silent peer is lost, its link closed, and
the roles told.
"""

from __future__ import annotations

import logging

from hasyncd.core.detector import check_peers, own_lateness
from hasyncd.core.events import Close, Dial, PeerChanged
from hasyncd.core.links import (
    WHY_CLOSED,
    HandshakeBudget,
    admission_conflict,
    host_of,
    keep_new_link,
    link_kid,
    under_retired_key,
)
from hasyncd.core.peers import Conn, Peer
from hasyncd.core.settings import CoreSettings
from hasyncd.core.streams import Streams
from hasyncd.errors import PeerRejected, ProtocolError
from hasyncd.wire.channel import Channel, State
from hasyncd.wire.messages import Goodbye, Hello, Message

log = logging.getLogger("hasyncd.core")


class Connections(Streams):
    """The links to peers and whether each peer is alive."""

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

    def _retire_keys(self, settings: CoreSettings) -> None:
        """Close every link and handshake under a key this node no longer holds."""
        for conn in under_retired_key(self.conns.values(), settings.keyring()):
            self.count("link_refused", "key_retired")
            who = conn.peer or conn.address
            log.warning("link %s was under key id %s, no longer held: closed", who, link_kid(conn))
            self.close(conn, "key retired", code="key_retired")

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

    def _on_goodbye(self, conn: Conn, peer: Peer, epoch: int, msg: Message, now: float) -> None:
        """GOODBYE: the peer closes the link; some reasons mean it is gone."""
        assert isinstance(msg, Goodbye)
        self.count("goodbyes", msg.code)
        level = logging.INFO if msg.code == "rekeyed" else logging.WARNING
        log.log(level, "%s closed the link: %s: %s", peer.name, msg.code, msg.text)
        self.close(conn, f"peer said goodbye: {msg.code}")
        if msg.code in ("shutdown", "name_conflict", "tag_conflict"):
            self.peer_lost(peer, now, f"peer said goodbye: {msg.code}")

    # -- liveness -----------------------------------------------------------------

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
