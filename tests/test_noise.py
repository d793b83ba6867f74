"""hasyncd's Noise_NNpsk0_25519_ChaChaPoly_SHA256 against the independent ``noiseprotocol`` package.

``hasyncd.wire.noise`` claims to implement Noise revision 34 exactly.  These
tests hold it to that: with the same injected ephemeral keys both
implementations must produce identical handshake messages, handshake hashes
and transport ciphertexts, and each must complete a handshake and exchange
transport messages with the other in both roles.  The golden handshake
vector is rederived here with noiseprotocol alone, and a minimal link peer
built on noiseprotocol (not on hasyncd's Noise code) talks to a Channel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from hasyncd.errors import DecryptFailed, HandshakeError
from hasyncd.secret import Secret
from hasyncd.wire import messages
from hasyncd.wire.channel import Channel, Opened, Received, State
from hasyncd.wire.noise import PROTOCOL_NAME, CipherState, NNpsk0

NAME = b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"
VECTORS = Path(__file__).resolve().parent.parent / "proto" / "vectors"

keys32 = st.binary(min_size=32, max_size=32)
payloads = st.binary(max_size=300)


def theirs(
    *, initiator: bool, psk: bytes, prologue: bytes, ephemeral: bytes | None = None
) -> NoiseConnection:
    conn = NoiseConnection.from_name(NAME)
    conn.set_psks(psk=psk)
    conn.set_prologue(prologue)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    if ephemeral is None:
        conn.start_handshake()
    else:
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
        # noiseprotocol warns that an injected ephemeral key is for testing only.
        with pytest.warns(UserWarning, match="ephemeral"):
            conn.start_handshake()
    return conn


def ours(*, initiator: bool, psk: bytes, prologue: bytes, ephemeral: bytes | None = None) -> NNpsk0:
    key = None if ephemeral is None else X25519PrivateKey.from_private_bytes(ephemeral)
    return NNpsk0(initiator=initiator, psk=psk, prologue=prologue, ephemeral=key)


def test_protocol_name() -> None:
    assert PROTOCOL_NAME == NAME


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    psk=keys32,
    prologue=st.binary(max_size=64),
    e_i=keys32,
    e_r=keys32,
    p1=payloads,
    p2=payloads,
    transport=st.lists(st.tuples(st.booleans(), payloads), max_size=6),
)
def test_identical_bytes_with_injected_ephemerals(
    psk: bytes,
    prologue: bytes,
    e_i: bytes,
    e_r: bytes,
    p1: bytes,
    p2: bytes,
    transport: list[tuple[bool, bytes]],
) -> None:
    our_i = ours(initiator=True, psk=psk, prologue=prologue, ephemeral=e_i)
    our_r = ours(initiator=False, psk=psk, prologue=prologue, ephemeral=e_r)
    their_i = theirs(initiator=True, psk=psk, prologue=prologue, ephemeral=e_i)
    their_r = theirs(initiator=False, psk=psk, prologue=prologue, ephemeral=e_r)

    msg1 = our_i.write_message_1(p1)
    assert msg1 == bytes(their_i.write_message(p1))
    assert our_r.read_message_1(msg1) == p1
    assert bytes(their_r.read_message(msg1)) == p1

    msg2, r_send, r_recv = our_r.write_message_2(p2)
    assert msg2 == bytes(their_r.write_message(p2))
    payload, i_send, i_recv = our_i.read_message_2(msg2)
    assert payload == p2
    assert bytes(their_i.read_message(msg2)) == p2

    h = their_i.get_handshake_hash()
    assert our_i.handshake_hash == our_r.handshake_hash == h == their_r.get_handshake_hash()

    # Transport: identical ciphertexts per direction, nonces counting up independently.
    for from_initiator, data in transport:
        if from_initiator:
            sealed = i_send.encrypt(b"", data)
            assert sealed == their_i.encrypt(data)
            assert r_recv.decrypt(b"", sealed) == data
            assert their_r.decrypt(sealed) == data
        else:
            sealed = r_send.encrypt(b"", data)
            assert sealed == their_r.encrypt(data)
            assert i_recv.decrypt(b"", sealed) == data
            assert their_i.decrypt(sealed) == data


def _exchange(send: CipherState, recv_theirs: NoiseConnection, n: int, label: bytes) -> list[bytes]:
    out = []
    for i in range(n):
        data = label + bytes([i]) * i
        sealed = send.encrypt(b"", data)
        assert recv_theirs.decrypt(sealed) == data
        out.append(sealed)
    return out


def test_our_initiator_with_their_responder() -> None:
    psk, prologue = hashlib.sha256(b"psk").digest(), b"hasyncd link v1|test"
    me = ours(initiator=True, psk=psk, prologue=prologue)
    peer = theirs(initiator=False, psk=psk, prologue=prologue)

    assert bytes(peer.read_message(me.write_message_1(b"hello from ours"))) == b"hello from ours"
    payload, send, recv = me.read_message_2(bytes(peer.write_message(b"hello from theirs")))
    assert payload == b"hello from theirs"
    assert me.handshake_hash == peer.get_handshake_hash()

    _exchange(send, peer, 5, b"ours->theirs")
    for i in range(5):
        data = b"theirs->ours" + bytes([i])
        assert recv.decrypt(b"", peer.encrypt(data)) == data
    assert send.n == recv.n == 5


def test_their_initiator_with_our_responder() -> None:
    psk, prologue = hashlib.sha256(b"psk2").digest(), b"some prologue"
    peer = theirs(initiator=True, psk=psk, prologue=prologue)
    me = ours(initiator=False, psk=psk, prologue=prologue)

    assert me.read_message_1(bytes(peer.write_message(b"ini"))) == b"ini"
    msg2, send, recv = me.write_message_2(b"resp")
    assert bytes(peer.read_message(msg2)) == b"resp"
    assert peer.handshake_finished
    assert me.handshake_hash == peer.get_handshake_hash()

    _exchange(send, peer, 4, b"r->i")
    for i in range(4):
        data = b"i->r" + bytes([i]) * 3
        assert recv.decrypt(b"", peer.encrypt(data)) == data


def test_psk_mismatch_fails_in_both_implementations() -> None:
    a, b = bytes([1]) * 32, bytes([2]) * 32
    msg1 = theirs(initiator=True, psk=a, prologue=b"p").write_message(b"x")
    with pytest.raises(DecryptFailed):
        ours(initiator=False, psk=b, prologue=b"p").read_message_1(bytes(msg1))
    msg1 = ours(initiator=True, psk=a, prologue=b"p").write_message_1(b"x")
    with pytest.raises(InvalidTag):
        theirs(initiator=False, psk=b, prologue=b"p").read_message(msg1)


def test_prologue_mismatch_fails_in_both_implementations() -> None:
    psk = bytes([7]) * 32
    msg1 = theirs(initiator=True, psk=psk, prologue=b"group 5").write_message(b"x")
    with pytest.raises(DecryptFailed):
        ours(initiator=False, psk=psk, prologue=b"group 6").read_message_1(bytes(msg1))
    msg1 = ours(initiator=True, psk=psk, prologue=b"group 5").write_message_1(b"x")
    with pytest.raises(InvalidTag):
        theirs(initiator=False, psk=psk, prologue=b"group 6").read_message(msg1)


def test_their_tampered_message_2_is_refused_by_ours() -> None:
    psk = bytes([9]) * 32
    me = ours(initiator=True, psk=psk, prologue=b"")
    peer = theirs(initiator=False, psk=psk, prologue=b"")
    peer.read_message(me.write_message_1(b""))
    msg2 = bytearray(peer.write_message(b"payload"))
    msg2[40] ^= 0x01
    with pytest.raises(DecryptFailed):
        me.read_message_2(bytes(msg2))


def test_low_order_ephemeral_is_refused() -> None:
    """A peer ephemeral that gives an all-zero DH output aborts the handshake (auth_failed)."""
    initiator = ours(initiator=True, psk=bytes([3]) * 32, prologue=b"")
    initiator.write_message_1(b"")
    # Message 2 whose ephemeral is the all-zero point (small order): DH output is all zero.
    with pytest.raises(HandshakeError) as exc:
        initiator.read_message_2(bytes(32) + bytes(16))
    assert exc.value.code == "auth_failed"


# --- the golden handshake vector, rederived with noiseprotocol -----------------


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def _framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_handshake_vector_rederived_with_noiseprotocol() -> None:
    v = _load("handshake.json")
    psk = bytes.fromhex(v["psk"])
    kid = hmac.new(psk, b"hasyncd v1 key id", hashlib.sha256).digest()[:8]
    assert kid.hex() == v["key_id"]
    preamble = b"HSYN" + bytes([1, 1, v["group_id"]]) + kid
    assert preamble.hex() == v["init_preamble"]
    prologue = b"hasyncd link v1|" + preamble
    assert prologue.hex() == v["prologue"]

    ini = theirs(
        initiator=True,
        psk=psk,
        prologue=prologue,
        ephemeral=bytes.fromhex(v["initiator"]["ephemeral_private"]),
    )
    res = theirs(
        initiator=False,
        psk=psk,
        prologue=prologue,
        ephemeral=bytes.fromhex(v["responder"]["ephemeral_private"]),
    )
    msg1 = bytes(ini.write_message(bytes.fromhex(v["initiator"]["hello_plaintext"])))
    assert msg1[:32].hex() == v["initiator"]["ephemeral_public"]
    assert msg1.hex() == v["noise_message_1"]
    assert _framed(preamble + msg1).hex() == v["init_frame"]
    assert bytes(res.read_message(msg1)).hex() == v["initiator"]["hello_plaintext"]

    msg2 = bytes(res.write_message(bytes.fromhex(v["responder"]["hello_plaintext"])))
    assert msg2[:32].hex() == v["responder"]["ephemeral_public"]
    assert msg2.hex() == v["noise_message_2"]
    assert _framed(b"HSYN" + bytes([1, 2]) + msg2).hex() == v["resp_frame"]
    assert bytes(ini.read_message(msg2)).hex() == v["responder"]["hello_plaintext"]

    assert ini.get_handshake_hash().hex() == v["handshake_hash"]
    keys = v["transport_keys"]
    assert ini.noise_protocol.cipher_state_encrypt.k.hex() == keys["initiator_to_responder"]
    assert ini.noise_protocol.cipher_state_decrypt.k.hex() == keys["responder_to_initiator"]
    assert res.noise_protocol.cipher_state_encrypt.k.hex() == keys["responder_to_initiator"]

    for t in v["transport"]:
        sender, receiver = (ini, res) if t["direction"] == "initiator_to_responder" else (res, ini)
        plaintext = bytes.fromhex(t["message"]["plaintext"])
        assert sender.noise_protocol.cipher_state_encrypt.n == t["frame_no"]
        sealed = sender.encrypt(plaintext)
        assert _framed(sealed).hex() == t["frame"]
        assert receiver.decrypt(sealed) == plaintext


# --- a link peer built on noiseprotocol talks to a Channel ----------------------


PSK = hashlib.sha256(b"interop psk").digest()
GROUP = 9
HELLO_CH = messages.Hello("channel", bytes(range(16)), 100, 65536, "")
HELLO_NP = messages.Hello("np-peer", bytes(range(16, 32)), 200, 65536, "")


def _key_id(psk: bytes) -> bytes:
    return hmac.new(psk, b"hasyncd v1 key id", hashlib.sha256).digest()[:8]


def _unframe(data: bytes) -> list[bytes]:
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


def test_channel_responder_accepts_a_noiseprotocol_initiator() -> None:
    ch = Channel(initiator=False, psk=Secret(PSK), group_id=GROUP, hello=HELLO_CH, epoch=3)
    preamble = b"HSYN" + bytes([1, 1, GROUP]) + _key_id(PSK)
    np = theirs(initiator=True, psk=PSK, prologue=b"hasyncd link v1|" + preamble)
    init = preamble + bytes(np.write_message(messages.encode(HELLO_NP, 7)))
    assert ch.receive_data(_framed(init)) == []

    (resp,) = _unframe(ch.take_output())
    assert resp[:6] == b"HSYN\x01\x02"
    assert messages.decode(bytes(np.read_message(resp[6:]))) == (3, HELLO_CH)
    assert np.handshake_finished

    hb = messages.Heartbeat(messages.Role.PRIMARY, "np-peer", 1, 2, 3, 4, 5, 6, 7, 8, 9)
    events = ch.receive_data(_framed(np.encrypt(messages.encode(hb, 7))))
    assert events == [Opened(HELLO_NP, 7), Received(7, hb, 0)]
    assert ch.state is State.OPEN

    for i in range(3):
        ch.send(messages.Ack(i), 3)
        (sealed,) = _unframe(ch.take_output())
        assert messages.decode(np.decrypt(sealed)) == (3, messages.Ack(i))


def test_channel_initiator_accepts_a_noiseprotocol_responder() -> None:
    ch = Channel(initiator=True, psk=Secret(PSK), group_id=GROUP, hello=HELLO_CH, epoch=3)
    ch.start()
    (init,) = _unframe(ch.take_output())
    preamble = init[:15]
    assert preamble == b"HSYN" + bytes([1, 1, GROUP]) + _key_id(PSK)

    np = theirs(initiator=False, psk=PSK, prologue=b"hasyncd link v1|" + preamble)
    assert messages.decode(bytes(np.read_message(init[15:]))) == (3, HELLO_CH)
    resp = b"HSYN\x01\x02" + bytes(np.write_message(messages.encode(HELLO_NP, 11)))
    assert ch.receive_data(_framed(resp)) == [Opened(HELLO_NP, 11)]
    assert ch.state is State.OPEN

    ch.send(messages.SyncRequest("follow"), 3)
    (sealed,) = _unframe(ch.take_output())
    assert messages.decode(np.decrypt(sealed)) == (3, messages.SyncRequest("follow"))
    for i in range(3):
        events = ch.receive_data(_framed(np.encrypt(messages.encode(messages.Ack(i), 11))))
        assert events == [Received(11, messages.Ack(i), i)]
