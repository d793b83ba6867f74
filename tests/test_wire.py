"""The wire layer: framing, message codecs, the Channel state machine, and size limits.

Framing and messages are checked against their specification in
proto/PROTOCOL.md (layouts are spelled out here with struct/msgpack, not with
the helpers under test).  The decoders must turn every malformed input into a
``ProtocolError`` subclass and nothing else.  Channel tests run real
handshakes between two Channel objects and attack them: wrong keys and groups,
crafted and tampered handshake frames, tampered, replayed, reordered and
truncated transport frames.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from hasyncd import samples
from hasyncd.core.replication import OutboundSession
from hasyncd.daemon.api import MAX_RECORD_BODY
from hasyncd.errors import (
    DecryptFailed,
    FrameTooLarge,
    FrameTooSmall,
    FrameTruncated,
    HandshakeError,
    MalformedMessage,
    PeerRejected,
    ProtocolError,
    RecordError,
    UnknownMessageType,
    UnsupportedVersion,
)
from hasyncd.policy import KIND_BY_CODE, KIND_CODES
from hasyncd.records import KINDS, MAX_GROUP_LEN, MAX_GROUPS
from hasyncd.secret import Secret
from hasyncd.store import Entry, Store, pack_version
from hasyncd.wire import handshake as hs
from hasyncd.wire import messages as m
from hasyncd.wire.channel import Channel, Opened, Received, State
from hasyncd.wire.framing import (
    MAX_HANDSHAKE_FRAME,
    MAX_TRANSPORT_FRAME,
    MIN_TRANSPORT_FRAME,
    FrameDecoder,
    frame,
)
from hasyncd.wire.noise import NNpsk0

NOW = 1700000000
TAG_LEN = 16


def prefix(n: int) -> bytes:
    return struct.pack(">I", n)


def framed(body: bytes) -> bytes:
    return prefix(len(body)) + body


def unframe(data: bytes) -> list[bytes]:
    out = []
    while data:
        (n,) = struct.unpack(">I", data[:4])
        assert len(data) >= 4 + n
        out.append(data[4 : 4 + n])
        data = data[4 + n :]
    return out


# =====================================================================================
# Framing
# =====================================================================================


def test_frame_is_u32_big_endian_length_then_body() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == bytes(4)
    assert frame(bytes(0x10203)) == b"\x00\x01\x02\x03" + bytes(0x10203)


@pytest.mark.parametrize("limit", [MAX_HANDSHAKE_FRAME, MAX_TRANSPORT_FRAME])
@pytest.mark.parametrize("excess", [1, 2, 2**32 - 1])
def test_oversized_frame_refused_from_its_prefix_alone(limit: int, excess: int) -> None:
    length = min(limit + excess, 2**32 - 1)
    dec = FrameDecoder(limit)
    dec.feed(prefix(length))  # not one byte of the body
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


@pytest.mark.parametrize("limit", [MAX_HANDSHAKE_FRAME, MAX_TRANSPORT_FRAME])
def test_frame_at_the_limit_is_accepted(limit: int) -> None:
    dec = FrameDecoder(limit)
    dec.feed(prefix(limit))
    assert dec.next_frame() is None  # waits for the body
    dec.feed(bytes(limit - 1))
    assert dec.next_frame() is None
    dec.feed(b"\x01")
    assert dec.next_frame() == bytes(limit - 1) + b"\x01"
    assert dec.buffered == 0


def test_limits_are_the_specified_constants() -> None:
    # proto/PROTOCOL.md: 1 KiB handshake frames; Noise's 65535-byte transport messages;
    # the smallest transport frame is a 10-byte header plus the 16-byte tag.
    assert MAX_HANDSHAKE_FRAME == 1024
    assert MAX_TRANSPORT_FRAME == 65535
    assert MIN_TRANSPORT_FRAME == m.HEADER_LEN + TAG_LEN == 26


def test_frame_below_minimum_refused() -> None:
    dec = FrameDecoder(MAX_HANDSHAKE_FRAME)
    dec.feed(prefix(0))
    with pytest.raises(FrameTooSmall):
        dec.next_frame()
    dec = FrameDecoder(MAX_TRANSPORT_FRAME, MIN_TRANSPORT_FRAME)
    dec.feed(prefix(MIN_TRANSPORT_FRAME - 1))
    with pytest.raises(FrameTooSmall):
        dec.next_frame()
    dec = FrameDecoder(MAX_TRANSPORT_FRAME, MIN_TRANSPORT_FRAME)
    dec.feed(framed(bytes(MIN_TRANSPORT_FRAME)))
    assert dec.next_frame() == bytes(MIN_TRANSPORT_FRAME)


@pytest.mark.parametrize("pending", [b"\x00", b"\x00\x00\x00", prefix(10), prefix(10) + b"abc"])
def test_truncated_frame_at_eof(pending: bytes) -> None:
    dec = FrameDecoder()
    dec.feed(framed(b"complete") + pending)
    assert dec.next_frame() == b"complete"
    assert dec.next_frame() is None
    with pytest.raises(FrameTruncated):
        dec.check_eof()


def test_clean_eof_between_frames() -> None:
    dec = FrameDecoder()
    dec.feed(framed(b"one") + framed(b"two"))
    assert [dec.next_frame(), dec.next_frame(), dec.next_frame()] == [b"one", b"two", None]
    dec.check_eof()


def test_limit_change_applies_to_already_buffered_bytes() -> None:
    dec = FrameDecoder(MAX_HANDSHAKE_FRAME)
    dec.feed(framed(b"hs") + prefix(MAX_HANDSHAKE_FRAME + 1))
    assert dec.next_frame() == b"hs"
    dec.max_frame = MAX_TRANSPORT_FRAME  # phase change: the buffered prefix is now legal
    assert dec.next_frame() is None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), max_size=12),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
)
def test_frames_split_across_arbitrary_chunks(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(framed(b) for b in bodies)
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    dec = FrameDecoder(MAX_TRANSPORT_FRAME)
    got: list[bytes] = []
    for lo, hi in itertools.pairwise(points):
        dec.feed(stream[lo:hi])
        while (body := dec.next_frame()) is not None:
            got.append(body)
    assert got == bodies
    dec.check_eof()


# =====================================================================================
# Messages
# =====================================================================================

u32 = st.integers(0, m.U32)
u64 = st.integers(0, m.U64)
names = st.from_regex(r"[A-Za-z0-9._-]{1,32}", fullmatch=True)
codes = st.from_regex(r"[a-z0-9_]{1,32}", fullmatch=True)


def texts(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8"), min_size=min_size, max_size=max_size)


changes = st.builds(
    m.Change,
    st.sampled_from(sorted(KIND_BY_CODE)),
    texts(m.MAX_ID_LEN, min_size=1),
    u64,
    u64,
    st.none() | st.binary(min_size=1, max_size=64),
)

STRATEGIES: dict[m.MsgType, st.SearchStrategy[Any]] = {
    m.MsgType.HELLO: st.builds(
        m.Hello,
        names,
        st.binary(min_size=16, max_size=16),
        st.integers(1, 0xFFFF),
        st.integers(4096, m.U32),
        texts(64),
    ),
    m.MsgType.HEARTBEAT: st.builds(
        m.Heartbeat,
        st.sampled_from(m.Role),
        st.none() | names,
        st.integers(0, 255),
        u64,
        st.integers(0, 255),
        st.integers(0, m.F_ALL),
        u64,
        u64,
        u64,
        u64,
        u32,
        u64,
        u64,
    ),
    m.MsgType.SYNC_REQUEST: st.builds(m.SyncRequest, texts(64))
    | st.builds(
        lambda reason, epoch, snap, kind, after: m.SyncRequest(
            reason, epoch, snap, kind, after if kind else None
        ),
        texts(64),
        st.integers(1, 2**64 - 1),
        u32,
        st.sampled_from([0, *KIND_BY_CODE]),
        st.none() | st.text(min_size=1, max_size=m.MAX_ID_LEN),
    ),
    m.MsgType.BULK_START: st.builds(m.BulkStart, u32, u64),
    m.MsgType.RECORDS: st.builds(
        m.Records, st.sampled_from(m.Phase), st.lists(changes, max_size=6).map(tuple)
    ),
    m.MsgType.BULK_END: st.builds(m.BulkEnd, u32, u64, u64, u64),
    m.MsgType.ACK: st.builds(m.Ack, u64),
    m.MsgType.HANDOVER: st.builds(m.Handover, names, u64, u64, texts(64)),
    m.MsgType.GOODBYE: st.builds(m.Goodbye, codes, texts(256)),
    m.MsgType.MERGE_END: st.builds(m.MergeEnd, u64, u64),
}
any_message = st.one_of(*STRATEGIES.values())


def test_strategies_cover_every_message_type() -> None:
    assert set(STRATEGIES) == set(m.MsgType)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(msg=any_message, epoch=u64)
def test_roundtrip_every_message_type(msg: m.Message, epoch: int) -> None:
    data = m.encode(msg, epoch)
    assert data[:10] == struct.pack(">BBQ", 1, int(msg.TYPE), epoch)
    body = msgpack.unpackb(data[10:], raw=False)
    assert type(body) is list
    assert m.decode(data) == (epoch, msg)


def test_records_body_is_phase_then_flat_groups_of_five() -> None:
    msg = m.Records(
        m.Phase.MERGE, (m.Change(1, "a", 2, 3, b"\x91\x01"), m.Change(3, "b", 4, 5, None))
    )
    body = msgpack.unpackb(m.encode(msg, 0)[10:], raw=False)
    assert body == [2, 1, "a", 2, 3, b"\x91\x01", 3, "b", 4, 5, None]


def good(mtype: m.MsgType) -> list[Any]:
    """A valid body of each type, as a msgpack-ready list."""
    bodies: dict[m.MsgType, list[Any]] = {
        m.MsgType.HELLO: ["gw-a", bytes(16), 1, 4096, "192.0.2.1:7410"],
        m.MsgType.HEARTBEAT: [2, "gw-a", 100, 1, 0, 1, 5, 6, 7, 8, 9, 3, 4],
        m.MsgType.SYNC_REQUEST: ["follow"],
        m.MsgType.BULK_START: [1, 2],
        m.MsgType.RECORDS: [0, 1, "id", 1, 2, b"\x90"],
        m.MsgType.BULK_END: [1, 2, 3, 4],
        m.MsgType.ACK: [7],
        m.MsgType.HANDOVER: ["gw-b", 1, 2, "manual"],
        m.MsgType.GOODBYE: ["shutdown", "bye"],
        m.MsgType.MERGE_END: [1, 2],
    }
    return list(bodies[mtype])


class Packed(bytes):
    """Bytes that go into a body exactly as given: msgpack's packer cannot make them."""


def packed(v: Any) -> bytes:
    return bytes(v) if isinstance(v, Packed) else bytes(msgpack.packb(v, use_bin_type=True))


def array(parts: list[bytes]) -> bytes:
    n = len(parts)
    head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
    return head + b"".join(parts)


def raw(mtype: int, body: Any, *, version: int = 1, epoch: int = 0) -> bytes:
    return struct.pack(">BBQ", version, mtype, epoch) + packed(body)


@pytest.mark.parametrize("mtype", list(m.MsgType), ids=lambda t: t.name)
def test_good_bodies_decode(mtype: m.MsgType) -> None:
    epoch, msg = m.decode(raw(mtype, good(mtype), epoch=99))
    assert epoch == 99 and msg.TYPE is mtype


@pytest.mark.parametrize("mtype", list(m.MsgType), ids=lambda t: t.name)
def test_wrong_arity_refused(mtype: m.MsgType) -> None:
    body = good(mtype)
    with pytest.raises(MalformedMessage):
        m.decode(raw(mtype, [*body, 0]))
    with pytest.raises(MalformedMessage):
        m.decode(raw(mtype, body[:-1]))
    with pytest.raises(MalformedMessage):
        m.decode(raw(mtype, []))


@pytest.mark.parametrize("mtype", list(m.MsgType), ids=lambda t: t.name)
def test_map_body_refused(mtype: m.MsgType) -> None:
    with pytest.raises(MalformedMessage):
        m.decode(raw(mtype, {}))
    with pytest.raises(MalformedMessage):
        m.decode(raw(mtype, {"node": "gw-a"}))


@pytest.mark.parametrize("mtype", list(m.MsgType), ids=lambda t: t.name)
@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"k": 1},
        [],
        msgpack.ExtType(5, b"x"),
        msgpack.ExtType(5, b""),
        msgpack.Timestamp(1700000000, 0),  # ext type -1
        Packed(b"\xc7\x00\xff"),  # ext 8 of type -1 and length 0
        Packed(b"\xc7\x00\x05"),  # ext 8 of type 5 and length 0
        Packed(b"\xc1"),  # the never-used msgpack byte
        Packed(b"\xca\x3f\xc0\x00\x00"),  # float 32
        1.5,
        -1,
    ],
    ids=repr,
)
def test_maps_ext_and_foreign_types_refused_in_every_field(mtype: m.MsgType, bad: Any) -> None:
    for i in range(len(good(mtype))):
        parts = [packed(v) for v in good(mtype)]
        parts[i] = packed(bad)
        with pytest.raises(MalformedMessage):
            m.decode(struct.pack(">BBQ", 1, mtype, 0) + array(parts))


WRONG_FIELDS: list[tuple[m.MsgType, int, Any]] = [
    # HELLO: node, boot_id, tag, window, listen
    (m.MsgType.HELLO, 0, ""),
    (m.MsgType.HELLO, 0, "x" * 33),
    (m.MsgType.HELLO, 0, "gw a"),
    (m.MsgType.HELLO, 0, b"gw-a"),
    (m.MsgType.HELLO, 1, bytes(15)),
    (m.MsgType.HELLO, 1, bytes(17)),
    (m.MsgType.HELLO, 1, "0" * 16),
    (m.MsgType.HELLO, 2, 0),
    (m.MsgType.HELLO, 2, 0x10000),
    (m.MsgType.HELLO, 2, True),
    (m.MsgType.HELLO, 3, 4095),
    (m.MsgType.HELLO, 3, 2**32),
    (m.MsgType.HELLO, 4, "x" * 65),
    (m.MsgType.HELLO, 4, None),
    # HEARTBEAT
    (m.MsgType.HEARTBEAT, 0, 3),
    (m.MsgType.HEARTBEAT, 0, False),
    (m.MsgType.HEARTBEAT, 1, "not a name"),
    (m.MsgType.HEARTBEAT, 1, ""),
    (m.MsgType.HEARTBEAT, 2, 256),
    (m.MsgType.HEARTBEAT, 4, 256),
    (m.MsgType.HEARTBEAT, 5, m.F_ALL + 1),
    (m.MsgType.HEARTBEAT, 6, None),
    (m.MsgType.HEARTBEAT, 10, 2**32),
    (m.MsgType.HEARTBEAT, 10, 1.0),
    (m.MsgType.HEARTBEAT, 11, -1),
    (m.MsgType.HEARTBEAT, 12, "4"),
    # others
    (m.MsgType.SYNC_REQUEST, 0, "x" * 65),
    (m.MsgType.SYNC_REQUEST, 0, b"follow"),
    (m.MsgType.BULK_START, 0, 2**32),
    (m.MsgType.BULK_END, 0, 2**32),
    (m.MsgType.BULK_END, 3, "1"),
    (m.MsgType.ACK, 0, True),
    (m.MsgType.ACK, 0, None),
    (m.MsgType.HANDOVER, 0, "bad name!"),
    (m.MsgType.HANDOVER, 3, "x" * 65),
    (m.MsgType.GOODBYE, 0, "Shutdown"),
    (m.MsgType.GOODBYE, 0, ""),
    (m.MsgType.GOODBYE, 0, "x" * 33),
    (m.MsgType.GOODBYE, 1, "x" * 257),
    (m.MsgType.MERGE_END, 1, "2"),
    # RECORDS: phase, then kind, id, epoch, seq, blob
    (m.MsgType.RECORDS, 0, 3),
    (m.MsgType.RECORDS, 1, 0),
    (m.MsgType.RECORDS, 1, max(KIND_BY_CODE) + 1),
    (m.MsgType.RECORDS, 1, True),
    (m.MsgType.RECORDS, 2, ""),
    (m.MsgType.RECORDS, 2, "x" * (m.MAX_ID_LEN + 1)),
    (m.MsgType.RECORDS, 2, b"id"),
    (m.MsgType.RECORDS, 3, -1),
    (m.MsgType.RECORDS, 4, "0"),
    (m.MsgType.RECORDS, 4, -1),
    (m.MsgType.RECORDS, 5, b""),
    (m.MsgType.RECORDS, 5, bytes(m.MAX_RECORD_BYTES + 1)),
    (m.MsgType.RECORDS, 5, "blob"),
    (m.MsgType.RECORDS, 5, [1, 2]),
]


@pytest.mark.parametrize(
    ("mtype", "index", "value"),
    WRONG_FIELDS,
    ids=[f"{t.name}[{i}]={v!r:.20}" for t, i, v in WRONG_FIELDS],
)
def test_wrong_field_types_and_ranges_refused(mtype: m.MsgType, index: int, value: Any) -> None:
    body = good(mtype)
    body[index] = value
    with pytest.raises(MalformedMessage):
        m.decode(raw(mtype, body))


def test_field_limits_are_inclusive() -> None:
    ok = [
        (m.MsgType.HELLO, 0, "x" * 32),
        (m.MsgType.HELLO, 2, 0xFFFF),
        (m.MsgType.HELLO, 3, 2**32 - 1),
        (m.MsgType.HELLO, 4, "é" * 64),
        (m.MsgType.HEARTBEAT, 1, None),
        (m.MsgType.HEARTBEAT, 5, m.F_ALL),
        (m.MsgType.HEARTBEAT, 8, 2**64 - 1),
        (m.MsgType.GOODBYE, 1, "x" * 256),
        (m.MsgType.RECORDS, 2, "x" * m.MAX_ID_LEN),
        (m.MsgType.RECORDS, 5, None),
        (m.MsgType.RECORDS, 5, bytes(m.MAX_RECORD_BYTES)),
    ]
    for mtype, index, value in ok:
        body = good(mtype)
        body[index] = value
        m.decode(raw(mtype, body))


def test_records_group_arity_refused() -> None:
    with pytest.raises(MalformedMessage):
        m.decode(raw(m.MsgType.RECORDS, [0, 1, "id", 1, 2]))
    with pytest.raises(MalformedMessage):
        m.decode(raw(m.MsgType.RECORDS, [0, 1, "id", 1, 2, None, 1]))
    assert m.decode(raw(m.MsgType.RECORDS, [1])) == (0, m.Records(m.Phase.BULK, ()))


def test_array_length_limit() -> None:
    n = (m.MAX_ARRAY_LEN - 1) // 5
    tomb = [1, "i", 0, 0, None]
    m.decode(raw(m.MsgType.RECORDS, [0, *tomb * n]))
    with pytest.raises(MalformedMessage):
        m.decode(raw(m.MsgType.RECORDS, [0, *tomb * (n + 1)]))


@pytest.mark.parametrize("mtype", [0, 11, 12, 127, 255])
def test_unknown_message_type_refused(mtype: int) -> None:
    with pytest.raises(UnknownMessageType):
        m.decode(raw(mtype, ["x"]))
    with pytest.raises(UnknownMessageType):  # decided before the body is looked at
        m.decode(struct.pack(">BBQ", 1, mtype, 0) + b"\xc1\xc1")


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version_refused(version: int) -> None:
    with pytest.raises(UnsupportedVersion):
        m.decode(raw(m.MsgType.ACK, [0], version=version))
    with pytest.raises(UnsupportedVersion):  # decided before the type is looked at
        m.decode(raw(200, [0], version=version))


@pytest.mark.parametrize("n", range(m.HEADER_LEN + 1))
def test_too_short_refused(n: int) -> None:
    data = raw(m.MsgType.ACK, [0])[:n]
    with pytest.raises(MalformedMessage):
        m.decode(data)


def test_trailing_bytes_and_invalid_utf8_refused() -> None:
    with pytest.raises(MalformedMessage):
        m.decode(raw(m.MsgType.ACK, [0]) + b"\x00")
    bad_utf8 = struct.pack(">BBQ", 1, m.MsgType.SYNC_REQUEST, 0) + b"\x91\xa2\xff\xfe"
    with pytest.raises(MalformedMessage):
        m.decode(bad_utf8)
    with pytest.raises(MalformedMessage):
        m.decode(struct.pack(">BBQ", 1, m.MsgType.ACK, 0) + b"\x91")  # truncated body
    deep = b"\x91" * 5000 + b"\x00"
    with pytest.raises(MalformedMessage):
        m.decode(struct.pack(">BBQ", 1, m.MsgType.ACK, 0) + deep)


def test_non_shortest_integer_encodings_are_accepted() -> None:
    # Encoders use the shortest msgpack form; decoders accept any.
    for enc in (b"\x07", b"\xcc\x07", b"\xcd\x00\x07", b"\xce\x00\x00\x00\x07", b"\xd0\x07"):
        data = struct.pack(">BBQ", 1, m.MsgType.ACK, 5) + b"\x91" + enc
        assert m.decode(data) == (5, m.Ack(7))


# --- decode fuzzing -----------------------------------------------------------------


def decode_or_none(data: bytes) -> tuple[int, m.Message] | None:
    try:
        return m.decode(data)
    except ProtocolError:
        return None


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    decode_or_none(data)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=120))
def test_decode_arbitrary_body_after_plausible_header(
    version: int, mtype: int, body: bytes
) -> None:
    decode_or_none(struct.pack(">BBQ", version, mtype, 0) + body)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(m.encode(draw(any_message), draw(u64)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[i]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutated_encodings())
def test_decode_mutated_valid_encodings(data: bytes) -> None:
    got = decode_or_none(data)
    if got is not None:  # whatever decodes is a valid message that re-encodes faithfully
        epoch, msg = got
        assert m.decode(m.encode(msg, epoch)) == got


msgpack_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
)
msgpack_trees = st.recursive(
    msgpack_leaves,
    lambda kids: (
        st.lists(kids, max_size=12) | st.dictionaries(st.text(max_size=4), kids, max_size=3)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(mtype=st.sampled_from(m.MsgType), body=msgpack_trees)
def test_decode_arbitrary_msgpack_bodies(mtype: m.MsgType, body: Any) -> None:
    data = raw(mtype, body)
    try:
        epoch, msg = m.decode(data)
    except MalformedMessage:
        return
    assert msg.TYPE is mtype
    assert m.decode(m.encode(msg, epoch)) == (epoch, msg)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(mtype=st.sampled_from(m.MsgType), data=st.data())
def test_decode_valid_body_with_one_field_replaced(mtype: m.MsgType, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[mtype])
    body = msg.body()
    if not body:
        return
    i = data.draw(st.integers(0, len(body) - 1))
    body[i] = data.draw(msgpack_trees)
    try:
        epoch, got = m.decode(raw(mtype, body, epoch=3))
    except MalformedMessage:
        return
    assert epoch == 3
    assert got.body() == body  # accepted only if the replacement is itself valid there


# =====================================================================================
# Channel
# =====================================================================================

PSK = Secret(hashlib.sha256(b"hasyncd test psk").digest())
OTHER_PSK = Secret(hashlib.sha256(b"another psk").digest())
HELLO_A = m.Hello("gw-a", bytes(range(16)), 0x0A0A, 1 << 20, "192.0.2.1:7410")
HELLO_B = m.Hello("gw-b", bytes(range(16, 32)), 0x0B0B, 1 << 20, "192.0.2.2:7410")
EPOCH_A = (3 << 16) | 0x0A0A


def key_id(psk: Secret) -> bytes:
    """The specification's key id, computed without the handshake module."""
    return hmac.new(psk.reveal(), b"hasyncd v1 key id", hashlib.sha256).digest()[:8]


KID = key_id(PSK)
HB = m.Heartbeat(m.Role.PRIMARY, "gw-a", 100, 1, 0, m.F_IN_SYNC, EPOCH_A, 1, 1, 0, 0)


def channels(
    *,
    psk_a: Secret = PSK,
    psk_b: Secret = PSK,
    group_a: int = 1,
    group_b: int = 1,
    e_a: bytes | None = None,
    e_b: bytes | None = None,
) -> tuple[Channel, Channel]:
    """(initiator gw-a, responder gw-b)."""

    def key(b: bytes | None) -> X25519PrivateKey | None:
        return None if b is None else X25519PrivateKey.from_private_bytes(b)

    a = Channel(
        initiator=True,
        psk=psk_a,
        group_id=group_a,
        hello=HELLO_A,
        epoch=EPOCH_A,
        ephemeral=key(e_a),
    )
    b = Channel(
        initiator=False, psk=psk_b, group_id=group_b, hello=HELLO_B, epoch=0, ephemeral=key(e_b)
    )
    return a, b


def open_pair(**kw: Any) -> tuple[Channel, Channel]:
    a, b = channels(**kw)
    a.start()
    assert b.receive_data(a.take_output()) == []
    assert b.state is State.AWAIT_CONFIRM
    assert a.receive_data(b.take_output()) == [Opened(HELLO_B, 0)]
    a.send(HB, EPOCH_A)
    assert b.receive_data(a.take_output()) == [Opened(HELLO_A, EPOCH_A), Received(EPOCH_A, HB, 0)]
    assert a.state is State.OPEN and b.state is State.OPEN
    return a, b


def test_full_handshake_and_transport() -> None:
    a, b = channels()
    assert a.state is State.AWAIT_RESP and b.state is State.AWAIT_INIT
    a.start()
    init = a.take_output()
    (body,) = unframe(init)
    assert body[:7] == b"HSYN\x01\x01\x01"
    assert body[7:15] == KID
    assert len(body) == 15 + 32 + len(m.encode(HELLO_A, EPOCH_A)) + TAG_LEN
    assert b.receive_data(init) == []
    resp = b.take_output()
    (rbody,) = unframe(resp)
    assert rbody[:6] == b"HSYN\x01\x02"
    assert len(rbody) == 6 + 32 + len(m.encode(HELLO_B, 0)) + TAG_LEN
    with pytest.raises(ProtocolError):  # the responder waits for proof of the initiator
        b.send(HB, 0)
    assert b.peer_hello == HELLO_A  # known, but not yet trusted: no Opened event
    assert a.receive_data(resp) == [Opened(HELLO_B, 0)]
    assert a.peer_hello == HELLO_B

    frame_no, size = a.send(HB, EPOCH_A)
    out = a.take_output()
    assert (frame_no, size) == (0, len(out))
    assert len(out) == 4 + len(m.encode(HB, EPOCH_A)) + TAG_LEN
    assert b.receive_data(out) == [Opened(HELLO_A, EPOCH_A), Received(EPOCH_A, HB, 0)]

    # Both directions, frame numbers = the sender's nonce, each direction counting alone.
    for i in range(1, 4):
        assert a.send(m.Ack(i), EPOCH_A)[0] == i
    assert b.receive_data(a.take_output()) == [Received(EPOCH_A, m.Ack(i), i) for i in range(1, 4)]
    assert b.send(m.SyncRequest("follow"), EPOCH_A)[0] == 0
    assert a.receive_data(b.take_output()) == [Received(EPOCH_A, m.SyncRequest("follow"), 0)]
    assert a.frames_sent == 4 and b.frames_sent == 1


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    msgs=st.lists(st.tuples(st.booleans(), any_message, u64), max_size=10),
    cuts=st.lists(st.integers(1, 400), max_size=10),
)
def test_channel_streams_survive_arbitrary_chunking(
    msgs: list[tuple[bool, m.Message, int]], cuts: list[int]
) -> None:
    a, b = open_pair()
    streams: dict[bool, bytearray] = {True: bytearray(), False: bytearray()}
    expected: dict[bool, list[Received]] = {True: [], False: []}
    for from_a, msg, epoch in msgs:
        if isinstance(msg, m.Hello):
            continue
        sender = a if from_a else b
        frame_no, _ = sender.send(msg, epoch)
        streams[from_a] += sender.take_output()
        expected[from_a].append(Received(epoch, msg, frame_no))
    for from_a, receiver in ((True, b), (False, a)):
        data, got, pos = bytes(streams[from_a]), [], 0
        for cut in [*cuts, len(streams[from_a])]:
            got += receiver.receive_data(data[pos : pos + cut])
            pos += cut
        got += receiver.receive_data(data[pos:])
        assert got == expected[from_a]
        receiver.receive_eof()


def _rejected(
    a: Channel, b: Channel, label: str, code: hs.RejectCode
) -> tuple[HandshakeError, PeerRejected]:
    """Run INIT into b, expect b to refuse with ``label`` and a to learn why."""
    a.start()
    with pytest.raises(HandshakeError) as local:
        b.receive_data(a.take_output())
    assert local.value.code == label
    assert b.state is State.CLOSED
    (reject,) = unframe(b.take_output())
    assert reject[:7] == b"HSYN\x01\x03" + bytes([code])
    with pytest.raises(PeerRejected) as remote:
        a.receive_data(framed(reject))
    assert remote.value.code == label
    assert a.state is State.CLOSED
    assert a.take_output() == b""  # a REJECT is never answered
    return local.value, remote.value


def test_wrong_psk_is_psk_mismatch_on_both_sides() -> None:
    a, b = channels(psk_b=OTHER_PSK)
    local, remote = _rejected(a, b, "psk_mismatch", hs.RejectCode.PSK_MISMATCH)
    for text in (local.message, remote.message):
        assert PSK.reveal().hex() not in text and OTHER_PSK.reveal().hex() not in text
    assert KID.hex() in local.message  # names the key, not the secret
    assert key_id(OTHER_PSK).hex() in local.message


def test_wrong_group_is_group_mismatch() -> None:
    a, b = channels(group_a=1, group_b=2)
    _rejected(a, b, "group_mismatch", hs.RejectCode.GROUP_MISMATCH)


def test_group_is_checked_before_key() -> None:
    a, b = channels(group_a=1, group_b=2, psk_b=OTHER_PSK)
    _rejected(a, b, "group_mismatch", hs.RejectCode.GROUP_MISMATCH)


def crafted_init(
    *,
    version: int = 1,
    kind: int = 1,
    group: int = 1,
    psk: Secret = PSK,
    payload: bytes | None = None,
) -> tuple[bytes, NNpsk0]:
    """An INIT frame built from the specification's layout (not with the handshake helpers)."""
    preamble = b"HSYN" + bytes([version, kind, group]) + key_id(psk)
    noise = NNpsk0(initiator=True, psk=psk.reveal(), prologue=b"hasyncd link v1|" + preamble)
    if payload is None:
        payload = m.encode(HELLO_A, 0)
    return framed(preamble + noise.write_message_1(payload)), noise


def test_crafted_init_is_accepted() -> None:
    _, b = channels()
    init, noise = crafted_init()
    assert b.receive_data(init) == []
    (resp,) = unframe(b.take_output())
    payload, send, _ = noise.read_message_2(resp[6:])
    assert m.decode(payload) == (0, HELLO_B)
    events = b.receive_data(framed(send.encrypt(b"", m.encode(m.Ack(0), 0))))
    assert events == [Opened(HELLO_A, 0), Received(0, m.Ack(0), 0)]


def test_version_mismatch_refused_by_responder() -> None:
    _, b = channels()
    init, _ = crafted_init(version=2)
    with pytest.raises(HandshakeError) as exc:
        b.receive_data(init)
    assert exc.value.code == "version_mismatch"
    (reject,) = unframe(b.take_output())
    # The REJECT carries the responder's own version so the peer learns it.
    assert hs.parse_kind(reject) == (1, hs.HsType.REJECT)
    assert hs.parse_reject(reject)[0] == "version_mismatch"
    assert reject[6] == 1


def test_version_mismatch_refused_by_initiator() -> None:
    a, _ = channels()
    a.start()
    (init,) = unframe(a.take_output())
    responder = NNpsk0(initiator=False, psk=PSK.reveal(), prologue=b"hasyncd link v1|" + init[:15])
    responder.read_message_1(init[15:])
    msg2, _, _ = responder.write_message_2(m.encode(HELLO_B, 0))
    with pytest.raises(HandshakeError) as exc:
        a.receive_data(framed(b"HSYN\x02\x02" + msg2))
    assert exc.value.code == "version_mismatch"
    assert a.state is State.CLOSED


def test_reject_from_other_version_is_understood() -> None:
    a, _ = channels()
    a.start()
    with pytest.raises(PeerRejected) as exc:
        a.receive_data(framed(b"HSYN\x09\x03\x01speaks v9"))
    assert exc.value.code == "version_mismatch"
    a2, _ = channels()
    a2.start()
    with pytest.raises(PeerRejected) as exc:
        a2.receive_data(framed(b"HSYN\x01\x03\xc8"))  # unassigned code, empty text
    assert exc.value.code == "code_200"


@pytest.mark.parametrize(
    ("where", "offset"),
    [
        ("ephemeral key", 4 + 15),
        ("ephemeral key end", 4 + 15 + 31),
        ("ciphertext", 4 + 15 + 32),
        ("tag", -1),
    ],
)
def test_tampered_init_with_matching_key_id_is_auth_failed(where: str, offset: int) -> None:
    a, b = channels()
    a.start()
    init = bytearray(a.take_output())
    init[offset] ^= 0x40
    with pytest.raises(HandshakeError) as exc:
        b.receive_data(bytes(init))
    assert exc.value.code == "auth_failed", where
    (reject,) = unframe(b.take_output())
    assert reject[6] == hs.RejectCode.AUTH_FAILED


def test_rewritten_group_in_init_is_auth_failed() -> None:
    """The preamble is the Noise prologue: changing the group breaks the handshake."""
    a, b = channels(group_a=1, group_b=2)
    a.start()
    init = bytearray(a.take_output())
    assert init[4 + 6] == 1
    init[4 + 6] = 2
    with pytest.raises(HandshakeError) as exc:
        b.receive_data(bytes(init))
    assert exc.value.code == "auth_failed"


def test_init_with_bad_hello_payload_is_malformed() -> None:
    for payload in (m.encode(m.Ack(0), 0), b"\x01\x01" + bytes(8) + b"\xc1", b""):
        _, b = channels()
        init, _ = crafted_init(payload=payload)
        with pytest.raises(HandshakeError) as exc:
            b.receive_data(init)
        assert exc.value.code == "malformed"
        assert unframe(b.take_output())[0][6] == hs.RejectCode.MALFORMED


@pytest.mark.parametrize(
    ("body", "responder"),
    [
        (b"HSY", True),
        (b"HSYN\x01", True),
        (b"XSYN\x01\x01" + bytes(60), True),
        (b"HSYN\x01\x04" + bytes(60), True),  # unknown handshake frame type
        (b"HSYN\x01\x02" + bytes(60), True),  # RESP to a responder
        (b"HSYN\x01\x01\x01" + bytes(7), True),  # INIT shorter than its preamble
        (b"HSYN\x01\x01\x01" + KID + bytes(47), True),  # INIT with a short Noise message
        (b"HSYN\x01\x01\x01" + bytes(60), False),  # INIT to an initiator
        (b"HSYN\x01\x02" + bytes(47), False),  # RESP with a short Noise message
    ],
)
def test_malformed_handshake_frames(body: bytes, responder: bool) -> None:
    a, b = channels()
    ch = b if responder else a
    if not responder:
        a.start()
        a.take_output()
    with pytest.raises(HandshakeError) as exc:
        ch.receive_data(framed(body))
    assert exc.value.code == "malformed"
    assert ch.state is State.CLOSED
    (reject,) = unframe(ch.take_output())
    assert reject[:6] == b"HSYN\x01\x03"


def test_handshake_frame_limit() -> None:
    _, b = channels()
    with pytest.raises(FrameTooLarge):
        b.receive_data(prefix(MAX_HANDSHAKE_FRAME + 1))
    assert b.state is State.CLOSED
    _, b = channels()
    with pytest.raises(FrameTooSmall):
        b.receive_data(prefix(0))
    assert b.state is State.CLOSED


def test_transport_frame_before_handshake_completes_is_refused() -> None:
    a, _ = open_pair()
    a.send(m.Ack(1), EPOCH_A)
    sealed = a.take_output()

    _, fresh_responder = channels()
    with pytest.raises(HandshakeError) as exc:
        fresh_responder.receive_data(sealed)
    assert exc.value.code == "malformed"
    assert fresh_responder.state is State.CLOSED

    fresh_initiator, _ = channels()
    fresh_initiator.start()
    with pytest.raises(HandshakeError) as exc:
        fresh_initiator.receive_data(sealed)
    assert exc.value.code == "malformed"


def test_nothing_can_be_sent_before_the_channel_is_open() -> None:
    a, b = channels()
    for ch in (a, b):
        with pytest.raises(ProtocolError):
            ch.send(m.Ack(0), 0)
    a.start()
    with pytest.raises(ProtocolError):
        a.send(m.Ack(0), 0)
    b.receive_data(a.take_output())
    with pytest.raises(ProtocolError):  # AWAIT_CONFIRM
        b.send(m.Ack(0), 0)


def test_replayed_init_never_opens_the_channel() -> None:
    """A recorded INIT gets a RESP, but the replayer cannot produce the confirming frame."""
    a, b = channels()
    a.start()
    init = a.take_output()
    b.receive_data(init)
    a.receive_data(b.take_output())
    a.send(HB, EPOCH_A)
    confirm = a.take_output()

    _, victim = channels()
    assert victim.receive_data(init) == []
    assert victim.take_output()[4:10] == b"HSYN\x01\x02"
    assert victim.state is State.AWAIT_CONFIRM
    with pytest.raises(DecryptFailed):
        victim.receive_data(confirm)
    assert victim.state is State.CLOSED
    assert victim.take_output() == b""  # no REJECT once transport keys exist


def _seal(ch: Channel, *msgs: m.Message) -> list[bytes]:
    out = []
    for msg in msgs:
        ch.send(msg, EPOCH_A)
        out.append(ch.take_output())
    return out


def _flip(data: bytes, i: int) -> bytes:
    buf = bytearray(data)
    buf[i] ^= 0x01
    return bytes(buf)


def _resize(data: bytes, delta: int) -> bytes:
    body = data[4:]
    body = body[:delta] if delta < 0 else body + bytes(delta)
    return framed(body)


ATTACKS: dict[str, Callable[[Channel, Channel], bytes]] = {
    "flipped first ciphertext byte": lambda a, b: _flip(_seal(a, HB)[0], 4),
    "flipped last ciphertext byte": lambda a, b: _flip(_seal(a, HB)[0], -TAG_LEN - 1),
    "flipped tag": lambda a, b: _flip(_seal(a, HB)[0], -1),
    "replayed": lambda a, b: _seal(a, HB)[0] * 2,
    "reordered": lambda a, b: b"".join(reversed(_seal(a, HB, m.Ack(1)))),
    "dropped": lambda a, b: _seal(a, HB, m.Ack(1))[1],
    "truncated body": lambda a, b: _resize(_seal(a, HB)[0], -1),
    "truncated to the tag": lambda a, b: framed(_seal(a, HB)[0][-26:]),
    "extended body": lambda a, b: _resize(_seal(a, HB)[0], 1),
    "reflected": lambda a, b: _seal(b, HB)[0],
    "other session": lambda a, b: _seal(open_pair()[0], HB)[0],
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_tampered_transport_frames_close_the_channel(attack: str) -> None:
    a, b = open_pair()
    wire = ATTACKS[attack](a, b)  # every attack delivers to b ("reflected": b's own frame)
    if attack == "replayed":
        # The authentic first copy is delivered; the replay is caught and kept.
        events = b.receive_data(wire)
        assert len(events) == 1
        assert isinstance(b.error, DecryptFailed)
    else:
        with pytest.raises(DecryptFailed):
            b.receive_data(wire)
    assert b.state is State.CLOSED
    # A closed channel ignores input and refuses to send.
    assert b.receive_data(framed(bytes(40))) == []
    with pytest.raises(ProtocolError):
        b.send(m.Ack(0), 0)


def test_authenticated_but_malformed_message_closes_the_channel() -> None:
    a, b = open_pair()
    assert a._send is not None
    with pytest.raises(MalformedMessage):
        b.receive_data(framed(a._send.encrypt(b"", raw(m.MsgType.ACK, ["x"]))))
    assert b.state is State.CLOSED


def test_hello_inside_transport_is_refused() -> None:
    a, b = open_pair()
    a.send(HELLO_A, EPOCH_A)
    with pytest.raises(ProtocolError):
        b.receive_data(a.take_output())
    assert b.state is State.CLOSED


@pytest.mark.parametrize("length", [MAX_TRANSPORT_FRAME + 1, 2**32 - 1])
def test_oversized_transport_frame_refused(length: int) -> None:
    _, b = open_pair()
    with pytest.raises(FrameTooLarge):
        b.receive_data(prefix(length))  # only the 4-byte prefix has arrived
    assert b.state is State.CLOSED


def test_transport_frame_limits_at_the_boundary() -> None:
    _, b = open_pair()
    assert b.receive_data(prefix(MAX_TRANSPORT_FRAME)) == []  # legal size: waits for the body
    _, b2 = open_pair()
    with pytest.raises(FrameTooSmall):
        b2.receive_data(prefix(MIN_TRANSPORT_FRAME - 1))
    assert b2.state is State.CLOSED


def test_message_filling_the_largest_transport_frame_is_accepted() -> None:
    a, b = open_pair()
    full = [m.Change(1, f"id{i}", 0, 0, bytes(m.MAX_RECORD_BYTES)) for i in range(3)]

    def records(last: int) -> m.Records:
        return m.Records(m.Phase.BULK, (*full, m.Change(1, "last", 0, 0, bytes(last))))

    probe = len(m.encode(records(1000), 0))  # a bin16 header: size is linear in the blob
    msg = records(1000 + MAX_TRANSPORT_FRAME - TAG_LEN - probe)
    assert len(m.encode(msg, 0)) + TAG_LEN == MAX_TRANSPORT_FRAME
    a.send(msg, 0)
    wire = a.take_output()
    assert len(wire) == 4 + MAX_TRANSPORT_FRAME
    assert b.receive_data(wire) == [Received(0, msg, 1)]


def test_truncated_transport_frame_at_eof_closes_the_channel() -> None:
    a, b = open_pair()
    (wire,) = _seal(a, HB)
    assert b.receive_data(wire[:-5]) == []
    with pytest.raises(FrameTruncated):
        b.receive_eof()
    assert b.state is State.CLOSED


def test_initiator_reject_after_resp_reaches_the_responder() -> None:
    """An initiator that refuses the RESP sends a REJECT; the responder must learn why."""
    a, b = channels()
    a.start()
    b.receive_data(a.take_output())
    resp = _flip(b.take_output(), -1)  # corrupt the RESP tag: the initiator refuses it
    with pytest.raises(HandshakeError) as exc:
        a.receive_data(resp)
    assert exc.value.code == "auth_failed"
    reject = a.take_output()
    assert reject[4:11] == b"HSYN\x01\x03" + bytes([hs.RejectCode.AUTH_FAILED])
    with pytest.raises(PeerRejected) as remote:
        b.receive_data(reject)
    assert remote.value.code == "auth_failed"


# --- repr hygiene -----------------------------------------------------------------------


def _noise_twin_keys(e_a: bytes, e_b: bytes, prologue: bytes) -> list[bytes]:
    """The transport keys of a handshake, derived independently with noiseprotocol."""
    conns = []
    for initiator, e in ((True, e_a), (False, e_b)):
        c = NoiseConnection.from_name(b"Noise_NNpsk0_25519_ChaChaPoly_SHA256")
        c.set_psks(psk=PSK.reveal())
        c.set_prologue(prologue)
        if initiator:
            c.set_as_initiator()
        else:
            c.set_as_responder()
        c.set_keypair_from_private_bytes(Keypair.EPHEMERAL, e)
        with pytest.warns(UserWarning, match="ephemeral"):
            c.start_handshake()
        conns.append(c)
    ini, res = conns
    res.read_message(bytes(ini.write_message(b"")))
    ini.read_message(bytes(res.write_message(b"")))
    p = ini.noise_protocol
    return [p.cipher_state_encrypt.k, p.cipher_state_decrypt.k]


def test_reprs_never_contain_key_material_or_blobs() -> None:
    e_a, e_b = hashlib.sha256(b"e_a").digest(), hashlib.sha256(b"e_b").digest()
    a, b = channels(e_a=e_a, e_b=e_b)
    texts_seen: list[str] = [repr(a), repr(b)]
    a.start()
    init = a.take_output()
    texts_seen += [repr(a), repr(a._noise), repr(a._noise._ss) if a._noise else ""]
    b.receive_data(init)
    texts_seen += [repr(b), repr(b._send), repr(b._recv)]
    a.receive_data(b.take_output())
    texts_seen += [repr(a), repr(a._send), repr(a._recv)]

    sa_id, sa = samples.ipsec_sa(7, "in", now=NOW)
    kind = KINDS["ipsec_sa"]
    blob = kind.from_json(sa, sa_id).blob
    records = m.Records(m.Phase.STREAM, (m.Change(1, sa_id, EPOCH_A, 1, blob),))
    a.send(records, EPOCH_A)
    events = b.receive_data(a.take_output())
    texts_seen += [repr(events), repr(records), repr(records.changes), repr(PSK), str(PSK)]
    texts_seen.append(repr(Entry(pack_version(EPOCH_A, 1), None, blob)))

    twin_keys = _noise_twin_keys(e_a, e_b, b"hasyncd link v1|" + unframe(init)[0][:15])
    # The twin's keys are the channel's: they open the frame a sealed as its frame 1.
    a.send(m.Ack(5), EPOCH_A)
    sealed = unframe(a.take_output())[0]
    plain = ChaCha20Poly1305(twin_keys[0]).decrypt(
        bytes(4) + (1).to_bytes(8, "little"), sealed, b""
    )
    assert m.decode(plain) == (EPOCH_A, m.Ack(5))
    secrets = [PSK.reveal(), e_a, e_b, blob, bytes.fromhex(sa["enc"]["key"]), *twin_keys]
    joined = "\n".join(texts_seen)
    assert "Records(phase=STREAM, changes=1)" in joined  # the reprs were really collected
    for secret in secrets:
        assert secret.hex() not in joined
        assert repr(secret)[2:-1][:24] not in joined
        assert str(list(secret[:8]))[1:-1] not in joined


# =====================================================================================
# Limits: what the node produces must fit what the wire accepts
# =====================================================================================


def test_largest_hello_fits_a_handshake_frame() -> None:
    hello = m.Hello("N" * 32, bytes(16), 0xFFFF, m.U32, "\U0001f600" * 64)
    a = Channel(initiator=True, psk=PSK, group_id=255, hello=hello, epoch=m.U64)
    b = Channel(initiator=False, psk=PSK, group_id=255, hello=hello, epoch=m.U64)
    a.start()
    init = a.take_output()
    assert len(init) - 4 <= MAX_HANDSHAKE_FRAME
    b.receive_data(init)
    resp = b.take_output()
    assert len(resp) - 4 <= MAX_HANDSHAKE_FRAME
    assert a.receive_data(resp) == [Opened(hello, m.U64)]


def test_every_schema_valid_record_fits_in_a_records_message() -> None:
    """The largest legal records the API accepts must be replicable in one message."""
    web = KINDS["sslvpn_web_session"]
    rid, body = samples.web_session(1, now=NOW)
    body["groups"] = ["g" * MAX_GROUP_LEN] * MAX_GROUPS
    sa = KINDS["ipsec_sa"]
    sa_id, sa_body = samples.ipsec_sa(1, "in", now=NOW)
    sa_body["replay_window"] = 65536
    sa_body["replay_bitmap"] = "ab" * 8192
    sa_body["selectors"] = [
        {
            "src": f"2001:db8:{i:x}::/48",
            "dst": f"2001:db8:ffff:{i:x}::/64",
            "proto": 17,
            "sport": 65535,
            "dport": 65535,
        }
        for i in range(64)
    ]
    epoch = (1 << 16) | 1
    for kind, key, rec in ((web, rid, body), (sa, sa_id, sa_body)):
        assert len(json.dumps(rec)) < MAX_RECORD_BODY  # the API takes it
        record = kind.from_json(rec, key)  # the schema takes it
        blob = record.blob
        assert kind.decode(blob) == record.value
        msg = m.Records(m.Phase.STREAM, (m.Change(kind.code, key, epoch, 1, blob),))
        assert m.decode(m.encode(msg, epoch)) == (epoch, msg)


def test_a_record_above_the_size_limit_is_refused_at_encode() -> None:
    kind = KINDS["sslvpn_web_session"]
    rid, body = samples.web_session(1, now=NOW)
    wire = kind.from_json(body, rid).value
    groups = msgspec.Raw(msgspec.msgpack.encode(["g" * 300] * 64))  # bypasses the schema
    with pytest.raises(RecordError, match="more than the limit"):
        kind.encode(msgspec.structs.replace(wire, groups=groups))
    with pytest.raises(RecordError, match="more than the limit"):
        kind.from_wire(msgspec.structs.replace(wire, groups=groups), rid)


def _big_inbound_sa_store(n: int, bitmap_bytes: int) -> tuple[Store, int]:
    kind = KINDS["ipsec_sa"]
    store = Store()
    epoch = (1 << 16) | 1
    for i in range(n):
        rid, body = samples.ipsec_sa(i, "in", now=NOW)
        body["replay_window"] = 65536
        body["replay_bitmap"] = "ab" * bitmap_bytes  # schema: Hex(0, 8192)
        blob = kind.from_json(body, rid).blob
        store.put(kind.code, rid, Entry(pack_version(epoch, i + 1), None, blob))
    return store, pack_version(epoch, n)


@pytest.mark.parametrize("phase", ["bulk", "stream"])
def test_replication_batches_fit_in_one_transport_frame(phase: str) -> None:
    store, current = _big_inbound_sa_store(40, 4000)
    session = OutboundSession(1)
    if phase == "stream":
        empty = Store()
        while session.next_message(empty, 0) is not None and not session.idle:
            pass
        assert session.idle
        for kind in store.tables:
            for rid, entry in store.items(kind):
                session.enqueue(kind, rid, entry.version)
    a, b = open_pair()
    sent = 0
    while (nxt := session.next_message(store, current)) is not None:
        msg, _ = nxt
        a.send(msg, 1)
        wire = a.take_output()
        size = len(wire) - 4
        assert size <= MAX_TRANSPORT_FRAME, f"{msg!r} was sealed into a {size}-byte frame"
        event = b.receive_data(wire)[-1]
        assert isinstance(event, Received) and event.message == msg
        if isinstance(msg, m.Records):
            sent += len(msg.changes)
        if session.idle:
            break
    assert sent == 40


def test_kind_codes_on_the_wire_match_the_policy() -> None:
    assert KIND_BY_CODE == {
        1: "ipsec_sa",
        2: "ike_sa",
        3: "sslvpn_web_session",
        4: "promotion",
        5: "sa_counters",
    }
    assert {KINDS[k].code for k in KIND_CODES} == set(KIND_BY_CODE)


# --- SYNC_REQUEST: the short form and the resume form (PROTOCOL.md 7.5.3) --------------------


def test_sync_request_short_form_is_unchanged_and_resume_form_has_five_fields() -> None:
    assert m.encode(m.SyncRequest("follow"), 0)[10:] == msgpack.packb(["follow"])
    resume = m.SyncRequest("resume", 5, 7, 2, "abc")
    assert msgpack.unpackb(m.encode(resume, 0)[10:]) == ["resume", 5, 7, 2, "abc"]
    assert m.decode(m.encode(resume, 9)) == (9, resume)


@pytest.mark.parametrize(
    "body",
    [
        ["resume", 5],  # neither form
        ["resume", 5, 7, 2],
        ["resume", 5, 7, 2, "abc", None],
        ["resume", 0, 7, 0, None],  # the long form always names an epoch
        ["resume", 5, 2**32, 0, None],
        ["resume", 5, 7, max(KIND_BY_CODE) + 1, None],
        ["resume", 5, 7, True, None],
        ["resume", 5, 7, 0, "abc"],  # a record id needs a kind
        ["resume", 5, 7, 2, ""],
        ["resume", 5, 7, 2, "x" * (m.MAX_ID_LEN + 1)],
        ["resume", 5, 7, 2, b"abc"],
    ],
)
def test_malformed_sync_request_resume_fields(body: list[Any]) -> None:
    with pytest.raises(MalformedMessage):
        m.decode(raw(m.MsgType.SYNC_REQUEST, body))
