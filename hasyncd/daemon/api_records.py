"""The API's record routes: one record (PUT, GET, DELETE), a page of a kind, and a batch.

Handlers are functions of the API's narrow views (``hasyncd.daemon.views``)
and the request; ``hasyncd.daemon.api.ROUTES`` names them.  A refusal is
raised as an error of ``hasyncd.errors``; the API's error middleware answers
and counts it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
from aiohttp import web

from hasyncd.core.status import version_json
from hasyncd.daemon.batchops import (
    PUT_KINDS,
    Op,
    OpError,
    batch_reply,
    iter_msgpack_ops,
    iter_ndjson_ops,
    ndjson_op_counts,
)
from hasyncd.daemon.bodies import MAX_BATCH_OPS, BadLine, decode_json, read_body
from hasyncd.daemon.httperrors import api_error
from hasyncd.daemon.views import ApiViews
from hasyncd.errors import ApiError, HasyncdError, NotReplicated, UnknownKind, error_body
from hasyncd.policy import shown_id
from hasyncd.records import KINDS, KINDS_BY_CODE, Kind, Record, kind_for_api, kind_for_write
from hasyncd.store import unpack_version
from hasyncd.wire.messages import MAX_ID_LEN

MAX_RECORD_BODY = 64 * 1024  # one record's JSON: far above the largest legal record
MAX_PAGE = 1000  # records per list page: bounds the time one request holds the loop
DEFAULT_PAGE = 100
# Longest stretch a batch request holds the event loop before yielding: far
# below the heartbeat interval, so heartbeats and replication keep flowing.
BATCH_SLICE_S = 0.005
# Validated ops handed to the core in one call: a few milliseconds of store
# and replication work, so one chunk stays well inside a slice.
BATCH_APPLY_CHUNK = 1024
# Bytes of an NDJSON body whose newlines are counted between two slice checks
# (about 0.6 ms of counting on the development machine).
COUNT_STEP = 1 << 20

_MISSING: Any = object()
# The put Structs of kinds the API writes, and their Kind: what ``kind_of`` gives
# them (the kind policy is fixed), looked up once per op instead of checked.
_WRITABLE_PUTS: dict[type, Kind] = {
    t: KINDS[name] for t, name in PUT_KINDS.items() if KINDS[name].api_writable
}
_Chunk = list[tuple[int, str, Record | None]]
_Parts = list[bytes]


class _Version(msgspec.Struct, gc=False):
    epoch: int
    seq: int


class _Result(msgspec.Struct, gc=False):
    """One batch op's success, encoded exactly as the dict ``{"status", "id", "version"}``
    (a Struct encodes in about two thirds of the dict's time)."""

    status: int
    id: str
    version: _Version


def check_id(rid: str) -> None:
    if not 0 < len(rid) <= MAX_ID_LEN or not rid.isprintable():
        raise ApiError(
            400, "invalid_record", "record id must be 1..96 printable characters", field="id"
        )


def kind_of(v: ApiViews, name: str, *, write: bool = False) -> Kind:
    try:
        return kind_for_write(name) if write else kind_for_api(name)
    except NotReplicated as exc:
        if write:
            v.counters.count_not_replicated(exc.kind)
        raise
    except UnknownKind:
        raise ApiError(
            404, "unknown_kind", f"unknown record kind {name[:64]!r}", kind=name[:64]
        ) from None


def _not_found(kind_name: str, rid: str) -> ApiError:
    return ApiError(404, "not_found", f"no {kind_name} {shown_id(kind_name, rid)}")


async def replicated(v: ApiViews, version: int) -> bool | None:
    """In sync mode, wait for the secondaries; None in async mode."""
    cfg = v.config().sync
    if cfg.mode != "sync":
        return None
    ok = await v.waiters.wait(version, cfg.sync_timeout_ms / 1000.0)
    v.counters.count_sync_write(ok)
    return ok


async def put(v: ApiViews, request: web.Request) -> web.Response:
    kind = kind_of(v, request.match_info["kind"], write=True)
    raw = await read_body(request, MAX_RECORD_BODY)
    rid = request.match_info["id"]
    try:  # the common case, one pass: JSON text straight into the kind's API Struct
        record = kind.parse_json(raw, rid)
        check_id(rid)
    except (HasyncdError, RecursionError):  # the general path names every refusal as before
        body = decode_json(raw)
        check_id(rid)
        record = kind.from_json(body, rid)
    result = v.writer.write(record, v.clock())
    status, version = (201 if result.created else 200), result.version
    v.writer.flush()
    out: dict[str, Any] = {"id": rid, "version": version_json(version)}
    ok = await replicated(v, version)
    if ok is not None:
        out["replicated"] = ok
        if not ok:
            status = 202
    return web.json_response(out, status=status)


async def get(v: ApiViews, request: web.Request) -> web.Response:
    kind = kind_of(v, request.match_info["kind"])
    rid = request.match_info["id"]
    check_id(rid)
    entry = v.reader.get(kind.code, rid, time.time())
    if entry is None or entry.blob is None:
        raise _not_found(kind.name, rid)
    return web.json_response(
        {
            "kind": kind.name,
            "id": rid,
            "version": version_json(entry.version),
            "record": v.reader.shown(kind, rid, entry),
        }
    )


async def delete(v: ApiViews, request: web.Request) -> web.Response:
    kind = kind_of(v, request.match_info["kind"], write=True)
    rid = request.match_info["id"]
    check_id(rid)
    result = v.writer.delete(kind.code, rid, v.clock())
    v.writer.flush()
    if result is None:
        raise _not_found(kind.name, rid)
    out: dict[str, Any] = {"id": rid, "version": version_json(result.version)}
    status = 200
    ok = await replicated(v, result.version)
    if ok is not None:
        out["replicated"] = ok
        status = 200 if ok else 202
    return web.json_response(out, status=status)


async def list_kind(v: ApiViews, request: web.Request) -> web.Response:
    kind = kind_of(v, request.match_info["kind"])
    after = request.query.get("after") or None
    try:
        limit = int(request.query.get("limit", DEFAULT_PAGE))
    except ValueError:
        raise ApiError(400, "invalid_query", "limit must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, "invalid_query", f"limit must be in 1..{MAX_PAGE}")
    page = v.reader.page(kind.code, after, limit, time.time())
    items = [
        {"id": rid, "version": version_json(e.version), "record": v.reader.shown(kind, rid, e)}
        for rid, e in page
        if e.blob is not None
    ]
    nxt = page[-1][0] if len(page) == limit else None
    return web.json_response({"kind": kind.name, "items": items, "next": nxt})


async def batch(v: ApiViews, request: web.Request) -> web.StreamResponse:
    """A batch in two passes over the body, each in slices of BATCH_SLICE_S.

    Pass 1 checks the whole body as a batch (NDJSON: at most MAX_BATCH_OPS
    lines; msgpack: framing, nesting, op count, nothing after the array)
    and applies nothing, so a body refused as a whole stores nothing.
    Pass 2 decodes and validates ops a chunk at a time and hands each chunk
    of validated records to the core in one call (one store pass, one
    replication enqueue and flush per chunk); a bad op fails alone.  No
    decoded op outlives its chunk and each result is kept encoded, so a
    large batch leaves the collector nothing to walk.
    """
    use_msgpack = request.content_type in ("application/msgpack", "application/x-msgpack")
    raw = await read_body(request, v.config().api.max_body_mib * 1024 * 1024)
    if use_msgpack:
        async for _ in _sliced(v, iter_msgpack_ops(raw)):
            pass
        ops: Iterator[Any] = iter_msgpack_ops(raw)
        encode: Any = msgspec.msgpack.encode
    else:
        if await _newlines(raw) >= MAX_BATCH_OPS:  # else at most MAX_BATCH_OPS lines: no walk
            async for _ in _sliced(v, ndjson_op_counts(raw)):
                pass
        ops = iter_ndjson_ops(raw)
        encode = msgspec.json.encode
    parts: _Parts = []
    chunk: _Chunk = []
    newest = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BATCH_SLICE_S
    for op in ops:
        try:
            chunk.append(_parse_op(v, op))
        except Exception as exc:  # one op's failure must not abort the rest of the batch
            newest = max(newest, _apply_chunk(v, chunk, parts, encode))
            chunk = []
            parts.append(encode(_op_error(v, exc, op)))
        if len(chunk) >= BATCH_APPLY_CHUNK or loop.time() >= deadline:
            newest = max(newest, _apply_chunk(v, chunk, parts, encode))
            chunk = []
            if loop.time() >= deadline:
                await asyncio.sleep(0)
                deadline = loop.time() + BATCH_SLICE_S
    newest = max(newest, _apply_chunk(v, chunk, parts, encode))
    ok = await replicated(v, newest) if newest else None
    return web.Response(
        body=batch_reply(parts, ok, use_msgpack),
        content_type="application/msgpack" if use_msgpack else "application/json",
    )


async def _newlines(raw: bytes) -> int:
    """How many newlines ``raw`` holds, counted COUNT_STEP bytes at a time between yields.

    ``bytes.count`` walks about 2 GB/s on the development machine: a 64 MiB
    body (the default ``max_body_mib``) counted in one go held the loop
    25-35 ms, five times a batch slice.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BATCH_SLICE_S
    n = 0
    for start in range(0, len(raw), COUNT_STEP):
        n += raw.count(b"\n", start, start + COUNT_STEP)
        if loop.time() >= deadline:
            await asyncio.sleep(0)
            deadline = loop.time() + BATCH_SLICE_S
    return n


async def _sliced(v: ApiViews, items: Iterator[Any]) -> AsyncIterator[Any]:
    """``items``, yielding to the loop every BATCH_SLICE_S of work on them.

    Work in slices of a few milliseconds: parsing and validating a large
    batch in one go would stall heartbeats long enough for a false failover.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BATCH_SLICE_S
    for item in items:
        yield item
        if loop.time() >= deadline:
            v.writer.flush()
            await asyncio.sleep(0)
            deadline = loop.time() + BATCH_SLICE_S


def _apply_chunk(v: ApiViews, chunk: _Chunk, parts: _Parts, encode: Any) -> int:
    """Apply validated ops in one core call; append their encoded results.

    Returns the newest version written (0: none).
    """
    if not chunk:
        return 0
    outcomes: list[Any]
    try:
        outcomes = v.writer.write_batch(chunk, v.clock())
    except Exception as exc:  # the node refuses writes now: every op of the chunk fails
        outcomes = [exc] * len(chunk)
    newest = 0
    for (kind, rid, rec), res in zip(chunk, outcomes, strict=True):
        if isinstance(res, Exception):
            parts.append(encode(_op_error(v, res, {"id": rid})))
        elif res is None:
            err = _not_found(KINDS_BY_CODE[kind].name, rid)
            parts.append(encode(_op_error(v, err, {"id": rid})))
        else:
            status = (201 if res.created else 200) if rec is not None else 200
            epoch, seq = unpack_version(res.version)
            parts.append(encode(_Result(status, rid, _Version(epoch, seq))))
            newest = max(newest, res.version)
    v.writer.flush()
    return newest


def _parse_op(v: ApiViews, op: Any) -> tuple[int, str, Record | None]:
    """Validate one batch op: (kind code, id, record or None for a delete)."""
    kind_name: Any
    rid: Any
    verb: Any
    record_raw: msgspec.Raw | None
    put_kind = PUT_KINDS.get(type(op))
    if put_kind is not None:  # a put decoded in one pass: the checks of the Op path below
        kind = _WRITABLE_PUTS.get(type(op)) or kind_of(v, put_kind, write=True)
        check_id(op.id)
        return kind.code, op.id, kind.from_api(op.record, op.id)
    if isinstance(op, BadLine):
        raise ApiError(op.error.status, op.error.code, f"line {op.line}: {op.error.message}")
    if isinstance(op, OpError):
        raise op.error
    if isinstance(op, Op):
        kind_name, rid, verb, record_raw, body = op.kind, op.id, op.op, op.record, None
    elif isinstance(op, dict):
        unknown = set(op) - {"op", "kind", "id", "record"}
        if unknown:
            name = sorted(str(k) for k in unknown)[0][:64]
            raise ApiError(400, "unknown_field", f"unknown op field {name}", field=name)
        kind_name, rid, verb, record_raw = op.get("kind"), op.get("id"), op.get("op"), None
        body = op.get("record", _MISSING)
    else:
        raise ApiError(400, "invalid_op", "an op is an object")
    if verb not in ("put", "delete") or not isinstance(kind_name, str) or not isinstance(rid, str):
        raise ApiError(400, "invalid_op", 'an op needs "op" ("put"|"delete"), "kind" and "id"')
    kind = kind_of(v, kind_name, write=True)
    check_id(rid)
    if verb == "delete":
        kind.check_id_pattern(rid)
        return kind.code, rid, None
    if record_raw is not None:
        if not record_raw:
            raise ApiError(400, "invalid_op", 'a put needs "record"')
        return kind.code, rid, kind.parse_json(record_raw, rid)
    if body is _MISSING:
        raise ApiError(400, "invalid_op", 'a put needs "record"')
    return kind.code, rid, kind.from_json(body, rid)


def _op_error(v: ApiViews, exc: Exception, op: Any) -> dict[str, Any]:
    err = api_error(exc)
    v.counters.count_api_error(err.code)
    if isinstance(op, Op) or type(op) in PUT_KINDS:
        rid = op.id
    else:
        rid = op.get("id") if isinstance(op, dict) else None
    return error_body(err, status=True, rid=rid[:MAX_ID_LEN] if isinstance(rid, str) else None)
