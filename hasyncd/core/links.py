"""Which links to open and which to keep: dialing, backoff, admission, duplicate links.

Every node dials every configured peer it has no link to; both may dial at
once, so a pair can end up with two links.  Both ends then keep the one the
lexicographically lower node name initiated, and close the other.  A link
from a peer with a new boot id replaces the old one (the peer restarted).
A link whose handshake never completed (wrong key, group, version) is
retried with exponential backoff, so a misconfigured peer is not hammered;
an authenticated link that ends is redialed at once.

During a key rotation (``hasyncd.core.keys``) the dialer picks the key to
dial with, falls back at once to the current key when a peer refuses the
next one, and dials a second link to a peer whose link is under a key this
node no longer prefers; the one-link rule then keeps the link under the
preferred key.

Inbound handshakes are bounded (``MAX_UNPROVEN``, ``MAX_HANDSHAKING``), but
a full budget never refuses a new connection: it evicts one
(``HandshakeBudget.victim``), so an unauthenticated flood cannot lock the
configured peers out.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from hasyncd.core.keys import REKEY_RETRY, Keyring, prefers_new_link
from hasyncd.core.peers import Conn, DialState, Peer
from hasyncd.core.settings import CoreSettings
from hasyncd.secret import Secret
from hasyncd.wire.channel import State
from hasyncd.wire.messages import Hello

# Inbound handshakes come in two budgets; when one is full, the next
# connection is still admitted and another one of that budget evicted.
#
# Connections whose INIT decrypted (the sender knows the PSK, or replays a
# captured INIT), awaiting the initiator's confirmation: each has cost an
# X25519 key generation and DH and may buffer one 64 KiB frame.
MAX_HANDSHAKING = 16
# Connections that have not delivered a valid INIT: no crypto yet and at most
# one 1 KiB handshake frame buffered each, so this bound only protects file
# descriptors.  It is above the number of connections an asyncio loop can
# admit between a peer's connection and the read of its INIT: it accepts at
# most its listen backlog (100) per loop iteration, and the INIT, already in
# the socket buffer, is read before the connections of any accept batch but
# the peer's own and the next (fewer than 200 newer ones admitted in
# between, in CPython 3.11's selector loop).  So evicting the oldest, a flood from the
# peer's own address cannot push the peer's connection out before its INIT
# is read.
MAX_UNPROVEN = 256
# An inbound connection that has not delivered a complete INIT by then is
# closed, long before the handshake timeout: an initiator sends its INIT as
# soon as it is connected, so it arrives within one round trip (milliseconds
# on an HA link); a second is far above that yet frees a slot held by a
# silent or trickling connection three times sooner than the 3 s default.
INIT_TIMEOUT = 1.0


class Dialer:
    def __init__(self, settings: CoreSettings, rng: random.Random) -> None:
        self.s = settings
        self.rng = rng
        self.dials = {a: DialState(a) for a in settings.peers}

    def connected(self, address: str, now: float) -> None:
        dial = self.dials.get(address)
        if dial is not None:
            # Once this connection ends, dial again at once (backoff only on failures).
            dial.pending, dial.next_at = False, now

    def failed(self, address: str, now: float) -> bool:
        """A dial failed; returns whether the address is one of ours."""
        dial = self.dials.get(address)
        if dial is None:
            return False
        dial.pending = False
        self._backoff(dial, now)
        return True

    def ended(self, conn: Conn, now: float) -> None:
        dial = self.dials.get(conn.address) if conn.initiator else None
        if dial is None:
            return
        if conn.peer is None:
            self._backoff(dial, now)  # never authenticated: back off
        else:
            dial.next_at = now

    def learned(self, address: str, name: str) -> bool:
        """``address`` belongs to ``name``: do not dial it while linked.  True if configured."""
        dial = self.dials.get(address)
        if dial is None:
            return False
        dial.name, dial.backoff = name, 0.0
        return True

    def due(self, now: float, conns: Iterable[Conn], peers: Mapping[str, Peer]) -> list[str]:
        dialing = {c.address for c in conns if c.initiator}
        out = []
        for dial in self.dials.values():
            if dial.pending or now < dial.next_at or dial.address in dialing:
                continue
            if dial.name is not None:
                peer = peers.get(dial.name)
                if peer is not None and peer.conn is not None:
                    continue
            dial.pending = True
            # Until the connect result arrives, do not dial again.
            dial.next_at = now + self.s.handshake_timeout
            out.append(dial.address)
        return out

    def dial_key(self, address: str, keys: Keyring, now: float) -> Secret:
        dial = self.dials.get(address)
        if dial is None:
            return keys.preferred
        return keys.dial_key(dial.refused_kid, dial.refused_at, now)

    def key_refused(self, conn: Conn, keys: Keyring, now: float) -> bool:
        """The peer refused the next key we dialed with: True if we fall back (dial again now)."""
        dial = self.dials.get(conn.address) if conn.initiator else None
        kid = conn.channel.key_id
        if dial is None or kid is None or kid != keys.next_id:
            return False
        dial.refused_kid, dial.refused_at = kid, now
        dial.next_at = now  # no backoff: the current key may well be accepted
        return True

    def rekey_due(
        self, now: float, conns: Iterable[Conn], peers: Mapping[str, Peer], keys: Keyring
    ) -> list[str]:
        """Addresses of linked peers whose link is not under the preferred key: dial them again."""
        want = keys.preferred_id
        dialing = {c.address for c in conns if c.initiator and c.peer is None}
        out = []
        for dial in self.dials.values():
            if dial.pending or dial.address in dialing or now < dial.rekey_at:
                continue
            peer = peers.get(dial.name) if dial.name is not None else None
            conn = peer.conn if peer is not None else None
            if conn is None or conn.channel.state is not State.OPEN or conn.channel.key_id == want:
                continue
            if keys.dial_key(dial.refused_kid, dial.refused_at, now) is not keys.preferred:
                continue  # refused lately: retried when REKEY_RETRY has passed
            dial.pending, dial.rekey_at = True, now + REKEY_RETRY
            out.append(dial.address)
        return out

    def rekey_now(self) -> None:
        """The keys changed (a reload): try the preferred key at once."""
        for dial in self.dials.values():
            dial.rekey_at = 0.0

    def next_at(self, now: float) -> float:
        return min(
            (d.next_at for d in self.dials.values() if not d.pending and d.next_at > now),
            default=float("inf"),
        )

    def _backoff(self, dial: DialState, now: float) -> None:
        dial.backoff = min(max(dial.backoff * 2, self.s.reconnect_min), self.s.reconnect_max)
        dial.next_at = now + dial.backoff * (0.75 + 0.5 * self.rng.random())


def admission_conflict(
    settings: CoreSettings, hello: Hello, peers: Mapping[str, Peer]
) -> tuple[str, str] | None:
    """Why an authenticated peer may not join: (code, text), or None."""
    if hello.node == settings.name:
        return "name_conflict", f"peer uses this node's name {settings.name!r}"
    hint = "set [node].id to distinct values"
    if hello.tag == settings.tag:
        return "tag_conflict", f"peer {hello.node} has this node's id {settings.tag}: {hint}"
    for other in peers.values():
        if other.tag == hello.tag and other.name != hello.node:
            return "tag_conflict", f"{hello.node} and {other.name} share id {hello.tag}: {hint}"
    return None


def keep_new_link(settings: CoreSettings, peer: Peer, new: Conn, hello: Hello) -> tuple[bool, str]:
    """Of an existing link to ``peer`` and a new one: whether the new one wins, and the
    GOODBYE code the losing link is closed with (PROTOCOL.md section 3.2)."""
    if peer.boot_id != hello.boot_id:
        return True, "replaced"  # the peer restarted: its old link is dead
    old = peer.conn.channel.key_id if peer.conn is not None else None
    by_key = prefers_new_link(settings.keyring(), old, new.channel.key_id)
    if by_key is not None:
        return by_key, "rekeyed"  # a key rotation: keep the link under the preferred key
    # Both ends keep the link the lower name initiated.
    return new.initiator == (settings.name < hello.node), "duplicate"


# Why the losing link of a pair is closed, by its GOODBYE code (keep_new_link).
WHY_CLOSED = {
    "replaced": "replaced: peer restarted",
    "rekeyed": "rekeyed: a link under the preferred key replaced this one",
    "duplicate": "duplicate link",
}


def link_kid(conn: Conn) -> str:
    """The key id a connection is (being) authenticated under, for logs."""
    kid = conn.channel.key_id
    return kid.hex() if kid is not None else "-"


def under_retired_key(conns: Iterable[Conn], keys: Keyring) -> list[Conn]:
    """Connections under a key the node no longer holds (a reload retired it)."""
    return [c for c in conns if c.channel.key_id is not None and not keys.holds(c.channel.key_id)]


def host_of(address: str) -> str:
    """The source host of ``host:port`` (IPv6 too): what fairness between sources counts."""
    return address.rpartition(":")[0] or address


class HandshakeBudget:
    """One budget of inbound handshakes, by source host and oldest first.

    When it is full, ``victim`` names the connection to close so that a new
    one can have its slot: one of the source host holding the most (a flood
    from another address never pushes out a peer's connection while it holds
    more than the peer), and of that host's, the oldest: a real peer's INIT
    arrives within a round trip of its connect, so to push it out a flood
    from its own address has to replace the whole budget within that time.
    Everything is O(number of source hosts), not O(connections): a flood
    makes the node evict at the rate it connects.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._by_host: dict[str, dict[int, Conn]] = {}  # insertion order: oldest first

    def __contains__(self, conn: Conn) -> bool:
        return conn.id in self._by_host.get(host_of(conn.address), {})

    @property
    def full(self) -> bool:
        return self.size >= self.limit

    def add(self, conn: Conn) -> None:
        held = self._by_host.setdefault(host_of(conn.address), {})
        if conn.id not in held:
            held[conn.id] = conn
            self.size += 1

    def discard(self, conn: Conn) -> None:
        host = host_of(conn.address)
        held = self._by_host.get(host)
        if held is not None and held.pop(conn.id, None) is not None:
            self.size -= 1
            if not held:
                del self._by_host[host]

    def victim(self) -> Conn | None:
        def rank(held: dict[int, Conn]) -> tuple[int, float, int]:
            oldest = next(iter(held.values()))
            return len(held), -oldest.created, -oldest.id

        if not self._by_host:
            return None
        return next(iter(max(self._by_host.values(), key=rank).values()))


def init_overdue(conn: Conn, now: float, handshake_timeout: float) -> bool:
    """An inbound connection that has not delivered its INIT in time."""
    return (
        not conn.initiator
        and conn.channel.state is State.AWAIT_INIT
        and now - conn.created > min(INIT_TIMEOUT, handshake_timeout)
    )
