"""The golden vectors in proto/vectors/, recomputed from the code byte for byte.

Each vector is rebuilt from its JSON inputs (PSK, ephemeral keys, field
values, record JSON) through the hasyncd code paths a node uses, compared
with the pinned bytes, and decoded back to the same values.  The vectors pin
the wire format on purpose: a change that alters any byte here is a protocol
change and needs a new protocol version (proto/PROTOCOL.md).
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from hasyncd import samples
from hasyncd.core.epochs import next_epoch
from hasyncd.errors import PeerRejected
from hasyncd.policy import KIND_CODES
from hasyncd.records import KINDS
from hasyncd.secret import Secret
from hasyncd.wire import handshake as hs
from hasyncd.wire import messages as m
from hasyncd.wire.channel import Channel, Opened, Received, State
from hasyncd.wire.noise import NNpsk0

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "proto" / "vectors"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def unhex(s: str) -> bytes:
    return bytes.fromhex(s)


def hello_from_json(f: dict[str, Any]) -> m.Hello:
    return m.Hello(f["node"], unhex(f["boot_id"]), f["tag"], f["window"], f["listen"])


def message_from_json(type_name: str, f: dict[str, Any]) -> m.Message:
    """The message a vector describes, built from its JSON fields (positional order per spec)."""
    if type_name == "HELLO":
        return hello_from_json(f)
    if type_name == "HEARTBEAT":
        return m.Heartbeat(
            m.Role(f["role"]),
            f["primary"],
            f["priority"],
            f["uptime_ms"],
            f["monitors_down"],
            f["flags"],
            f["applied_epoch"],
            f["applied_seq"],
            f["t_ms"],
            f["echo_ms"],
            f["echo_hold_ms"],
            f["base_epoch"],
            f["base_seq"],
        )
    if type_name == "SYNC_REQUEST":
        return m.SyncRequest(
            f["reason"],
            f.get("resume_epoch", 0),
            f.get("resume_snap", 0),
            f.get("resume_kind", 0),
            f.get("resume_after"),
        )
    if type_name == "BULK_START":
        return m.BulkStart(f["snap_id"], f["records"])
    if type_name == "RECORDS":
        changes = tuple(
            m.Change(
                c["kind"],
                c["id"],
                c["epoch"],
                c["seq"],
                None if c["blob"] is None else unhex(c["blob"]),
            )
            for c in f["changes"]
        )
        return m.Records(m.Phase(f["phase"]), changes)
    if type_name == "BULK_END":
        return m.BulkEnd(f["snap_id"], f["count"], f["epoch"], f["seq"])
    if type_name == "ACK":
        return m.Ack(f["frame"])
    if type_name == "HANDOVER":
        return m.Handover(f["target"], f["epoch"], f["seq"], f["reason"])
    if type_name == "GOODBYE":
        return m.Goodbye(f["code"], f["text"])
    if type_name == "MERGE_END":
        return m.MergeEnd(f["count"], f["epoch"])
    raise AssertionError(f"no constructor for {type_name}")


def wire_from_json(w: Any) -> Any:
    if isinstance(w, dict):
        return unhex(w["bin"])
    if isinstance(w, list):
        return [wire_from_json(x) for x in w]
    return w


# --- the vector files themselves ---------------------------------------------------


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_vectors", ROOT / "proto" / "gen_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_output_matches_committed_vectors() -> None:
    gen = _generator()
    built = gen.build()
    assert sorted(built) == sorted(p.name for p in VECTORS.glob("*.json"))
    for name, content in built.items():
        assert gen.render(content) == (VECTORS / name).read_text(), f"{name} is out of date"
    # Deterministic: a second run gives the same bytes.
    assert {n: gen.render(c) for n, c in gen.build().items()} == {
        n: gen.render(c) for n, c in built.items()
    }


def test_every_message_type_and_record_kind_and_reject_code_has_a_vector() -> None:
    types = {v["type"] for v in load("messages.json")["vectors"]}
    assert types == {t.name for t in m.MsgType}
    kinds = {v["kind"] for v in load("records.json")["vectors"]}
    assert kinds == set(KIND_CODES)
    codes = {v["code"] for v in load("reject.json")["vectors"]}
    assert codes == {int(c) for c in hs.RejectCode}
    phases = {
        v["fields"]["phase"] for v in load("messages.json")["vectors"] if v["type"] == "RECORDS"
    }
    assert phases == {int(p) for p in m.Phase}


# --- key id ------------------------------------------------------------------------


@pytest.mark.parametrize("v", load("key_id.json")["vectors"], ids=lambda v: v["psk"][:8])
def test_key_id(v: dict[str, Any]) -> None:
    assert hs.key_id(unhex(v["psk"])).hex() == v["key_id"]


# --- handshake and transport frames -------------------------------------------------


def _channel(v: dict[str, Any], side: str) -> Channel:
    s = v[side]
    return Channel(
        initiator=side == "initiator",
        psk=Secret(unhex(v["psk"])),
        group_id=v["group_id"],
        hello=hello_from_json(s["hello"]),
        epoch=s["epoch"],
        ephemeral=X25519PrivateKey.from_private_bytes(unhex(s["ephemeral_private"])),
    )


def test_handshake_vector_frames() -> None:
    v = load("handshake.json")
    assert v["version"] == m.PROTOCOL_VERSION
    psk = unhex(v["psk"])
    assert hs.key_id(psk).hex() == v["key_id"]
    preamble = hs.init_preamble(m.PROTOCOL_VERSION, v["group_id"], hs.key_id(psk))
    assert preamble.hex() == v["init_preamble"]
    assert hs.prologue(preamble).hex() == v["prologue"]
    hello_i, hello_r = (
        hello_from_json(v["initiator"]["hello"]),
        hello_from_json(v["responder"]["hello"]),
    )
    assert m.encode(hello_i, v["initiator"]["epoch"]).hex() == v["initiator"]["hello_plaintext"]
    assert m.encode(hello_r, v["responder"]["epoch"]).hex() == v["responder"]["hello_plaintext"]

    a, b = _channel(v, "initiator"), _channel(v, "responder")
    a.start()
    init = a.take_output()
    assert init.hex() == v["init_frame"]
    assert init[4:19] == preamble
    assert init[19:].hex() == v["noise_message_1"]
    assert b.receive_data(init) == []
    resp = b.take_output()
    assert resp.hex() == v["resp_frame"]
    assert resp[10:].hex() == v["noise_message_2"]
    assert a.receive_data(resp) == [Opened(hello_r, v["responder"]["epoch"])]
    assert b.state is State.AWAIT_CONFIRM

    first_to_responder = True
    for t in v["transport"]:
        msg = message_from_json(t["message"]["type"], t["message"]["fields"])
        epoch = t["message"]["epoch"]
        assert m.encode(msg, epoch).hex() == t["message"]["plaintext"]
        sender, receiver = (a, b) if t["direction"] == "initiator_to_responder" else (b, a)
        assert sender.send(msg, epoch)[0] == t["frame_no"]
        wire = sender.take_output()
        assert wire.hex() == t["frame"]
        expected: list[Any] = [Received(epoch, msg, t["frame_no"])]
        if receiver is b and first_to_responder:
            # The initiator's first transport frame is what makes the responder trust it.
            expected.insert(0, Opened(hello_i, v["initiator"]["epoch"]))
            first_to_responder = False
        assert receiver.receive_data(wire) == expected
    assert a.state is State.OPEN and b.state is State.OPEN


def test_handshake_vector_hash_and_keys() -> None:
    v = load("handshake.json")
    psk, prologue = unhex(v["psk"]), unhex(v["prologue"])
    ini = NNpsk0(
        initiator=True,
        psk=psk,
        prologue=prologue,
        ephemeral=X25519PrivateKey.from_private_bytes(unhex(v["initiator"]["ephemeral_private"])),
    )
    res = NNpsk0(
        initiator=False,
        psk=psk,
        prologue=prologue,
        ephemeral=X25519PrivateKey.from_private_bytes(unhex(v["responder"]["ephemeral_private"])),
    )
    msg1 = ini.write_message_1(unhex(v["initiator"]["hello_plaintext"]))
    assert msg1.hex() == v["noise_message_1"]
    assert msg1[:32].hex() == v["initiator"]["ephemeral_public"]
    assert res.read_message_1(msg1).hex() == v["initiator"]["hello_plaintext"]
    msg2, _, _ = res.write_message_2(unhex(v["responder"]["hello_plaintext"]))
    assert msg2.hex() == v["noise_message_2"]
    assert msg2[:32].hex() == v["responder"]["ephemeral_public"]
    payload, _, _ = ini.read_message_2(msg2)
    assert payload.hex() == v["responder"]["hello_plaintext"]
    assert ini.handshake_hash.hex() == res.handshake_hash.hex() == v["handshake_hash"]

    # The published transport keys open the published frames with the published nonces.
    keys = {d: ChaCha20Poly1305(unhex(k)) for d, k in v["transport_keys"].items()}
    for t in v["transport"]:
        body = unhex(t["frame"])
        assert struct.unpack(">I", body[:4])[0] == len(body) - 4
        nonce = bytes(4) + t["frame_no"].to_bytes(8, "little")
        plaintext = keys[t["direction"]].decrypt(nonce, body[4:], b"")
        assert plaintext.hex() == t["message"]["plaintext"]


# --- REJECT ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "v", load("reject.json")["vectors"], ids=lambda v: f"{v['label']}-{len(v['text'])}"
)
def test_reject_vector(v: dict[str, Any]) -> None:
    code = hs.RejectCode(v["code"])
    assert code.label == v["label"]
    wire = unhex(v["frame"])
    body = hs.reject_body(v["version"], code, v["text"])
    assert struct.pack(">I", len(body)).hex() + body.hex() == v["frame"]
    assert wire[4:] == body
    assert len(v["sent_text"].encode()) <= hs.MAX_REJECT_TEXT
    assert hs.parse_kind(body) == (v["version"], hs.HsType.REJECT)
    assert hs.parse_reject(body) == (v["label"], v["sent_text"])

    # An initiator waiting for RESP reports the peer's reason.
    ch = Channel(
        initiator=True,
        psk=Secret(bytes(32)),
        group_id=0,
        hello=m.Hello("a", bytes(16), 1, 4096, ""),
    )
    ch.start()
    ch.take_output()  # the INIT
    with pytest.raises(PeerRejected) as exc:
        ch.receive_data(wire)
    assert exc.value.code == v["label"]
    assert v["sent_text"] in exc.value.message
    assert ch.state is State.CLOSED
    assert ch.take_output() == b""  # no REJECT is answered with a REJECT


# --- messages ----------------------------------------------------------------------


@pytest.mark.parametrize("v", load("messages.json")["vectors"], ids=lambda v: v["name"])
def test_message_vector(v: dict[str, Any]) -> None:
    msg = message_from_json(v["type"], v["fields"])
    plaintext = unhex(v["plaintext"])
    assert plaintext[0] == m.PROTOCOL_VERSION
    assert plaintext[1] == v["type_code"] == int(m.MsgType[v["type"]])
    assert int.from_bytes(plaintext[2:10], "big") == v["epoch"]
    assert m.encode(msg, v["epoch"]) == plaintext
    assert m.decode(plaintext) == (v["epoch"], msg)


# --- records ----------------------------------------------------------------------


@pytest.mark.parametrize("v", load("records.json")["vectors"], ids=lambda v: v["name"])
def test_record_vector(v: dict[str, Any]) -> None:
    kind = KINDS[v["kind"]]
    assert kind.code == v["code"] == KIND_CODES[v["kind"]]
    record = kind.from_json(v["json"], v["id"])
    assert record.blob.hex() == v["blob"]
    assert msgpack.unpackb(record.blob, raw=False) == wire_from_json(v["wire"])
    # The link's check accepts the vector's blob, and it reads back as the JSON form.
    decoded = kind.from_blob(unhex(v["blob"]), v["id"])
    assert decoded.value == record.value
    assert decoded.expires == record.expires
    assert kind.to_json(decoded.value) == v["json"]


def test_record_vectors_use_the_fixed_now() -> None:
    data = load("records.json")
    by_name = {v["name"]: v for v in data["vectors"]}
    rid, body = samples.ipsec_sa(7, "out", now=data["now"])
    assert by_name["ipsec_sa out 7"]["id"] == rid
    assert by_name["ipsec_sa out 7"]["json"] == body


# --- epochs ------------------------------------------------------------------------


@pytest.mark.parametrize("v", load("epochs.json")["vectors"], ids=lambda v: str(v["current"]))
def test_epoch_vector(v: dict[str, Any]) -> None:
    nxt = next_epoch(v["current"], v["tag"], v["wall"])
    assert nxt == v["next"]
    assert nxt & 0xFFFF == v["tag"]
    assert nxt >> 16 == v["next_term"] == max((v["current"] >> 16) + 1, int(v["wall"] * 10))
    assert nxt > v["current"]
    assert nxt <= m.U64  # fits the u64 epoch fields
