"""Typed link messages: frozen msgspec Structs, decoded straight from the plaintext.

A message's plaintext is a fixed 10-byte header followed by one msgpack array:

    u8 protocol version | u8 message type | u64 sender epoch | msgpack [field, ...]

Each message type is a frozen ``array_like`` msgspec Struct: its fields, in
order, are the positional array of proto/PROTOCOL.md section 7.5, and their
types and ranges are declared on the fields (``Annotated`` constraints), so
msgspec checks them in C while it decodes.  Maps, extension types, floats,
booleans for integers, missing and extra fields are refused; raw msgpack
values never leave this module.

RECORDS is the one body the Struct layout cannot express: a phase followed by
flat groups of five fields.  Its groups are checked against ``Change``, a
NamedTuple carrying the same kind of constraints, by one ``msgspec.convert``
over the whole message.  Record blobs inside RECORDS are opaque here; the
replication core validates them against the record schemas before applying
them.

Every failure is a ``ProtocolError`` subclass naming the message and field
and never echoing a value.
"""

from __future__ import annotations

import re
import struct
from enum import IntEnum
from itertools import chain
from typing import Annotated, Any, ClassVar, NamedTuple

import msgspec
from msgspec import Meta

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
# refuses a larger array from its header, before anything is allocated.
MAX_CHANGES = 4096
MAX_ARRAY_LEN = 1 + 5 * MAX_CHANGES
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,32}\Z")
CODE_RE = re.compile(r"[a-z0-9_]{1,32}\Z")
# Free text (GOODBYE's explanation): logged, so bounded.
MAX_TEXT = 256
# Short free text: HELLO's listen address, SYNC_REQUEST's and HANDOVER's reason.
MAX_SHORT_TEXT = 64


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


# --- field types --------------------------------------------------------------

UInt8 = Annotated[int, Meta(ge=0, le=255)]
UInt16 = Annotated[int, Meta(ge=0, le=0xFFFF)]
UInt32 = Annotated[int, Meta(ge=0, le=U32)]
# msgpack integers never exceed 2^64-1 (and msgspec bounds only fit int64).
UInt64 = Annotated[int, Meta(ge=0)]
# msgspec applies a pattern with re.search: anchor it at the start too.
Name = Annotated[str, Meta(pattern="^" + NAME_RE.pattern)]
Code = Annotated[str, Meta(pattern="^" + CODE_RE.pattern)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
ShortText = Annotated[str, Meta(max_length=MAX_SHORT_TEXT)]

if sorted(KIND_BY_CODE) != list(range(1, len(KIND_BY_CODE) + 1)):  # pragma: no cover
    raise RuntimeError("record kind codes must be 1..n for the RECORDS range check")
KindCode = Annotated[int, Meta(ge=1, le=len(KIND_BY_CODE))]
RecordId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
Blob = Annotated[bytes, Meta(min_length=1, max_length=MAX_RECORD_BYTES)]


class _Message(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A message whose body is the array of its fields, in declaration order.

    A field with a default is a convenience for the constructor only: on the
    wire every field is required (proto/PROTOCOL.md: no extensibility inside
    version 1).
    """

    TYPE: ClassVar[MsgType]

    def body(self) -> list[Any]:
        return list(msgspec.structs.astuple(self))


# --- messages -----------------------------------------------------------------


class Hello(_Message, frozen=True):
    """Sent encrypted inside the handshake: who the sender is and what it accepts."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    node: Name
    boot_id: Annotated[bytes, Meta(min_length=16, max_length=16)]  # random per process start
    tag: Annotated[int, Meta(ge=1, le=0xFFFF)]  # the node's epoch tag, unique in the cluster
    window: Annotated[int, Meta(ge=4096, le=U32)]  # replication bytes accepted unacknowledged
    listen: ShortText  # informational: the sender's configured link address


class Heartbeat(_Message, frozen=True):
    """Liveness plus everything the election needs about the sender."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    role: Role
    primary: Name | None  # the primary the sender follows (itself if primary)
    priority: UInt8
    uptime_ms: UInt64
    monitors_down: UInt8
    flags: Annotated[int, Meta(ge=0, le=F_ALL)]
    applied_epoch: UInt64  # newest version the sender holds
    applied_seq: UInt64
    t_ms: UInt64  # sender's monotonic clock, echoed back for RTT and lease checks
    echo_ms: UInt64  # the newest t_ms the sender received from the receiver (0: none)
    echo_hold_ms: UInt32  # how long the sender held that echo before sending
    # A primary: the version it held from its predecessor when it promoted
    # ((0, 0) after a cold start).  Tells a joining node whether its data shares
    # this primary's history (same predecessor epoch) and what to merge.
    base_epoch: UInt64 = 0
    base_seq: UInt64 = 0


class SyncRequest(_Message, frozen=True):
    """A secondary asks its primary for a snapshot followed by the change stream.

    With ``resume_epoch`` set it asks to resume instead (PROTOCOL.md 10.7): it
    still holds what session ``resume_snap`` of that epoch delivered, either
    the whole snapshot (``resume_kind`` 0) or the snapshot up to record
    ``resume_after`` of kind ``resume_kind`` (None: none of that kind yet).
    Two forms on the wire: ``[reason]`` (``resume_epoch`` 0, encoded as
    before the resume form existed) and all five fields.
    """

    TYPE: ClassVar[MsgType] = MsgType.SYNC_REQUEST
    reason: ShortText
    resume_epoch: Annotated[int, Meta(ge=1)] = 0
    resume_snap: UInt32 = 0
    resume_kind: Annotated[int, Meta(ge=0, le=len(KIND_BY_CODE))] = 0
    resume_after: RecordId | None = None

    def body(self) -> list[Any]:
        fields = list(msgspec.structs.astuple(self))
        return fields if self.resume_epoch else fields[:1]


class BulkStart(_Message, frozen=True):
    TYPE: ClassVar[MsgType] = MsgType.BULK_START
    snap_id: UInt32
    records: UInt64  # how many records the primary holds (a progress hint, not a promise)


class Change(NamedTuple):
    """One record version: ``blob`` is the record's msgpack encoding, None for a tombstone."""

    kind: KindCode
    id: RecordId
    epoch: UInt64
    seq: UInt64
    blob: Blob | None

    def __repr__(self) -> str:  # blobs hold key material: never print them
        size = "tombstone" if self.blob is None else f"{len(self.blob)} bytes"
        return f"Change(kind={self.kind}, id={self.id!r}, v={self.epoch}.{self.seq}, {size})"


_CHANGES = tuple[Change, ...]
_PHASES = {int(p): p for p in Phase}


class Records(msgspec.Struct, frozen=True):
    """Record versions: the body is the phase, then each change's five fields, flat."""

    TYPE: ClassVar[MsgType] = MsgType.RECORDS
    phase: Phase
    changes: tuple[Change, ...]

    def __repr__(self) -> str:
        return f"Records(phase={self.phase.name}, changes={len(self.changes)})"

    def body(self) -> list[Any]:
        return [int(self.phase), *chain.from_iterable(self.changes)]


class BulkEnd(_Message, frozen=True):
    TYPE: ClassVar[MsgType] = MsgType.BULK_END
    snap_id: UInt32
    count: UInt64  # records sent in this snapshot
    epoch: UInt64  # the snapshot covers every change up to this version
    seq: UInt64


class Ack(_Message, frozen=True):
    """Cumulative: every frame up to ``frame`` (the sender's nonce) has been applied."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    frame: UInt64


class Handover(_Message, frozen=True):
    """The primary hands its role to ``target``, which holds every change up to (epoch, seq)."""

    TYPE: ClassVar[MsgType] = MsgType.HANDOVER
    target: Name
    epoch: UInt64
    seq: UInt64
    reason: ShortText


class Goodbye(_Message, frozen=True):
    """An authenticated close: the sender is leaving or refuses the link, and says why."""

    TYPE: ClassVar[MsgType] = MsgType.GOODBYE
    code: Code
    text: Text


class MergeEnd(_Message, frozen=True):
    """End of a former primary's merge offer; ``epoch`` is the epoch it was primary in."""

    TYPE: ClassVar[MsgType] = MsgType.MERGE_END
    count: UInt64
    epoch: UInt64


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

_STRUCTS: tuple[type[_Message], ...] = (
    Hello,
    Heartbeat,
    SyncRequest,
    BulkStart,
    BulkEnd,
    Ack,
    Handover,
    Goodbye,
    MergeEnd,
)
_DECODERS: dict[int, Any] = {int(c.TYPE): msgspec.msgpack.Decoder(c) for c in _STRUCTS}
_FIELDS: dict[int, tuple[str, ...]] = {int(c.TYPE): c.__struct_fields__ for c in _STRUCTS}
# Types whose Struct has defaults: msgspec would accept their trailing fields
# missing, so their array length is checked from the body's header.  Every
# field is required, except SYNC_REQUEST's four resume fields (both or none).
_ARITY: dict[int, tuple[int, ...]] = {
    int(c.TYPE): (len(c.__struct_fields__),) for c in _STRUCTS if c.__struct_defaults__
}
_ARITY[MsgType.SYNC_REQUEST] = (1, 5)
_untyped = msgspec.msgpack.Decoder()
_encode = msgspec.msgpack.Encoder().encode

# Frames that carry replication data: the receiver acknowledges them and the
# sender counts them against the receiver's window.
ACK_ELICITING = (Records, BulkStart, BulkEnd, MergeEnd)


def encode(msg: Message, epoch: int) -> bytes:
    head = HEADER.pack(PROTOCOL_VERSION, msg.TYPE, epoch)
    if type(msg) is Records:
        return head + _encode([int(msg.phase), *chain.from_iterable(msg.changes)])
    if type(msg) is SyncRequest and not msg.resume_epoch:
        return head + _encode([msg.reason])  # the short form
    return head + _encode(msg)


def decode(data: bytes) -> tuple[int, Message]:
    """Returns (sender epoch, message); raises only ProtocolError subclasses."""
    if len(data) < HEADER_LEN + 1:
        raise MalformedMessage(f"message of {len(data)} bytes is shorter than its header")
    version, mtype, epoch = HEADER.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"message version {version}, this node speaks {PROTOCOL_VERSION}")
    if mtype == MsgType.RECORDS:
        return epoch, _decode_records(data)
    decoder = _DECODERS.get(mtype)
    if decoder is None:
        raise UnknownMessageType(f"unknown message type {mtype}")
    arity = _ARITY.get(mtype)
    if arity is not None and _array_len(data) not in arity:
        n = " or ".join(map(str, arity))
        raise MalformedMessage(f"{MsgType(mtype).name}: expected an array of {n} fields")
    try:
        msg: Message = decoder.decode(data[HEADER_LEN:])
    except msgspec.ValidationError as exc:
        raise _invalid(MsgType(mtype).name, exc, _FIELDS[mtype]) from None
    except msgspec.MsgspecError as exc:
        raise _undecodable(MsgType(mtype).name, exc) from None
    if type(msg) is SyncRequest and msg.resume_after is not None and not msg.resume_kind:
        raise MalformedMessage("SYNC_REQUEST: field resume_after: must be nil with resume_kind 0")
    return epoch, msg


def _decode_records(data: bytes) -> Records:
    n = _array_len(data)
    if n is None or n > MAX_ARRAY_LEN or (n - 1) % 5:
        raise MalformedMessage(
            f"RECORDS: expected an array of a phase and at most {MAX_CHANGES} groups of 5 fields"
        )
    try:
        body: list[Any] = _untyped.decode(data[HEADER_LEN:])
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise _undecodable("RECORDS", exc) from None
    phase = body[0]
    if type(phase) is not int or phase not in _PHASES:
        raise MalformedMessage("RECORDS: field phase: expected 0, 1 or 2")
    it = iter(body)
    next(it)
    try:
        # One C-level pass checks every group against Change's field types.
        # builtin_types: a string is never taken as base64 for a blob.
        changes = msgspec.convert(
            list(zip(it, it, it, it, it, strict=True)), _CHANGES, builtin_types=(bytes,)
        )
    except msgspec.ValidationError as exc:
        raise _invalid("RECORDS", exc, Change._fields) from None
    return Records(_PHASES[phase], changes)


def _array_len(data: bytes) -> int | None:
    """The element count of the msgpack array the body starts with (None: not an array)."""
    b = data[HEADER_LEN]
    if 0x90 <= b <= 0x9F:
        return b & 0x0F
    if b == 0xDC and len(data) >= HEADER_LEN + 3:
        return int.from_bytes(data[HEADER_LEN + 1 : HEADER_LEN + 3], "big")
    if b == 0xDD and len(data) >= HEADER_LEN + 5:
        return int.from_bytes(data[HEADER_LEN + 1 : HEADER_LEN + 5], "big")
    return None


_AT = re.compile(r" - at `\$((?:\[\d+\])*)`\Z")
_INDEX = re.compile(r"\[(\d+)\]")


def _invalid(name: str, exc: msgspec.ValidationError, fields: tuple[str, ...]) -> MalformedMessage:
    """msgspec's message, with the field named and any quoted value left out."""
    text = str(exc)
    where = ""
    m = _AT.search(text)
    if m is not None:
        text = text[: m.start()]
        path = [int(i) for i in _INDEX.findall(m.group(1))]
        if name == "RECORDS" and path:  # [group][field]
            where = f" change {path[0]}:"
            path = path[1:]
        if path:
            where += f" field {fields[path[0]] if path[0] < len(fields) else path[0]}:"
    if text.startswith("Invalid enum value"):  # msgspec quotes the value
        text = "expected one of the values the specification lists"
    return MalformedMessage(f"{name}:{where} {text[:1].lower()}{text[1:]}")


def _undecodable(name: str, exc: Exception) -> MalformedMessage:
    return MalformedMessage(f"{name}: undecodable body ({type(exc).__name__})")
