"""Inbound handshake slots under an unauthenticated flood: eviction, fairness, the INIT timeout."""

from __future__ import annotations

import random
import struct
from collections import Counter

from hasyncd.core.events import Close
from hasyncd.core.links import (
    INIT_TIMEOUT,
    MAX_HANDSHAKING,
    MAX_UNPROVEN,
    HandshakeBudget,
    host_of,
)
from hasyncd.core.node import NodeCore
from hasyncd.core.peers import Conn
from hasyncd.core.settings import CoreSettings
from hasyncd.secret import Secret
from hasyncd.sim import Sim
from hasyncd.store import Store
from hasyncd.wire import handshake as hs
from hasyncd.wire.channel import Channel, State
from hasyncd.wire.messages import Hello, Role

from .simutil import in_sync, pair

PSK = Secret(bytes(range(32)))
FLOOD = MAX_UNPROVEN + 8  # connections per node: the budget stays full and churns
# The first bytes of a 200-byte INIT frame: length prefix, magic, version, type.
PARTIAL_INIT = struct.pack(">I", 200) + hs.MAGIC + bytes((1, hs.HsType.INIT))


def core(name: str = "a") -> NodeCore:
    settings = CoreSettings(name=name, tag=1, priority=100, group_id=1, psk=PSK, listen="x:1")
    return NodeCore(settings, Store(), now=0.0, wall=0.0, boot_id=bytes(16))


def init_frame(name: str = "b") -> bytes:
    """A valid INIT from a PSK holder (what a real peer sends first)."""
    ch = Channel(
        initiator=True, psk=PSK, group_id=1, hello=Hello(name, bytes(range(16)), 2, 1 << 20, "")
    )
    ch.start()
    return ch.take_output()


def closes(node: NodeCore) -> list[int]:
    return [ev.conn_id for ev in node.events() if isinstance(ev, Close)]


def victim(*conns: Conn) -> Conn | None:
    """The victim of a budget holding ``conns``, added oldest first (as a node adds them)."""
    budget = HandshakeBudget(len(conns))
    for c in sorted(conns, key=lambda c: c.created):
        budget.add(c)
    assert budget.full and budget.size == len(conns)
    return budget.victim()


def fake(conn_id: int, address: str, created: float, state: State) -> Conn:
    ch = Channel(initiator=False, psk=PSK, group_id=1, hello=Hello("a", bytes(16), 1, 4096, ""))
    ch.state = state
    return Conn(conn_id, ch, False, address, created)


# --- the victim: pure choice ---------------------------------------------------------


def test_victim_comes_from_the_host_holding_the_most_slots_then_the_oldest() -> None:
    peer = fake(1, "10.0.0.1:4000", 0.0, State.AWAIT_INIT)  # oldest of all
    attacker = [fake(10 + i, f"10.0.0.9:{5000 + i}", 1.0 + i, State.AWAIT_INIT) for i in range(3)]
    assert victim(peer, *attacker) is attacker[0]
    # IPv6 sources are grouped by host too.
    v6 = [fake(20 + i, f"2001:db8::9:{6000 + i}", 0.5 + i, State.AWAIT_INIT) for i in range(4)]
    assert victim(peer, *attacker, *v6) is v6[0]
    # Equal counts: the host with the oldest connection loses that one.
    other = fake(30, "10.0.0.3:1", 0.2, State.AWAIT_INIT)
    assert victim(peer, other) is peer
    assert HandshakeBudget(1).victim() is None


def test_random_pools_always_take_from_a_busiest_host_its_oldest() -> None:
    rng = random.Random(7)
    for _ in range(300):
        conns = [
            fake(
                i,
                f"10.0.0.{rng.randint(1, 4)}:{i}",
                rng.random(),
                State.AWAIT_INIT,
            )
            for i in range(MAX_HANDSHAKING)
        ]
        budget = HandshakeBudget(MAX_HANDSHAKING)
        for c in sorted(conns, key=lambda c: c.created):
            budget.add(c)
        gone = conns[rng.randrange(len(conns))]
        budget.discard(gone)
        budget.discard(gone)  # twice: no effect
        pool = [c for c in conns if c is not gone]
        assert budget.size == len(pool) and not budget.full
        got = budget.victim()
        assert got is not None and got is not gone
        counts = Counter(host_of(c.address) for c in pool)
        assert counts[host_of(got.address)] == max(counts.values())
        assert got.created == min(
            c.created for c in pool if host_of(c.address) == host_of(got.address)
        )


# --- the node core: admission, eviction, timeouts -------------------------------------


def test_a_full_budget_admits_the_new_connection_and_evicts_the_oldest_silent_one() -> None:
    node = core()
    for i in range(MAX_UNPROVEN):
        node.connection_made(
            i + 1, initiator=False, address=f"127.0.0.1:{4000 + i}", now=i * 1e-4, wall=0.0
        )
    assert closes(node) == []
    node.connection_made(1000, initiator=False, address="127.0.0.1:9000", now=0.5, wall=0.0)
    assert closes(node) == [1]
    assert 1000 in node.conns and 1 not in node.conns
    assert len(node.conns) == MAX_UNPROVEN
    assert node.stats["link_refused"]["handshake_evicted"] == 1
    assert node.stats["link_refused"].get("too_many_handshakes", 0) == 0


def test_a_peer_whose_init_decrypted_outlives_a_flood_from_its_own_address() -> None:
    node = core()
    node.connection_made(1, initiator=False, address="127.0.0.1:4000", now=0.0, wall=0.0)
    node.receive_data(1, init_frame(), now=0.001, wall=0.0)
    assert node.conns[1].channel.state is State.AWAIT_CONFIRM
    node.data_to_send()
    flood = 3 * MAX_UNPROVEN
    for i in range(flood):
        node.connection_made(
            10 + i, initiator=False, address=f"127.0.0.1:{5000 + i}", now=0.002, wall=0.0
        )
        node.receive_data(10 + i, PARTIAL_INIT, now=0.002, wall=0.0)
    assert 1 in node.conns
    assert 1 not in closes(node)
    assert node.stats["link_refused"]["handshake_evicted"] == flood - MAX_UNPROVEN


def test_proven_handshakes_have_their_own_budget_and_the_oldest_makes_room() -> None:
    node = core()
    for i in range(MAX_HANDSHAKING + 1):
        node.connection_made(
            i + 1, initiator=False, address=f"127.0.0.1:{4000 + i}", now=i * 0.01, wall=0.0
        )
        node.receive_data(i + 1, init_frame(f"n{i}"), now=i * 0.01, wall=0.0)
    # The 17th INIT that decrypted evicted the oldest proven one, nothing else.
    assert closes(node) == [1]
    proven = [c for c in node.conns.values() if c.channel.state is State.AWAIT_CONFIRM]
    assert len(proven) == MAX_HANDSHAKING
    assert node.stats["link_refused"]["handshake_evicted"] == 1
    # Silent connections never push a proven one out.
    for i in range(MAX_UNPROVEN + 5):
        node.connection_made(
            100 + i, initiator=False, address=f"127.0.0.1:{6000 + i}", now=0.5, wall=0.0
        )
    assert all(c.id in node.conns for c in proven)
    assert node.unproven.size == MAX_UNPROVEN and node.proven.size == MAX_HANDSHAKING


def test_inbound_connections_without_an_init_are_closed_after_the_init_timeout() -> None:
    node = core()
    node.connection_made(1, initiator=False, address="127.0.0.1:4000", now=0.0, wall=0.0)  # idle
    node.connection_made(2, initiator=False, address="127.0.0.1:4001", now=0.0, wall=0.0)
    node.receive_data(2, PARTIAL_INIT, now=0.0, wall=0.0)  # trickling
    node.connection_made(3, initiator=False, address="127.0.0.1:4002", now=0.0, wall=0.0)
    node.receive_data(3, init_frame(), now=0.0, wall=0.0)  # a real INIT: waits for the confirmation
    node.handle_timer(INIT_TIMEOUT - 0.01, wall=0.0)
    assert closes(node) == []
    node.handle_timer(INIT_TIMEOUT + 0.01, wall=0.0)
    assert sorted(closes(node)) == [1, 2]
    assert node.stats["link_errors"]["init_timeout"] == 2
    assert 3 in node.conns
    node.handle_timer(node.s.handshake_timeout + 0.01, wall=0.0)
    assert closes(node) == [3]
    assert node.stats["link_errors"]["handshake_timeout"] == 1


# --- the simulator: a pair under a flood from the peers' own addresses -----------------


def test_a_restarted_secondary_rejoins_while_both_nodes_are_flooded() -> None:
    sim = Sim(seed=5, latency=0.002, jitter=0.001)
    primary, secondary = pair(sim)
    floods = [
        # From the peer's own host (the sim names an inbound link "sim:<node>:..."): the hard case.
        sim.flood(target, FLOOD, host=f"sim:{other}", payloads=(b"", PARTIAL_INIT), seconds=4.0)
        for target, other in ((primary, secondary), (secondary, primary))
    ]
    sim.run_for(0.5)
    assert all(f.connects >= FLOOD for f in floods)
    for name in (primary, secondary):
        conns = sim.nodes[name].core.conns.values()
        held = sum(c.peer is None for c in conns)
        assert held >= MAX_HANDSHAKING, "the flood holds at least the 16 slots nodes had"
    sim.kill(secondary)
    sim.run_for(0.3)
    sim.restart(secondary)
    dual: list[float] = []

    def rejoined() -> bool:
        if len(sim.primaries()) > 1:
            dual.append(sim.now)
        node = sim.nodes[secondary]
        return (
            in_sync(sim, secondary)
            and node.role is Role.SECONDARY
            and node.core.roles.primary == primary
        )

    took = sim.run_until_true(rejoined, limit=5.0, step=0.001)
    assert took < 1.0, f"rejoined after {took:.3f} s"
    sim.run_for(1.0)  # the flood goes on: the pair stays as it is
    assert dual == []
    assert sim.primaries() == [primary]
    assert in_sync(sim, secondary)
    assert all(sim.now < f.until for f in floods)
    for name in (primary, secondary):
        assert sim.nodes[name].core.unproven.full, "the flood keeps the budget full"
        assert sim.nodes[name].core.stats["link_refused"]["handshake_evicted"] > 0
    for name in (primary, secondary):  # the budgets' books match the connections
        node = sim.nodes[name].core
        waiting = [c for c in node.conns.values() if not c.initiator and c.peer is None]
        assert node.unproven.size == sum(c.channel.state is State.AWAIT_INIT for c in waiting)
        assert node.proven.size == sum(c.channel.state is State.AWAIT_CONFIRM for c in waiting)
