"""Merge before resync (``hasyncd.core.merge``): what is offered, how each offer is resolved,
and what the survivor records.

``merge_one`` and ``MergeSender`` are tested on their own; the survivor's side
(the handler table's refusals, ``receive_merge``, ``merge_end`` and the split
record) through the primary core of a settled simulated pair, with the
offers built by hand and delivered as the link would.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

from hasyncd.core.apply import decode_change
from hasyncd.core.dispatch import MERGE_RECORDS
from hasyncd.core.events import MergeApplied, Reannounce, SplitBrain
from hasyncd.core.merge import MERGE_SCAN, MergeDecision, MergeSender, merge_one
from hasyncd.core.node import NodeCore
from hasyncd.core.peers import Peer
from hasyncd.core.replication import Mark, MarkKind
from hasyncd.errors import RecordError
from hasyncd.policy import shown_id
from hasyncd.records import KINDS_BY_CODE
from hasyncd.sim import WALL_BASE, Sim
from hasyncd.store import Entry, Store, pack_version
from hasyncd.wire.messages import MAX_CHANGES, Change, MergeEnd, Message, Phase, Records

from .simutil import IKE, SA, WEB, decoded, pair, record, sample

LOSER = 7
E_LOSER = 3 << 16 | LOSER  # an epoch the loser minted
E_OTHER = 4 << 16 | 9  # an epoch someone else minted
E_MINE = 5 << 16 | 11


def entry(kind: int, i: int, version: int, **changes: Any) -> Entry:
    _rid, blob, expires = record(kind, i, **changes)
    return Entry(version, expires, blob)


def offer(kind: int, i: int, epoch: int, vseq: int, /, **changes: Any) -> Change:
    rid, blob, _ = record(kind, i, **changes)
    return Change(kind, rid, epoch, vseq, blob)


def tombstone(kind: int, i: int, epoch: int, seq: int) -> Change:
    return Change(kind, record(kind, i)[0], epoch, seq, None)


def fields(rec: Any, kind: int) -> dict[str, Any]:
    assert rec is not None
    return decoded(Entry(0, None, rec.blob), kind) or {}


# --- merge_one ----------------------------------------------------------------------------


def test_an_offer_for_a_record_we_do_not_hold_is_written_as_is() -> None:
    d = merge_one(None, offer(WEB, 1, E_LOSER, 4), LOSER)
    assert (d.write, d.conflict) == (True, False)
    assert d.record is not None
    assert d.record.blob == record(WEB, 1)[1]
    assert merge_one(None, tombstone(WEB, 1, E_LOSER, 4), LOSER) == MergeDecision(
        None, False, False
    )


def test_the_same_version_is_the_same_write() -> None:
    mine = entry(WEB, 1, pack_version(E_LOSER, 4))
    assert merge_one(mine, offer(WEB, 1, E_LOSER, 4), LOSER) == MergeDecision(None, False, False)


def test_a_newer_offer_wins_with_counters_that_never_go_back() -> None:
    base = sample(WEB, 1)
    mine = entry(WEB, 1, pack_version(E_MINE, 1), last_seen=base["last_seen"] + 3)
    theirs = offer(WEB, 1, E_MINE, 2, portal="other", last_seen=base["last_seen"])
    d = merge_one(mine, theirs, LOSER)
    assert (d.write, d.conflict) == (True, False)
    got = fields(d.record, WEB)
    assert got["portal"] == "other"  # the newer content
    assert got["last_seen"] == base["last_seen"] + 3  # the larger counter


def test_a_newer_offer_deletes_or_recreates() -> None:
    mine = entry(SA, 2, pack_version(E_MINE, 1))
    d = merge_one(mine, tombstone(SA, 2, E_MINE, 2), LOSER)
    assert d == MergeDecision(None, True, False)
    ours_deleted = Entry(pack_version(E_MINE, 1), None, None)
    d = merge_one(ours_deleted, offer(SA, 2, E_MINE, 2), LOSER)
    assert (d.write, d.conflict) == (True, False)
    assert d.record is not None
    assert d.record.blob == record(SA, 2)[1]


def test_an_older_offer_from_the_loser_is_a_conflict_ours_wins_counters_kept() -> None:
    mine = entry(SA, 0, pack_version(E_MINE, 8), seq=100, bytes=10)
    theirs = offer(SA, 0, E_LOSER, 9, seq=500, bytes=5, packets=0)
    d = merge_one(mine, theirs, LOSER)
    assert (d.write, d.conflict) == (True, True)
    got = fields(d.record, SA)
    assert (got["seq"], got["bytes"]) == (500, 10)


def test_an_older_offer_that_changes_nothing_is_not_written() -> None:
    mine = entry(SA, 0, pack_version(E_MINE, 8), seq=500)
    d = merge_one(mine, offer(SA, 0, E_LOSER, 9, seq=100), LOSER)
    assert (d.write, d.conflict) == (False, True)


class Bump:
    """A promotion view: reads an SA written at ``version`` with ``seq`` raised by ``by``."""

    def __init__(self, version: int, by: int) -> None:
        self.version, self.by = version, by
        self.asked: list[tuple[int, str, int]] = []

    def __call__(self, kind: int, rid: str, version: int, value: Any) -> Any:
        self.asked.append((kind, rid, version))
        if version != self.version:
            return value  # the same object: "the view changes nothing"
        return msgspec.structs.replace(value, seq=value.seq + self.by)


def test_a_new_offer_is_written_as_the_survivor_reads_it() -> None:
    theirs = offer(SA, 3, E_LOSER, 4, seq=100)
    v = pack_version(E_LOSER, 4)
    view = Bump(v, 1000)
    d = merge_one(None, theirs, LOSER, view)
    assert (d.write, d.conflict) == (True, False)
    assert fields(d.record, SA)["seq"] == 1100
    assert view.asked == [(SA, theirs.id, v)]
    # A view that changes nothing writes the offered blob itself.
    same = merge_one(None, theirs, LOSER, Bump(v + 1, 1000))
    assert same.record is not None
    assert same.record.blob == theirs.blob


def test_a_newer_offer_merges_both_sides_as_read_through_the_view() -> None:
    v_mine, v_theirs = pack_version(E_MINE, 1), pack_version(E_MINE, 2)
    mine = entry(SA, 4, v_mine, seq=900)
    theirs = offer(SA, 4, E_MINE, 2, seq=100)
    view = Bump(v_mine, 50)  # only our side is advanced
    d = merge_one(mine, theirs, LOSER, view)
    assert (d.write, d.conflict) == (True, False)
    assert fields(d.record, SA)["seq"] == 950  # max(100, 900 + 50)
    assert sorted(view.asked) == sorted([(SA, theirs.id, v_mine), (SA, theirs.id, v_theirs)])
    view = Bump(v_theirs, 5000)  # only their side is advanced
    assert fields(merge_one(mine, theirs, LOSER, view).record, SA)["seq"] == 5100


def test_an_older_offer_merges_both_sides_as_read_through_the_view() -> None:
    v_mine, v_theirs = pack_version(E_MINE, 8), pack_version(E_LOSER, 9)
    mine = entry(SA, 5, v_mine, seq=100)
    theirs = offer(SA, 5, E_LOSER, 9, seq=500)
    view = Bump(v_theirs, 1000)  # the loser's older-epoch counter, advanced
    d = merge_one(mine, theirs, LOSER, view)
    assert (d.write, d.conflict) == (True, True)
    assert fields(d.record, SA)["seq"] == 1500
    assert sorted(view.asked) == sorted([(SA, theirs.id, v_mine), (SA, theirs.id, v_theirs)])
    view = Bump(v_mine, 1000)  # ours advanced past theirs: ours kept, advanced
    d = merge_one(mine, theirs, LOSER, view)
    assert fields(d.record, SA)["seq"] == 1100
    assert d.write  # the stored blob changes: the advanced counter is written


def test_an_older_offer_minted_by_a_third_node_is_just_a_stale_copy() -> None:
    mine = entry(SA, 0, pack_version(E_MINE, 8), seq=100)
    d = merge_one(mine, offer(SA, 0, E_OTHER, 9, seq=500), LOSER)
    assert (d.write, d.conflict) == (True, False)
    assert fields(d.record, SA)["seq"] == 500


def test_an_older_tombstone_or_an_offer_against_our_tombstone_keeps_ours() -> None:
    mine = entry(IKE, 1, pack_version(E_MINE, 8))
    assert merge_one(mine, tombstone(IKE, 1, E_LOSER, 1), LOSER) == MergeDecision(None, False, True)
    ours_deleted = Entry(pack_version(E_MINE, 8), None, None)
    assert merge_one(ours_deleted, offer(IKE, 1, E_OTHER, 1), LOSER) == MergeDecision(
        None, False, False
    )


def test_the_version_compares_epoch_before_seq() -> None:
    # (E_LOSER, 1000) is older than (E_MINE, 1): the epoch decides.
    mine = entry(WEB, 1, pack_version(E_MINE, 1), portal="mine")
    d = merge_one(mine, offer(WEB, 1, E_LOSER, 1000, portal="theirs"), LOSER)
    assert d.conflict
    assert not d.write  # ours wins, and web sessions merge only last_seen (equal here)


# --- MergeSender ---------------------------------------------------------------------------


def store_with(versions: dict[int, int]) -> Store:
    s = Store()
    for i, v in versions.items():
        s.put(WEB, record(WEB, i)[0], entry(WEB, i, v))
    return s


def test_a_sender_offers_entries_newer_than_its_floor_then_ends() -> None:
    floor = pack_version(E_LOSER, 5)
    s = store_with({1: pack_version(E_LOSER, 4), 2: floor, 3: pack_version(E_LOSER, 6)})
    s.put(WEB, "f" * 64, Entry(pack_version(E_LOSER, 7), None, None))  # tombstones too
    sender = MergeSender(E_LOSER, floor)
    assert (sender.epoch, sender.floor, sender.sent, sender.finished) == (E_LOSER, floor, 0, False)
    msg, mark = sender.next_message(s) or (None, None)
    assert isinstance(msg, Records)
    assert msg.phase is Phase.MERGE
    offered = {(c.id, c.seq) for c in msg.changes}
    assert offered == {(record(WEB, 3)[0], 6), ("f" * 64, 7)}
    assert isinstance(mark, Mark)
    assert mark.kind is MarkKind.MERGE_PROGRESS
    assert mark.position is not None
    assert sender.sent == 2
    assert sender.next_message(s) == (MergeEnd(2, E_LOSER), Mark(MarkKind.MERGE_END))
    assert sender.finished
    assert sender.next_message(s) is None


def test_a_sender_with_floor_zero_offers_everything_and_resumes_at_a_position() -> None:
    s = store_with({i: pack_version(E_LOSER, i + 1) for i in range(3)})
    sender = MergeSender(0)
    assert sender.floor == 0
    result = sender.next_message(s)
    assert result is not None
    msg, mark = result
    assert isinstance(msg, Records)
    assert len(msg.changes) == 3
    # A merge cut short resumes after the last acknowledged position: nothing repeated.
    assert mark is not None
    resumed = MergeSender(0, 0, mark.position)
    assert resumed.next_message(s) == (MergeEnd(0, 0), Mark(MarkKind.MERGE_END))


def test_a_merge_in_several_batches_counts_every_offer_in_its_end() -> None:
    n = MAX_CHANGES + 10
    s = store_with({i: pack_version(E_LOSER, i + 1) for i in range(n)})
    sender = MergeSender(E_LOSER)
    sizes = []
    while True:
        result = sender.next_message(s)
        assert result is not None
        msg, _mark = result
        if isinstance(msg, MergeEnd):
            break
        assert isinstance(msg, Records)
        sizes.append(len(msg.changes))
    assert len(sizes) >= 2
    assert sum(sizes) == n
    assert msg == MergeEnd(n, E_LOSER)


def test_a_long_stretch_without_matches_yields_and_continues_on_the_next_call() -> None:
    assert MERGE_SCAN == 4096
    floor = pack_version(E_LOSER, 10**6)
    s = store_with({i: pack_version(E_LOSER, 1) for i in range(MERGE_SCAN + 10)})
    sender = MergeSender(E_LOSER, floor)
    assert sender.next_message(s) is None  # one bounded step found nothing
    assert not sender.finished
    assert sender.next_message(s) == (MergeEnd(0, E_LOSER), Mark(MarkKind.MERGE_END))


# --- the survivor: the handler table, receive_merge, merge_end, the split record ----------


def survivor() -> tuple[Sim, NodeCore]:
    sim = Sim(seed=71)
    pair(sim)
    sim.run_for(0.3)
    return sim, sim.nodes["a"].core


def deliver(core: NodeCore, peer: Peer, msg: Message) -> bool:
    """``msg`` from ``peer`` in our epoch, through the handler table; True if acknowledged."""
    conn = peer.conn
    assert conn is not None
    conn.ack_frame = None
    core._dispatch(conn, core.roles.epoch, msg, 7, core.now)
    return conn.ack_frame == 7


def test_only_a_primary_in_our_epoch_takes_a_merge() -> None:
    sim, core = survivor()
    b = sim.nodes["b"].core
    msg = Records(Phase.MERGE, (offer(WEB, 1, E_LOSER, 1),))
    assert deliver(b, b.peers["a"], msg) is False
    assert b.stats["refused"]["merge_not_primary"] == 1
    refusal = core._handlers[MERGE_RECORDS].refusal
    assert refusal is not None
    assert refusal(core.peers["b"], core.roles.epoch + 1, msg) == "merge_not_primary"
    assert refusal(core.peers["b"], core.roles.epoch, msg) is None
    assert core.store.get_raw(WEB, record(WEB, 1)[0]) is None
    assert deliver(b, b.peers["a"], MergeEnd(1, E_LOSER)) is False
    assert b.stats["refused"]["merge_not_primary"] == 2


def test_the_survivor_applies_offers_as_its_own_writes_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _sim, core = survivor()
    peer = core.peers["b"]
    loser_epoch = 3 << 16 | peer.tag
    rid_sa, blob_sa, _ = record(SA, 0)
    core.local_write(SA, rid_sa, KINDS_BY_CODE[SA].from_blob(blob_sa, rid_sa))
    base = sample(WEB, 2)
    rid_web2, blob_web2, _ = record(WEB, 2)
    core.local_write(WEB, rid_web2, KINDS_BY_CODE[WEB].from_blob(blob_web2, rid_web2))
    rid_bad = record(WEB, 9)[0]
    bad = Change(WEB, rid_bad, loser_epoch, 1, b"\x93not a record")
    with pytest.raises(RecordError) as invalid:
        decode_change(bad)
    msg = Records(
        Phase.MERGE,
        (
            offer(WEB, 1, loser_epoch, 1),  # new to us: merged
            bad,  # invalid: counted, skipped, the rest still applied
            offer(SA, 0, loser_epoch, 2, seq=10**6),  # ours is newer, theirs by the loser
            offer(WEB, 2, loser_epoch, 3, last_seen=base["last_seen"] + 60),  # likewise
        ),
    )
    caplog.set_level(logging.WARNING, logger="hasyncd.core")
    caplog.clear()
    before = core.roles.version
    assert deliver(core, peer, msg) is True
    assert (peer.merge_offered, peer.merge_merged, peer.merge_conflicts) == (4, 3, 2)
    assert core.stats["merged_records"][""] == 3
    assert core.stats["merge_conflicts"][""] == 2
    assert core.stats["records_invalid"]["merge"] == 1
    assert core.roles.version > before  # written in the survivor's own epoch
    web = core.store.get_raw(WEB, record(WEB, 1)[0])
    assert web is not None
    assert web.version > before
    sa = decoded(core.store.get_raw(SA, rid_sa), SA)
    assert sa is not None
    # The loser's counter wins (never backwards), read as the survivor reads every SA
    # written before its promotion: advanced by the margin (hasyncd.core.seqview).
    assert sa["seq"] == 10**6 + core.s.esp_seq_margin
    web2 = decoded(core.store.get_raw(WEB, rid_web2), WEB)
    assert web2 is not None
    assert web2["last_seen"] == base["last_seen"] + 60
    assert core.store.get_raw(WEB, rid_bad) is None
    msgs = caplog.messages
    assert f"merge from b: invalid record {shown_id(WEB, rid_bad)}: {invalid.value.message}" in (
        msgs
    )
    conflicts = [m for m in msgs if m.startswith("merge conflict on ")]
    assert conflicts == [
        f"merge conflict on ipsec_sa {rid_sa}: changed on both sides, newer version kept",
        f"merge conflict on sslvpn_web_session {shown_id(WEB, rid_web2)}: changed on both "
        "sides, newer version kept",
    ]
    # Web session ids are cookie digests: never logged in full.
    assert not any(rid in m for m in msgs for rid in (rid_bad, rid_web2))


def test_a_secondarys_catch_up_offer_ends_without_a_split_brain() -> None:
    _sim, core = survivor()
    peer = core.peers["b"]
    peer.merge_offered, peer.merge_merged, peer.merge_conflicts = 5, 3, 1
    core.events()
    assert deliver(core, peer, MergeEnd(5, 0)) is True
    assert core.events() == [MergeApplied("b", 5, 3, 1)]
    assert (peer.merge_offered, peer.merge_merged, peer.merge_conflicts) == (0, 0, 0)
    assert core.split_brain.current is None
    assert core.stats["split_brains"][""] == 0


def test_a_former_primarys_merge_end_records_the_split_and_reannounces(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _sim, core = survivor()
    peer = core.peers["b"]
    peer.merge_offered, peer.merge_merged, peer.merge_conflicts = 4, 2, 1
    core.events()
    caplog.set_level(logging.WARNING)
    caplog.clear()
    epoch = core.roles.epoch
    assert deliver(core, peer, MergeEnd(4, E_LOSER)) is True
    assert core.split_brain.status() == {
        "peer": "b",
        "own_epoch": epoch,
        "peer_epoch": E_LOSER,
        "survivor": "a",
        "detected_at": WALL_BASE + core.now,  # the clocks of the input deliver() re-uses
        "offered": 4,
        "merged": 2,
        "conflicts": 1,
    }
    assert core.stats["split_brains"][""] == 1
    reason = "split brain with b resolved: re-announcing"
    assert core.events() == [
        MergeApplied("b", 4, 2, 1),
        SplitBrain("b", epoch, E_LOSER, "a"),
        Reannounce(epoch, reason),
    ]
    assert "merge from b done: 4 offered, 2 merged, 1 conflicts" in caplog.messages
    assert reason in caplog.messages
    assert (
        f"SPLIT BRAIN: b and this node were both primary (epochs {E_LOSER} and {epoch}); "
        "survivor: a"
    ) in caplog.messages


def test_a_split_already_recorded_for_this_peer_is_completed_not_recorded_again() -> None:
    _sim, core = survivor()
    peer = core.peers["b"]
    core.note_split("b", core.roles.epoch, E_LOSER, survivor="a")
    info = core.split_brain.current
    assert info is not None
    assert info.offered is None
    peer.merge_offered = 6
    core.events()
    assert deliver(core, peer, MergeEnd(6, E_LOSER)) is True
    done = core.split_brain.current
    assert done is not None
    assert (done.peer, done.detected_at, done.own_epoch) == ("b", info.detected_at, info.own_epoch)
    assert (done.offered, done.merged, done.conflicts) == (6, 0, 0)
    assert core.stats["split_brains"][""] == 1
    assert not any(isinstance(ev, SplitBrain) for ev in core.events())
    # A split recorded with another peer is replaced by this one.
    core.note_split("c", 1, 2, survivor="c")
    deliver(core, peer, MergeEnd(0, E_LOSER))
    sb = core.split_brain.current
    assert sb is not None
    assert sb.peer == "b"
    assert core.stats["split_brains"][""] == 3
