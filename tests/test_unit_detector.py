"""Failure detection (``hasyncd.core.detector``) on a real node core, inputs given by hand.

A settled simulated pair provides the cores; the tests then give the
detector's inputs through the core (``note_lateness``: the timer ran late;
``check_peers``) with chosen ``now`` values and look at the peer state, the
counters, the events and the log.  (tests/test_unit_core_machines.py gives
the detector its narrow inputs directly.)
"""

from __future__ import annotations

import logging

import pytest

from hasyncd.core.detector import STALL_NOISE, check_peers, loss_deadline
from hasyncd.core.events import PeerChanged
from hasyncd.core.node import NodeCore
from hasyncd.core.peers import Peer
from hasyncd.sim import Sim

from .simutil import pair


def settled() -> tuple[Sim, NodeCore, NodeCore]:
    sim = Sim(seed=51)
    pair(sim)
    sim.run_for(0.3)
    return sim, sim.nodes["a"].core, sim.nodes["b"].core


def test_stall_noise_is_20_ms() -> None:
    assert STALL_NOISE == 0.02


def test_the_loss_deadline_is_last_rx_plus_timeout_plus_stall_credit() -> None:
    p = Peer("x", 1, b"", 1, "sim:x")
    p.last_rx, p.stall = 10.0, 0.25
    assert loss_deadline(p, 0.5) == 10.75
    p.stall = 0.0
    assert loss_deadline(p, 2.0) == 12.0


def test_check_peers_counts_every_loss_it_suppresses_once_and_declares_the_rest() -> None:
    def up_peer(name: str, last_rx: float, stall: float) -> Peer:
        p = Peer(name, 1, b"", 1, f"sim:{name}")
        p.up, p.last_rx, p.stall = True, last_rx, stall
        return p

    # Three peers silent for 0.6 s of a 0.5 s timeout: two covered by this node's stall.
    x, y, z = up_peer("x", 10.0, 0.3), up_peer("y", 10.0, 0.4), up_peer("z", 10.0, 0.0)
    quiet = up_peer("q", 10.5, 0.0)  # heard from 0.1 s ago: not silent at all
    v = check_peers([x, y, z, quiet], 0.5, 10.6)
    assert v.suppressed == 2
    assert [(p.name, why) for p, why in v.lost] == [("z", "no authenticated frame for 600 ms")]
    # A suppressed loss is counted once, not at every check.
    again = check_peers([x, y], 0.5, 10.65)
    assert (again.suppressed, again.lost) == (0, ())


def test_lateness_within_the_noise_is_ignored() -> None:
    _sim, _a, b = settled()
    peer = b.peers["a"]
    b.note_lateness(STALL_NOISE, b.now)
    assert peer.stall == 0.0
    assert b.stats["loop_stalls"][""] == 0


def test_lateness_credits_every_up_peer_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    _sim, _a, b = settled()
    peer = b.peers["a"]
    down = Peer("c", 9, b"", 1, "sim:c")  # a known peer that is not up gets no credit
    b.peers["c"] = down
    caplog.set_level(logging.WARNING, logger="hasyncd.core")
    caplog.clear()  # not the set-up's lines (logged at INFO if an earlier test lowered the level)
    b.note_lateness(0.03, b.now)
    b.note_lateness(0.05, b.now)
    assert peer.stall == pytest.approx(0.08)
    assert down.stall == 0.0
    assert b.stats["loop_stalls"][""] == 2
    # Short stalls are not worth a warning; one of a heartbeat interval or more is.
    assert [r for r in caplog.records if r.name == "hasyncd.core"] == []
    b.note_lateness(b.s.heartbeat_interval, b.now)
    msgs = [r.getMessage() for r in caplog.records if r.name == "hasyncd.core"]
    assert msgs == ["this node's event loop stalled for 100 ms"]
    b.note_lateness(1.0, b.now)
    assert caplog.messages[-1] == "this node's event loop stalled for 1000 ms"


def test_a_stall_fences_a_primary_that_sent_no_heartbeat_for_too_long() -> None:
    _sim, a, b = settled()
    threshold = a.roles.duties.fence_threshold
    now = a.last_heartbeat_sent + threshold + 0.05
    a.note_lateness(0.05, now)
    fence = a.roles.fence
    assert fence is not None
    assert fence.since == now
    assert fence.reason == f"own stall: no heartbeat sent for {(threshold + 0.05) * 1000:.0f} ms"
    # A secondary has no lease to lose.
    b.note_lateness(5.0, b.last_heartbeat_sent + 10.0)
    assert b.roles.fence is None


def test_a_short_stall_of_a_primary_does_not_fence_it() -> None:
    _sim, a, _b = settled()
    a.note_lateness(0.05, a.last_heartbeat_sent + 0.1)
    assert a.roles.fence is None


def test_a_peer_is_lost_after_the_timeout_without_a_frame() -> None:
    _sim, _a, b = settled()
    peer = b.peers["a"]
    lost = b.s.lost_timeout
    b.events()
    b.check_peers(peer.last_rx + lost - 0.001)
    assert peer.up
    b.check_peers(peer.last_rx + lost + 0.1234)
    assert not peer.up
    changes = [ev for ev in b.events() if isinstance(ev, PeerChanged)]
    assert [(ev.node, ev.up, ev.reason) for ev in changes] == [
        ("a", False, "no authenticated frame for 623 ms")
    ]
    assert b.stats["peers_lost"][""] == 1


def test_a_loss_the_stall_credit_explains_is_suppressed_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _sim, _a, b = settled()
    peer = b.peers["a"]
    lost = b.s.lost_timeout
    peer.stall = 0.3
    caplog.set_level(logging.WARNING, logger="hasyncd.core")
    caplog.clear()  # not the set-up's lines (logged at INFO if an earlier test lowered the level)
    b.check_peers(peer.last_rx + lost + 0.1)
    b.check_peers(peer.last_rx + lost + 0.2)
    assert peer.up
    assert peer.suppressed
    assert b.stats["loss_suppressed_own_stall"][""] == 1
    msgs = [r.getMessage() for r in caplog.records if r.name == "hasyncd.core"]
    assert msgs == [
        "a silent for 600 ms, but this node itself stalled 300 ms of that: not declaring it lost"
    ]
    # Past the credit too: lost.
    b.check_peers(loss_deadline(peer, lost))
    assert not peer.up


def test_the_suppression_message_gives_the_silence_and_the_stall_in_ms(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _sim, _a, b = settled()
    peer = b.peers["a"]
    peer.stall = 1.0
    caplog.set_level(logging.WARNING, logger="hasyncd.core")
    caplog.clear()  # not the set-up's lines (logged at INFO if an earlier test lowered the level)
    b.check_peers(peer.last_rx + 1.0)
    assert [r.getMessage() for r in caplog.records if r.name == "hasyncd.core"] == [
        "a silent for 1000 ms, but this node itself stalled 1000 ms of that: not declaring it lost"
    ]


def test_a_suppressed_peer_does_not_stop_the_check_of_the_others() -> None:
    sim = Sim(seed=52)
    sim.cluster(["a", "b", "c"])
    sim.run_until_true(lambda: len(sim.primaries()) == 1, limit=10)
    sim.run_for(1.0)
    core = next(n.core for n in sim.nodes.values() if n.role.name != "PRIMARY")
    first, second = list(core.peers.values())
    assert first.up and second.up
    first.stall = 10.0  # the first one's silence is explained by our own stall
    now = max(first.last_rx, second.last_rx) + core.s.lost_timeout + 0.1
    core.check_peers(now)
    assert first.up
    assert first.suppressed
    assert not second.up


def test_a_peer_that_is_already_down_is_not_checked() -> None:
    _sim, _a, b = settled()
    peer = b.peers["a"]
    peer.up = False
    b.events()
    b.check_peers(peer.last_rx + 100.0)
    assert [ev for ev in b.events() if isinstance(ev, PeerChanged)] == []
    assert b.stats["peers_lost"][""] == 0
