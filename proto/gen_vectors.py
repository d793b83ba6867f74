"""Regenerate the golden test vectors in proto/vectors/ from the hasyncd code.

Run from the repository root:

    .venv/bin/python proto/gen_vectors.py           # (re)write proto/vectors/*.json
    .venv/bin/python proto/gen_vectors.py --check   # exit 1 if a file is out of date

Everything is deterministic: a fixed PSK, fixed X25519 ephemeral private keys
(``X25519PrivateKey.from_private_bytes``), fixed boot ids and record samples
built with a fixed ``now``.  Byte strings are hex in the JSON files.
``tests/test_vectors.py`` recomputes every vector from the code and
``tests/test_noise.py`` rederives the handshake vector with the independent
``noiseprotocol`` package; ``proto/PROTOCOL.md`` section 17 describes the files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import msgpack
import msgspec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hasyncd import samples
from hasyncd.core.epochs import next_epoch
from hasyncd.records import KINDS
from hasyncd.secret import Secret
from hasyncd.wire import handshake as hs
from hasyncd.wire import messages as m
from hasyncd.wire.channel import Channel, Opened, Received
from hasyncd.wire.framing import frame
from hasyncd.wire.noise import PROTOCOL_NAME, NNpsk0, hkdf

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"

NOW = 1700000000  # the fixed "now" for hasyncd.samples
PSK = bytes(range(0x00, 0x20))  # 000102...1f
INITIATOR_EPHEMERAL = bytes(range(0x40, 0x60))
RESPONDER_EPHEMERAL = bytes(range(0x60, 0x80))
BOOT_A = bytes(range(0xA0, 0xB0))
BOOT_B = bytes(range(0xB0, 0xC0))
GROUP_ID = 5
TAG_A = 0x1234
TAG_B = 0x5678
EPOCH_A = (7 << 16) | TAG_A  # gw-a is primary in term 7
EPOCH_B_OLD = (6 << 16) | TAG_B  # gw-b was primary in term 6

HELLO_A = m.Hello("gw-a", BOOT_A, TAG_A, 1 << 20, "192.0.2.1:7410")
HELLO_B = m.Hello("gw-b", BOOT_B, TAG_B, 4 << 20, "192.0.2.2:7410")


# --- JSON forms -------------------------------------------------------------


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def message_fields(msg: m.Message) -> dict[str, Any]:
    """A message's fields as JSON: bytes as hex, enums as their integer value."""
    if isinstance(msg, m.Records):
        return {
            "phase": int(msg.phase),
            "changes": [
                {"kind": c.kind, "id": c.id, "epoch": c.epoch, "seq": c.seq, "blob": _hex(c.blob)}
                for c in msg.changes
            ],
        }
    if isinstance(msg, m.SyncRequest) and not msg.resume_epoch:
        return {"reason": msg.reason}  # the short form: only the field it encodes
    out: dict[str, Any] = {}
    for f in msgspec.structs.fields(msg):
        v = getattr(msg, f.name)
        if isinstance(v, bytes):
            v = v.hex()
        elif isinstance(v, int) and not isinstance(v, bool):
            v = int(v)  # Role: its integer value
        out[f.name] = v
    return out


def message_vector(name: str, msg: m.Message, epoch: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": msg.TYPE.name,
        "type_code": int(msg.TYPE),
        "epoch": epoch,
        "fields": message_fields(msg),
        "plaintext": m.encode(msg, epoch).hex(),
    }


def wire_json(w: Any) -> Any:
    """A record's wire value as JSON: bytes become {"bin": hex}."""
    if isinstance(w, bytes):
        return {"bin": w.hex()}
    if isinstance(w, list):
        return [wire_json(x) for x in w]
    return w


def _pub(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- records ----------------------------------------------------------------


def _ah_ipv6_sa() -> tuple[str, dict[str, Any]]:
    """An AH transport-mode SA over IPv6 with ESN: exercises 16-byte addresses and floats."""
    _, rec = samples.ipsec_sa(3, "in", now=NOW)
    rec.update(
        {
            "proto": "ah",
            "spi": 0x00001001,
            "src": "2001:db8::2",
            "dst": "2001:db8::1",
            "mode": "transport",
            "reqid": None,
            "enc": None,
            "auth": {"alg": "hmac(sha256)", "key": hashlib.sha256(b"ah key").hexdigest()},
            "encap": None,
            "esn": True,
            "seq": 2**40 + 5,
            "replay_window": 64,
            "replay_bitmap": "ffffffff0000ffff",
            "created_at": NOW + 0.25,
            "selectors": [
                {
                    "src": "2001:db8:2::/48",
                    "dst": "2001:db8:1::/48",
                    "proto": 6,
                    "sport": 0,
                    "dport": 443,
                },
            ],
            "ike_sa": None,
        }
    )
    return "ah-00001001@2001:db8::1", rec


def record_samples() -> list[tuple[str, str, str, dict[str, Any]]]:
    return [
        ("ipsec_sa out 7", "ipsec_sa", *samples.ipsec_sa(7, "out", now=NOW)),
        ("ipsec_sa in 7", "ipsec_sa", *samples.ipsec_sa(7, "in", now=NOW)),
        ("ipsec_sa AH IPv6 ESN", "ipsec_sa", *_ah_ipv6_sa()),
        ("ike_sa 7", "ike_sa", *samples.ike_sa(7, now=NOW)),
        ("sslvpn_web_session 7", "sslvpn_web_session", *samples.web_session(7, now=NOW)),
        ("promotion 7", "promotion", *samples.promotion(7, now=NOW)),
        ("sa_counters out 8", "sa_counters", *samples.sa_counters(8, "out", now=NOW)),
    ]


def build_records() -> dict[str, Any]:
    vectors = []
    for name, kind_name, rid, body in record_samples():
        kind = KINDS[kind_name]
        blob = kind.from_json(body, rid).blob
        wire = msgpack.unpackb(blob, raw=False)  # the positional value, as plain arrays
        assert kind.to_json(kind.decode(blob)) == body, name  # the JSON form is canonical
        vectors.append(
            {
                "name": name,
                "kind": kind_name,
                "code": kind.code,
                "id": rid,
                "json": body,
                "wire": wire_json(wire),
                "blob": blob.hex(),
            }
        )
    return {
        "description": "One record per kind: API JSON form, positional wire value "
        '(bytes as {"bin": hex}) and the msgpack blob carried in RECORDS.',
        "now": NOW,
        "vectors": vectors,
    }


def _blob(kind_name: str, rid: str, body: dict[str, Any]) -> bytes:
    return KINDS[kind_name].from_json(body, rid).blob


# --- messages ---------------------------------------------------------------


def message_samples() -> list[tuple[str, m.Message, int]]:
    sa_id, sa = samples.ipsec_sa(7, "out", now=NOW)
    ike_id, ike = samples.ike_sa(7, now=NOW)
    web_id, web = samples.web_session(7, now=NOW)
    sa_blob = _blob("ipsec_sa", sa_id, sa)
    ike_blob = _blob("ike_sa", ike_id, ike)
    web_blob = _blob("sslvpn_web_session", web_id, web)
    u64, u32 = m.U64, m.U32
    return [
        ("HELLO gw-a", HELLO_A, EPOCH_A),
        ("HELLO minimal", m.Hello("n", bytes(16), 1, 4096, ""), 0),
        (
            "HEARTBEAT primary",
            m.Heartbeat(
                m.Role.PRIMARY,
                "gw-a",
                200,
                86_400_123,
                0,
                m.F_IN_SYNC | m.F_OVERRIDE,
                EPOCH_A,
                4711,
                86_400_123,
                86_399_987,
                12,
                EPOCH_B_OLD,
                4700,
            ),
            EPOCH_A,
        ),
        (
            "HEARTBEAT starting",
            m.Heartbeat(m.Role.STARTING, None, 100, 1, 0, 0, 0, 0, 1, 0, 0),
            0,
        ),
        (
            "HEARTBEAT maximum values",
            m.Heartbeat(
                m.Role.SECONDARY,
                "N" * 32,
                255,
                u64,
                255,
                m.F_ALL,
                u64,
                u64,
                u64,
                u64,
                u32,
                u64,
                u64,
            ),
            u64,
        ),
        ("SYNC_REQUEST", m.SyncRequest("follow"), EPOCH_A),
        (
            "SYNC_REQUEST resuming a snapshot after a record",
            m.SyncRequest("resume", EPOCH_A, 7, 2, ike_id),
            EPOCH_A,
        ),
        ("SYNC_REQUEST resuming the stream", m.SyncRequest("resume", EPOCH_A, 7, 0, None), EPOCH_A),
        ("BULK_START", m.BulkStart(1, 3), EPOCH_A),
        (
            "RECORDS bulk, one record per kind",
            m.Records(
                m.Phase.BULK,
                (
                    m.Change(1, sa_id, EPOCH_A, 1, sa_blob),
                    m.Change(2, ike_id, EPOCH_A, 2, ike_blob),
                    m.Change(3, web_id, EPOCH_B_OLD, 77, web_blob),
                ),
            ),
            EPOCH_A,
        ),
        (
            "RECORDS stream with a tombstone",
            m.Records(
                m.Phase.STREAM,
                (
                    m.Change(1, sa_id, EPOCH_A, 4712, sa_blob),
                    m.Change(3, web_id, EPOCH_A, 4713, None),
                ),
            ),
            EPOCH_A,
        ),
        ("RECORDS stream, empty", m.Records(m.Phase.STREAM, ()), EPOCH_A),
        (
            "RECORDS merge",
            m.Records(m.Phase.MERGE, (m.Change(2, ike_id, EPOCH_B_OLD, 9, ike_blob),)),
            EPOCH_A,
        ),
        ("BULK_END", m.BulkEnd(1, 3, EPOCH_A, 4711), EPOCH_A),
        ("ACK 0", m.Ack(0), EPOCH_A),
        ("ACK 65537", m.Ack(65537), EPOCH_A),
        ("HANDOVER", m.Handover("gw-b", EPOCH_A, 4713, "manual failover"), EPOCH_A),
        ("GOODBYE shutdown", m.Goodbye("shutdown", "node shutting down"), EPOCH_A),
        ("GOODBYE duplicate", m.Goodbye("duplicate", "duplicate link"), EPOCH_A),
        ("GOODBYE replaced", m.Goodbye("replaced", "replaced: peer restarted"), EPOCH_A),
        (
            "GOODBYE name_conflict",
            m.Goodbye("name_conflict", "peer uses this node's name 'gw-a'"),
            0,
        ),
        (
            "GOODBYE tag_conflict",
            m.Goodbye("tag_conflict", "peer gw-c uses this node's tag 4660"),
            0,
        ),
        ("MERGE_END", m.MergeEnd(1, EPOCH_B_OLD), EPOCH_A),
    ]


def build_messages() -> dict[str, Any]:
    return {
        "description": "Message plaintexts: 10-byte header (version, type, u64 BE sender "
        "epoch) followed by the msgpack body; fields in JSON form (bytes as hex, enums as "
        "integers).",
        "vectors": [message_vector(name, msg, epoch) for name, msg, epoch in message_samples()],
    }


# --- handshake --------------------------------------------------------------


def transport_script() -> list[tuple[str, m.Message, int]]:
    """The frames exchanged after the handshake, in the order they are sealed."""
    return [
        (
            "initiator_to_responder",
            m.Heartbeat(m.Role.PRIMARY, "gw-a", 200, 5000, 0, m.F_IN_SYNC, EPOCH_A, 42, 5000, 0, 0),
            EPOCH_A,
        ),
        (
            "responder_to_initiator",
            m.Heartbeat(m.Role.SECONDARY, None, 100, 1200, 0, 0, 0, 0, 1200, 5000, 3),
            EPOCH_A,
        ),
        ("responder_to_initiator", m.SyncRequest("follow"), EPOCH_A),
        ("initiator_to_responder", m.BulkStart(1, 0), EPOCH_A),
        ("initiator_to_responder", m.BulkEnd(1, 0, EPOCH_A, 42), EPOCH_A),
        ("responder_to_initiator", m.Ack(2), EPOCH_A),
    ]


def _channel(initiator: bool) -> Channel:
    return Channel(
        initiator=initiator,
        psk=Secret(PSK),
        group_id=GROUP_ID,
        hello=HELLO_A if initiator else HELLO_B,
        epoch=EPOCH_A if initiator else 0,
        ephemeral=X25519PrivateKey.from_private_bytes(
            INITIATOR_EPHEMERAL if initiator else RESPONDER_EPHEMERAL
        ),
    )


def build_handshake() -> dict[str, Any]:
    kid = hs.key_id(PSK)
    preamble = hs.init_preamble(m.PROTOCOL_VERSION, GROUP_ID, kid)
    prologue = hs.prologue(preamble)

    # The Noise state machines on their own: handshake hash and Split() keys.
    ini = NNpsk0(
        initiator=True,
        psk=PSK,
        prologue=prologue,
        ephemeral=X25519PrivateKey.from_private_bytes(INITIATOR_EPHEMERAL),
    )
    res = NNpsk0(
        initiator=False,
        psk=PSK,
        prologue=prologue,
        ephemeral=X25519PrivateKey.from_private_bytes(RESPONDER_EPHEMERAL),
    )
    msg1 = ini.write_message_1(m.encode(HELLO_A, EPOCH_A))
    assert res.read_message_1(msg1) == m.encode(HELLO_A, EPOCH_A)
    msg2, _, _ = res.write_message_2(m.encode(HELLO_B, 0))
    ini.read_message_2(msg2)
    assert ini.handshake_hash == res.handshake_hash
    k1, k2 = hkdf(ini._ss.ck, b"", 2)  # Split(): the same derivation the cipher states use

    # The same handshake through two Channels: the exact frames on the wire.
    a, b = _channel(True), _channel(False)
    a.start()
    init_frame = a.take_output()
    assert b.receive_data(init_frame) == []
    resp_frame = b.take_output()
    assert init_frame == frame(preamble + msg1)
    assert resp_frame == frame(hs.resp_preamble(m.PROTOCOL_VERSION) + msg2)
    assert a.receive_data(resp_frame) == [Opened(HELLO_B, 0)]

    transport = []
    for direction, msg, epoch in transport_script():
        sender, receiver = (a, b) if direction == "initiator_to_responder" else (b, a)
        frame_no, _ = sender.send(msg, epoch)
        wire = sender.take_output()
        events = receiver.receive_data(wire)
        assert events[-1] == Received(epoch, msg, frame_no), events
        transport.append(
            {
                "direction": direction,
                "frame_no": frame_no,
                "message": message_vector(msg.TYPE.name, msg, epoch),
                "frame": wire.hex(),
            }
        )

    return {
        "description": "A complete handshake between gw-a (initiator) and gw-b (responder) "
        "with fixed ephemeral keys, then transport frames in both directions in the order "
        "they were sealed.  Frames include their 4-byte length prefix.",
        "protocol_name": PROTOCOL_NAME.decode(),
        "version": m.PROTOCOL_VERSION,
        "psk": PSK.hex(),
        "group_id": GROUP_ID,
        "key_id": kid.hex(),
        "initiator": {
            "ephemeral_private": INITIATOR_EPHEMERAL.hex(),
            "ephemeral_public": _pub(INITIATOR_EPHEMERAL).hex(),
            "epoch": EPOCH_A,
            "hello": message_fields(HELLO_A),
            "hello_plaintext": m.encode(HELLO_A, EPOCH_A).hex(),
        },
        "responder": {
            "ephemeral_private": RESPONDER_EPHEMERAL.hex(),
            "ephemeral_public": _pub(RESPONDER_EPHEMERAL).hex(),
            "epoch": 0,
            "hello": message_fields(HELLO_B),
            "hello_plaintext": m.encode(HELLO_B, 0).hex(),
        },
        "init_preamble": preamble.hex(),
        "prologue": prologue.hex(),
        "noise_message_1": msg1.hex(),
        "init_frame": init_frame.hex(),
        "noise_message_2": msg2.hex(),
        "resp_frame": resp_frame.hex(),
        "handshake_hash": ini.handshake_hash.hex(),
        "transport_keys": {
            "initiator_to_responder": k1.hex(),
            "responder_to_initiator": k2.hex(),
        },
        "transport": transport,
    }


# --- small vectors ------------------------------------------------------------


def build_key_id() -> dict[str, Any]:
    psks = [PSK, bytes(32), bytes([0xFF]) * 32, hashlib.sha256(b"hasyncd example psk").digest()]
    return {
        "description": 'key_id = first 8 bytes of HMAC-SHA256(key=psk, msg="hasyncd v1 key id")',
        "label": hs.KEY_ID_LABEL.decode(),
        "vectors": [{"psk": p.hex(), "key_id": hs.key_id(p).hex()} for p in psks],
    }


REJECT_TEXTS = {
    hs.RejectCode.VERSION_MISMATCH: "peer speaks protocol version 2, this node speaks 1",
    hs.RejectCode.GROUP_MISMATCH: "peer is in group_id 7, this node in 5",
    hs.RejectCode.PSK_MISMATCH: "peer uses a different pre-shared key "
    "(key id 0000000000000000, this node 1111111111111111)",
    hs.RejectCode.AUTH_FAILED: "handshake authentication failed although key ids match: "
    "the INIT frame was tampered with or corrupted",
    hs.RejectCode.MALFORMED: "first frame is not a hasyncd handshake (bad magic)",
    hs.RejectCode.NAME_CONFLICT: "peer uses this node's name 'gw-a'",
    hs.RejectCode.TAG_CONFLICT: "gw-c and gw-b share tag 22136",
    hs.RejectCode.BUSY: "too many links in handshake",
}


def build_reject() -> dict[str, Any]:
    # Every code with its usual text, then one whose text is cut to MAX_REJECT_TEXT.
    long_text = "x" * 150 + "y" * 100
    cases = [(c, REJECT_TEXTS[c]) for c in hs.RejectCode] + [(hs.RejectCode.MALFORMED, long_text)]
    vectors = [
        {
            "code": int(code),
            "label": code.label,
            "version": m.PROTOCOL_VERSION,
            "text": text,
            "sent_text": text[: hs.MAX_REJECT_TEXT],
            "frame": frame(hs.reject_body(m.PROTOCOL_VERSION, code, text)).hex(),
        }
        for code, text in cases
    ]
    return {
        "description": 'REJECT frames: "HSYN" | u8 version | u8 3 | u8 code | UTF-8 text, '
        "with the 4-byte length prefix; text is cut to 200 bytes (sent_text).",
        "vectors": vectors,
    }


def build_epochs() -> dict[str, Any]:
    # (current epoch, tag, wall clock): the term is the larger of current + 1
    # and the wall clock in tenths of a second.
    pairs = [
        (0, TAG_A, 1_700_000_000.0),
        ((1 << 16) | TAG_A, TAG_B, 0.0),
        (EPOCH_B_OLD, TAG_A, 0.0),
        (EPOCH_A, TAG_B, 1_700_000_000.25),
        ((17_000_000_009 << 16) | TAG_A, TAG_B, 1_700_000_000.25),
        (((1 << 48) - 2) << 16 | 1, 0xFFFF, 0.0),
    ]
    return {
        "description": "epoch = term << 16 | tag; a promoting node mints "
        "next = max((current >> 16) + 1, floor(wall * 10)) << 16 | own tag",
        "vectors": [
            {
                "current": cur,
                "tag": tag,
                "wall": wall,
                "next": next_epoch(cur, tag, wall),
                "next_term": next_epoch(cur, tag, wall) >> 16,
            }
            for cur, tag, wall in pairs
        ],
    }


def build() -> dict[str, dict[str, Any]]:
    return {
        "key_id.json": build_key_id(),
        "handshake.json": build_handshake(),
        "reject.json": build_reject(),
        "messages.json": build_messages(),
        "records.json": build_records(),
        "epochs.json": build_epochs(),
    }


def render(content: dict[str, Any]) -> str:
    return json.dumps(content, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, content in build().items():
        path = VECTORS_DIR / name
        text = render(content)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            VECTORS_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = "out of date" if args.check else "written"
    for name in stale:
        print(f"{name}: {verb}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
