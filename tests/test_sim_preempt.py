"""Preemption (``node.override``) in the simulator, with a short ``preempt_delay``.

The delay defaults to 60 s; these tests set it to 0.5 s and then watch for
many times that long, so a primary that preempts without ``override``, or
before the delay, or never, fails here.  Simulated time only: nothing here
depends on how fast the machine is.
"""

from __future__ import annotations

import logging

import pytest

from hasyncd.core.events import HandoverFinished, RoleChanged
from hasyncd.sim import Sim
from hasyncd.wire.messages import Role

from .simutil import WEB, in_sync, pair, put, role

DELAY = 0.5


def _b_primary_a_returned(sim: Sim) -> None:
    """a (priority 200) dies, b (100) takes over, a comes back and catches up."""
    sim.kill("a")
    sim.run_until_true(lambda: role(sim, "b") is Role.PRIMARY, limit=5)
    put(sim, "b", WEB, 7)
    sim.restart("a")
    sim.run_until_true(lambda: in_sync(sim, "a"), limit=10, step=0)


def _role_changes(sim: Sim, name: str, since: float) -> list[RoleChanged]:
    return [ev for t, ev in sim.nodes[name].events if t >= since and isinstance(ev, RoleChanged)]


def test_without_override_a_recovered_higher_priority_node_never_preempts() -> None:
    sim = Sim(seed=41)
    pair(sim, preempt_delay=DELAY)
    _b_primary_a_returned(sim)
    since = sim.now
    duties = sim.nodes["b"].core.roles.duties
    for _ in range(40):  # 20 preempt delays, checked every half delay
        sim.run_for(DELAY / 2)
        assert duties.preempt_since is None
        assert duties.handover is None
    assert role(sim, "b") is Role.PRIMARY
    assert role(sim, "a") is Role.SECONDARY
    assert _role_changes(sim, "b", since) == []
    assert in_sync(sim, "a")


def _until_preempt_timer(sim: Sim) -> float:
    duties = sim.nodes["b"].core.roles.duties
    sim.run_until_true(lambda: duties.preempt_since is not None, limit=5, step=0)
    assert duties.preempt_since is not None
    return duties.preempt_since


def test_with_override_the_primary_preempts_after_the_delay_and_not_before() -> None:
    sim = Sim(seed=42)
    pair(sim, override=True, preempt_delay=DELAY)
    _b_primary_a_returned(sim)
    t_sync = sim.now
    duties = sim.nodes["b"].core.roles.duties
    # The delay starts once b sees a in sync (its next heartbeat), not at a's restart.
    t0 = _until_preempt_timer(sim)
    assert t_sync <= t0 < t_sync + 0.2
    # Not before the delay: no handover while the delay runs.
    while sim.now < t0 + DELAY - 0.005:
        sim.run_for(0.005)
        assert duties.handover is None
        assert role(sim, "b") is Role.PRIMARY
    # After it: the handover starts (at the latest on the next heartbeat tick) ...
    sim.run_until_true(lambda: duties.handover is not None, limit=1, step=0)
    h = duties.handover
    assert h is not None
    started = h.deadline - sim.nodes["b"].settings.handover_timeout
    assert t0 + DELAY <= started <= t0 + DELAY + sim.nodes["b"].settings.heartbeat_interval
    assert h.target == "a"
    assert h.planned
    assert h.reason == "preemption: selected by priority 200 over b"
    assert sim.nodes["b"].core.roles.reason.startswith("handing over to a: preemption")
    # ... and completes: a primary, b following it, nothing lost.
    sim.run_until_true(
        lambda: role(sim, "a") is Role.PRIMARY and role(sim, "b") is Role.SECONDARY, limit=5
    )
    sim.run_until_true(lambda: in_sync(sim, "b"), limit=5)
    assert duties.preempt_since is None
    finished = [ev for _, ev in sim.nodes["b"].events if isinstance(ev, HandoverFinished)]
    assert [(ev.target, ev.ok) for ev in finished] == [("a", True)]


def test_the_delay_is_inclusive_and_the_pending_preemption_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = Sim(seed=45)
    pair(sim, override=True, preempt_delay=DELAY)
    caplog.set_level(logging.INFO, logger="hasyncd.roles")
    _b_primary_a_returned(sim)
    _until_preempt_timer(sim)
    assert (
        "a should be primary (selected by priority 200 over b): preempting in 0.5 s"
        in caplog.messages
    )
    # Binary-exact times: the handover starts when exactly the delay has passed.
    duties = sim.nodes["b"].core.roles.duties
    duties.preempt_since = 1000.0
    duties.run(1000.0 + DELAY - 2**-20)
    assert duties.handover is None
    duties.run(1000.0 + DELAY)
    assert duties.handover is not None
    assert duties.handover.target == "a"


def test_the_preempt_delay_starts_over_when_the_better_node_goes_away() -> None:
    sim = Sim(seed=43)
    pair(sim, override=True, preempt_delay=DELAY)
    _b_primary_a_returned(sim)
    duties = sim.nodes["b"].core.roles.duties
    first = _until_preempt_timer(sim)
    sim.run_until(first + DELAY * 0.6)
    sim.kill("a")  # gone before the delay ran out: b forgets the pending preemption
    sim.run_until_true(lambda: duties.preempt_since is None, limit=5, step=0)
    sim.run_for(DELAY)
    assert duties.handover is None
    sim.restart("a")
    sim.run_until_true(lambda: in_sync(sim, "a"), limit=10, step=0)
    second = _until_preempt_timer(sim)
    assert second > first + DELAY
    sim.run_until(second + DELAY - 0.01)
    assert duties.handover is None
    assert role(sim, "b") is Role.PRIMARY
    sim.run_until_true(lambda: role(sim, "a") is Role.PRIMARY, limit=5)


def test_an_equal_or_worse_node_is_not_preempted_for() -> None:
    # b (100) is primary and a node of lower priority returns: nothing happens.
    sim = Sim(seed=44)
    sim.add("a", ["a", "b"], priority=50, override=True, preempt_delay=DELAY)
    sim.add("b", ["a", "b"], priority=100, override=True, preempt_delay=DELAY)
    sim.run_until_true(lambda: in_sync(sim, "a"), limit=10)
    assert role(sim, "b") is Role.PRIMARY
    duties = sim.nodes["b"].core.roles.duties
    sim.run_for(DELAY * 10)
    assert duties.preempt_since is None
    assert duties.handover is None
    assert role(sim, "b") is Role.PRIMARY
