"""Typed link messages: frozen dataclasses with explicit encode/decode.

A message's plaintext is a fixed 10-byte header followed by one msgpack array:

    u8 protocol version | u8 message type | u64 sender epoch | msgpack [field, ...]

Bodies are positional arrays (never maps: the decoder refuses them), every
field is type- and range-checked here, and raw msgpack values never leave
this module.  Record blobs inside RECORDS are opaque here; the replication
core validates them against the record schemas before applying them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, NamedTuple

import msgpack

from hasyncd.errors import MalformedMessage, UnknownMessageType, UnsupportedVersion
from hasyncd.policy import KIND_BY_CODE
from hasyncd.records import MAX_RECORD_BYTES

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BBQ")
HEADER_LEN = HEADER.size

U32 = 2**32 - 1
U64 = 2**64 - 1
# Record ids are at most 64 hex characters (web sessions) or
# "esp-xxxxxxxx@" plus an IPv6 address (52 characters); 96 leaves margin.
MAX_ID_LEN = 96
# Changes in one RECORDS message: a sender never puts more in one message
# (a frame of tiny tombstones could otherwise hold ~10,000), and the decoder
# bounds its array preallocation by it.
MAX_CHANGES = 4096
MAX_ARRAY_LEN = 1 + 5 * MAX_CHANGES
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,32}\Z")
CODE_RE = re.compile(r"[a-z0-9_]{1,32}\Z")
MAX_TEXT = 256

_unpack_limits: dict[str, Any] = {
    "raw": False,
    "strict_map_key": True,
    "max_str_len": MAX_RECORD_BYTES,
    "max_bin_len": MAX_RECORD_BYTES,
    "max_array_len": MAX_ARRAY_LEN,
    "max_map_len": 0,
    "max_ext_len": 0,
}


class MsgType(IntEnum):
    HELLO = 1
    HEARTBEAT = 2
    SYNC_REQUEST = 3
    BULK_START = 4
    RECORDS = 5
    BULK_END = 6
    ACK = 7
    HANDOVER = 8
    GOODBYE = 9
    MERGE_END = 10


class Role(IntEnum):
    STARTING = 0
    SECONDARY = 1
    PRIMARY = 2


class Phase(IntEnum):
    """Why a RECORDS message is sent: it decides how the receiver applies it."""

    STREAM = 0  # incremental changes from the primary, in version order
    BULK = 1  # part of a snapshot between BULK_START and BULK_END
    MERGE = 2  # a former primary's writes offered to the survivor after a split


# Heartbeat flags.
F_IN_SYNC = 1
F_OVERRIDE = 2
F_SUSPENDED = 4
F_FENCED = 8
F_HANDING_OVER = 16
F_ALL = 31


# --- field checks -----------------------------------------------------------


def _int(v: object, lo: int, hi: int, name: str) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise MalformedMessage(f"field {name}: expected an integer in [{lo}, {hi}]")
    return v


def _bool(v: object, name: str) -> bool:
    if type(v) is not bool:
        raise MalformedMessage(f"field {name}: expected a boolean")
    return v


def _bin(v: object, lo: int, hi: int, name: str) -> bytes:
    if type(v) is not bytes or not lo <= len(v) <= hi:
        raise MalformedMessage(f"field {name}: expected {lo}..{hi} bytes")
    return v


def _text(v: object, name: str, max_len: int = MAX_TEXT) -> str:
    if type(v) is not str or len(v) > max_len:
        raise MalformedMessage(f"field {name}: expected a string of at most {max_len} chars")
    return v


def _match(v: object, pattern: re.Pattern[str], name: str) -> str:
    if type(v) is not str or not pattern.match(v):
        raise MalformedMessage(f"field {name}: does not match {pattern.pattern}")
    return v


def _name_or_nil(v: object, name: str) -> str | None:
    return None if v is None else _match(v, NAME_RE, name)


def _fields(body: list[Any], n: int, msg: str) -> list[Any]:
    if len(body) != n:
        raise MalformedMessage(f"{msg}: expected {n} fields, got {len(body)}")
    return body


# --- messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Sent encrypted inside the handshake: who the sender is and what it accepts."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    node: str
    boot_id: bytes  # 16 random bytes per process start
    tag: int  # the node's epoch tag (1..65535), unique in the cluster
    window: int  # replication bytes the sender accepts unacknowledged
    listen: str  # informational: the sender's configured link address

    def body(self) -> list[Any]:
        return [self.node, self.boot_id, self.tag, self.window, self.listen]

    @classmethod
    def from_body(cls, b: list[Any]) -> Hello:
        _fields(b, 5, "HELLO")
        return cls(
            _match(b[0], NAME_RE, "node"),
            _bin(b[1], 16, 16, "boot_id"),
            _int(b[2], 1, 0xFFFF, "tag"),
            _int(b[3], 4096, U32, "window"),
            _text(b[4], "listen", 64),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness plus everything the election needs about the sender."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    role: Role
    primary: str | None  # the primary the sender follows (itself if primary)
    priority: int
    uptime_ms: int
    monitors_down: int
    flags: int
    applied_epoch: int  # newest version the sender holds
    applied_seq: int
    t_ms: int  # sender's monotonic clock, echoed back for RTT and lease checks
    echo_ms: int  # the newest t_ms the sender received from the receiver (0: none)
    echo_hold_ms: int  # how long the sender held that echo before sending
    # A primary: the version it held from its predecessor when it promoted
    # ((0, 0) after a cold start).  Tells a joining node whether its data shares
    # this primary's history (same predecessor epoch) and what to merge.
    base_epoch: int = 0
    base_seq: int = 0

    def body(self) -> list[Any]:
        return [
            int(self.role),
            self.primary,
            self.priority,
            self.uptime_ms,
            self.monitors_down,
            self.flags,
            self.applied_epoch,
            self.applied_seq,
            self.t_ms,
            self.echo_ms,
            self.echo_hold_ms,
            self.base_epoch,
            self.base_seq,
        ]

    @classmethod
    def from_body(cls, b: list[Any]) -> Heartbeat:
        _fields(b, 13, "HEARTBEAT")
        return cls(
            Role(_int(b[0], 0, 2, "role")),
            _name_or_nil(b[1], "primary"),
            _int(b[2], 0, 255, "priority"),
            _int(b[3], 0, U64, "uptime_ms"),
            _int(b[4], 0, 255, "monitors_down"),
            _int(b[5], 0, F_ALL, "flags"),
            _int(b[6], 0, U64, "applied_epoch"),
            _int(b[7], 0, U64, "applied_seq"),
            _int(b[8], 0, U64, "t_ms"),
            _int(b[9], 0, U64, "echo_ms"),
            _int(b[10], 0, U32, "echo_hold_ms"),
            _int(b[11], 0, U64, "base_epoch"),
            _int(b[12], 0, U64, "base_seq"),
        )


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """A secondary asks its primary for a snapshot followed by the change stream.

    With ``resume_epoch`` set it asks to resume instead (PROTOCOL.md 10.7): it
    still holds what session ``resume_snap`` of that epoch delivered, either
    the whole snapshot (``resume_kind`` 0) or the snapshot up to record
    ``resume_after`` of kind ``resume_kind`` (None: none of that kind yet).
    The short form (``resume_epoch`` 0) is encoded as one field, as before.
    """

    TYPE: ClassVar[MsgType] = MsgType.SYNC_REQUEST
    reason: str
    resume_epoch: int = 0
    resume_snap: int = 0
    resume_kind: int = 0
    resume_after: str | None = None

    def body(self) -> list[Any]:
        if not self.resume_epoch:
            return [self.reason]
        return [
            self.reason,
            self.resume_epoch,
            self.resume_snap,
            self.resume_kind,
            self.resume_after,
        ]

    @classmethod
    def from_body(cls, b: list[Any]) -> SyncRequest:
        if len(b) == 1:
            return cls(_text(b[0], "reason", 64))
        _fields(b, 5, "SYNC_REQUEST")
        kind = _int(b[3], 0, 255, "resume_kind")
        after = b[4]
        if kind and kind not in KIND_BY_CODE:
            raise MalformedMessage(f"SYNC_REQUEST: unknown record kind code {kind}")
        if after is not None and (
            not kind or type(after) is not str or not 0 < len(after) <= MAX_ID_LEN
        ):
            raise MalformedMessage(
                f"field resume_after: expected nil or (with a kind) 1..{MAX_ID_LEN} chars"
            )
        return cls(
            _text(b[0], "reason", 64),
            _int(b[1], 1, U64, "resume_epoch"),
            _int(b[2], 0, U32, "resume_snap"),
            kind,
            after,
        )


@dataclass(frozen=True, slots=True)
class BulkStart:
    TYPE: ClassVar[MsgType] = MsgType.BULK_START
    snap_id: int
    records: int  # how many records the primary holds (a progress hint, not a promise)

    def body(self) -> list[Any]:
        return [self.snap_id, self.records]

    @classmethod
    def from_body(cls, b: list[Any]) -> BulkStart:
        _fields(b, 2, "BULK_START")
        return cls(_int(b[0], 0, U32, "snap_id"), _int(b[1], 0, U64, "records"))


class Change(NamedTuple):
    """One record version: ``blob`` is the record's msgpack encoding, None for a tombstone."""

    kind: int
    id: str
    epoch: int
    seq: int
    blob: bytes | None

    def __repr__(self) -> str:  # blobs hold key material: never print them
        size = "tombstone" if self.blob is None else f"{len(self.blob)} bytes"
        return f"Change(kind={self.kind}, id={self.id!r}, v={self.epoch}.{self.seq}, {size})"


_new_tuple = tuple.__new__


@dataclass(frozen=True, slots=True)
class Records:
    TYPE: ClassVar[MsgType] = MsgType.RECORDS
    phase: Phase
    changes: tuple[Change, ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"Records(phase={self.phase.name}, changes={len(self.changes)})"

    def body(self) -> list[Any]:
        flat: list[Any] = [int(self.phase)]
        for c in self.changes:
            flat.extend(c)
        return flat

    @classmethod
    def from_body(cls, b: list[Any]) -> Records:
        if not b or (len(b) - 1) % 5:
            raise MalformedMessage("RECORDS: expected a phase and groups of 5 fields")
        phase = Phase(_int(b[0], 0, 2, "phase"))
        changes: list[Change] = []
        append = changes.append
        it = iter(b)
        next(it)
        # The hot loop of a secondary (once per replicated record): checks inline.
        # msgpack integers never exceed 2^64-1, so the u64 checks are ">= 0".
        for kind, rid, epoch, seq, blob in zip(it, it, it, it, it, strict=True):
            if type(kind) is not int or kind not in KIND_BY_CODE:
                raise MalformedMessage(f"RECORDS: unknown record kind code {kind!r}")
            if type(rid) is not str or not 0 < len(rid) <= MAX_ID_LEN:
                raise MalformedMessage(f"RECORDS: record id must be 1..{MAX_ID_LEN} chars")
            if type(epoch) is not int or epoch < 0:
                _int(epoch, 0, U64, "epoch")
            if type(seq) is not int or seq < 0:
                _int(seq, 0, U64, "seq")
            if blob is not None and (
                type(blob) is not bytes or not 0 < len(blob) <= MAX_RECORD_BYTES
            ):
                _bin(blob, 1, MAX_RECORD_BYTES, "blob")
            append(_new_tuple(Change, (kind, rid, epoch, seq, blob)))
        return cls(phase, tuple(changes))


@dataclass(frozen=True, slots=True)
class BulkEnd:
    TYPE: ClassVar[MsgType] = MsgType.BULK_END
    snap_id: int
    count: int  # records sent in this snapshot
    epoch: int  # the snapshot covers every change up to this version
    seq: int

    def body(self) -> list[Any]:
        return [self.snap_id, self.count, self.epoch, self.seq]

    @classmethod
    def from_body(cls, b: list[Any]) -> BulkEnd:
        _fields(b, 4, "BULK_END")
        return cls(
            _int(b[0], 0, U32, "snap_id"),
            _int(b[1], 0, U64, "count"),
            _int(b[2], 0, U64, "epoch"),
            _int(b[3], 0, U64, "seq"),
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative: every frame up to ``frame`` (the sender's nonce) has been applied."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    frame: int

    def body(self) -> list[Any]:
        return [self.frame]

    @classmethod
    def from_body(cls, b: list[Any]) -> Ack:
        _fields(b, 1, "ACK")
        return cls(_int(b[0], 0, U64, "frame"))


@dataclass(frozen=True, slots=True)
class Handover:
    """The primary hands its role to ``target``, which holds every change up to (epoch, seq)."""

    TYPE: ClassVar[MsgType] = MsgType.HANDOVER
    target: str
    epoch: int
    seq: int
    reason: str

    def body(self) -> list[Any]:
        return [self.target, self.epoch, self.seq, self.reason]

    @classmethod
    def from_body(cls, b: list[Any]) -> Handover:
        _fields(b, 4, "HANDOVER")
        return cls(
            _match(b[0], NAME_RE, "target"),
            _int(b[1], 0, U64, "epoch"),
            _int(b[2], 0, U64, "seq"),
            _text(b[3], "reason", 64),
        )


@dataclass(frozen=True, slots=True)
class Goodbye:
    """An authenticated close: the sender is leaving or refuses the link, and says why."""

    TYPE: ClassVar[MsgType] = MsgType.GOODBYE
    code: str
    text: str

    def body(self) -> list[Any]:
        return [self.code, self.text]

    @classmethod
    def from_body(cls, b: list[Any]) -> Goodbye:
        _fields(b, 2, "GOODBYE")
        return cls(_match(b[0], CODE_RE, "code"), _text(b[1], "text"))


@dataclass(frozen=True, slots=True)
class MergeEnd:
    """End of a former primary's merge offer; ``epoch`` is the epoch it was primary in."""

    TYPE: ClassVar[MsgType] = MsgType.MERGE_END
    count: int
    epoch: int

    def body(self) -> list[Any]:
        return [self.count, self.epoch]

    @classmethod
    def from_body(cls, b: list[Any]) -> MergeEnd:
        _fields(b, 2, "MERGE_END")
        return cls(_int(b[0], 0, U64, "count"), _int(b[1], 0, U64, "epoch"))


Message = (
    Hello
    | Heartbeat
    | SyncRequest
    | BulkStart
    | Records
    | BulkEnd
    | Ack
    | Handover
    | Goodbye
    | MergeEnd
)

_DECODERS: dict[int, Any] = {
    int(cls.TYPE): cls.from_body
    for cls in (
        Hello,
        Heartbeat,
        SyncRequest,
        BulkStart,
        Records,
        BulkEnd,
        Ack,
        Handover,
        Goodbye,
        MergeEnd,
    )
}

# Frames that carry replication data: the receiver acknowledges them and the
# sender counts them against the receiver's window.
ACK_ELICITING = (Records, BulkStart, BulkEnd, MergeEnd)


def encode(msg: Message, epoch: int) -> bytes:
    body: bytes = msgpack.packb(msg.body(), use_bin_type=True)
    return HEADER.pack(PROTOCOL_VERSION, msg.TYPE, epoch) + body


def decode(data: bytes) -> tuple[int, Message]:
    """Returns (sender epoch, message); raises only ProtocolError subclasses."""
    if len(data) < HEADER_LEN + 1:
        raise MalformedMessage(f"message of {len(data)} bytes is shorter than its header")
    version, mtype, epoch = HEADER.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"message version {version}, this node speaks {PROTOCOL_VERSION}")
    decoder = _DECODERS.get(mtype)
    if decoder is None:
        raise UnknownMessageType(f"unknown message type {mtype}")
    try:
        body = msgpack.unpackb(data[HEADER_LEN:], **_unpack_limits)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedMessage(
            f"{MsgType(mtype).name}: undecodable body ({type(exc).__name__})"
        ) from None
    if type(body) is not list:
        raise MalformedMessage(f"{MsgType(mtype).name}: body is not an array")
    try:
        msg: Message = decoder(body)
    except ValueError as exc:  # enum conversion of an in-range but unassigned value
        raise MalformedMessage(f"{MsgType(mtype).name}: {exc}") from None
    return epoch, msg
