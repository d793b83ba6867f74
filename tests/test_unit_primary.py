"""What only the primary does (``hasyncd.core.primary.PrimaryDuties``): lease, fence, handover.

Each test starts from a settled simulated pair (a primary, b its in-sync
secondary) and drives one rule, either through the simulator or by calling
the duties with a chosen ``now``.
"""

from __future__ import annotations

import logging

import msgspec
import pytest

from hasyncd.core.effects import PUMP, Count
from hasyncd.core.events import HandoverFinished
from hasyncd.core.node import NodeCore
from hasyncd.core.primary import PrimaryDuties
from hasyncd.errors import WriteRefused
from hasyncd.sim import Sim
from hasyncd.wire.messages import F_FENCED, F_HANDING_OVER, F_SUSPENDED, Role

from .simutil import WEB, in_sync, pair, put, role


def settled(seed: int = 61, **kw: object) -> tuple[Sim, NodeCore, PrimaryDuties]:
    sim = Sim(seed=seed)
    pair(sim, **kw)
    sim.run_for(0.3)
    core = sim.nodes["a"].core
    return sim, core, core.roles.duties


def finished(sim: Sim, name: str) -> list[tuple[str, bool, str]]:
    return [
        (ev.target, ev.ok, ev.reason)
        for _, ev in sim.nodes[name].events
        if isinstance(ev, HandoverFinished)
    ]


# --- the lease and the fence ------------------------------------------------------------


def test_the_fence_threshold_is_one_interval_short_of_the_peers_patience() -> None:
    _sim, core, duties = settled()
    assert duties.fence_threshold == pytest.approx(core.s.lost_timeout - 0.1)
    assert duties.flags() == 0
    assert duties.deadlines() == []
    assert duties.status(core.now) == {"fenced": None, "handover": None}
    assert [p.name for p in duties.in_sync_peers()] == ["b"]


def test_a_fenced_primary_refuses_writes_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    _sim, core, duties = settled()
    now = core.now
    caplog.set_level(logging.WARNING, logger="hasyncd.roles")
    caplog.clear()
    duties.enter_fence(now, "a test")
    fence = duties.fence
    assert fence is not None
    assert (fence.since, fence.since_ms, fence.reason, fence.confirmed) == (
        now,
        core.now_ms(now),
        "a test",
        set(),
    )
    # Queued for the node to apply, not counted by the duties themselves.
    assert duties.out.take() == [Count("fenced")]
    assert caplog.messages == [
        "FENCED: refusing writes until peers confirm this node as primary (a test)"
    ]
    with pytest.raises(WriteRefused) as err:
        duties.check_writable(now)
    assert (err.value.code, str(err.value)) == ("fenced", "re-verifying primacy after a test")
    assert duties.flags() == F_FENCED
    assert duties.deadlines() == [now + core.s.lost_timeout]
    assert duties.status(now + 0.12345) == {
        "fenced": {"reason": "a test", "since_s": 0.123},
        "handover": None,
    }


def test_a_silence_of_exactly_the_threshold_does_not_fence() -> None:
    # Binary-exact intervals, so that "exactly the threshold" is exact in floats.
    _sim, core, duties = settled(heartbeat_interval=0.25, lost_threshold=4)
    assert duties.fence_threshold == 0.75
    last = float(int(core.now) + 1)
    core.send_heartbeats(last)
    assert core.last_heartbeat_sent == last
    duties.check_writable(last + 0.75)
    assert duties.fence is None
    with pytest.raises(WriteRefused):
        duties.check_writable(last + 0.75 + 2**-20)
    assert duties.fence is not None


def test_a_primary_that_sent_no_heartbeat_past_the_threshold_fences_itself() -> None:
    _sim, core, duties = settled()
    last = core.last_heartbeat_sent
    duties.check_writable(last + duties.fence_threshold - 0.001)  # still within: writable
    assert duties.fence is None
    with pytest.raises(WriteRefused) as err:
        duties.check_writable(last + 0.45)
    assert err.value.code == "fenced"
    assert duties.fence is not None
    assert duties.fence.reason == "no heartbeat sent for 450 ms"
    assert duties.fence.since == last + 0.45


def test_a_stall_fences_with_its_cause_in_the_reason() -> None:
    _sim, core, duties = settled()
    duties.after_stall(core.last_heartbeat_sent + 0.2)
    assert duties.fence is None
    duties.after_stall(core.last_heartbeat_sent + 0.6)
    assert duties.fence is not None
    assert duties.fence.reason == "own stall: no heartbeat sent for 600 ms"
    # Already fenced: a later stall does not restart the fence.
    since = duties.fence.since
    duties.after_stall(core.last_heartbeat_sent + 0.9)
    assert duties.fence.since == since
    assert duties.out.take() == [Count("fenced")]


def test_only_a_heartbeat_naming_us_in_our_epoch_after_the_fence_confirms() -> None:
    _sim, core, duties = settled()
    peer = core.peers["b"]
    epoch = core.roles.epoch
    duties.confirm(peer, "a", epoch, 10**9)  # no fence: nothing to confirm, no error
    duties.enter_fence(core.now, "test")
    fence = duties.fence
    assert fence is not None
    duties.confirm(peer, "b", epoch, fence.since_ms)  # follows someone else
    duties.confirm(peer, "a", epoch + 1, fence.since_ms)  # another epoch
    duties.confirm(peer, "a", epoch, fence.since_ms - 1)  # echoes a time before the fence
    assert fence.confirmed == set()
    duties.confirm(peer, "a", epoch, fence.since_ms)
    assert fence.confirmed == {"b"}


def test_the_fence_lifts_once_every_reachable_peer_confirmed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _sim, core, duties = settled()
    now = core.now
    duties.enter_fence(now, "test")
    fence = duties.fence
    assert fence is not None
    duties.run(now + 10.0)  # b is up and has not confirmed: still fenced, however long
    assert duties.fence is fence
    fence.confirmed.add("somebody else")
    duties.run(now + 10.0)
    assert duties.fence is fence
    caplog.set_level(logging.WARNING, logger="hasyncd.roles")
    caplog.clear()
    fence.confirmed.add("b")
    duties.run(now)
    assert duties.fence is None
    assert caplog.messages == ["fence lifted: every reachable peer confirmed this node as primary"]


def test_the_fence_lifts_after_a_detection_time_with_no_peer_reachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _sim, core, duties = settled()
    now = core.now
    duties.enter_fence(now, "test")
    core.peers["b"].up = False
    duties.run(now + core.s.lost_timeout - 0.01)
    assert duties.fence is not None
    caplog.set_level(logging.WARNING, logger="hasyncd.roles")
    caplog.clear()
    duties.run(now + core.s.lost_timeout)
    assert duties.fence is None
    assert caplog.messages == ["fence lifted: no peer reachable for a full detection time"]


def test_in_sync_peers_are_the_up_linked_peers_whose_session_is_in_sync() -> None:
    _sim, core, duties = settled()
    peer = core.peers["b"]
    assert peer.session is not None
    peer.session.in_sync = False
    assert duties.in_sync_peers() == []
    peer.session.in_sync = True
    peer.up = False
    assert duties.in_sync_peers() == []
    peer.up = True
    conn, peer.conn = peer.conn, None
    assert duties.in_sync_peers() == []
    peer.conn = conn
    hb, peer.hb = peer.hb, None
    assert duties.in_sync_peers() == []
    peer.hb = hb
    session, peer.session = peer.session, None
    assert duties.in_sync_peers() == []
    peer.session = session
    assert duties.in_sync_peers() == [peer]


# --- handover ---------------------------------------------------------------------------


def test_a_manual_failover_stops_writes_and_hands_over_promptly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim, core, duties = settled()
    now = sim.now
    caplog.set_level(logging.WARNING, logger="hasyncd.roles")
    caplog.clear()
    assert sim.call("a", lambda c: c.roles.duties.request_failover(now, "maintenance")) == "b"
    h = duties.handover
    assert h is not None
    assert (h.target, h.reason, h.deadline, h.planned) == (
        "b",
        "maintenance",
        now + core.s.handover_timeout,
        True,
    )
    assert "handing the primary role to b: maintenance" in caplog.messages
    assert core.roles.reason == "handing over to b: maintenance"
    assert duties.flags() == F_HANDING_OVER
    assert duties.deadlines() == [h.deadline]
    assert duties.status(now)["handover"] == {"target": "b", "reason": "maintenance"}
    assert duties.handed_to("b") is None  # not sent yet
    with pytest.raises(WriteRefused) as err:
        duties.check_writable(now)
    assert (err.value.code, str(err.value), err.value.primary) == (
        "handover_in_progress",
        "handing the primary role to b",
        "b",
    )
    with pytest.raises(WriteRefused) as err:
        duties.request_failover(now, "again")
    assert (err.value.code, str(err.value), err.value.primary) == (
        "handover_in_progress",
        "already handing over to b",
        "b",
    )
    # b had acknowledged everything: HANDOVER goes out at once, not on the next tick.
    sim.run_until_true(lambda: h.sent, limit=1, step=0)
    assert sim.now - now < core.s.heartbeat_interval
    assert duties.handed_to("b") is h
    assert duties.handed_to("a") is None
    sim.run_until_true(lambda: role(sim, "b") is Role.PRIMARY, limit=1, step=0)
    sim.run_until_true(lambda: role(sim, "a") is Role.SECONDARY, limit=1)
    assert finished(sim, "a")[-1][:2] == ("b", True)


def test_the_handover_waits_until_the_target_acknowledged_every_write() -> None:
    sim, core, duties = settled()
    put(sim, "a", WEB, 1)  # in flight to b
    session = core.peers["b"].session
    assert session is not None
    assert session.acked < core.roles.version
    duties.begin_handover("b", "test", sim.now)
    duties.check_handover_ready()
    assert duties.handover is not None
    assert not duties.handover.sent
    sim.run_until_true(lambda: session.acked >= core.roles.version, limit=1, step=0)
    duties.check_handover_ready()
    assert duties.handover.sent


def test_a_handover_not_taken_in_time_is_aborted_and_writes_resume(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim, core, duties = settled(handover_timeout=0.2)
    sim.freeze("b")  # up (not yet lost) but not taking over
    put(sim, "a", WEB, 1)  # never acknowledged by the frozen b: HANDOVER is not sent
    sim.call("a", lambda c: c.request_failover(sim.now, wall=sim.wall))
    deadline = duties.handover.deadline if duties.handover else 0.0
    caplog.set_level(logging.WARNING, logger="hasyncd.roles")
    caplog.clear()
    sim.run_until(deadline - 0.001)
    assert duties.handover is not None
    sim.run_until_true(lambda: duties.handover is None, limit=0.1, step=0)
    assert sim.now == deadline  # the timer is armed for it; aborted at, not after, it
    why = "b did not take over within 0.2 s"
    assert finished(sim, "a") == [("b", False, why)]
    assert core.stats["handovers_aborted"][""] == 1
    assert core.roles.reason == f"primary (handover to b aborted: {why})"
    assert f"handover to b aborted: {why}" in caplog.messages
    assert role(sim, "a") is Role.PRIMARY
    put(sim, "a", WEB, 2)  # writable again


def test_a_handover_is_aborted_when_the_link_to_its_target_goes_down() -> None:
    sim, _core, duties = settled()
    sim.freeze("b")
    put(sim, "a", WEB, 1)
    sim.call("a", lambda c: c.request_failover(sim.now, wall=sim.wall))
    sim.run_until_true(lambda: duties.handover is None, limit=2)
    [(target, ok, reason)] = finished(sim, "a")
    assert (target, ok) == ("b", False)
    assert reason.startswith("link to b went down: ")
    assert role(sim, "a") is Role.PRIMARY


def test_link_down_of_another_peer_or_after_handover_was_sent_does_not_abort() -> None:
    sim, core, duties = settled()
    duties.begin_handover("b", "test", sim.now)
    other = core.peers["b"]
    h = duties.handover
    assert h is not None
    h.target = "c"  # a handover to another node: b's link does not matter
    duties.link_down(other, "down")
    assert duties.handover is h
    h.target, h.sent = "b", True  # already sent: the target may be taking over
    duties.link_down(other, "down")
    assert duties.handover is h
    h.sent = False
    duties.link_down(other, "down")
    assert duties.handover is None
    assert duties.abort_handover("nothing to abort") is None
    assert duties.out.take() == [
        PUMP,  # begin_handover: the node should send what the target still lacks
        Count("handovers_aborted"),
        HandoverFinished("b", False, "link to b went down: down"),
    ]


def test_the_timer_is_armed_for_every_pending_duty() -> None:
    _sim, core, duties = settled(preempt_delay=7.0)
    duties.preempt_since = 100.0
    assert duties.deadlines() == [107.0]
    duties.enter_fence(50.0, "x")
    duties.begin_handover("b", "y", 60.0)  # forgets the pending preemption
    assert duties.preempt_since is None
    assert duties.deadlines() == [60.0 + core.s.handover_timeout, 50.0 + core.s.lost_timeout]
    duties.preempt_since = 100.0
    assert duties.deadlines()[-1] == 107.0


def test_a_link_failover_is_a_forced_handover() -> None:
    sim = Sim(seed=64)
    pair(sim, monitors=("eth1",))
    duties = sim.nodes["a"].core.roles.duties
    sim.call("a", lambda c: c.set_monitors(("eth1",), sim.now, wall=sim.wall))
    sim.run_until_true(lambda: duties.handover is not None, limit=1, step=0)
    h = duties.handover
    assert h is not None
    assert (h.target, h.planned) == ("b", False)
    assert h.reason == "link failover: selected by monitored interfaces (0 down) over a"


def test_a_suspended_primary_keeps_its_role_even_with_override() -> None:
    sim = Sim(seed=65)
    pair(sim, override=True, preempt_delay=0.5, max_flaps=1)
    core = sim.nodes["a"].core
    duties = core.roles.duties
    core.roles.damper.note(sim.now)
    core.roles.damper.note(sim.now)
    assert core.roles.suspended_since is not None
    for _ in range(10):
        sim.run_for(0.25)
        assert (duties.preempt_since, duties.handover) == (None, None)
    assert role(sim, "a") is Role.PRIMARY


def test_a_manual_failover_picks_the_best_in_sync_secondary_by_the_election_rules() -> None:
    for override, winner in ((False, "c"), (True, "b")):
        sim = Sim(seed=66)
        kw = {"override": override, "uptime_margin": 1.0}
        sim.add("a", ["a", "b", "c"], priority=250, **kw)
        sim.run_until_true(lambda s=sim: role(s, "a") is Role.PRIMARY, limit=5)
        # c has run for 2 s longer than b, beyond the 1 s uptime margin: without
        # override uptime decides (c); with it priority does (b).
        sim.add("c", ["a", "b", "c"], priority=100, **kw)
        sim.run_for(2)
        sim.add("b", ["a", "b", "c"], priority=200, **kw)
        sim.run_until_true(lambda s=sim: in_sync(s, "b") and in_sync(s, "c"), limit=10)
        assert sim.call("a", lambda c, s=sim: c.request_failover(s.now, wall=s.wall)) == winner


def test_a_long_handover_reason_is_cut_to_what_the_wire_carries() -> None:
    sim, _core, _duties = settled()
    long = "maintenance window " * 8  # 152 characters; HANDOVER carries 64
    assert sim.call("a", lambda c: c.roles.request_failover(sim.now, long)) == "b"
    sim.run_until_true(lambda: role(sim, "b") is Role.PRIMARY, limit=2)
    assert sim.nodes["b"].core.roles.reason == f"handover from a: {long[:64]}"


def test_the_handover_is_sent_only_to_an_up_in_sync_target_with_nothing_pending() -> None:
    sim, core, duties = settled()
    sim.freeze("b")  # nothing b could answer changes the state under test
    peer = core.peers["b"]
    session = peer.session
    assert session is not None
    assert session.acked >= core.roles.version
    duties.begin_handover("b", "test", sim.now)
    h = duties.handover
    assert h is not None
    peer.up = False
    duties.check_handover_ready()
    assert not h.sent
    peer.up = True
    session.in_sync = False
    duties.check_handover_ready()
    assert not h.sent
    session.in_sync = True
    session.pending[(WEB, "x")] = core.roles.version
    duties.check_handover_ready()
    assert not h.sent
    session.pending.clear()
    h.target = "nobody"  # a target that is no longer a peer: wait (its abort comes later)
    duties.check_handover_ready()
    assert not h.sent
    h.target = "b"
    duties.check_handover_ready()
    assert h.sent


def test_reset_forgets_fence_handover_and_preemption() -> None:
    _sim, core, duties = settled()
    duties.enter_fence(core.now, "x")
    duties.begin_handover("b", "y", core.now)
    duties.preempt_since = core.now
    h = duties.handover
    assert duties.reset() is h
    assert (duties.fence, duties.handover, duties.preempt_since) == (None, None, None)
    assert duties.reset() is None


def test_a_failover_needs_an_in_sync_secondary() -> None:
    sim, _core, duties = settled()
    sim.kill("b")
    sim.run_for(1)
    with pytest.raises(WriteRefused) as err:
        duties.request_failover(sim.now, "x")
    assert (err.value.code, str(err.value)) == (
        "no_in_sync_secondary",
        "no secondary is in sync: a handover now would lose data",
    )
    assert duties.handover is None


def test_a_failover_needs_an_eligible_secondary() -> None:
    sim, core, duties = settled()
    peer = core.peers["b"]
    assert peer.hb is not None
    peer.hb = msgspec.structs.replace(peer.hb, flags=peer.hb.flags | F_SUSPENDED)
    with pytest.raises(WriteRefused) as err:
        duties.request_failover(sim.now, "x")
    assert (err.value.code, str(err.value)) == (
        "no_in_sync_secondary",
        "no eligible secondary is in sync: a handover now would lose data",
    )


def test_a_failover_during_a_snapshot_says_how_far_the_secondary_got() -> None:
    sim = Sim(seed=62, latency=0.05, jitter=0.0)
    sim.add("a", ["a", "b"], priority=200, heartbeat_interval=0.2)
    sim.run_until_true(lambda: role(sim, "a") is Role.PRIMARY, limit=5)
    for i in range(800):
        put(sim, "a", WEB, i)
    sim.add("b", ["a", "b"], priority=100, heartbeat_interval=0.2, window=32 * 1024)
    core = sim.nodes["a"].core

    def loading() -> bool:
        s = core.peers["b"].session if "b" in core.peers else None
        return s is not None and s.bulk_acked > 0

    sim.run_until_true(loading, limit=10)
    assert not in_sync(sim, "b")
    session = core.peers["b"].session
    assert session is not None
    with pytest.raises(WriteRefused) as err:
        core.roles.duties.request_failover(sim.now, "x")
    assert err.value.code == "no_in_sync_secondary"
    assert str(err.value) == (
        f"no secondary is in sync (b is loading its snapshot: {session.bulk_acked} records "
        "acknowledged so far; retry once it is in sync): a handover now would lose data"
    )


# --- what stops a preemption ------------------------------------------------------------


def test_no_preemption_while_fenced_or_stopping_or_once_the_better_node_is_worse() -> None:
    sim = Sim(seed=63)
    pair(sim, override=True, preempt_delay=0.5, monitors=("eth1",))
    sim.kill("a")
    sim.run_until_true(lambda: role(sim, "b") is Role.PRIMARY, limit=5)
    sim.restart("a")
    sim.run_until_true(lambda: in_sync(sim, "a"), limit=10)
    sim.run_for(0.2)
    core = sim.nodes["b"].core
    duties = core.roles.duties
    assert duties.preempt_since is not None
    # Fenced: no election at all.
    duties.preempt_since = None
    duties.enter_fence(sim.now, "test")
    duties.run(sim.now)
    assert (duties.preempt_since, duties.handover) == (None, None)
    duties.fence = None
    # Stopping: no preemption.
    core.roles.shutting_down = True
    duties.run(sim.now)
    assert duties.preempt_since is None
    core.roles.shutting_down = False
    duties.run(sim.now)
    assert duties.preempt_since == sim.now
    # The better node's monitored interface goes down: the pending preemption is dropped.
    sim.call("a", lambda c: c.set_monitors(("eth1",), sim.now, wall=sim.wall))
    sim.run_for(0.2)
    assert duties.preempt_since is None
    sim.run_for(2.0)
    assert role(sim, "b") is Role.PRIMARY
