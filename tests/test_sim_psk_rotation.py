"""PSK rotation in the simulator: key selection, fallback, re-keying links, retiring a key.

PROTOCOL.md section 5.2.1; README "Rotating the link key".
"""

from __future__ import annotations

import pytest

from hasyncd.core.events import PeerChanged, RoleChanged
from hasyncd.core.keys import REKEY_RETRY, Keyring, prefers_new_link
from hasyncd.errors import HandshakeError
from hasyncd.secret import Secret
from hasyncd.sim import Sim
from hasyncd.wire.channel import Channel
from hasyncd.wire.handshake import key_id
from hasyncd.wire.messages import Hello
from tests.simutil import SA, pair, put, snapshot

NEW = Secret(bytes(range(100, 132)))
OTHER = Secret(bytes(range(200, 232)))


def link_kid(sim: Sim, name: str) -> bytes | None:
    peers = list(sim.nodes[name].core.peers.values())
    if not peers or peers[0].conn is None:
        return None
    return peers[0].conn.channel.key_id


def stat(sim: Sim, name: str, metric: str, label: str = "") -> int:
    return sim.nodes[name].core.stats[metric][label]


def link_downs(sim: Sim, name: str) -> list[object]:
    return [ev for _, ev in sim.nodes[name].events if isinstance(ev, PeerChanged) and not ev.up]


def role_changes(sim: Sim, name: str) -> list[object]:
    return [ev for _, ev in sim.nodes[name].events if isinstance(ev, RoleChanged)]


class Writer:
    """Writes one record per call to the primary; remembers what must replicate."""

    def __init__(self, sim: Sim, primary: str) -> None:
        self.sim, self.primary, self.i = sim, primary, 0

    def run(self, seconds: float, every: float = 0.05) -> None:
        end = self.sim.now + seconds
        while self.sim.now < end:
            put(self.sim, self.primary, SA, self.i)
            self.i += 1
            self.sim.run_for(every)


def test_responder_accepts_either_key_and_reports_which() -> None:
    hello = Hello("b", bytes(16), 2, 1 << 20, "")
    for dial_key in (NEW, Sim().psk):
        a = Channel(
            initiator=True, psk=dial_key, group_id=1, hello=Hello("a", bytes(16), 1, 1 << 20, "")
        )
        b = Channel(initiator=False, psk=NEW, group_id=1, hello=hello, accept=(Sim().psk,))
        a.start()
        b.receive_data(a.take_output())
        a.receive_data(b.take_output())
        b.receive_data(a.take_output())
        assert b.key_id == a.key_id == key_id(dial_key.reveal())


def test_psk_mismatch_names_every_held_key_id_and_no_key() -> None:
    a = Channel(initiator=True, psk=OTHER, group_id=1, hello=Hello("a", bytes(16), 1, 1 << 20, ""))
    b = Channel(
        initiator=False,
        psk=NEW,
        group_id=1,
        hello=Hello("b", bytes(16), 2, 1 << 20, ""),
        accept=(Sim().psk,),
    )
    a.start()
    with pytest.raises(HandshakeError) as caught:
        b.receive_data(a.take_output())
    exc = caught.value
    assert exc.code == "psk_mismatch"
    assert key_id(NEW.reveal()).hex() in exc.message
    assert key_id(Sim().psk.reveal()).hex() in exc.message
    for key in (NEW, OTHER, Sim().psk):
        assert key.reveal().hex() not in exc.message


def test_keyring_prefers_next_and_believes_a_refusal_only_for_a_while() -> None:
    old = Sim().psk
    keys = Keyring.of(old, NEW)
    assert keys.preferred is NEW and keys.others == (old,)
    assert keys.dial_key(None, 0.0, 5.0) is NEW
    assert keys.dial_key(keys.next_id, 5.0, 5.0 + REKEY_RETRY - 1) is old
    assert keys.dial_key(keys.next_id, 5.0, 5.0 + REKEY_RETRY) is NEW  # a forged REJECT expires
    assert keys.dial_key(keys.current_id, 5.0, 6.0) is NEW  # only a refusal of *next* counts
    assert Keyring.of(old, Secret(old.reveal())).next is None  # same key twice is one key
    assert Keyring.of(old, None).others == ()


def test_both_ends_keep_the_same_link_during_a_rotation() -> None:
    # Two nodes that both prefer NEW keep the link under NEW, whichever end judges it.
    old = key_id(Sim().psk.reveal())
    new = key_id(NEW.reveal())
    for keys in (Keyring.of(Sim().psk, NEW), Keyring.of(NEW, None)):
        assert prefers_new_link(keys, old, new) is True
        assert prefers_new_link(keys, new, old) is False
        assert prefers_new_link(keys, new, new) is None  # then the name rule decides


def test_a_node_with_a_next_key_the_peer_lacks_falls_back_without_losing_the_link() -> None:
    sim = Sim(seed=3)
    sim.add("a", ["a", "b"], priority=200, psk_next=NEW)
    sim.add("b", ["b"], priority=100)  # b does not dial: only a's fallback can form the link
    # The fallback is immediate: one refused INIT, then the current key (well under a second).
    sim.run_until_true(
        lambda: link_kid(sim, "a") is not None and link_kid(sim, "b") is not None, limit=1.0
    )
    # a dialed with NEW, b refused it, a fell back to the current key at once.
    assert link_kid(sim, "a") == link_kid(sim, "b") == key_id(sim.psk.reveal())
    assert stat(sim, "a", "link_errors", "psk_mismatch") >= 1
    sim.run_for(3 * REKEY_RETRY)
    assert link_downs(sim, "a") == link_downs(sim, "b") == []
    # The next key is retried once a REKEY_RETRY, not on every heartbeat.
    refused = stat(sim, "b", "link_errors", "psk_mismatch")
    assert 1 <= refused <= 5, refused
    status = sim.nodes["a"].core.status(sim.now, wall=sim.wall)
    (peer,) = status["peers"]  # type: ignore[misc]
    assert peer["key"] == "current" and peer["key_id"] == key_id(sim.psk.reveal()).hex()
    assert status["link_keys"] == {
        "current": key_id(sim.psk.reveal()).hex(),
        "next": key_id(NEW.reveal()).hex(),
    }


def test_the_rotation_sequence_keeps_the_link_and_ends_under_the_new_key() -> None:
    sim = Sim(seed=5)
    primary, secondary = pair(sim)
    writer = Writer(sim, primary)
    writer.run(1.0)
    established = {n: stat(sim, n, "links_established") for n in (primary, secondary)}
    roles_before = {n: len(role_changes(sim, n)) for n in (primary, secondary)}
    old_kid, new_kid = key_id(sim.psk.reveal()), key_id(NEW.reveal())

    # 1. The next key reaches the secondary first; SIGHUP.
    sim.reconfigure(secondary, psk_next=NEW)
    writer.run(2.0)
    assert link_kid(sim, primary) == link_kid(sim, secondary) == old_kid  # primary lacks NEW
    # 2. ... then the primary; SIGHUP: the link moves to NEW, make-before-break.
    sim.reconfigure(primary, psk_next=NEW)
    writer.run(2.0)
    assert link_kid(sim, primary) == link_kid(sim, secondary) == new_kid
    assert (
        stat(sim, primary, "goodbyes", "rekeyed") + stat(sim, secondary, "goodbyes", "rekeyed") == 1
    )
    for n in (primary, secondary):
        assert stat(sim, n, "links_established") == established[n] + 1
    # 3. Promote NEW to psk_file, drop psk_next_file; SIGHUP both: nothing moves.
    for n in (secondary, primary):
        sim.reconfigure(n, psk=NEW, psk_next=None)
        writer.run(1.0)
    assert link_kid(sim, primary) == link_kid(sim, secondary) == new_kid
    for n in (primary, secondary):
        assert stat(sim, n, "links_established") == established[n] + 1
        assert link_downs(sim, n) == []
        assert len(role_changes(sim, n)) == roles_before[n]
        assert stat(sim, n, "link_refused", "key_retired") == 0
    sim.run_until_true(lambda: snapshot(sim, secondary) == snapshot(sim, primary), limit=5)
    assert len(snapshot(sim, secondary)) == writer.i

    # 4. The old key is refused now.
    intruder = Channel(
        initiator=True, psk=sim.psk, group_id=1, hello=Hello("x", bytes(16), 7, 1 << 20, "")
    )
    listener = sim.nodes[primary].core
    refused = stat(sim, primary, "link_errors", "psk_mismatch")
    listener.connection_made(999, initiator=False, address="10.9.9.9:1", now=sim.now, wall=sim.wall)
    intruder.start()
    listener.receive_data(999, intruder.take_output(), sim.now, wall=sim.wall)
    assert stat(sim, primary, "link_errors", "psk_mismatch") == refused + 1
    assert 999 not in listener.conns


def test_retiring_a_key_a_link_still_uses_is_visible_first_then_closes_that_link() -> None:
    sim = Sim(seed=7)
    primary, _ = pair(sim)
    sim.reconfigure(primary, psk_next=NEW)  # the secondary never gets NEW
    sim.run_for(1.0)
    (peer,) = sim.nodes[primary].core.status(sim.now, wall=sim.wall)["peers"]  # type: ignore[misc]
    # Before retiring: status shows the link under the key that is about to go.
    assert peer["key"] == "current" and peer["key_id"] != peer_next(sim, primary)
    sim.reconfigure(primary, psk=NEW, psk_next=None)
    sim.run_for(0.5)
    assert stat(sim, primary, "link_refused", "key_retired") == 1
    assert link_kid(sim, primary) is None  # nothing the two share any more


def peer_next(sim: Sim, name: str) -> str:
    keys = sim.nodes[name].core.status(sim.now, wall=sim.wall)["link_keys"]
    assert isinstance(keys, dict)
    return str(keys["next"])


def test_a_restarted_node_rejoins_under_the_shared_key_during_a_half_done_rotation() -> None:
    sim = Sim(seed=11)
    primary, secondary = pair(sim)
    sim.reconfigure(secondary, psk_next=NEW)
    sim.run_for(0.5)
    sim.restart(primary)
    sim.run_until_true(lambda: link_kid(sim, secondary) is not None, limit=5)
    assert link_kid(sim, secondary) == key_id(sim.psk.reveal())
