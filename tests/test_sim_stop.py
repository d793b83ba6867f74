"""A planned stop (SIGTERM) of a primary, driven in the simulator: hand over, wait for a
secondary still loading its snapshot, or say exactly what is lost."""

from __future__ import annotations

import logging

import pytest

from hasyncd.core.events import StopReady
from hasyncd.errors import WriteRefused
from hasyncd.sim import Sim
from hasyncd.wire.messages import Role

from .simutil import WEB, in_sync, put, role, snapshot

RECORDS = 20_000


def loading_pair(seed: int) -> Sim:
    """a: a lone primary holding RECORDS web sessions; b: joined and loading its snapshot.

    A 50 ms link latency and a 32 KiB window make the snapshot take seconds of simulated time.
    """
    sim = Sim(seed=seed, latency=0.05, jitter=0.0)
    sim.add("a", ["a", "b"], priority=200, heartbeat_interval=0.2)
    sim.run_until_true(lambda: role(sim, "a") is Role.PRIMARY, limit=5)
    for i in range(RECORDS):
        put(sim, "a", WEB, i)
    sim.add("b", ["a", "b"], priority=100, heartbeat_interval=0.2, window=32 * 1024)

    def loading() -> bool:
        f = sim.nodes["b"].core.roles.follower
        return f is not None and f.received > 1000

    sim.run_until_true(loading, limit=10)
    assert not in_sync(sim, "b")
    return sim


def stop_ready(sim: Sim, name: str) -> StopReady | None:
    found = [ev for _, ev in sim.nodes[name].events if isinstance(ev, StopReady)]
    assert len(found) <= 1
    return found[0] if found else None


def test_a_stopping_primary_waits_for_the_snapshot_then_hands_over() -> None:
    sim = loading_pair(seed=40)
    sim.call("a", lambda core: core.begin_shutdown(sim.now, 60.0, wall=sim.wall))
    status = sim.nodes["a"].core.status(sim.now, wall=sim.wall)
    assert status["stopping"]["ready"] is False
    assert "to finish loading its snapshot" in str(status["stopping"]["waiting_for"])
    # Still the primary while it waits: writes are accepted, and replicated.
    rid, _ = put(sim, "a", WEB, RECORDS + 1)
    sim.run_until_true(lambda: stop_ready(sim, "a") is not None, limit=60)
    ready = stop_ready(sim, "a")
    assert ready is not None
    assert ready.handed_to == "b"
    assert ready.unreplicated == 0
    assert role(sim, "b") is Role.PRIMARY
    got = snapshot(sim, "b")
    assert len(got) == RECORDS + 1
    assert (WEB, rid) in got
    assert sim.nodes["b"].core.stats["promotions"][""] == 1


def test_a_stop_that_cannot_wait_says_how_many_records_are_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = loading_pair(seed=41)
    caplog.set_level(logging.INFO)
    sim.call("a", lambda core: core.begin_shutdown(sim.now, 0.5, wall=sim.wall))
    sim.run_until_true(lambda: stop_ready(sim, "a") is not None, limit=5)
    ready = stop_ready(sim, "a")
    assert ready is not None
    assert ready.handed_to is None
    held_by_b = len(snapshot(sim, "b"))
    # Everything b does not hold is counted (an upper bound: nothing is understated).
    assert ready.unreplicated >= RECORDS - held_by_b
    assert ready.unreplicated < RECORDS + 1  # + a's promotion record
    assert sim.nodes["a"].core.status(sim.now, wall=sim.wall)["stopping"][
        "unreplicated_records"
    ] == (ready.unreplicated)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "STOPPING WITHOUT A HANDOVER" in line and f"{ready.unreplicated} of {RECORDS + 1}" in line
        for line in lines
    ), lines


def test_a_lone_primary_stops_at_once_and_counts_every_record_as_lost() -> None:
    sim = Sim(seed=42)
    sim.add("a", ["a", "b"], priority=200)
    sim.run_until_true(lambda: role(sim, "a") is Role.PRIMARY, limit=5)
    for i in range(10):
        put(sim, "a", WEB, i)
    sim.call("a", lambda core: core.begin_shutdown(sim.now, 60.0, wall=sim.wall))
    ready = stop_ready(sim, "a")
    assert ready is not None
    # The ten sessions and the promotion record a wrote when it became primary.
    assert (ready.handed_to, ready.unreplicated) == (None, 11)


def test_a_secondary_is_ready_to_stop_at_once() -> None:
    sim = Sim(seed=43)
    sim.add("a", ["a", "b"], priority=200)
    sim.add("b", ["a", "b"], priority=100)
    sim.run_until_true(lambda: in_sync(sim, "b"), limit=10)
    sim.call("b", lambda core: core.begin_shutdown(sim.now, 60.0, wall=sim.wall))
    ready = stop_ready(sim, "b")
    assert ready is not None
    assert (ready.handed_to, ready.unreplicated) == (None, 0)
    assert role(sim, "a") is Role.PRIMARY


def test_manual_failover_during_a_snapshot_is_refused_and_says_why() -> None:
    sim = loading_pair(seed=44)
    with pytest.raises(WriteRefused) as err:
        sim.call("a", lambda core: core.request_failover(sim.now, wall=sim.wall))
    assert err.value.code == "no_in_sync_secondary"
    assert "b is loading its snapshot" in err.value.message
    assert role(sim, "a") is Role.PRIMARY
