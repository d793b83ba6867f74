"""Read-time ESP sequence numbers, counters, leases and the rekey governor, in the simulator.

Deterministic: every clock is the simulator's.  Each test states the rule
it checks and would fail without it (per-SA promotion writes, a fixed
margin, leases not honoured, no rekey pacing...).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from hasyncd.core.counterpath import CounterUpdate, LeaseRequest, update_counters, write_leases
from hasyncd.core.events import PromotionDone, RecordChanged, RekeyRelease
from hasyncd.core.node import NodeCore
from hasyncd.core.seqview import CTR, PROMO
from hasyncd.errors import WriteRefused
from hasyncd.records import KINDS
from hasyncd.sim import Sim
from hasyncd.store import SEQ_BITS
from hasyncd.wire.messages import Role

from .simutil import IKE, SA, in_sync, pair, put, record, role, sample, settled, viewed

MARGIN = 1 << 16


def out_sa(i: int) -> int:
    """The sample index of outbound SA number ``i`` (even indexes are outbound)."""
    return 2 * i


def report(sim: Sim, node: str, rid: str, seq: int, **kw: Any) -> Any:
    u = CounterUpdate(rid, seq, kw.get("bytes", seq), kw.get("packets", seq), kw.get("bitmap"))
    return sim.call(node, lambda core: update_counters(core, [u], sim.now, wall=sim.wall))


def lease(sim: Sim, node: str, rid: str, limit: int) -> Any:
    return sim.call(
        node, lambda core: write_leases(core, [LeaseRequest(rid, limit)], sim.now, wall=sim.wall)
    )


def fail_over(sim: Sim, dead: str, survivor: str) -> None:
    sim.kill(dead)
    sim.run_until_true(lambda: role(sim, survivor) is Role.PRIMARY, limit=5, step=0.001)


def ctr_of(core: NodeCore, rid: str) -> Any:
    raw = core.store.get_raw(CTR, rid)
    assert raw is not None and raw.blob is not None
    return KINDS["sa_counters"].decode(raw.blob)


def promotions(core: NodeCore) -> list[Any]:
    return core.promotions.entries()


# --- O(1) promotion ---------------------------------------------------------------------


def test_a_promotion_writes_one_record_and_emits_one_promotion_done() -> None:
    sim = Sim(seed=101)
    a, b = pair(sim)
    for i in range(3000):
        put(sim, a, SA, i)
    for i in range(50):
        put(sim, a, IKE, i)
    sim.run_for(0.5)
    sim.nodes[b].core.record_events = True
    sim.kill(a)
    sim.run_until_true(lambda: role(sim, b) is Role.PRIMARY, limit=5, step=0)
    core = sim.nodes[b].core
    epoch = core.roles.epoch
    events = [ev for _, ev in sim.nodes[b].events]
    done = [ev for ev in events if isinstance(ev, PromotionDone)]
    # promotion_done comes with the role change, before any slice of work ran.
    assert len(done) == 1
    assert done[0].epoch == epoch
    assert (done[0].ipsec_sa, done[0].ike_sa) == (3000, 50)
    assert done[0].duration_s == 0
    assert done[0].rule == {
        "esp_seq_margin": MARGIN,
        "seq_safety_factor": 2.0,
        "detection_s": core.s.lost_timeout,
        "inbound_window": "replicated",
    }
    sim.run_until_true(lambda: core.roles.promotion is None, limit=2)
    # Nothing was written per record: the only write of the new epoch is the history's.
    new = [
        (kind, rid)
        for kind in core.store.tables
        for rid, e in core.store.items(kind)
        if e.version >> SEQ_BITS == epoch
    ]
    assert new == [(PROMO, f"{epoch:016x}")]
    # No record_changed at all: promotion_done is the one event of a promotion.
    assert [ev for _, ev in sim.nodes[b].events if isinstance(ev, RecordChanged)] == []
    # ...and yet every outbound SA reads advanced, every IKE SA needs message-ID sync.
    for i in (0, 2, 2998):
        got = viewed(sim, b, SA, record(SA, i)[0])
        assert got is not None
        assert got["seq"] == min(sample(SA, i)["seq"] + MARGIN, 2**64 - 1)
    assert viewed(sim, b, IKE, record(IKE, 7)[0])["mid_sync_required"] is True  # type: ignore[index]
    assert core.roles.last_promotion is not None
    assert core.roles.last_promotion["esp_advanced"] == 1500
    assert core.roles.last_promotion["ike_flagged"] == 50


def test_secondaries_read_the_same_view_without_a_write_per_sa() -> None:
    sim = Sim(seed=102)
    a, b = pair(sim)
    rids = [put(sim, a, SA, out_sa(i))[0] for i in range(20)]
    sim.run_for(0.3)
    fail_over(sim, a, b)
    sim.restart(a)
    sim.run_until_true(lambda: in_sync(sim, a), limit=10)
    for rid in rids:
        assert viewed(sim, a, SA, rid) == viewed(sim, b, SA, rid)
        got = viewed(sim, a, SA, rid)
        assert got is not None
        stored = sim.nodes[a].core.store.get_raw(SA, rid)
        assert stored is not None
        # a holds the SA as first written, plus the replicated promotion record.
        assert KINDS["ipsec_sa"].decode(stored.blob).seq + MARGIN == got["seq"]  # type: ignore[arg-type]
    assert len(promotions(sim.nodes[a].core)) == 2  # a's first promotion and b's


# --- several promotions, later writes --------------------------------------------------


def test_the_view_adds_one_jump_per_promotion_and_a_new_epoch_write_supersedes() -> None:
    sim = Sim(seed=103)
    a, b = pair(sim)
    rid, _ = put(sim, a, SA, out_sa(3))
    base = sample(SA, out_sa(3))["seq"]
    sim.run_for(0.3)
    fail_over(sim, a, b)  # promotion 1: b
    assert viewed(sim, b, SA, rid)["seq"] == base + MARGIN  # type: ignore[index]
    sim.restart(a)
    sim.run_until_true(lambda: in_sync(sim, a), limit=10)
    fail_over(sim, b, a)  # promotion 2: a, nothing reported in between
    assert viewed(sim, a, SA, rid)["seq"] == base + 2 * MARGIN  # type: ignore[index]
    # The data plane on a carries on from the view and reports: that supersedes.
    out = report(sim, a, rid, base + 2 * MARGIN + 10)
    assert out.applied == 1
    assert viewed(sim, a, SA, rid)["seq"] == base + 2 * MARGIN + 10  # type: ignore[index]
    # A stale report (from before the promotion) is ignored: never backwards.
    out = report(sim, a, rid, base + 5)
    assert (out.applied, out.ignored) == (0, 1)
    assert viewed(sim, a, SA, rid)["seq"] == base + 2 * MARGIN + 10  # type: ignore[index]
    # The IKE daemon rewrites the SA with its old counter: the reported one still holds.
    put(sim, a, SA, out_sa(3))
    assert viewed(sim, a, SA, rid)["seq"] == base + 2 * MARGIN + 10  # type: ignore[index]
    sim.restart(b)
    sim.run_until_true(lambda: in_sync(sim, b), limit=10)
    fail_over(sim, a, b)  # promotion 3: from the reported value
    assert viewed(sim, b, SA, rid)["seq"] == base + 3 * MARGIN + 10  # type: ignore[index]


# --- the rate bound ----------------------------------------------------------------------


def test_the_jump_is_the_rate_bound_when_it_exceeds_the_margin() -> None:
    sim = Sim(seed=104)
    a, b = pair(sim)
    fast, _ = put(sim, a, SA, out_sa(1))
    slow, _ = put(sim, a, SA, out_sa(4))
    rate = 200_000  # sequence numbers per second
    seq_fast = sample(SA, out_sa(1))["seq"]
    seq_slow = sample(SA, out_sa(4))["seq"]
    for _ in range(20):
        sim.run_for(0.1)
        seq_fast += rate // 10
        seq_slow += 10
        assert report(sim, a, fast, seq_fast).applied == 1
        assert report(sim, a, slow, seq_slow).applied == 1
    sim.run_for(0.2)  # replicated; then the data plane sends for 0.3 s unreported
    ctr = ctr_of(sim.nodes[b].core, fast)
    assert math.isclose(ctr.rate, rate, rel_tol=1e-6)
    fail_over(sim, a, b)
    p = promotions(sim.nodes[b].core)[-1]
    age = p.at - ctr.at
    assert age > 0.5  # the detection time passed since the last update
    bound = math.ceil(rate * (age + p.detection_s) * p.safety)
    assert bound > MARGIN
    assert viewed(sim, b, SA, fast)["seq"] == seq_fast + bound  # type: ignore[index]
    # What the old data plane can have sent at that rate until the promotion is covered.
    assert bound >= rate * age
    # A slow SA gets the margin: the bound never goes below it.
    assert viewed(sim, b, SA, slow)["seq"] == seq_slow + MARGIN  # type: ignore[index]


def test_non_esn_sa_that_would_wrap_reads_rekey_required() -> None:
    sim = Sim(seed=105)
    a, b = pair(sim)
    rid, _ = put(sim, a, SA, 2, seq=2**32 - 1000)  # sample 2: outbound, no ESN
    esn_rid, _ = put(sim, a, SA, 0, seq=2**32 - 1000)  # sample 0: outbound, ESN
    sim.run_for(0.3)
    fail_over(sim, a, b)
    got = viewed(sim, b, SA, rid)
    assert got is not None
    assert (got["seq"], got["rekey_required"]) == (2**32 - 1, True)
    esn = viewed(sim, b, SA, esn_rid)
    assert esn is not None
    assert (esn["seq"], esn["rekey_required"]) == (2**32 - 1000 + MARGIN, False)


# --- leases ------------------------------------------------------------------------------


def test_with_leases_no_sequence_number_is_used_twice_even_with_a_lease_in_flight() -> None:
    sim = Sim(seed=106)
    a, b = pair(sim)
    rid, _ = put(sim, a, SA, out_sa(5))
    start = sample(SA, out_sa(5))["seq"]
    used_a: set[int] = set()

    def grant(limit: int) -> int:
        """A lease as the shell grants it: written, then acknowledged by b."""
        out = lease(sim, a, rid, limit)
        assert out.granted == [{"id": rid, "seq_limit": limit}]
        sim.run_until_true(
            lambda: (sim.nodes[a].core.watermark or 0) >= out.version, limit=1, step=0.001
        )
        return limit

    granted = grant(start + 1000)
    used_a.update(range(start + 1, start + 800))
    report(sim, a, rid, start + 799)
    granted = grant(start + 2000)
    used_a.update(range(start + 800, granted + 1))  # a's data plane uses all of it
    # A renewal is in flight when a dies: written on a, never acknowledged, so
    # never granted (the data plane stays at or below the previous ceiling).
    sim.partition(a, b)
    pending = lease(sim, a, rid, start + 3000)
    assert (sim.nodes[a].core.watermark or 0) < pending.version
    sim.kill(a)
    sim.run_until_true(lambda: role(sim, b) is Role.PRIMARY, limit=5, step=0.001)
    got = viewed(sim, b, SA, rid)
    assert got is not None
    # At least the highest granted ceiling (and never below the rate bound from
    # the last report, which covers a data plane that went on without a lease).
    assert got["seq"] == max(granted, start + 799 + MARGIN)
    first_b = got["seq"] + 1
    assert first_b not in used_a and max(used_a) < first_b
    # The new primary's data plane needs its own lease before sending past it.
    assert lease(sim, b, rid, got["seq"]).granted == []
    assert lease(sim, b, rid, got["seq"] + 500).granted == [
        {"id": rid, "seq_limit": got["seq"] + 500}
    ]


def test_a_lease_that_reached_the_secondary_but_was_not_acknowledged_still_bounds_it() -> None:
    sim = Sim(seed=107)
    a, b = pair(sim)
    rid, _ = put(sim, a, SA, out_sa(6))
    start = sample(SA, out_sa(6))["seq"]
    out = lease(sim, a, rid, start + 1_000_000)
    assert out.granted  # written on a; the shell has not answered yet
    sim.run_until_true(
        lambda: sim.nodes[b].core.store.get_raw(CTR, rid) is not None, limit=1, step=0.0001
    )
    sim.kill(a)  # before b's acknowledgement could be answered
    sim.run_until_true(lambda: role(sim, b) is Role.PRIMARY, limit=5, step=0.001)
    # Not granted, yet b starts above it: at least the ceiling a's data plane may have seen.
    assert viewed(sim, b, SA, rid)["seq"] == start + 1_000_000  # type: ignore[index]


# --- inbound SAs -------------------------------------------------------------------------


def test_inbound_replicated_keeps_the_window_and_advance_moves_the_floor() -> None:
    for policy in ("replicated", "advance"):
        sim = Sim(seed=108)
        a, b = pair(sim, inbound_window=policy)
        rid, _ = put(sim, a, SA, 3)  # sample 3: inbound, window 128
        seq = sample(SA, 3)["seq"] + 50
        bitmap = "0f" * 16
        out = report(sim, a, rid, seq, bitmap=bitmap)
        assert out.applied == 1
        sim.run_for(0.3)
        fail_over(sim, a, b)
        got = viewed(sim, b, SA, rid)
        assert got is not None
        if policy == "replicated":
            assert (got["seq"], got["replay_bitmap"]) == (seq, bitmap)
        else:
            assert got["seq"] == seq + MARGIN
            assert got["replay_bitmap"] == "ff" * 16  # everything below the floor is seen


# --- merges ------------------------------------------------------------------------------


def test_a_split_brain_merge_keeps_both_sides_jumps_and_counters() -> None:
    sim = Sim(seed=109)
    a, b = pair(sim)
    rid, _ = put(sim, a, SA, out_sa(7))
    base = sample(SA, out_sa(7))["seq"]
    report(sim, a, rid, base + 100)
    sim.run_for(0.3)
    sim.partition(a, b)
    sim.run_until_true(lambda: role(sim, b) is Role.PRIMARY, limit=5, step=0.001)
    # Both sides' data planes carry on from their own view and report.
    on_b = viewed(sim, b, SA, rid)["seq"]  # type: ignore[index]
    assert on_b == base + 100 + MARGIN
    report(sim, a, rid, base + 90_000)
    report(sim, b, rid, on_b + 20)
    loser = ctr_of(sim.nodes[a].core, rid)  # a's counters, as it offers them
    sim.heal(a, b)
    sim.run_until_true(lambda: settled(sim, [a, b]), limit=10)
    sim.run_for(0.5)
    assert sim.primaries() == [b]
    got = viewed(sim, b, SA, rid)
    assert got is not None
    # a's counter is the larger; it keeps b's promotion jump (a's data plane may
    # have sent past it), computed from a's own rate estimate.
    p = promotions(sim.nodes[b].core)[-1]
    jump = max(MARGIN, math.ceil(loser.rate * (max(0.0, p.at - loser.at) + p.detection_s) * 2.0))
    assert got["seq"] == base + 90_000 + jump
    assert got["seq"] > on_b + 20
    assert viewed(sim, a, SA, rid) == got  # the loser reads the same


# --- the rekey governor ------------------------------------------------------------------


def test_the_governor_releases_rekeys_at_the_configured_pace() -> None:
    sim = Sim(seed=110)
    a, b = pair(sim, rekey_rate=200.0)
    n = 1000
    rids = []
    for k in range(n):
        i = 2 + 6 * k  # outbound, i // 2 % 3 == 1: no ESN
        rids.append(put(sim, a, SA, i, seq=2**32 - 10)[0])
    sim.run_for(1.0)
    mark = len(sim.nodes[b].events)
    fail_over(sim, a, b)
    core = sim.nodes[b].core
    t0 = sim.now
    per_second: list[int] = []
    seen: list[str] = []
    for _ in range(6):
        sim.run_for(1.0)
        new = sim.nodes[b].events[mark:]
        mark = len(sim.nodes[b].events)
        got = [i for _, ev in new if isinstance(ev, RekeyRelease) for i in ev.items]
        per_second.append(len(got))
        seen += [rid for kind, rid in got if kind == "ipsec_sa"]
    assert sorted(seen) == sorted(rids)  # each once
    assert core.governor.queue == type(core.governor.queue)()
    # 200 a second (the first second also drains the first tick's burst).
    assert all(180 <= c <= 230 for c in per_second[:4]), per_second
    assert sum(per_second) == n
    assert per_second[5] <= 5  # 1000 at 200/s: done after five seconds
    assert sim.now - t0 >= 4.9
    assert core.stats["rekey_released"][""] == n


def test_counter_updates_are_refused_on_a_secondary_and_bad_items_change_nothing() -> None:
    sim = Sim(seed=111)
    a, b = pair(sim)
    rid, _ = put(sim, a, SA, out_sa(2))  # sample 4: outbound, no ESN
    sim.run_for(0.2)
    with pytest.raises(WriteRefused) as info:
        sim.call(
            b, lambda core: update_counters(core, [CounterUpdate(rid, 1)], sim.now, wall=sim.wall)
        )
    assert info.value.code == "not_primary"
    u = [CounterUpdate(rid, 2**32, 0, 0, None), CounterUpdate("esp-nothex@x", 1, 0, 0, None)]
    out = sim.call(a, lambda core: update_counters(core, u, sim.now, wall=sim.wall))
    assert [e["error"] for e in out.errors] == ["out_of_range", "invalid_id"]
    assert (out.applied, out.ignored) == (0, 0)
    assert sim.nodes[a].core.store.get_raw(CTR, rid) is None  # nothing written
    assert sim.nodes[a].core.stats["counter_updates"]["error"] == 2


def test_deleting_an_sa_deletes_its_counters_everywhere() -> None:
    sim = Sim(seed=112)
    a, b = pair(sim)
    rid, _ = put(sim, a, SA, out_sa(8))
    report(sim, a, rid, 10**9)
    sim.run_for(0.2)
    assert sim.nodes[b].core.store.get(CTR, rid, sim.wall) is not None
    assert sim.write(a, SA, rid, None) is not None
    sim.run_for(0.2)
    for n in (a, b):
        core = sim.nodes[n].core
        assert core.store.get(CTR, rid, sim.wall) is None
    # A new SA that reuses the id does not inherit the old counter.
    put(sim, a, SA, out_sa(8))
    assert viewed(sim, a, SA, rid)["seq"] == sample(SA, out_sa(8))["seq"]  # type: ignore[index]


def test_freshness_shows_counter_age_percentiles_and_the_recovery_point() -> None:
    sim = Sim(seed=113)
    a, b = pair(sim)
    rids = [put(sim, a, SA, out_sa(i))[0] for i in range(10)]
    seqs = {rid: sample(SA, out_sa(i))["seq"] for i, rid in enumerate(rids)}
    for step in range(3):  # two reports 1 s apart: a rate of 1000/s each
        sim.run_for(1.0)
        for rid in rids:
            seqs[rid] += 1000 * step
            report(sim, a, rid, seqs[rid])
    # Then nine SAs go on reporting and one stops.
    for _ in range(4):
        sim.run_for(1.0)
        for rid in rids[:9]:
            seqs[rid] += 1000
            report(sim, a, rid, seqs[rid])
    sim.run_for(1.5)  # a pass over the table ran on both nodes since
    for n in (a, b):
        core = sim.nodes[n].core
        st = core.freshness.status(sim.wall)
        assert st["sas_reporting"] == 10
        p50, p99 = st["age_p50_s"], st["age_p99_s"]
        assert isinstance(p50, float) and isinstance(p99, float)
        assert 1.4 <= p50 <= 2.6  # the nine that report (replicated on b a little later)
        assert 5.4 <= p99 <= 6.6  # the one that stopped 4 s earlier
        rpo = st["recovery_point_packets"]
        assert isinstance(rpo, int)
        # sum of rate x age: 9 x 1000/s x ~1.5-2.5 s + 1 x 1000/s x ~5.5-6.5 s
        assert 9 * 1000 * 1.4 + 1000 * 5.4 <= rpo <= 9 * 1000 * 2.6 + 1000 * 6.6
