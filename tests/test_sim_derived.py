"""Derived state is computed once, at the end of every input (issue 9, h11's ``_process_event``).

The watermark (the version every in-sync secondary acknowledged, which
sync-mode writes wait for) is no longer kept up to date by hand from the
places that change a session: ``NodeCore`` derives it from the sessions at
the end of each input and emits ``Watermark`` when it moved.  These tests
watch every input of a three-node simulation through a failover, a resync
and a partition.

Whether a node holds a complete copy is told the same way: the rules set
``RoleManager.in_sync``; ``NodeCore`` compares it with the last
``SyncChanged`` it emitted, at the end of each input, and emits one when it
differs, so no rule can change it silently.

The roles decide that the heartbeat's content changed (``RoleManager.announce``:
a peer lost, a promotion, a step-down, a fault); ``NodeCore`` sends the beat,
once per input, before the replication output of that input.
"""

from __future__ import annotations

from collections.abc import Callable

from hasyncd.core.events import SyncChanged, Watermark
from hasyncd.core.node import NodeCore
from hasyncd.sim import Sim, SimNode
from hasyncd.wire.messages import Role

from .simutil import WEB, in_sync, put, role


def derived(core: NodeCore) -> int | None:
    """The watermark from first principles: the least ack of the linked in-sync sessions."""
    acks = [
        p.session.acked
        for p in core.peers.values()
        if p.session is not None and p.session.in_sync and p.conn is not None
    ]
    return min(acks) if acks else None


def watch(sim: Sim) -> list[str]:
    """Check after every input; returns the violations seen."""
    bad: list[str] = []
    after: Callable[[SimNode], None] = sim._after
    told: dict[str, bool] = {}  # the last SyncChanged per node (none: False)

    def checked(node: SimNode) -> None:
        core = node.core
        syncs = [ev.in_sync for ev in core._events if isinstance(ev, SyncChanged)]
        if len(syncs) > 1:
            bad.append(f"t={sim.now} {node.name}: SyncChanged {syncs} in one input")
        if syncs and syncs[-1] == told.get(node.name, False):
            bad.append(f"t={sim.now} {node.name}: SyncChanged({syncs[-1]}) changes nothing")
        if syncs:
            told[node.name] = syncs[-1]
        if told.get(node.name, False) != core.roles.in_sync:
            bad.append(f"t={sim.now} {node.name}: in_sync {core.roles.in_sync} not told")
        pending = [ev for ev in core._events if isinstance(ev, Watermark)]
        if len(pending) > 1:
            bad.append(f"t={sim.now} {node.name}: {len(pending)} Watermark events in one input")
        if core.watermark != derived(core):
            bad.append(f"t={sim.now} {node.name}: watermark {core.watermark} != {derived(core)}")
        if pending and pending[-1].version != core.watermark:
            bad.append(f"t={sim.now} {node.name}: emitted {pending[-1]} != {core.watermark}")
        after(node)

    sim._after = checked  # type: ignore[method-assign]
    return bad


def test_the_watermark_is_derived_once_per_input_through_failover_and_resync() -> None:
    sim = Sim(seed=83)
    bad = watch(sim)
    names = ["a", "b", "c"]
    for i, n in enumerate(names):
        sim.add(n, names, priority=250 - 100 * i)
    sim.run_until_true(lambda: in_sync(sim, "b") and in_sync(sim, "c"), limit=15)
    for i in range(50):
        put(sim, "a", WEB, i)
        sim.run_for(0.01)
    sim.partition("a", "c")
    sim.run_for(3.0)
    sim.heal("a", "c")
    sim.run_until_true(lambda: in_sync(sim, "c"), limit=15)
    sim.kill("a")
    sim.run_until_true(lambda: role(sim, "b") is Role.PRIMARY, limit=15)
    for i in range(50, 80):
        put(sim, "b", WEB, i)
    sim.run_until_true(lambda: in_sync(sim, "c"), limit=15)
    sim.run_for(1.0)
    assert sim.nodes["b"].core.watermark is not None  # c is in sync with the new primary
    moved = [ev for _, ev in sim.nodes["b"].events if isinstance(ev, Watermark)]
    assert moved, "the new primary's watermark moved"
    assert bad == []


def three(sim: Sim) -> None:
    names = ["a", "b", "c"]
    for i, n in enumerate(names):
        sim.add(n, names, priority=250 - 100 * i)
    sim.run_until_true(lambda: in_sync(sim, "b") and in_sync(sim, "c"), limit=15)


def test_the_roles_decide_to_announce_and_the_node_sends_one_beat_per_peer() -> None:
    sim = Sim(seed=84)
    three(sim)
    core = sim.nodes["b"].core
    sent = core.stats["heartbeats_sent"][""]
    core.peer_lost(core.peers["c"], sim.now, "test: c lost")
    assert core.roles.announce  # a decision, not a send
    assert core.stats["heartbeats_sent"][""] == sent
    sim.call("b", lambda c: c.transmit(sim.now, wall=sim.wall))  # the next input applies it
    assert not core.roles.announce
    assert core.stats["heartbeats_sent"][""] == sent + 1  # to a: the link to c was closed


def test_sync_changed_is_derived_once_per_input_through_a_manual_failover() -> None:
    sim = Sim(seed=85)
    bad = watch(sim)
    three(sim)
    for i in range(20):
        put(sim, "a", WEB, i)
    sim.call("a", lambda c: c.request_failover(sim.now, wall=sim.wall))
    sim.run_until_true(lambda: role(sim, "a") is Role.SECONDARY, limit=5)
    sim.run_until_true(lambda: in_sync(sim, "a") and in_sync(sim, "c"), limit=15)
    seen = [ev.in_sync for _, ev in sim.nodes["a"].events if isinstance(ev, SyncChanged)]
    assert seen == [True, False, True]  # promoted at cold start, stepped down, resynced
    assert bad == []


def test_an_in_sync_changed_by_any_rule_is_told_at_the_end_of_the_input() -> None:
    # Not only the rules that call set_in_sync: the node derives the event
    # from the state, so even a direct assignment is told by the next input.
    sim = Sim(seed=86)
    three(sim)
    node = sim.nodes["c"]
    told = len([ev for _, ev in node.events if isinstance(ev, SyncChanged)])
    node.core.roles.in_sync = False
    sim.call("c", lambda c: c.transmit(sim.now, wall=sim.wall))
    syncs = [ev for _, ev in node.events if isinstance(ev, SyncChanged)][told:]
    assert [(ev.in_sync, ev.primary) for ev in syncs] == [(False, "a")]
