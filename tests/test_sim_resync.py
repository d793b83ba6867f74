"""Partial resynchronization in the simulator: resume after a drop instead of a new snapshot.

Each test ends by checking that both nodes hold the same live records at the
same versions, and that what the primary deleted is gone on the secondary.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from hasyncd.core import replication
from hasyncd.core.follower import RESUME_ATTEMPTS
from hasyncd.core.peers import Conn
from hasyncd.errors import MalformedMessage
from hasyncd.sim import WALL_BASE, Sim
from hasyncd.wire.messages import Role, SyncRequest

from .simutil import IKE, SA, WEB, in_sync, pair, put, record, snapshot

# A transport frame that decrypts to nothing: what an on-path attacker who
# corrupts one frame makes the receiver see (PROTOCOL.md 6: the link closes).
BOGUS_FRAME = b"\x00\x00\x00\x30" + bytes(0x30)


def stat(sim: Sim, node: str, name: str, label: str = "") -> int:
    return int(sim.nodes[node].core.stats[name][label])


def link(sim: Sim, node: str, peer: str) -> Conn | None:
    p = sim.nodes[node].core.peers.get(peer)
    return None if p is None else p.conn


def corrupt_link(sim: Sim, victim: str, peer: str) -> None:
    """Feed the victim a corrupted frame on its link to ``peer`` (it closes the link)."""
    conn = link(sim, victim, peer)
    assert conn is not None
    sim.call(victim, lambda core: core.receive_data(conn.id, BOGUS_FRAME, sim.now, wall=sim.wall))


def drop_link(sim: Sim, primary: str, secondary: str, seconds: float) -> None:
    """Cut the link for ``seconds`` (below the loss threshold): the connection is reset."""
    conn = link(sim, primary, secondary)
    assert conn is not None
    sim.partition(primary, secondary)
    sim.call(primary, lambda core: core.close(conn, "test: link cut"))
    sim.at(sim.now + seconds, lambda: sim.heal(primary, secondary))


def assert_exact(sim: Sim, primary: str, secondary: str, deleted: set[tuple[int, str]]) -> None:
    a, b = snapshot(sim, primary), snapshot(sim, secondary)
    assert a == b, f"{len(set(a) ^ set(b))} records differ, {len(a)} on {primary}"
    # Deleted on the primary (and not written again): gone on the secondary too.
    gone = {key for key in deleted if key not in a}
    assert not gone & set(b)


# A field change per kind: an update of an existing record.
UPDATE = {
    SA: lambda n: {"seq": n},
    IKE: lambda n: {"msgid_send": n},
    WEB: lambda n: {"last_seen": int(WALL_BASE) - n % 60},
}


def churn(sim: Sim, node: str, rng: random.Random, n: int, base: int, pool: int) -> set[Any]:
    """``n`` writes on ``node``: new records, updates of records < ``pool``, deletes."""
    deleted: set[tuple[int, str]] = set()
    for step in range(n):
        r = rng.random()
        kind = (SA, IKE, WEB)[step % 3]
        if r < 0.4:
            put(sim, node, kind, base + step)
        elif r < 0.8:
            put(sim, node, kind, rng.randrange(pool), **UPDATE[kind](10_000 + step))
        else:
            rid = record(kind, rng.randrange(pool))[0]
            if sim.write(node, kind, rid, None) is not None:
                deleted.add((kind, rid))
    return deleted


def test_short_drop_resumes_without_snapshot_and_ends_exact() -> None:
    sim = Sim(seed=21)
    primary, secondary = pair(sim)
    for i in range(300):
        put(sim, primary, WEB, i)
        put(sim, primary, SA, i)
    # Two records that expire while the link is down.
    expiring = [
        put(sim, primary, WEB, 1000 + i, expires_at=int(WALL_BASE + sim.now) + 1)[0]
        for i in range(2)
    ]
    sim.run_for(0.2)
    assert_exact(sim, primary, secondary, set())
    snaps = stat(sim, primary, "snapshots_started")
    applied = stat(sim, secondary, "records_applied")

    drop_link(sim, primary, secondary, 0.3)
    deleted = churn(sim, primary, random.Random(1), 120, 2000, 300)
    sim.run_until_true(lambda: stat(sim, primary, "resyncs", "partial") == 1, limit=5)
    sim.run_until_true(lambda: in_sync(sim, secondary), limit=5)
    sim.run_for(1.5)  # past the expiries

    assert stat(sim, primary, "snapshots_started") == snaps
    assert stat(sim, primary, "resyncs", "full") == 1  # the first snapshot only
    # Only what changed during the drop crossed the link again (at most every write).
    assert stat(sim, secondary, "records_applied") - applied <= 120
    assert sim.nodes[secondary].role is Role.SECONDARY
    assert_exact(sim, primary, secondary, deleted)
    for rid in expiring:
        assert sim.nodes[secondary].core.store.get(WEB, rid, WALL_BASE + sim.now) is None
    # In sync again, and the watermark covers every write made during the drop.
    core = sim.nodes[primary].core
    assert core.watermark == core.version


def test_partial_resync_becomes_in_sync_only_after_bulk_end() -> None:
    sim = Sim(seed=22)
    primary, secondary = pair(sim)
    for i in range(50):
        put(sim, primary, SA, i)
    sim.run_for(0.1)
    drop_link(sim, primary, secondary, 0.2)
    put(sim, primary, SA, 99)
    seen: list[bool] = []

    def watch() -> bool:
        peer = sim.nodes[primary].core.peers[secondary]
        if peer.session is not None and peer.conn is not None:
            seen.append(peer.session.in_sync)
        return stat(sim, primary, "resyncs", "partial") == 1 and in_sync(sim, secondary)

    sim.run_until_true(watch, limit=5, step=0)
    # The resumed session started as not in sync: BULK_END's ack made it so.
    assert seen and seen[0] is False
    sim.run_for(0.1)
    assert_exact(sim, primary, secondary, set())


def big_primary(sim: Sim, n: int, window: int) -> None:
    sim.add("a", ["a", "b"], priority=200, window=window)
    sim.run_until_true(lambda: sim.nodes["a"].role is Role.PRIMARY, limit=5)
    for i in range(n):
        put(sim, "a", SA, i)


def count_bytes(sim: Sim, sender: str) -> dict[str, int]:
    """Count the link bytes ``sender`` writes from now on."""
    sent = {"bytes": 0}
    send = sim._send

    def counting(node: Any, conn_id: int, data: bytes) -> None:
        if node.name == sender:
            sent["bytes"] += len(data)
        send(node, conn_id, data)

    sim._send = counting  # type: ignore[method-assign]
    return sent


N_BIG = 6000
WINDOW = 64 * 1024


def clean_snapshot_bytes() -> int:
    sim = Sim(seed=23)
    big_primary(sim, N_BIG, WINDOW)
    sent = count_bytes(sim, "a")
    sim.add("b", ["a", "b"], priority=100, window=WINDOW)
    sim.run_until_true(lambda: in_sync(sim, "b"), limit=30)
    return sent["bytes"]


def test_snapshot_cut_every_few_frames_resumes_and_ends_exact() -> None:
    """Issue 13's attacker: one corrupted frame per quarter snapshot, for as long as it lasts."""
    baseline = clean_snapshot_bytes()
    sim = Sim(seed=23)
    big_primary(sim, N_BIG, WINDOW)
    sent = count_bytes(sim, "a")
    sim.add("b", ["a", "b"], priority=100, window=WINDOW)
    rng = random.Random(2)
    deleted: set[tuple[int, str]] = set()
    cuts = 0
    last = 0

    events = 0

    def attack() -> bool:
        nonlocal cuts, last, deleted, events
        if in_sync(sim, "b"):
            return True
        applied = stat(sim, "b", "records_applied")  # a cut every quarter snapshot applied
        if applied - last >= N_BIG // 4 and link(sim, "b", "a"):
            corrupt_link(sim, "b", "a")
            cuts += 1
            last = applied
        events += 1
        if events % 40 == 0:  # writes go on: new, updated and deleted records
            deleted |= churn(sim, "a", rng, 1, 10_000 + events, N_BIG)
        return False

    sim.run_until_true(attack, limit=60, step=0)
    sim.run_for(0.5)

    assert cuts >= 3
    assert stat(sim, "b", "link_errors", "decrypt_failed") == cuts
    assert stat(sim, "a", "snapshots_started") == 1
    assert stat(sim, "a", "resyncs", "resumed_snapshot") == cuts
    # Resumed, not restarted: the whole run cost little more than one clean snapshot
    # (each cut loses at most one window in flight, plus the writes made meanwhile).
    assert sent["bytes"] <= 1.5 * baseline, (sent["bytes"], baseline)
    assert_exact(sim, "a", "b", deleted)


def test_drop_longer_than_backlog_seconds_falls_back_to_full_snapshot() -> None:
    sim = Sim(seed=24)
    primary, secondary = pair(sim, backlog_s=1.0)
    for i in range(100):
        put(sim, primary, WEB, i)
    sim.run_for(0.2)
    sim.freeze(secondary)  # SIGSTOP past the loss threshold and the backlog's age
    deleted = churn(sim, primary, random.Random(3), 60, 500, 100)
    sim.run_for(1.5)
    sim.thaw(secondary)
    sim.run_until_true(lambda: stat(sim, primary, "resyncs", "full") == 2, limit=10)
    sim.run_until_true(lambda: in_sync(sim, secondary), limit=10)
    sim.run_for(0.2)
    assert stat(sim, primary, "resync_refused", "backlog_age") == 1
    assert stat(sim, primary, "resyncs", "partial") == 0
    assert_exact(sim, primary, secondary, deleted)


def test_drop_beyond_backlog_bytes_falls_back_to_full_snapshot() -> None:
    sim = Sim(seed=25)
    primary, secondary = pair(sim, backlog_bytes=16 * 1024)
    for i in range(100):
        put(sim, primary, SA, i)
    sim.run_for(0.2)
    drop_link(sim, primary, secondary, 0.3)
    deleted = churn(sim, primary, random.Random(4), 600, 500, 100)  # > 16 KiB of backlog
    sim.run_until_true(lambda: stat(sim, primary, "resyncs", "full") == 2, limit=10)
    sim.run_until_true(lambda: in_sync(sim, secondary), limit=10)
    sim.run_for(0.2)
    assert stat(sim, primary, "resync_refused", "backlog_bytes") == 1
    assert sim.nodes[primary].core.backlog.size <= 16 * 1024
    assert_exact(sim, primary, secondary, deleted)


def test_after_a_failover_the_survivors_take_a_new_snapshot() -> None:
    """A claim on the old primary's session is never honoured by the new one."""
    sim = Sim(seed=26)
    names = ["a", "b", "c"]
    sim.add("a", names, priority=200)
    sim.add("b", names, priority=150)
    sim.add("c", names, priority=100)
    sim.run_until_true(lambda: in_sync(sim, "b") and in_sync(sim, "c"), limit=10)
    for i in range(100):
        put(sim, "a", WEB, i)
    sim.run_for(0.2)
    old_epoch = sim.nodes["c"].core.roles.epoch
    claim = sim.nodes["c"].core.roles.resume_claim
    assert claim is not None and claim.epoch == old_epoch and claim.kind == 0
    sim.kill("a")
    sim.run_until_true(lambda: sim.primaries() == ["b"] and in_sync(sim, "c"), limit=10)
    deleted = churn(sim, "b", random.Random(5), 50, 300, 100)
    sim.run_for(0.2)
    assert stat(sim, "b", "resyncs", "partial") == 0
    assert stat(sim, "b", "resyncs", "full") >= 1
    assert_exact(sim, "b", "c", deleted)

    # A forged resume of the old epoch's session (a faulty peer) is refused too.
    peer = sim.nodes["b"].core.peers["c"]
    before = stat(sim, "b", "resync_refused", "epoch_changed")
    sim.call("b", lambda core: core._on_sync_request(peer, SyncRequest("resume", old_epoch, 1)))
    assert stat(sim, "b", "resync_refused", "epoch_changed") == before + 1
    sim.run_until_true(lambda: in_sync(sim, "c"), limit=10)
    sim.run_for(0.2)
    assert_exact(sim, "b", "c", deleted)


def test_restarted_secondary_takes_a_full_snapshot() -> None:
    sim = Sim(seed=27)
    primary, secondary = pair(sim)
    for i in range(50):
        put(sim, primary, SA, i)
    sim.run_for(0.2)
    sim.restart(secondary)
    sim.run_until_true(lambda: in_sync(sim, secondary), limit=10)
    sim.run_for(0.2)
    assert stat(sim, primary, "resyncs", "full") == 2
    assert stat(sim, primary, "resyncs", "partial") == 0
    assert_exact(sim, primary, secondary, set())


@pytest.mark.parametrize("seed", range(6))
def test_random_cuts_during_snapshot_and_stream_end_exact(seed: int) -> None:
    """A seeded campaign: links cut at random moments of a snapshot and of the stream."""
    rng = random.Random(seed)
    sim = Sim(seed=100 + seed)
    big_primary(sim, 1500, WINDOW)
    sim.add("b", ["a", "b"], priority=100, window=WINDOW)
    deleted: set[tuple[int, str]] = set()
    for _ in range(8):
        sim.run_for(rng.uniform(0.002, 0.2))
        deleted |= churn(sim, "a", rng, rng.randrange(20), 5000 + rng.randrange(10**6), 1500)
        if link(sim, "b", "a") is not None and link(sim, "a", "b") is not None:
            if rng.random() < 0.5:
                corrupt_link(sim, "b", "a")
            else:
                drop_link(sim, "a", "b", rng.uniform(0.0, 0.3))
    sim.run_until_true(lambda: in_sync(sim, "b"), limit=30)
    sim.run_for(0.5)
    assert sim.primaries() == ["a"]
    assert stat(sim, "a", "snapshots_started") <= 2
    assert_exact(sim, "a", "b", deleted)


def test_a_primary_refusing_the_resume_form_gets_the_short_form_after_three_tries() -> None:
    """A primary of a release without resumption closes the link on the 5-field form."""
    sim = Sim(seed=28)
    primary, secondary = pair(sim)
    core = sim.nodes[primary].core
    answer = core._on_sync_request

    def older_release(peer: Any, msg: SyncRequest) -> None:
        if msg.resume_epoch:
            raise MalformedMessage("SYNC_REQUEST: expected 1 fields, got 5")
        answer(peer, msg)

    core._on_sync_request = older_release  # type: ignore[method-assign]
    for i in range(30):
        put(sim, primary, WEB, i)
    sim.run_for(0.1)
    drop_link(sim, primary, secondary, 0.05)
    sim.run_until_true(lambda: stat(sim, primary, "resyncs", "full") == 2, limit=20)
    sim.run_until_true(lambda: in_sync(sim, secondary), limit=10)
    sim.run_for(0.2)
    # Each refusal closed the link; a request lost with a duplicate link counts as one too.
    assert 1 <= stat(sim, primary, "link_errors", "malformed_message") <= RESUME_ATTEMPTS
    assert sim.nodes[secondary].role is Role.SECONDARY
    assert_exact(sim, primary, secondary, set())


def test_backlog_trimmed_while_a_resume_is_fed_falls_back_to_a_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resume queues the backlog step by step; writes that trim it first force a snapshot."""
    monkeypatch.setattr(replication, "FEED_STEP", 4)
    sim = Sim(seed=29)
    # About 280 writes of backlog; a small window keeps the feed slow.
    primary, secondary = pair(sim, backlog_bytes=18 * 1024, window=4096)
    for i in range(100):
        put(sim, primary, SA, i)
    sim.run_for(0.2)
    drop_link(sim, primary, secondary, 0.2)
    rng = random.Random(6)
    deleted = churn(sim, primary, rng, 200, 500, 100)  # covered by the backlog
    sim.run_until_true(lambda: stat(sim, primary, "resyncs", "partial") == 1, limit=5, step=0)
    # Faster than the feed: each message queues 4 backlog writes, 400 are written.
    deleted |= churn(sim, primary, rng, 400, 900, 100)
    sim.run_until_true(lambda: stat(sim, primary, "resyncs", "full") == 2, limit=10)
    sim.run_until_true(lambda: in_sync(sim, secondary), limit=10)
    sim.run_for(0.3)
    assert stat(sim, primary, "resync_refused", "backlog_bytes") == 1
    assert_exact(sim, primary, secondary, deleted)


@pytest.mark.parametrize("seed", range(3))
def test_random_cuts_with_a_slow_feed_end_exact(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The campaign again, with resumes fed 3 backlog writes per message."""
    monkeypatch.setattr(replication, "FEED_STEP", 3)
    test_random_cuts_during_snapshot_and_stream_end_exact(seed + 50)
