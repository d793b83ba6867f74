"""What the local API reads from a request: its body, decoded and bounded, and its headers.

A body is read whole however it arrives (segments, chunks) but never past its
limit; JSON and msgpack are decoded with bounded nesting, a batch with a
bounded op count.  Every refusal is an ``ApiError`` (``hasyncd.errors``)
carrying the HTTP status and the error code; ``hasyncd.daemon.api`` answers and counts it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import msgpack
from aiohttp import web

from hasyncd.daemon.apilimits import BODY_TIMEOUT_S
from hasyncd.errors import ApiError

MAX_BATCH_OPS = 200_000  # ops per batch request
# Containers nested inside one op or record body.  The deepest legal op nests
# 4 (op > record > selectors > selector); 32 leaves room for new kinds and
# stays far below Python's recursion limit (1000), so decoding and
# validation never recurse deep enough to raise RecursionError.
MAX_NESTING = 32
# Event ids are the hub's u64 sequence numbers: at most 20 ASCII digits.
MAX_EVENT_ID = 2**64 - 1


def last_event_id(value: str | None) -> int | None:
    """The Last-Event-ID header as an event id; 400 for anything but ASCII digits of a u64."""
    if not value:
        return None
    # str.isdigit() is also true for "²" or Arabic-Indic digits, which int()
    # rejects or accepts: only 1..20 ASCII digits are an event id.
    if not (len(value) <= len(str(MAX_EVENT_ID)) and value.isascii() and value.isdigit()):
        raise ApiError(
            400, "invalid_last_event_id", "Last-Event-ID must be an event id (ASCII digits)"
        )
    last_id = int(value)
    if last_id > MAX_EVENT_ID:
        raise ApiError(400, "invalid_last_event_id", f"Last-Event-ID exceeds {MAX_EVENT_ID}")
    return last_id


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"body exceeds {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, however many segments or chunks it arrives in.

    Reads until EOF, never more than ``limit + 1`` bytes: a larger body is
    refused with 413 ``body_too_large`` without buffering the rest of it.
    """
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    buf = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            while True:
                chunk = await request.content.read(limit + 1 - len(buf))
                if not chunk:
                    return bytes(buf)
                buf += chunk
                if len(buf) > limit:
                    raise _too_large(limit)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the body did not arrive within {BODY_TIMEOUT_S:g} s"
        ) from None


def _too_deep() -> ApiError:
    return ApiError(400, "nesting_too_deep", f"nested deeper than {MAX_NESTING} levels")


def _check_depth(value: Any) -> None:
    """Raise ``nesting_too_deep`` past MAX_NESTING (iterative: any depth is safe to walk)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        if depth > MAX_NESTING:
            raise _too_deep()
        stack.extend((x, depth + 1) for x in v)


def decode_json(raw: bytes) -> Any:
    """One JSON document, or the ApiError saying why not (never RecursionError)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    # Depth cannot exceed the number of containers: walk only the bodies that
    # might be too deep, so an ordinary batch pays two byte counts per op.
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING:
        _check_depth(value)
    return value


MSGPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


def iter_msgpack_batch(raw: bytes) -> Iterator[Any]:
    """The ops of a msgpack batch body, decoded one at a time.

    Raises ApiError for a body that cannot be used as a whole (not a msgpack
    array, undecodable msgpack, more than MAX_BATCH_OPS ops, data after the
    array).  The caller runs it to the end once before applying any op.
    (NDJSON bodies: ``hasyncd.daemon.batchops``, over ``ndjson_lines``.)
    """
    unpacker = msgpack_unpacker(raw)
    try:
        count = unpacker.read_array_header()
    except MSGPACK_ERRORS:
        raise ApiError(400, "invalid_batch", "a msgpack batch body is an array of ops") from None
    if count > MAX_BATCH_OPS:
        raise ApiError(413, "batch_too_large", f"more than {MAX_BATCH_OPS} ops")
    for i in range(count):
        try:
            op = unpacker.unpack()
        except MSGPACK_ERRORS as exc:
            raise ApiError(
                400,
                "invalid_msgpack",
                f"op {i} is not valid msgpack: {type(exc).__name__}",
            ) from None
        yield _jsonable(op, 1)
    if unpacker.tell() != len(raw):
        raise ApiError(400, "invalid_batch", "data after the msgpack array of ops")


def msgpack_unpacker(raw: bytes) -> msgpack.Unpacker:
    """An unpacker over a whole msgpack batch body, with the limits every op is read with."""
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=len(raw) + 1, max_ext_len=0
    )
    unpacker.feed(raw)
    return unpacker


def decode_msgpack_op(data: bytes | memoryview, i: int) -> Any:
    """Op ``i`` from its exact msgpack span, as ``iter_msgpack_batch`` yields (or refuses) it."""
    try:
        op = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0)
    except MSGPACK_ERRORS as exc:
        raise ApiError(
            400, "invalid_msgpack", f"op {i} is not valid msgpack: {type(exc).__name__}"
        ) from None
    return _jsonable(op, 1)


def ndjson_lines(raw: bytes) -> Iterator[bytes]:
    """The non-blank lines of an NDJSON body, split on "\n" only (CRLF lines still decode).

    ``bytes.splitlines()`` would also split on other separators, and held the
    event loop for 196 ms on a 60 MB body.
    """
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            end = len(raw)
        line = raw[pos:end]
        pos = end + 1
        if line.strip():
            yield line


class BadLine:
    """An NDJSON line that cannot be decoded: reported in its result slot, the rest applies."""

    def __init__(self, line: int, error: ApiError) -> None:
        self.line = line
        self.error = error


def _jsonable(v: Any, depth: int) -> Any:
    """msgpack batches may carry keys and SPIs as bin: present them as the hex JSON uses."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list | dict) and depth > MAX_NESTING:
        raise _too_deep()
    if isinstance(v, list):
        return [_jsonable(x, depth + 1) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x, depth + 1) for k, x in v.items()}
    return v
