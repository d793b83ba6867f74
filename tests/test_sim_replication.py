"""Replication between node cores in the simulator: snapshot, stream, acks, window, faults."""

from __future__ import annotations

import pytest

from hasyncd.core.replication import BATCH_BYTES
from hasyncd.errors import WriteRefused
from hasyncd.records import KINDS_BY_CODE
from hasyncd.secret import Secret
from hasyncd.sim import Sim
from hasyncd.store import unpack_version
from hasyncd.wire.messages import Role

from .simutil import IKE, SA, WEB, decoded, in_sync, pair, put, record, snapshot


def test_cold_start_elects_by_priority_and_replicates_writes() -> None:
    sim = Sim(seed=1)
    primary, secondary = pair(sim)
    assert sim.nodes[primary].role is Role.PRIMARY
    assert sim.nodes[secondary].role is Role.SECONDARY
    for i in range(200):
        put(sim, primary, SA, i)
    for i in range(20):
        put(sim, primary, IKE, i)
    for i in range(200):
        put(sim, primary, WEB, i)
    sim.run_for(0.2)
    assert snapshot(sim, secondary) == snapshot(sim, primary)
    assert len(snapshot(sim, primary)) == 420


def test_writes_are_refused_on_a_secondary() -> None:
    sim = Sim(seed=2)
    primary, secondary = pair(sim)
    rid, blob, _exp = record(WEB, 1)
    with pytest.raises(WriteRefused) as err:
        sim.write(secondary, WEB, rid, blob)
    assert err.value.code == "not_primary"
    assert err.value.primary == primary


def test_updates_and_deletes_replicate_as_tombstones() -> None:
    sim = Sim(seed=3)
    primary, secondary = pair(sim)
    rid, v1 = put(sim, primary, WEB, 5)
    rid2, _ = put(sim, primary, WEB, 6)
    sim.run_for(0.1)
    _, v2 = put(sim, primary, WEB, 5, last_seen=1_700_000_000 - 1)
    assert v2 > v1
    assert sim.write(primary, WEB, rid2, None) is not None
    assert sim.write(primary, WEB, rid2, None) is None  # already gone
    sim.run_for(0.1)
    sec = sim.nodes[secondary].core.store
    entry = sec.get_raw(WEB, rid)
    assert entry is not None
    assert entry.version == v2
    tomb = sec.get_raw(WEB, rid2)
    assert tomb is not None
    assert tomb.blob is None
    assert snapshot(sim, secondary) == snapshot(sim, primary)


def test_snapshot_while_writes_continue_ends_exact() -> None:
    sim = Sim(seed=4)
    sim.add("a", ["a", "b"], priority=200, window=64 * 1024)
    sim.run_until_true(lambda: sim.nodes["a"].role is Role.PRIMARY, limit=5)
    for i in range(3000):
        put(sim, "a", SA, i)
    sim.add("b", ["a", "b"], priority=100, window=64 * 1024)
    # Keep writing (new records, updates and deletes) while the snapshot runs.
    deleted = set()
    for step in range(300):
        sim.run_for(0.002)
        put(sim, "a", SA, 3000 + step)
        put(sim, "a", SA, step * 7, seq=10_000 + step)
        if step % 10 == 0:
            rid, _, _ = record(SA, step * 3 + 1)
            if sim.write("a", SA, rid, None) is not None:
                deleted.add(rid)
    sim.run_until_true(lambda: in_sync(sim, "b"), limit=10)
    sim.run_for(0.2)
    assert snapshot(sim, "b") == snapshot(sim, "a")
    assert all(sim.nodes["b"].core.store.get(SA, rid, 2e9) is None for rid in deleted)


def test_repeated_updates_while_queued_are_coalesced() -> None:
    sim = Sim(seed=5)
    primary, secondary = pair(sim)
    applied_before = sim.nodes[secondary].core.stats["records_applied"][""]
    # 500 updates of one record in one instant: queued together, sent once.
    for n in range(500):
        put(sim, primary, SA, 0, seq=n + 1)
    sim.run_for(0.1)
    applied = sim.nodes[secondary].core.stats["records_applied"][""] - applied_before
    assert applied == 1
    got = decoded(sim.nodes[secondary].core.store.get_raw(SA, record(SA, 0)[0]), SA)
    assert got is not None
    assert got["seq"] == 500


def test_window_bounds_data_in_flight() -> None:
    sim = Sim(seed=6, latency=0.005)
    window = 128 * 1024
    sim.add("a", ["a", "b"], priority=200, window=window)
    sim.run_until_true(lambda: sim.nodes["a"].role is Role.PRIMARY, limit=5)
    for i in range(4000):
        put(sim, "a", SA, i)
    sim.add("b", ["a", "b"], priority=100, window=window)
    peak = 0

    def check() -> bool:
        nonlocal peak
        peer = sim.nodes["a"].core.peers.get("b")
        if peer is not None:
            peak = max(peak, peer.flow.in_flight)
        return in_sync(sim, "b")

    sim.run_until_true(check, limit=20, step=0.001)
    # At most one frame beyond the window: the one that crossed it.
    assert 0 < peak <= window + BATCH_BYTES + 2048
    assert snapshot(sim, "b") == snapshot(sim, "a")


def test_sync_watermark_covers_every_acknowledged_write() -> None:
    sim = Sim(seed=7)
    primary, secondary = pair(sim)
    core = sim.nodes[primary].core
    versions = [put(sim, primary, SA, i)[1] for i in range(50)]
    sim.run_for(0.05)
    assert core.watermark is not None
    assert core.watermark >= max(versions)
    # Everything at or below the watermark is on the secondary.
    sec = sim.nodes[secondary].core.store
    for i in range(50):
        rid = record(SA, i)[0]
        assert sec.get_raw(SA, rid) is not None


def test_reconnect_resumes_from_the_backlog() -> None:
    sim = Sim(seed=8)
    primary, secondary = pair(sim)
    for i in range(100):
        put(sim, primary, WEB, i)
    sim.run_for(0.1)
    core = sim.nodes[primary].core
    snaps = core.stats["snapshots_started"][""]
    # Cut the link briefly (below the loss threshold) and drop the connection.
    peer = core.peers[secondary]
    assert peer.conn is not None
    sim.call(primary, lambda core: core.close(peer.conn, "test: drop link"))
    for i in range(100, 150):
        put(sim, primary, WEB, i)
    sim.run_until_true(lambda: core.stats["resyncs"]["partial"] == 1)
    sim.run_until_true(lambda: in_sync(sim, secondary))
    sim.run_for(0.1)
    assert core.stats["snapshots_started"][""] == snaps  # the backlog covered the drop
    assert snapshot(sim, secondary) == snapshot(sim, primary)
    assert sim.nodes[secondary].role is Role.SECONDARY  # no failover for a link drop


def test_wrong_key_and_wrong_group_never_pair() -> None:
    sim = Sim(seed=9)
    sim.add("a", ["a", "b", "c", "d"], priority=200)
    sim.add("b", ["a", "b", "c", "d"], priority=100)
    sim.add("c", ["a", "b", "c", "d"], priority=100, psk=Secret(b"\x01" * 32))
    sim.add("d", ["a", "b", "c", "d"], priority=100, group_id=7)
    sim.run_until_true(lambda: in_sync(sim, "b"), limit=10)
    for i in range(30):
        put(sim, "a", WEB, i)
    sim.run_for(2.0)
    for bad in ("c", "d"):
        core = sim.nodes[bad].core
        assert snapshot(sim, bad) == {}  # nothing was written to c or d themselves
        assert all(snapshot(sim, bad).get(k) is None for k in snapshot(sim, "a"))
        assert core.peers == {} or all(not p.up for p in core.peers.values())
    assert sim.nodes["c"].core.stats["link_errors"]["psk_mismatch"] > 0
    assert sim.nodes["d"].core.stats["link_errors"]["group_mismatch"] > 0
    assert sim.nodes["a"].core.stats["link_errors"]["psk_mismatch"] > 0
    assert sim.nodes["a"].core.stats["link_errors"]["group_mismatch"] > 0


def test_versions_are_assigned_in_the_primary_epoch() -> None:
    sim = Sim(seed=10)
    primary, _ = pair(sim)
    epoch = sim.nodes[primary].core.roles.epoch
    _, v1 = put(sim, primary, SA, 1)
    _, v2 = put(sim, primary, SA, 2)
    # (epoch, 1) is the promotion record the primary wrote when it promoted.
    assert unpack_version(v1) == (epoch, 2)
    assert unpack_version(v2) == (epoch, 3)


def test_a_write_is_sent_by_a_transmit_not_by_a_timer_tick() -> None:
    # Issue 9: a write used to wait for a zero-delay timer tick that ran the
    # whole periodic handler; now it asks for a transmit (the shell's
    # call_soon, coalescing what one loop pass wrote) and the timer stays
    # at the periodic handler's own deadline.
    sim = Sim(seed=29)
    primary, secondary = pair(sim)
    sim.run_for(0.3)
    core = sim.nodes[primary].core
    conn = core.peers[secondary].conn
    assert conn is not None
    heartbeats = core.stats["heartbeats_sent"][""]
    for i in range(3):
        rid, blob, _ = record(WEB, i)
        core.write(KINDS_BY_CODE[WEB].from_blob(blob, rid), sim.now, wall=sim.wall)
    assert core.wants_transmit
    assert core.next_timer() > sim.now  # no tick is due for the writes
    core.transmit(sim.now, wall=sim.wall)
    assert conn.id in dict(core.data_to_send())  # the RECORDS frame
    assert not core.wants_transmit
    assert core.stats["heartbeats_sent"][""] == heartbeats  # the periodic handler did not run
