"""Unit tests of core/'s sub-machines through their narrow inputs (no node core, no simulator).

The detector, the split-brain record, the follower and the primary's duties
each declare what they need of the node (a Protocol, or plain arguments);
these tests give them exactly that, with small fakes, and check the
decisions they return or the state they advance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hasyncd.core.detector import STALL_NOISE, check_peers, own_lateness
from hasyncd.core.effects import Count, Effects
from hasyncd.core.election import Candidate, Rules
from hasyncd.core.events import SplitBrain
from hasyncd.core.follower import (
    RESUME_ATTEMPTS,
    TRANSITIONS,
    Claim,
    Follower,
    FollowInput,
    FollowState,
)
from hasyncd.core.merge import MergeSender
from hasyncd.core.peers import Peer
from hasyncd.core.primary import PrimaryDuties
from hasyncd.core.replication import Mark
from hasyncd.core.settings import CoreSettings
from hasyncd.core.splitbrain import SplitBrainState
from hasyncd.errors import UnexpectedMessage, WriteRefused
from hasyncd.secret import Secret
from hasyncd.store import Store, pack_version
from hasyncd.wire.messages import BulkEnd, BulkStart, Change, Message, Phase, Records, SyncRequest

SETTINGS = CoreSettings(name="a", tag=1, priority=100, group_id=1, psk=Secret(bytes(32)))


def peer(name: str = "b", *, up: bool = True, last_rx: float = 0.0) -> Peer:
    p = Peer(name, 2, b"boot", 1 << 20, f"{name}:1")
    p.up, p.last_rx = up, last_rx
    return p


# -- detector --------------------------------------------------------------------------------


def test_lateness_within_noise_is_no_stall_and_credits_nobody() -> None:
    p = peer()
    assert own_lateness([p], STALL_NOISE, 0.1) is False
    assert p.stall == 0.0


def test_a_stall_credits_only_the_peers_that_are_up() -> None:
    up, down = peer("b"), peer("c", up=False)
    assert own_lateness([up, down], 0.5, 0.1) is True
    assert (up.stall, down.stall) == (0.5, 0.0)


def test_a_silent_peer_is_lost_at_its_deadline_and_not_before() -> None:
    p = peer(last_rx=10.0)
    assert check_peers([p], 0.5, 10.49).lost == ()
    verdicts = check_peers([p], 0.5, 10.5)
    assert [(q.name, why) for q, why in verdicts.lost] == [
        ("b", "no authenticated frame for 500 ms")
    ]
    assert check_peers([peer(up=False)], 0.5, 99.0).lost == ()  # already lost


def test_own_stall_suppresses_a_loss_once_and_delays_it_by_the_stall() -> None:
    p = peer(last_rx=10.0)
    own_lateness([p], 0.3, 0.1)
    first = check_peers([p], 0.5, 10.6)
    assert (first.lost, first.suppressed) == ((), 1)
    again = check_peers([p], 0.5, 10.7)
    assert (again.lost, again.suppressed) == ((), 0)  # counted once per silence
    assert [q for q, _ in check_peers([p], 0.5, 10.8).lost] == [p]


# -- split brain -----------------------------------------------------------------------------


def test_split_brain_record_is_noted_then_completed_by_the_merge() -> None:
    sb = SplitBrainState()
    assert sb.status() is None
    sb.offered(5)  # a loser's acknowledgement with nothing detected: nothing to note
    assert sb.current is None
    ev = sb.detected("b", 7, 9, "a", wall=1234.5)
    assert ev == SplitBrain("b", 7, 9, "a")
    assert sb.status() == {
        "peer": "b",
        "own_epoch": 7,
        "peer_epoch": 9,
        "survivor": "a",
        "detected_at": 1234.5,
        "offered": None,
        "merged": None,
        "conflicts": None,
    }
    sb.merged("b", 10, 4, 1)
    st = sb.status()
    assert st is not None
    assert (st["offered"], st["merged"], st["conflicts"]) == (10, 4, 1)
    # The loser offers again (its ACK was lost with a replaced link): nothing new merges,
    # and the figures of this split brain are not reset to the repeat's.
    sb.merged("b", 10, 0, 1)
    st = sb.status()
    assert st is not None
    assert (st["offered"], st["merged"], st["conflicts"]) == (10, 4, 1)
    # A new split brain starts its figures afresh.
    sb.detected("b", 9, 11, "a", wall=1300.0)
    sb.merged("b", 3, 2, 0)
    st = sb.status()
    assert st is not None
    assert (st["offered"], st["merged"], st["conflicts"]) == (3, 2, 0)


# -- follower --------------------------------------------------------------------------------


@dataclass
class FakeRoles:
    epoch: int = 5
    applied: int = 0
    resume_claim: Claim | None = None
    resume_failures: int = 0
    in_sync: list[bool] = field(default_factory=list)

    def set_in_sync(self, value: bool) -> None:
        self.in_sync.append(value)


class FakeLink:
    def __init__(self) -> None:
        self.store = Store()
        self.sent: list[Message] = []
        self.applied: list[tuple[Change, ...]] = []
        self.pumps = 0

    def apply_from_primary(self, changes: tuple[Change, ...]) -> int:
        self.applied.append(changes)
        return max((pack_version(c.epoch, c.seq) for c in changes), default=0)

    def request_pump(self) -> None:
        self.pumps += 1

    def send(self, peer: Peer, msg: Message) -> tuple[int, int] | None:
        self.sent.append(msg)
        return (len(self.sent), 10)

    def send_tracked(self, peer: Peer, msg: Message, mark: Mark | None) -> bool:
        return self.send(peer, msg) is not None


def change(seq: int) -> Change:
    return Change(1, f"r{seq}", 5, seq, b"x")


def test_follower_asks_then_loads_a_snapshot_then_streams() -> None:
    roles, link, p, f = FakeRoles(), FakeLink(), peer(), Follower("b")
    f.pump(roles, link, p, now=1.0, handshake_timeout=3.0)
    assert link.sent == [SyncRequest("follow")]
    assert f.state is FollowState.REQUESTED
    f.handle(roles, link, p, BulkStart(1, 2))
    assert (f.state, link.store.resyncing, roles.in_sync) == (FollowState.BULK, True, [False])
    f.handle(roles, link, p, Records(Phase.BULK, (change(1), change(2))))
    assert roles.resume_claim == Claim(5, 1, 1, "r2")  # where the snapshot stands
    f.handle(roles, link, p, BulkEnd(1, 2, 5, 2))
    assert (f.state, link.store.resyncing, roles.in_sync) == (
        FollowState.STREAM,
        False,
        [False, True],
    )
    assert roles.applied == pack_version(5, 2)
    f.handle(roles, link, p, Records(Phase.STREAM, (change(3),)))
    assert roles.applied == pack_version(5, 3)


def test_follower_refuses_messages_out_of_order() -> None:
    roles, link, p, f = FakeRoles(), FakeLink(), peer(), Follower("b")
    with pytest.raises(UnexpectedMessage):
        f.handle(roles, link, p, Records(Phase.STREAM, (change(1),)))
    with pytest.raises(UnexpectedMessage):
        f.handle(roles, link, p, BulkEnd(1, 0, 5, 0))
    f.handle(roles, link, p, BulkStart(1, 0))
    with pytest.raises(UnexpectedMessage):
        f.handle(roles, link, p, BulkEnd(2, 0, 5, 0))  # another snapshot's end
    assert link.applied == []


def test_follower_asks_again_when_the_primary_does_not_answer() -> None:
    roles, link, p, f = FakeRoles(), FakeLink(), peer(), Follower("b")
    f.pump(roles, link, p, now=1.0, handshake_timeout=3.0)
    f.pump(roles, link, p, now=7.0, handshake_timeout=3.0)  # not more than 2 x 3 s
    states = [f.state]
    f.pump(roles, link, p, now=7.01, handshake_timeout=3.0)
    states.append(f.state)
    assert states == [FollowState.REQUESTED, FollowState.NEED_REQUEST]


def test_follower_gives_up_resuming_after_repeated_unanswered_requests() -> None:
    claim = Claim(5, 3)
    roles, link, p, f = FakeRoles(resume_claim=claim), FakeLink(), peer(), Follower("b")
    for i in range(RESUME_ATTEMPTS):
        assert roles.resume_claim == claim
        f.pump(roles, link, p, now=float(i), handshake_timeout=3.0)
        assert link.sent[-1] == SyncRequest("resume", 5, 3, 0, None)
        f.link_down(roles)
    assert (roles.resume_claim, roles.resume_failures) == (None, 0)
    f.pump(roles, link, p, now=9.0, handshake_timeout=3.0)
    assert link.sent[-1] == SyncRequest("follow")


def test_a_link_lost_mid_snapshot_leaves_the_follower_out_of_sync() -> None:
    roles, link, p, f = FakeRoles(), FakeLink(), peer(), Follower("b")
    f.handle(roles, link, p, BulkStart(1, 0))
    f.link_down(roles)
    assert roles.in_sync == [False, False]
    assert f.state is FollowState.NEED_REQUEST
    assert link.store.resyncing  # kept open: the primary may resume it


def test_the_follower_table_takes_replication_messages_only_in_their_states() -> None:
    legal = {
        FollowInput.BULK_RECORDS: {FollowState.BULK},
        FollowInput.BULK_END: {FollowState.BULK},
        FollowInput.STREAM_RECORDS: {FollowState.STREAM},
        FollowInput.BULK_START: set(FollowState),
    }
    for inp, states in legal.items():
        assert {s for s in FollowState if (s, inp) in TRANSITIONS} == states
        for state in set(FollowState) - states:
            f = Follower("b", state=state)
            with pytest.raises(UnexpectedMessage, match=f"{inp.value} in state {state.value}"):
                f.process_input(inp)
            assert f.state is state  # refused inputs change nothing


def test_a_link_change_resets_the_follower_to_merging_while_a_merge_is_due() -> None:
    roles = FakeRoles()
    for state in FollowState:
        f = Follower("b", state=state)
        f.link_down(roles)
        g = Follower("b", state=state, merge=MergeSender(3, 0))
        g.link_up()
        assert (f.state, g.state) == (FollowState.NEED_REQUEST, FollowState.MERGING)


# -- primary duties --------------------------------------------------------------------------


@dataclass
class FakeDutiesRoles:
    epoch: int = 5
    shutting_down: bool = False
    reason: str = ""

    @property
    def version(self) -> int:
        return pack_version(self.epoch, 0)

    def self_candidate(self, now: float, *, incumbent: bool = False) -> Candidate:
        return Candidate("a", 100, now)

    def rules(self, *, prefer_newest: bool = False) -> Rules:
        return Rules(prefer_newest=prefer_newest)


class FakeHost:
    """What the duties read of a node; it has nothing they could change it with."""

    def __init__(self, last_hb: float = 0.0) -> None:
        self.peers: dict[str, Peer] = {}
        self.last_hb = last_hb

    @property
    def last_heartbeat_sent(self) -> float:
        return self.last_hb

    def now_ms(self, now: float) -> int:
        return int(now * 1000)

    def send(self, peer: Peer, msg: Message) -> tuple[int, int] | None:
        return None


def test_a_primary_silent_past_the_threshold_is_fenced_until_its_peers_confirm() -> None:
    roles, host = FakeDutiesRoles(), FakeHost(last_hb=0.0)
    host.peers["b"] = peer()
    out = Effects()
    duties = PrimaryDuties(roles, host, SETTINGS, out)
    threshold = SETTINGS.lost_timeout - SETTINGS.heartbeat_interval
    duties.check_writable(threshold)  # exactly at the threshold: still writable
    assert out.take() == []
    duties.after_stall(threshold + 0.01)
    assert duties.fence is not None and out.take() == [Count("fenced")]
    with pytest.raises(WriteRefused) as exc:
        duties.check_writable(11.0)
    assert exc.value.code == "fenced"
    since_ms = duties.fence.since_ms
    duties.confirm(host.peers["b"], "a", 5, since_ms - 1)  # an echo from before the stall
    duties.run(11.0)
    assert duties.fence is not None
    duties.confirm(host.peers["b"], "a", 5, since_ms)
    duties.run(11.0)
    assert duties.fence is None


def test_a_failover_without_an_in_sync_secondary_is_refused() -> None:
    out = Effects()
    duties = PrimaryDuties(FakeDutiesRoles(), FakeHost(), SETTINGS, out)
    with pytest.raises(WriteRefused) as exc:
        duties.request_failover(1.0, "manual failover")
    assert exc.value.code == "no_in_sync_secondary"
    assert duties.handover is None
    assert out.take() == []
