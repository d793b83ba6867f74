"""The local HTTP API (aiohttp), on a Unix socket (mode 0660) and optionally on TCP loopback.

This module owns the route table (``ROUTES``), the listeners and their
lifecycle, and the middlewares: who may ask (the TCP bearer token), in which
body format, and the one error path.  The handlers live by concern in
``api_records`` (records, batch) and ``api_cluster`` (status, events,
failover...); they see only the narrow views of ``hasyncd.daemon.views``.
Adding a route is one line in ``ROUTES`` and a handler.

Every refusal is a JSON body ``{"error": code, "message": ..., ...}`` with a
precise code (``hasyncd.daemon.httperrors``), counted in
``hasyncd_api_errors_total{error=...}``; request bodies are never logged
(they carry keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from hasyncd.daemon import api_cluster, api_records, counterapi
from hasyncd.daemon.api_cluster import API_BUDGETS, openapi_json
from hasyncd.daemon.api_records import MAX_RECORD_BODY
from hasyncd.daemon.apilimits import API_BACKLOG, API_IDLE_S, TCP, UNIX, Admission, Budget, budgets
from hasyncd.daemon.eventhub import event_type_name
from hasyncd.daemon.httperrors import api_error, error_response, handler_factory
from hasyncd.daemon.views import ApiViews
from hasyncd.errors import ApiError, HasyncdError

log = logging.getLogger("hasyncd.api")

# At a stop, requests still running get this long to finish (a sync-mode write
# waits at most sync_timeout_ms) before they are cancelled: part of the stop
# budget (hasyncd.daemon.lifecycle.STOP_BUDGET_S).  aiohttp applies it twice at most.
API_DRAIN_S = 1.0

Handler = Callable[[ApiViews, web.Request], Awaitable[web.StreamResponse]]

# Every route, once: the router is built from it and tests/test_openapi.py checks
# that proto/openapi.yaml documents exactly these.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/v1/status", api_cluster.status),
    ("GET", "/v1/policy", api_cluster.policy),
    ("GET", "/v1/history", api_cluster.history),
    ("POST", "/v1/records:batch", api_records.batch),
    ("GET", "/v1/records/{kind}", api_records.list_kind),
    ("PUT", "/v1/records/{kind}/{id}", api_records.put),
    ("GET", "/v1/records/{kind}/{id}", api_records.get),
    ("DELETE", "/v1/records/{kind}/{id}", api_records.delete),
    ("GET", "/v1/events", api_cluster.events),
    ("POST", "/v1/failover", api_cluster.failover),
    ("POST", "/v1/counters", counterapi.counters),
    ("POST", "/v1/leases", counterapi.leases),
    ("GET", "/v1/rekey", counterapi.rekey),
    ("GET", "/metrics", api_cluster.metrics),
    ("GET", "/v1/openapi.json", api_cluster.openapi),
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


def _bind(handler: Handler, views: ApiViews) -> Callable[[web.Request], Awaitable[Any]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(views, request)

    return handle


class Api:
    def __init__(self, views: ApiViews) -> None:
        self.views = views
        cfg = views.config()
        self.app = web.Application(
            client_max_size=cfg.api.max_body_mib * 1024 * 1024,
            middlewares=[self._errors, self._guard],
        )
        self._token = cfg.api_token
        r = self.app.router
        for method, path, handler in ROUTES:
            r.add_route(method, path, _bind(handler, views))
        self._runner: web.AppRunner | None = None
        self._socket: Path | None = None
        self._listeners: list[asyncio.Server] = []
        # Each listener's own connection budget (apilimits), filled at start: the
        # socket's clients keep theirs whatever the TCP port's do.  Status shows them.
        self.budgets: dict[str, Budget] = {}
        self.app[API_BUDGETS] = self.budgets

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.views.config().api
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
        make = handler_factory(server, self.views.counters.count_api_error)
        self.budgets.update(budgets(unix=cfg.socket is not None, tcp=cfg.listen is not None))
        for name, b in self.budgets.items():
            self.views.counters.watch_api_listener(name, b.cap, b.open_now)
        admit = {name: Admission(make, b, self._count_busy) for name, b in self.budgets.items()}
        loop = asyncio.get_running_loop()
        if cfg.socket is not None:
            try:
                _prepare_socket_path(cfg.socket)
                self._listeners.append(
                    await loop.create_unix_server(admit[UNIX], str(cfg.socket), backlog=API_BACKLOG)
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
                        admit[TCP],
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
        caps = ", ".join(f"{b.cap} on {name}" for name, b in self.budgets.items())
        log.debug("API: at most %s connections at once", caps)

    def _count_busy(self, listener: str) -> None:
        self.views.counters.count_api_error("too_many_connections")
        self.views.counters.count_connection_refused(listener)

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
        except Exception as exc:  # ours, aiohttp's or a bug: answer in JSON, keep serving
            err = api_error(exc)
            self.views.counters.count_api_error(err.code)
            resp = error_response(err)
        self.views.counters.count_api_request(name, resp.status)
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


__all__ = ["API_DRAIN_S", "MAX_RECORD_BODY", "ROUTES", "Api", "event_type_name", "openapi_json"]
