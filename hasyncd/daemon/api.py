"""The local HTTP API (aiohttp), on a Unix socket (mode 0660) and optionally on TCP loopback.

Every refusal is a JSON body ``{"error": code, "message": ..., ...}`` with a
precise code, counted in ``hasyncd_api_errors_total{error=...}``; request
bodies are never logged (they carry keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import yaml
from aiohttp import web

from hasyncd.core.status import version_json
from hasyncd.daemon import counterapi
from hasyncd.daemon.apilimits import API_BACKLOG, API_IDLE_S, Admission
from hasyncd.daemon.batchops import (
    Op,
    OpError,
    batch_reply,
    count_ndjson_ops,
    iter_ndjson_ops,
)
from hasyncd.daemon.bodies import (
    ApiError,
    BadLine,
    decode_json,
    iter_msgpack_batch,
    last_event_id,
    read_body,
)
from hasyncd.daemon.eventhub import SHUTDOWN, event_type_name
from hasyncd.daemon.httperrors import handler_factory
from hasyncd.daemon.metrics import CONTENT_TYPE
from hasyncd.errors import HasyncdError, NotReplicated, RecordError, UnknownKind, WriteRefused
from hasyncd.policy import policy_table, shown_id
from hasyncd.records import KINDS_BY_CODE, Kind, Record, kind_for_api, kind_for_write
from hasyncd.wire.messages import MAX_ID_LEN

if TYPE_CHECKING:
    from hasyncd.daemon.shell import Daemon

log = logging.getLogger("hasyncd.api")

MAX_RECORD_BODY = 64 * 1024  # one record's JSON: far above the largest legal record
MAX_PAGE = 1000  # records per list page: bounds the time one request holds the loop
DEFAULT_PAGE = 100
# Longest stretch a batch request holds the event loop before yielding: far
# below the heartbeat interval, so heartbeats and replication keep flowing.
BATCH_SLICE_S = 0.005
# Validated ops handed to the core in one call: a few milliseconds of store
# and replication work, so one chunk stays well inside a slice.
BATCH_APPLY_CHUNK = 1024
SSE_KEEPALIVE = 15.0  # seconds between comment lines on an idle event stream
# At a stop, requests still running get this long to finish (a sync-mode write
# waits at most sync_timeout_ms) before they are cancelled: part of the stop
# budget (hasyncd.daemon.shell.STOP_BUDGET_S).  aiohttp applies it twice at most.
API_DRAIN_S = 1.0

# Every route, once: the router is built from it and tests/test_openapi.py checks
# that proto/openapi.yaml documents exactly these.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/v1/status", "status"),
    ("GET", "/v1/policy", "policy"),
    ("GET", "/v1/history", "history"),
    ("POST", "/v1/records:batch", "batch"),
    ("GET", "/v1/records/{kind}", "list"),
    ("PUT", "/v1/records/{kind}/{id}", "put"),
    ("GET", "/v1/records/{kind}/{id}", "get"),
    ("DELETE", "/v1/records/{kind}/{id}", "delete"),
    ("GET", "/v1/events", "events"),
    ("POST", "/v1/failover", "failover"),
    ("POST", "/v1/counters", "counters"),
    ("POST", "/v1/leases", "leases"),
    ("GET", "/v1/rekey", "rekey"),
    ("GET", "/metrics", "metrics"),
    ("GET", "/v1/openapi.json", "openapi"),
)

# The body formats each route with a body accepts; anything else is 415.
BODY_TYPES: dict[tuple[str, str], tuple[str, ...]] = {
    ("PUT", "/v1/records/{kind}/{id}"): ("application/json",),
    ("POST", "/v1/counters"): ("application/json",),
    ("POST", "/v1/leases"): ("application/json",),
    ("POST", "/v1/records:batch"): (
        "application/x-ndjson",
        "application/msgpack",
        "application/x-msgpack",
    ),
}

_STATUS_BY_ERROR = {
    "unknown_kind": 404,
    "not_found": 404,
    "not_replicated": 422,
    "not_primary": 409,
    "no_in_sync_secondary": 409,
    "fenced": 503,
    "handover_in_progress": 503,
}


def _error_from(exc: HasyncdError) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NotReplicated):
        return ApiError(422, "not_replicated", exc.message, kind=exc.kind, reason=exc.reason)
    if isinstance(exc, UnknownKind):
        return ApiError(404, "unknown_kind", exc.message)
    if isinstance(exc, RecordError):
        return ApiError(400, exc.code, exc.message, field=exc.field)
    if isinstance(exc, WriteRefused):
        return ApiError(
            _STATUS_BY_ERROR.get(exc.code, 503), exc.code, exc.message, primary=exc.primary
        )
    return ApiError(500, exc.code, exc.message)


def _internal(exc: Exception) -> ApiError:
    log.error("internal error in the API", exc_info=exc)
    return ApiError(500, "internal_error", "internal error (logged)")


def _api_error(exc: Exception) -> ApiError:
    """The API error for any exception: ours mapped by kind, anything else a logged bug."""
    return _error_from(exc) if isinstance(exc, HasyncdError) else _internal(exc)


def _check_id(rid: str) -> None:
    if not 0 < len(rid) <= MAX_ID_LEN or not rid.isprintable():
        raise ApiError(
            400, "invalid_record", "record id must be 1..96 printable characters", field="id"
        )


_MISSING: Any = object()
# (Api has a method named ``list``: these aliases keep the builtin in its annotations.)
_Chunk = list[tuple[int, str, Record | None]]
_Parts = list[bytes]
_Outcomes = list[Any]


class Api:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        cfg = daemon.config.api
        self.app = web.Application(
            client_max_size=cfg.max_body_mib * 1024 * 1024,
            middlewares=[self._errors, self._guard],
        )
        self._token = daemon.config.api_token
        r = self.app.router
        for method, path, handler in ROUTES:
            r.add_route(method, path, getattr(self, handler))
        self._runner: web.AppRunner | None = None
        self._socket: Path | None = None
        self._listeners: list[asyncio.Server] = []

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.d.config.api
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=API_DRAIN_S,
            keepalive_timeout=API_IDLE_S,
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        make = handler_factory(server, lambda code: self.d.metrics.api_errors.labels(code).inc())
        admit = Admission(make, lambda: len(server.connections), self._count_busy)
        loop = asyncio.get_running_loop()
        if cfg.socket is not None:
            try:
                _prepare_socket_path(cfg.socket)
                self._listeners.append(
                    await loop.create_unix_server(admit, str(cfg.socket), backlog=API_BACKLOG)
                )
                self._socket = cfg.socket  # ours now: removed by stop()
                os.chmod(cfg.socket, 0o660)
            except OSError as exc:
                raise HasyncdError(
                    f"cannot create the API socket {cfg.socket}: {exc.strerror or exc}"
                ) from None
        if cfg.listen is not None:
            try:
                self._listeners.append(
                    await loop.create_server(
                        admit,
                        cfg.listen.host,
                        cfg.listen.port,
                        reuse_address=True,
                        backlog=API_BACKLOG,
                    )
                )
            except OSError as exc:
                raise HasyncdError(
                    f"cannot listen on {cfg.listen} for the API: {exc.strerror}"
                ) from None
        log.debug("API: at most %d connections at once", admit.cap)

    def _count_busy(self) -> None:
        self.d.metrics.api_errors.labels("too_many_connections").inc()

    async def stop(self) -> None:
        """Stop listening; requests still running get API_DRAIN_S, then are cancelled.

        The shell ends the event streams first (``EventHub.close``).  Safe when
        ``start()`` failed half-way: aiohttp's runner cleanup is.
        """
        for listener in self._listeners:
            listener.close()  # no new connections; the open ones are aiohttp's to drain
        self._listeners.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        sock, self._socket = self._socket, None
        if sock is not None:  # never another process's socket (a refused start)
            with contextlib.suppress(OSError):
                sock.unlink()

    # -- plumbing -----------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Who may ask (TCP: the bearer token), and in which body format."""
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None and sock.family == socket.AF_UNIX:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("api %s %s from %s", request.method, request.path, _peer_cred(sock))
        elif not self._authorized(request):
            raise ApiError(401, "unauthorized", "the TCP API needs 'Authorization: Bearer <token>'")
        allowed = BODY_TYPES.get((request.method, _route_path(request)))
        if allowed is not None and request.content_type not in allowed:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type must be {' or '.join(allowed)}",
            )
        resp: web.StreamResponse = await handler(request)
        return resp

    def _authorized(self, request: web.Request) -> bool:
        token = self._token
        given = request.headers.get("Authorization", "")
        if token is None or not given.startswith("Bearer "):
            return False
        # Constant time: the comparison must not tell how much of a guess was right.
        return hmac.compare_digest(given[7:].strip().encode(), token.reveal().hex().encode())

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            self.d.metrics.api_errors.labels(f"http_{exc.status}").inc()
            resp = web.json_response(
                {"error": f"http_{exc.status}", "message": exc.reason}, status=exc.status
            )
        except Exception as exc:  # ours, or a bug: answer in JSON either way, keep serving
            err = _api_error(exc)
            self.d.metrics.api_errors.labels(err.code).inc()
            body = {"error": err.code, "message": err.message}
            body.update({k: v for k, v in err.extra.items() if v is not None or k == "primary"})
            resp = web.json_response(body, status=err.status)
            if err.status == 401:
                resp.headers["WWW-Authenticate"] = "Bearer"
        self.d.metrics.api_requests.labels(name, str(resp.status)).inc()
        return resp

    async def _json_body(self, request: web.Request, limit: int) -> Any:
        return decode_json(await read_body(request, limit))

    def _kind(self, name: str, *, write: bool = False) -> Kind:
        try:
            return kind_for_write(name) if write else kind_for_api(name)
        except NotReplicated as exc:
            if write:
                self.d.metrics.not_replicated.labels(exc.kind).inc()
            raise
        except UnknownKind:
            raise ApiError(
                404, "unknown_kind", f"unknown record kind {name[:64]!r}", kind=name[:64]
            ) from None

    def _now(self) -> float:
        return self.d.clock()

    async def _replicated(self, version: int) -> bool | None:
        """In sync mode, wait for the secondaries; None in async mode."""
        cfg = self.d.config.sync
        if cfg.mode != "sync":
            return None
        ok = await self.d.waiters.wait(version, cfg.sync_timeout_ms / 1000.0)
        self.d.metrics.sync_writes.labels("true" if ok else "false").inc()
        return ok

    # -- records --------------------------------------------------------------------------

    def _write_one(self, kind: Kind, rid: str, body: Any) -> tuple[int, int]:
        """Validate and write one record; returns (HTTP status, version)."""
        _check_id(rid)
        result = self.d.core.write(kind.from_json(body, rid), self._now())
        return (201 if result.created else 200), result.version

    async def put(self, request: web.Request) -> web.Response:
        kind = self._kind(request.match_info["kind"], write=True)
        body = await self._json_body(request, MAX_RECORD_BODY)
        status, version = self._write_one(kind, request.match_info["id"], body)
        self.d.flush()
        out: dict[str, Any] = {"id": request.match_info["id"], "version": version_json(version)}
        replicated = await self._replicated(version)
        if replicated is not None:
            out["replicated"] = replicated
            if not replicated:
                status = 202
        return web.json_response(out, status=status)

    async def get(self, request: web.Request) -> web.Response:
        kind = self._kind(request.match_info["kind"])
        rid = request.match_info["id"]
        _check_id(rid)
        entry = self.d.store.get(kind.code, rid, time.time())
        if entry is None or entry.blob is None:
            raise ApiError(404, "not_found", f"no {kind.name} {shown_id(kind.name, rid)}")
        return web.json_response(
            {
                "kind": kind.name,
                "id": rid,
                "version": version_json(entry.version),
                "record": counterapi.shown(self.d, kind, rid, entry),
            }
        )

    async def delete(self, request: web.Request) -> web.Response:
        kind = self._kind(request.match_info["kind"], write=True)
        rid = request.match_info["id"]
        _check_id(rid)
        result = self.d.core.delete(kind.code, rid, self._now())
        self.d.flush()
        if result is None:
            raise ApiError(404, "not_found", f"no {kind.name} {shown_id(kind.name, rid)}")
        out: dict[str, Any] = {"id": rid, "version": version_json(result.version)}
        status = 200
        replicated = await self._replicated(result.version)
        if replicated is not None:
            out["replicated"] = replicated
            status = 200 if replicated else 202
        return web.json_response(out, status=status)

    async def list(self, request: web.Request) -> web.Response:
        kind = self._kind(request.match_info["kind"])
        after = request.query.get("after") or None
        try:
            limit = int(request.query.get("limit", DEFAULT_PAGE))
        except ValueError:
            raise ApiError(400, "invalid_query", "limit must be an integer") from None
        if not 1 <= limit <= MAX_PAGE:
            raise ApiError(400, "invalid_query", f"limit must be in 1..{MAX_PAGE}")
        page = self.d.store.page(kind.code, after, limit, time.time())
        items = [
            {
                "id": rid,
                "version": version_json(e.version),
                "record": counterapi.shown(self.d, kind, rid, e),
            }
            for rid, e in page
            if e.blob is not None
        ]
        nxt = page[-1][0] if len(page) == limit else None
        return web.json_response({"kind": kind.name, "items": items, "next": nxt})

    async def batch(self, request: web.Request) -> web.StreamResponse:
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
        raw = await read_body(request, self.d.config.api.max_body_mib * 1024 * 1024)
        if use_msgpack:
            async for _ in self._sliced(iter_msgpack_batch(raw)):
                pass
            ops: Iterator[Any] = iter_msgpack_batch(raw)
            encode: Any = msgspec.msgpack.encode
        else:
            count_ndjson_ops(raw)
            ops = iter_ndjson_ops(raw)
            encode = msgspec.json.encode
        parts: _Parts = []
        chunk: _Chunk = []
        newest = 0
        loop = self.d.loop
        deadline = loop.time() + BATCH_SLICE_S
        for op in ops:
            try:
                chunk.append(self._parse_op(op))
            except Exception as exc:  # one op's failure must not abort the rest of the batch
                newest = max(newest, self._apply_chunk(chunk, parts, encode))
                chunk = []
                parts.append(encode(self._op_error(exc, op)))
            if len(chunk) >= BATCH_APPLY_CHUNK or loop.time() >= deadline:
                newest = max(newest, self._apply_chunk(chunk, parts, encode))
                chunk = []
                if loop.time() >= deadline:
                    await asyncio.sleep(0)
                    deadline = loop.time() + BATCH_SLICE_S
        newest = max(newest, self._apply_chunk(chunk, parts, encode))
        replicated = await self._replicated(newest) if newest else None
        return web.Response(
            body=batch_reply(parts, replicated, use_msgpack),
            content_type="application/msgpack" if use_msgpack else "application/json",
        )

    async def _sliced(self, items: Iterator[Any]) -> AsyncIterator[Any]:
        """``items``, yielding to the loop every BATCH_SLICE_S of work on them.

        Work in slices of a few milliseconds: parsing and validating a large
        batch in one go would stall heartbeats long enough for a false failover.
        """
        loop = self.d.loop
        deadline = loop.time() + BATCH_SLICE_S
        for item in items:
            yield item
            if loop.time() >= deadline:
                self.d.flush()
                await asyncio.sleep(0)
                deadline = loop.time() + BATCH_SLICE_S

    def _apply_chunk(self, chunk: _Chunk, parts: _Parts, encode: Any) -> int:
        """Apply validated ops in one core call; append their encoded results.

        Returns the newest version written (0: none).
        """
        if not chunk:
            return 0
        outcomes: _Outcomes
        try:
            outcomes = self.d.core.write_batch(chunk, self._now())
        except Exception as exc:  # the node refuses writes now: every op of the chunk fails
            outcomes = [exc] * len(chunk)
        newest = 0
        for (kind, rid, rec), res in zip(chunk, outcomes, strict=True):
            if isinstance(res, Exception):
                parts.append(encode(self._op_error(res, {"id": rid})))
            elif res is None:
                name = KINDS_BY_CODE[kind].name
                err = ApiError(404, "not_found", f"no {name} {shown_id(name, rid)}")
                parts.append(encode(self._op_error(err, {"id": rid})))
            else:
                status = (201 if res.created else 200) if rec is not None else 200
                parts.append(
                    encode({"status": status, "id": rid, "version": version_json(res.version)})
                )
                newest = max(newest, res.version)
        self.d.flush()
        return newest

    def _parse_op(self, op: Any) -> tuple[int, str, Record | None]:
        """Validate one batch op: (kind code, id, record or None for a delete)."""
        kind_name: Any
        rid: Any
        verb: Any
        record_raw: msgspec.Raw | None
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
        if (
            verb not in ("put", "delete")
            or not isinstance(kind_name, str)
            or not isinstance(rid, str)
        ):
            raise ApiError(400, "invalid_op", 'an op needs "op" ("put"|"delete"), "kind" and "id"')
        kind = self._kind(kind_name, write=True)
        _check_id(rid)
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

    def _op_error(self, exc: Exception, op: Any) -> dict[str, Any]:
        err = _api_error(exc)
        self.d.metrics.api_errors.labels(err.code).inc()
        res: dict[str, Any] = {"status": err.status, "error": err.code, "message": err.message}
        rid = op.id if isinstance(op, Op) else op.get("id") if isinstance(op, dict) else None
        if isinstance(rid, str):
            res["id"] = rid[:MAX_ID_LEN]
        res.update({k: v for k, v in err.extra.items() if v is not None})
        return res

    # -- cluster --------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        st = self.d.core.status(self._now())
        st["hooks"] = {
            "queued": self.d.hooks.queued,
            "running": self.d.hooks.running,
            "recent": list(self.d.hooks.history),
        }
        st["sync_mode"] = self.d.config.sync.mode
        return web.json_response(st)

    async def history(self, request: web.Request) -> web.Response:
        roles = self.d.core.roles
        return web.json_response(
            {"node": self.d.config.node.name, "history": roles.history.recent()}
        )

    async def policy(self, request: web.Request) -> web.Response:
        return web.json_response({"policy": policy_table()})

    async def failover(self, request: web.Request) -> web.Response:
        core = self.d.core
        target = core.request_failover(self._now())
        self.d.flush()
        timeout = self.d.config.promotion.handover_timeout_ms / 1000.0 + 1.0
        done = await self.d.wait_role(lambda: not core.roles.is_primary, timeout)
        if not done:
            raise ApiError(
                504, "handover_timeout", f"{target} did not take over in time", target=target
            )
        return web.json_response({"new_primary": target, "epoch": core.roles.epoch})

    # -- the data plane (hasyncd.daemon.counterapi) ----------------------------------------

    async def counters(self, request: web.Request) -> web.Response:
        return await counterapi.counters(self.d, request)

    async def leases(self, request: web.Request) -> web.Response:
        return await counterapi.leases(self.d, request)

    async def rekey(self, request: web.Request) -> web.Response:
        return await counterapi.rekey(self.d, request)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi_json(), content_type="application/json")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.d.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def events(self, request: web.Request) -> web.StreamResponse:
        types_q = request.query.get("types")
        types = frozenset(t.strip() for t in types_q.split(",") if t.strip()) if types_q else None
        last_id = last_event_id(request.headers.get("Last-Event-ID"))
        if self.d.hub.closed:
            raise ApiError(503, "shutting_down", "the node is stopping")
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        sub, reset = self.d.hub.subscribe(types, last_id)
        try:
            if reset:
                await resp.write(b"event: reset\ndata: {}\n\n")
            hello = json.dumps(
                {
                    "node": self.d.config.node.name,
                    "role": self.d.core.roles.role.name.lower(),
                    "epoch": self.d.core.roles.epoch,
                }
            )
            await resp.write(f"event: hello\ndata: {hello}\n\n".encode())
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), SSE_KEEPALIVE)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if item is None:
                    await resp.write(b"event: overflow\ndata: {}\n\n")
                    break
                seq, etype, data = item
                if etype == SHUTDOWN:
                    await resp.write(f"event: {SHUTDOWN}\ndata: {data}\n\n".encode())
                    break
                await resp.write(f"id: {seq}\nevent: {etype}\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.d.hub.unsubscribe(sub)
        return resp


def _route_path(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def _peer_cred(sock: socket.socket) -> str:
    """The Unix-socket client's uid and pid (SO_PEERCRED), for the debug log."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return "an unknown local process"
    pid, uid, _gid = struct.unpack("3i", raw)
    return f"uid {uid} pid {pid}"


@functools.cache
def openapi_json() -> bytes:
    """hasyncd/openapi.yaml (proto/openapi.yaml links to it) as JSON, read once."""
    text = resources.files("hasyncd").joinpath("openapi.yaml").read_text()
    return json.dumps(yaml.safe_load(text)).encode()


def _prepare_socket_path(path: Path) -> None:
    """Create the socket's directory; refuse one others could write to; replace a stale socket.

    Whoever can write to the directory can replace the socket with an impostor
    and receive the keys clients send: the directory must be writable by this
    service user alone (or be sticky and owned by it).  Only a stale socket is
    removed, never another kind of file, and a live one is refused.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    st = os.stat(path.parent)
    others_write = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ours = st.st_uid == os.geteuid()
    if others_write and not (ours and st.st_mode & stat.S_ISVTX):
        owner = "this user" if ours else f"uid {st.st_uid}"
        raise HasyncdError(
            f"API socket directory {path.parent} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}, owner {owner}): another user could replace "
            f"the socket; use a directory only this service user can write (chmod 750)"
        )
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise HasyncdError(
            f"API socket path {path} exists and is not a socket: refusing to remove it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # a stale socket left by a node that died
        return
    finally:
        probe.close()
    raise HasyncdError(f"API socket {path} is in use: is another hasyncd running?")


__all__ = ["Api", "event_type_name"]
