"""The portal's routes and session rules: login, the logged-in page, logout, a tunnel stream.

A web session is a ``sslvpn_web_session`` record whose id is the SHA-256 of
the cookie, so it survives a failover and ends on every node at the record's
own expiry.  A tunnel session (``GET /tunnel``) lives only in this process:
``sslvpn_tunnel_session`` is not replicated, and opening a tunnel needs a
login made on this very node, so after a failover the client logs in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hasyncd.config import Config, PortalConfig
from hasyncd.errors import ConfigError, PortalError
from hasyncd.policy import POLICY
from hasyncd.portal import pages
from hasyncd.portal.sessions import SessionApi, digest, short
from hasyncd.portal.tls import server_context
from hasyncd.portal.users import MAX_PASSWORD_BYTES, USER_RE, UsersFile, verify

log = logging.getLogger("hasyncd.portal")

COOKIE_BYTES = 32  # secrets.token_urlsafe(32): 43 base64url characters, 256 bits
COOKIE_RE = re.compile(r"[A-Za-z0-9_-]{43}\Z")
MIN_REFRESH_S = 5.0  # last_seen is written at most once per max(5 s, idle_timeout_s / 10)
MAX_FORM_BYTES = 16 * 1024  # a login form: two short fields
# Coalescing state is kept for at most this many sessions; past it the oldest
# entries go (costing at most one early refresh each), so memory stays bounded.
MAX_TRACKED = 100_000
MAX_LOCAL_LOGINS = 100_000  # tunnel-capable logins remembered by this node
TUNNEL_PING_S = 2.0  # a tunnel re-checks its web session and sends a ping this often
PORTAL_NAME = "web"  # the record's ``portal`` field
AUTH_METHOD = "password"
REALM = "local"
TUNNEL_REASON = next(p.reason for p in POLICY if p.kind == "sslvpn_tunnel_session")


def expiry(record: dict[str, Any]) -> float:
    """When a web session ends: the rule every hasyncd node applies to the record."""
    return float(min(record["expires_at"], record["last_seen"] + record["idle_timeout_s"]))


@dataclass
class Tunnel:
    tid: str
    rid: str
    user: str
    started: float
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class Portal:
    """One node's portal: ``app`` is the aiohttp application; ``clock`` is injectable."""

    def __init__(
        self,
        cfg: PortalConfig,
        node: str,
        api: SessionApi,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.node, self.api, self.clock = cfg, node, api, clock
        self.secure = cfg.tls_cert is not None
        self.users = UsersFile(cfg.users_file)
        self._written: dict[str, float] = {}  # digest -> when this portal last wrote last_seen
        self._local_logins: dict[str, str] = {}  # digest -> user, logins made on this node
        self.tunnels: dict[str, Tunnel] = {}
        self.app = web.Application(client_max_size=MAX_FORM_BYTES)
        r = self.app.router
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_get("/", self.home)
        r.add_post("/logout", self.logout)
        r.add_get("/tunnel", self.tunnel)
        r.add_get("/healthz", self.healthz)

    # -- helpers --------------------------------------------------------------------------

    def _html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(
            text=text, status=status, content_type="text/html", headers=pages.HEADERS
        )

    def _redirect(self, location: str) -> web.Response:
        return web.Response(status=303, headers={"Location": location, **pages.HEADERS})

    def _unavailable(self, exc: PortalError) -> web.Response:
        log.warning("portal request failed: %s: %s", exc.code, exc.message)
        text = (
            "This gateway is standby; use the cluster address."
            if exc.code == "not_primary"
            else "The session service is unavailable; try again shortly."
        )
        return self._html(pages.message("Service unavailable", text, self.node), 503)

    def _presented(self, request: web.Request) -> str | None:
        """The digest of a well-formed presented cookie (the raw value goes no further)."""
        cookie = request.cookies.get(self.cfg.cookie_name)
        if cookie is None or not COOKIE_RE.match(cookie):
            return None
        return digest(cookie)

    async def _session(self, request: web.Request) -> tuple[str, dict[str, Any]] | None:
        """(digest, record) of the presented live session, after the coalesced refresh."""
        rid = self._presented(request)
        if rid is None:
            return None
        record = await self.api.get(rid)
        now = self.clock()
        if record is None or expiry(record) <= now:
            return None
        if not await self._refresh(rid, record, now):
            return None
        return rid, record

    async def _refresh(self, rid: str, record: dict[str, Any], now: float) -> bool:
        """Write last_seen if the interval has passed; False if the session ended meanwhile."""
        interval = max(MIN_REFRESH_S, record["idle_timeout_s"] / 10)
        last = max(float(record["last_seen"]), self._written.get(rid, 0.0))
        if now - last < interval:
            return True
        self._track(rid, now)
        try:
            alive = await self.api.touch(rid, {**record, "last_seen": round(now, 3)})
        except PortalError as exc:  # e.g. a standby node: the read stands, the refresh waits
            log.info("session %s: last_seen not refreshed: %s", short(rid), exc.code)
            return True
        if not alive:  # logged out or expired between the look-up and the refresh
            log.info("session %s ended during its refresh; removed again", short(rid))
            await self.api.delete(rid)
            return False
        return True

    def _track(self, rid: str, now: float) -> None:
        self._written.pop(rid, None)
        self._written[rid] = now  # insertion order = recency
        while len(self._written) > MAX_TRACKED:
            del self._written[next(iter(self._written))]

    def _end_local(self, rid: str) -> None:
        self._local_logins.pop(rid, None)
        self._written.pop(rid, None)
        for t in self.tunnels.values():
            if t.rid == rid:
                t.ended.set()

    def _set_cookie(self, resp: web.Response, value: str) -> None:
        resp.set_cookie(
            self.cfg.cookie_name,
            value,
            path="/",
            max_age=self.cfg.session_lifetime_s,
            httponly=True,
            samesite="Lax",
            secure=self.secure,
        )

    # -- routes ---------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        try:
            if await self._session(request) is not None:
                return self._redirect("/")
        except PortalError as exc:
            return self._unavailable(exc)
        return self._html(pages.login_form(self.node))

    async def login(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except (ValueError, web.HTTPException):
            form = None  # oversized or malformed body
        username = form.get("username") if form is not None else None
        password = form.get("password") if form is not None else None
        if not isinstance(username, str) or not isinstance(password, str):
            return self._html(pages.login_form(self.node, "Enter a user name and a password."), 400)
        if not username or not password:
            return self._html(
                pages.login_form(self.node, "Enter a user name and a password.", username), 400
            )
        ok = False
        if USER_RE.match(username) and len(password.encode()) <= MAX_PASSWORD_BYTES:
            try:
                users = self.users.users()
            except ConfigError as exc:
                log.error("users file: %s", exc.message)  # noqa: TRY400 - no traceback wanted
                return self._html(
                    pages.message("Service unavailable", "Logins are unavailable.", self.node),
                    503,
                )
            ok = await asyncio.to_thread(verify, users, username, password)
        if not ok:
            log.info("login refused for user %r from %s", username[:64], request.remote)
            shown = username if USER_RE.match(username) else ""
            return self._html(
                pages.login_form(self.node, "Wrong user name or password.", shown), 401
            )
        cookie = secrets.token_urlsafe(COOKIE_BYTES)
        rid = digest(cookie)
        now = self.clock()
        record: dict[str, Any] = {
            "user": username,
            "groups": [],
            "realm": REALM,
            "auth_method": AUTH_METHOD,
            "portal": PORTAL_NAME,
            "client_ip": _ip_or_none(request.remote),
            "created_at": round(now, 3),
            "last_seen": round(now, 3),
            "idle_timeout_s": self.cfg.idle_timeout_s,
            "expires_at": round(now + self.cfg.session_lifetime_s, 3),
        }
        try:
            replicated = await self.api.create(rid, record)
            ended = 0
            if self.cfg.single_session:
                for other in await self.api.of_user(username):
                    if other != rid and await self.api.delete(other):
                        self._end_local(other)
                        ended += 1
        except PortalError as exc:
            return self._unavailable(exc)
        self._track(rid, now)
        self._local_logins[rid] = username
        while len(self._local_logins) > MAX_LOCAL_LOGINS:
            del self._local_logins[next(iter(self._local_logins))]
        log.info(
            "login: user %r, session %s%s%s",
            username,
            short(rid),
            "" if replicated else " (no secondary confirmed it in time)",
            f", ended {ended} earlier session(s) (single_session)" if ended else "",
        )
        resp = self._redirect("/")
        self._set_cookie(resp, cookie)
        return resp

    async def home(self, request: web.Request) -> web.Response:
        try:
            sess = await self._session(request)
        except PortalError as exc:
            return self._unavailable(exc)
        if sess is None:
            return self._redirect("/login")
        rid, record = sess
        return self._html(pages.home(str(record["user"]), self.node, short(rid), request.host))

    async def logout(self, request: web.Request) -> web.Response:
        rid = self._presented(request)
        if rid is not None:
            try:
                deleted = await self.api.delete(rid)
            except PortalError as exc:
                return self._unavailable(exc)
            self._end_local(rid)
            if deleted:
                log.info("logout: session %s", short(rid))
        resp = self._redirect("/login")
        resp.del_cookie(
            self.cfg.cookie_name, path="/", secure=self.secure, httponly=True, samesite="Lax"
        )
        return resp

    async def tunnel(self, request: web.Request) -> web.StreamResponse:
        """A tunnel-mode connection, as an SSE stream; node-local by policy."""
        try:
            sess = await self._session(request)
        except PortalError as exc:
            return self._unavailable(exc)
        if sess is None:
            return _json(401, error="login_required", message="log in first")
        rid, record = sess
        if rid not in self._local_logins:
            log.info("tunnel refused for session %s: not logged in on this node", short(rid))
            return _json(
                401,
                error="tunnel_login_required",
                message=f"not replicated by policy: {TUNNEL_REASON}",
            )
        t = Tunnel(secrets.token_hex(8), rid, str(record["user"]), self.clock())
        self.tunnels[t.tid] = t
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        try:
            await resp.prepare(request)
            hello = {"tunnel_id": t.tid, "user": t.user, "node": self.node}
            await resp.write(f"event: tunnel\ndata: {json.dumps(hello)}\n\n".encode())
            log.info("tunnel %s opened for session %s", t.tid, short(rid))
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(t.ended.wait(), TUNNEL_PING_S)
                if t.ended.is_set() or await self._session(request) is None:
                    await resp.write(b'event: end\ndata: {"reason": "session ended"}\n\n')
                    break
                await resp.write(b"event: ping\ndata: {}\n\n")
        except (ConnectionResetError, PortalError):
            pass
        finally:
            del self.tunnels[t.tid]
            log.info("tunnel %s closed", t.tid)
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            role = await self.api.role()
        except PortalError:
            role = None
        return web.json_response(
            {"node": self.node, "role": role, "tunnels": len(self.tunnels)},
            status=200 if role is not None else 503,
        )


def _json(status: int, **body: Any) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def _ip_or_none(remote: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(remote or ""))
    except ValueError:
        return None


# --- hasyncd portal --------------------------------------------------------------------


def api_for(cfg: Config) -> SessionApi:
    if cfg.api.socket is not None:
        return SessionApi(socket=str(cfg.api.socket))
    return SessionApi(address=str(cfg.api.listen))


async def serve(cfg: Config) -> None:
    """Run the portal of ``cfg`` until SIGTERM or SIGINT."""
    pcfg = cfg.portal
    if pcfg is None:
        raise ConfigError(f"{cfg.path} has no [portal] section")
    if cfg.sync.mode != "sync":
        raise ConfigError(
            '[portal] needs [sync] mode = "sync": a session must reach the secondaries '
            "before its cookie is handed out"
        )
    ssl_ctx = None
    if pcfg.tls_cert is not None and pcfg.tls_key is not None:
        ssl_ctx = server_context(pcfg.tls_cert, pcfg.tls_key)
    api = api_for(cfg)
    portal = Portal(pcfg, cfg.node.name, api)
    portal.users.users()  # a users file with bad permissions or syntax stops the start
    await api.start()
    runner = web.AppRunner(portal.app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, pcfg.listen.host, pcfg.listen.port, ssl_context=ssl_ctx, reuse_address=True
        )
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"[portal].listen: cannot listen on {pcfg.listen}: {exc.strerror}"
            ) from None
        scheme = "https" if ssl_ctx else "http"
        log.info("portal of node %s listening on %s://%s/", cfg.node.name, scheme, pcfg.listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("portal stopping")
    finally:
        await runner.cleanup()
        await api.close()
