"""Batch ops as the API's batch handler sees them: decoded once, straight into Structs.

The common NDJSON line, a put of a well-formed record of a replicated kind,
decodes in one pass into a put Struct of its kind (``PUT_KINDS``: ``op`` is
"put", ``kind`` the tag, ``record`` the kind's API Struct).  Any other line
fails that decode and takes the general path, exactly as before: an ``Op``
whose ``record`` stays raw JSON until its kind decodes it
(``Kind.parse_json``); a line nested deeper than ``MAX_NESTING`` (cheaply
bounded by its bracket count) goes through ``bodies.decode_json``, which
refuses it with ``nesting_too_deep``.  (A put the one-pass decode accepts
nests no deeper than its kind's schema, far below ``MAX_NESTING``.)  msgpack
batches the same way (``iter_msgpack_ops``): each op's span is found with the
unpacker's ``skip``; a well-formed put decodes straight into its put Struct,
any other op (or a body refused as a whole) is read as by
``bodies.iter_msgpack_batch``.  Results are encoded one by one, so a large
batch keeps bytes, not dicts, until it answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, Literal, Union

import msgspec

from hasyncd.daemon.bodies import (
    MAX_BATCH_OPS,
    MAX_NESTING,
    MSGPACK_ERRORS,
    BadLine,
    decode_json,
    decode_msgpack_op,
    iter_msgpack_batch,
    msgpack_unpacker,
    ndjson_lines,
)
from hasyncd.errors import ApiError, HasyncdError
from hasyncd.records import KINDS, Kind


class Op(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One NDJSON batch op; ``record`` stays raw JSON until its kind decodes it."""

    op: str
    kind: str
    id: str
    record: msgspec.Raw = msgspec.Raw(b"")


class OpError:
    """A line that is JSON but not an op: reported in its result slot."""

    def __init__(self, error: HasyncdError) -> None:
        self.error = error


_op_decoder = msgspec.json.Decoder(Op)


def _put_structs(prefix: str, record_type: Callable[[Kind], type]) -> dict[type, str]:
    """One put Struct per replicated kind, tagged by "kind": type -> kind name."""
    return {
        msgspec.defstruct(
            f"{prefix}_{name}",
            [("op", Literal["put"]), ("id", str), ("record", record_type(kind))],
            tag_field="kind",
            tag=name,
            forbid_unknown_fields=True,
            gc=False,  # strings and a gc=False record Struct: no cycles, no collector work
        ): name
        for name, kind in KINDS.items()
    }


# msgpack puts decode into the kind's API Struct; NDJSON puts into the one
# whose lists stay JSON text (``Struct.api_raw``), converted by a cache lookup.
_MSGPACK_PUTS = _put_structs("Put", lambda kind: kind.schema.api)
_JSON_PUTS = _put_structs("PutText", lambda kind: kind.schema.api_raw)
PUT_KINDS: dict[type, str] = {**_MSGPACK_PUTS, **_JSON_PUTS}
_put_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Union[tuple(_JSON_PUTS)])  # noqa: UP007
_put_msgpack_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    Union[tuple(_MSGPACK_PUTS)]  # noqa: UP007
)


# Lines counted between two yields of ``ndjson_op_counts`` (~1.5 ms of work here).
COUNT_LINES = 4096


def ndjson_op_counts(raw: bytes) -> Iterator[int]:
    """The ops (non-blank lines) counted so far, after each COUNT_LINES lines and at the end;
    413 ``batch_too_large`` past MAX_BATCH_OPS.

    A caller yields to the loop between steps: walking MAX_BATCH_OPS lines
    in one go held it 70-100 ms.
    """
    lines = ndjson_lines(raw)
    n = 0
    while True:
        step = sum(1 for _ in islice(lines, COUNT_LINES))
        n += step
        if n > MAX_BATCH_OPS:
            raise ApiError(413, "batch_too_large", f"more than {MAX_BATCH_OPS} ops")
        yield n
        if step < COUNT_LINES:
            return


def count_ndjson_ops(raw: bytes) -> int:
    """The number of ops (non-blank lines); 413 ``batch_too_large`` past MAX_BATCH_OPS."""
    n = 0
    for n in ndjson_op_counts(raw):  # noqa: B007 - the last count is the answer
        pass
    return n


def iter_ndjson_ops(raw: bytes) -> Iterator[Op | OpError | BadLine | Any]:
    """Each line as a put Struct (``PUT_KINDS``), an ``Op``, an ``OpError``, a ``BadLine``,
    or (deep lines) a decoded value.

    Lines are split as ``ndjson_lines`` does (on "\n"; blank lines skipped and
    not numbered), but a put is decoded from a view of the body: only the
    other lines are copied out.
    """
    view = memoryview(raw)
    find, size = raw.find, len(raw)
    decode = _put_decoder.decode
    pos = n = 0
    while pos < size:
        end = find(b"\n", pos)
        if end < 0:
            end = size
        start, pos = pos, end + 1
        try:
            put = decode(view[start:end])
        except (msgspec.MsgspecError, RecursionError):
            put = None  # not a well-formed put (or a blank line): the general path says why
        if put is not None:
            n += 1
            yield put
            continue
        line = raw[start:end]
        if not line.strip():
            continue
        n += 1
        if line.count(b"[") + line.count(b"{") > MAX_NESTING:
            try:
                yield decode_json(line)  # the slow path that measures the depth
            except ApiError as exc:
                yield BadLine(n, exc)
            continue
        try:
            yield _op_decoder.decode(line)
        except msgspec.ValidationError as exc:
            yield OpError(_op_error(exc))
        except msgspec.DecodeError as exc:
            yield BadLine(n, ApiError(400, "invalid_json", f"body is not valid JSON: {exc}"))


def iter_msgpack_ops(raw: bytes) -> Iterator[Any]:
    """The ops of a msgpack batch body: put Structs, or what ``iter_msgpack_batch`` yields.

    Refuses (ApiError) exactly what ``iter_msgpack_batch`` refuses: when the
    array header or an op's msgpack is unusable, it is the one that raises.
    """
    unpacker = msgpack_unpacker(raw)
    try:
        count = unpacker.read_array_header()
    except MSGPACK_ERRORS:
        count = -1
    if not 0 <= count <= MAX_BATCH_OPS:
        yield from iter_msgpack_batch(raw)  # raises the body's refusal
        return
    view = memoryview(raw)
    start = unpacker.tell()
    for i in range(count):
        try:
            unpacker.skip()
        except MSGPACK_ERRORS:  # op i is malformed: the general reader refuses it
            yield from islice(iter_msgpack_batch(raw), i, None)
            return
        end = unpacker.tell()
        data = view[start:end]
        start = end
        try:
            put = _put_msgpack_decoder.decode(data)
        except (msgspec.MsgspecError, RecursionError):
            put = None  # not a well-formed put: read as the general reader does
        yield put if put is not None else decode_msgpack_op(data, i)
    if unpacker.tell() != len(raw):
        raise ApiError(400, "invalid_batch", "data after the msgpack array of ops")


def _op_error(exc: msgspec.ValidationError) -> ApiError:
    text = str(exc)
    if text.startswith("Object contains unknown field"):
        name = text.split("`")[1][:64] if "`" in text else "?"
        return ApiError(400, "unknown_field", f"unknown op field {name}", field=name)
    if text.startswith("Expected `object`"):
        return ApiError(400, "invalid_op", "an op is an object")
    return ApiError(400, "invalid_op", 'an op needs "op" ("put"|"delete"), "kind" and "id"')


def msgpack_array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def batch_reply(parts: list[bytes], replicated: bool | None, use_msgpack: bool) -> bytes:
    """``{"results": [...], "replicated"?: bool}`` from results already encoded."""
    if use_msgpack:
        body = (b"\x82" if replicated is not None else b"\x81") + b"\xa7results"
        body += msgpack_array_header(len(parts)) + b"".join(parts)
        if replicated is not None:
            body += b"\xaareplicated" + (b"\xc3" if replicated else b"\xc2")
        return body
    body = b'{"results":[' + b",".join(parts) + b"]"
    if replicated is not None:
        body += b',"replicated":' + (b"true" if replicated else b"false")
    return body + b"}"
