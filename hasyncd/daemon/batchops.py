"""Batch ops as the API's batch handler sees them: decoded once, straight into Structs.

NDJSON lines decode with msgspec into an ``Op`` whose ``record`` stays raw JSON
until its kind decodes it (``Kind.parse_json``, straight into the kind's API
Struct); a line nested deeper than ``MAX_NESTING`` (cheaply bounded by its
bracket count) goes through ``bodies.decode_json``, which refuses it with
``nesting_too_deep``.  msgpack batches use ``bodies.iter_msgpack_batch``.  Results are
encoded one by one, so a large batch keeps bytes, not dicts, until it answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from hasyncd.daemon.bodies import (
    MAX_BATCH_OPS,
    MAX_NESTING,
    BadLine,
    decode_json,
    ndjson_lines,
)
from hasyncd.errors import ApiError, HasyncdError


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


def count_ndjson_ops(raw: bytes) -> int:
    """The number of ops (non-blank lines); 413 ``batch_too_large`` past MAX_BATCH_OPS."""
    n = 0
    for _ in ndjson_lines(raw):
        n += 1
        if n > MAX_BATCH_OPS:
            raise ApiError(413, "batch_too_large", f"more than {MAX_BATCH_OPS} ops")
    return n


def iter_ndjson_ops(raw: bytes) -> Iterator[Op | OpError | BadLine | Any]:
    """Each line as an ``Op``, an ``OpError``, a ``BadLine``, or (deep lines) a decoded value."""
    for n, line in enumerate(ndjson_lines(raw), 1):
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
