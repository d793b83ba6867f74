"""Unit tests of the reference portal: routes, cookies, coalescing, single session, expiry.

The portal runs in-process (aiohttp's TestServer/TestClient) against a fake
local API on a Unix socket.  The fake validates records with hasyncd's own
``sslvpn_web_session`` schema and expires them by the record's own rule on
the same injected clock as the portal; the end-to-end tests
(tests/test_integration_portal*.py) use real hasyncd processes instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import stat
import sys
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hasyncd import cli
from hasyncd.config import Address, PortalConfig, write_key
from hasyncd.config import parse as parse_config
from hasyncd.errors import ConfigError
from hasyncd.portal import app as portal_app
from hasyncd.portal.app import Portal
from hasyncd.portal.sessions import SessionApi
from hasyncd.portal.users import add_user, read_users, verify
from hasyncd.records import KINDS

WEB = KINDS["sslvpn_web_session"]
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2"}
T0 = 1_790_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@dataclass
class FakeApi:
    """The three calls of the local API (and the list), with hasyncd's validation and expiry."""

    clock: Clock
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, bytes]] = field(default_factory=list)
    delete_after_get: bool = False
    standby: bool = False  # writes refused as on a secondary
    expires: bool = True  # False: a node whose clock lags returns records past their expiry

    def _live(self, rid: str) -> dict[str, Any] | None:
        rec = self.records.get(rid)
        if rec is None:
            return None
        if self.expires and portal_app.expiry(rec) <= self.clock():
            del self.records[rid]
            return None
        return rec

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((request.method, request.path_qs, body))
        kind = request.match_info["kind"]
        assert kind == "sslvpn_web_session"
        rid = request.match_info.get("id")
        if rid is None:  # the list
            items = [
                {"id": i, "version": {"epoch": 1, "seq": 1}, "record": r}
                for i in sorted(self.records)
                if (r := self._live(i)) is not None
            ]
            return web.json_response({"kind": kind, "items": items, "next": None})
        if self.standby and request.method in ("PUT", "DELETE"):
            return web.json_response(
                {"error": "not_primary", "message": "secondary", "primary": "fw-b"}, status=409
            )
        if request.method == "PUT":
            record = json.loads(body)
            WEB.from_json(record, rid)  # hasyncd's own validation: raises on a bad record
            if portal_app.expiry(record) <= self.clock():
                return web.json_response({"error": "expired"}, status=400)
            created = self._live(rid) is None
            self.records[rid] = record
            return web.json_response(
                {"id": rid, "replicated": True}, status=201 if created else 200
            )
        rec = self._live(rid)
        if rec is None:
            return web.json_response({"error": "not_found"}, status=404)
        if request.method == "DELETE":
            del self.records[rid]
            return web.json_response({"id": rid, "replicated": True})
        if self.delete_after_get:  # a logout racing with this request's refresh
            del self.records[rid]
        return web.json_response({"kind": kind, "id": rid, "record": rec})

    def writes(self, rid: str) -> int:
        return sum(1 for m, p, _ in self.calls if m == "PUT" and p.endswith(rid))


def portal_config(tmp_path: Path, **kw: Any) -> PortalConfig:
    users = tmp_path / "users"
    if not users.exists():
        for name, password in PASSWORDS.items():
            add_user(users, name, password)
    values: dict[str, Any] = {
        "listen": Address("127.0.0.1", 8443),
        "tls_cert": None,
        "tls_key": None,
        "users_file": users,
        "cookie_name": "HSD",
        "idle_timeout_s": 1800,
        "session_lifetime_s": 28800,
        "single_session": False,
    }
    values.update(kw)
    return PortalConfig(**values)


Scenario = Callable[
    [FakeApi, Callable[..., Awaitable[TestClient[Any, Any]]], Clock], Awaitable[None]
]


def run(tmp_path: Path, scenario: Scenario) -> None:
    """Start the fake API on a Unix socket, then run ``scenario(fake, portal_client, clock)``.

    ``portal_client(node="fw-a", **config)`` starts one more portal on the same fake API.
    """

    async def main() -> None:
        clock = Clock()
        fake = FakeApi(clock)
        api_app = web.Application()
        api_app.router.add_route("*", "/v1/records/{kind}/{id}", fake.handle)
        api_app.router.add_get("/v1/records/{kind}", fake.handle)
        runner = web.AppRunner(api_app, access_log=None)
        await runner.setup()
        sock = tmp_path / "api.sock"
        await web.UnixSite(runner, str(sock)).start()
        clients: list[TestClient[Any, Any]] = []
        apis: list[SessionApi] = []

        async def portal_client(node: str = "fw-a", **kw: Any) -> TestClient[Any, Any]:
            api = SessionApi(socket=str(sock))
            await api.start()
            apis.append(api)
            portal = Portal(portal_config(tmp_path, **kw), node, api, clock=clock)
            client: TestClient[Any, Any] = TestClient(TestServer(portal.app))
            await client.start_server()
            clients.append(client)
            return client

        try:
            await scenario(fake, portal_client, clock)
        finally:
            for c in clients:
                await c.close()
            for a in apis:
                await a.close()
            await runner.cleanup()

    asyncio.run(main())


async def login(client: TestClient[Any, Any], user: str = "alice", password: str | None = None):  # type: ignore[no-untyped-def]
    return await client.post(
        "/login",
        data={"username": user, "password": PASSWORDS[user] if password is None else password},
        allow_redirects=False,
    )


def set_cookie(resp: Any) -> tuple[str, str]:
    """(raw Set-Cookie header, cookie value)."""
    raw = resp.headers["Set-Cookie"]
    value = next(iter(SimpleCookie(raw).values())).value
    return raw, value


def digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


# --- form handling ------------------------------------------------------------------------


def test_login_form_and_incomplete_forms(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal()
        resp = await c.get("/login")
        text = await resp.text()
        assert resp.status == 200
        assert 'name="username"' in text and 'name="password"' in text
        assert 'method="post" action="/login"' in text
        assert resp.headers["Cache-Control"] == "no-store"
        for form in (
            {"username": "alice"},
            {"password": "x"},
            {},
            {"username": "", "password": ""},
        ):
            resp = await c.post("/login", data=form, allow_redirects=False)
            assert resp.status == 400, form
            assert 'id="login"' in await resp.text()
            assert "Set-Cookie" not in resp.headers
        resp = await c.post("/login", data=b"x" * (20 * 1024), allow_redirects=False)
        assert resp.status in (400, 413)
        resp = await c.post(
            "/login",
            data=b"username=%ff%fe&password=%c3",  # not UTF-8
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            allow_redirects=False,
        )
        assert resp.status in (400, 401)
        assert 'id="login"' in await resp.text()
        assert not fake.records

    run(tmp_path, scenario)


def test_wrong_password_gets_401_and_the_form(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal()
        for user, password in (("alice", "wrong"), ("nobody", "alice-secret-1"), ("bob", "")):
            resp = await c.post(
                "/login", data={"username": user, "password": password}, allow_redirects=False
            )
            text = await resp.text()
            if password:
                assert resp.status == 401, user
                assert "Wrong user name or password." in text
            assert 'id="login"' in text
            assert "Set-Cookie" not in resp.headers
        assert not fake.records
        assert (await login(c)).status == 303  # the right password still works

    run(tmp_path, scenario)


# --- cookies and the session record -------------------------------------------------------


def test_login_stores_only_the_digest_and_sets_httponly_lax_cookie(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal("fw-a")
        resp = await login(c)
        assert resp.status == 303
        assert resp.headers["Location"] == "/"
        raw, cookie = set_cookie(resp)
        attrs = [a.strip().lower() for a in raw.split(";")]
        assert "httponly" in attrs
        assert "samesite=lax" in attrs
        assert "path=/" in attrs
        assert "secure" not in attrs  # no TLS here
        assert len(cookie) == 43  # 32 random bytes, base64url
        rid = digest(cookie)
        assert list(fake.records) == [rid]
        rec = fake.records[rid]
        assert rec["user"] == "alice"
        assert rec["idle_timeout_s"] == 1800
        assert rec["expires_at"] == pytest.approx(T0 + 28800)
        # No part of the raw cookie (no 12 consecutive characters) reached the API.
        sent = b"".join(p.encode() + b for _, p, b in fake.calls)
        assert not [i for i in range(len(cookie) - 11) if cookie[i : i + 12].encode() in sent]
        page = await c.get("/")
        text = await page.text()
        assert page.status == 200
        assert '<span id="user">alice</span>' in text
        assert '<span class="node" id="node">fw-a</span>' in text
        assert cookie not in text and rid not in text
        assert rid[:8] in caplog.text
        leaks = [
            r.getMessage()
            for r in caplog.records
            if cookie in r.getMessage() or rid in r.getMessage()
        ]
        assert not leaks, leaks

    run(tmp_path, scenario)


def test_cookie_is_secure_under_tls(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
        raw, _ = set_cookie(await login(c))
        attrs = [a.strip().lower() for a in raw.split(";")]
        assert {"secure", "httponly", "samesite=lax"} <= set(attrs)

    run(tmp_path, scenario)


def test_no_or_bad_cookie_is_sent_to_login(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal()
        resp = await c.get("/", allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (303, "/login")
        for bad in ("short", "A" * 43, "../../v1/status" + "A" * 28):
            c.session.cookie_jar.update_cookies({"HSD": bad})
            resp = await c.get("/", allow_redirects=False)
            assert (resp.status, resp.headers["Location"]) == (303, "/login"), bad
        assert not any("status" in p for _, p, _ in fake.calls)

    run(tmp_path, scenario)


# --- last_seen coalescing and expiry ---------------------------------------------------------


def test_last_seen_writes_are_coalesced(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal(idle_timeout_s=1800)  # interval: max(5, 180) = 180 s
        rid = digest(set_cookie(await login(c))[1])
        assert fake.writes(rid) == 1  # the create
        for step in range(1, 361):
            clock.t = T0 + step
            assert (await c.get("/", allow_redirects=False)).status == 200
        assert fake.writes(rid) == 1 + 2  # refreshed at +180 and +360 only
        assert fake.records[rid]["last_seen"] == pytest.approx(T0 + 360)

        c2 = await portal(idle_timeout_s=30)  # interval: max(5, 3) = 5 s
        rid2 = digest(set_cookie(await login(c2))[1])
        for step in range(1, 21):
            clock.t = T0 + 360 + step
            assert (await c2.get("/", allow_redirects=False)).status == 200
        assert fake.writes(rid2) == 1 + 4

    run(tmp_path, scenario)


def test_idle_and_lifetime_expiry(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal(idle_timeout_s=30, session_lifetime_s=100)
        await login(c)
        clock.t = T0 + 31  # idle past the timeout: refused
        resp = await c.get("/", allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (303, "/login")

        clock.t = T0 + 200
        await login(c)  # a new session at T0+200, kept active every 10 s
        for step in range(10, 100, 10):
            clock.t = T0 + 200 + step
            assert (await c.get("/", allow_redirects=False)).status == 200
        clock.t = T0 + 300  # the lifetime ends it, however active
        assert (await c.get("/", allow_redirects=False)).status == 303

        # The portal applies the same rule itself, should the API return an expired record.
        fake.expires = False
        clock.t = T0 + 400
        await login(c)
        clock.t = T0 + 431
        assert (await c.get("/", allow_redirects=False)).status == 303

    run(tmp_path, scenario)


def test_a_refresh_never_brings_back_a_session_ended_meanwhile(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal(idle_timeout_s=30)
        rid = digest(set_cookie(await login(c))[1])
        fake.delete_after_get = True  # a logout lands between this hit's look-up and refresh
        clock.t = T0 + 10
        resp = await c.get("/", allow_redirects=False)
        assert resp.status == 303
        assert rid not in fake.records

    run(tmp_path, scenario)


def test_standby_node_and_unreachable_api_answer_503_not_500(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal(idle_timeout_s=30)
        await login(c)
        fake.standby = True  # the node is now a secondary: reads work, writes are refused
        clock.t = T0 + 10  # due for a refresh, which is refused: the page is still served
        assert (await c.get("/", allow_redirects=False)).status == 200
        other = await portal()
        resp = await login(other)
        assert resp.status == 503
        assert "standby" in await resp.text()
        assert "Set-Cookie" not in resp.headers
        assert (await c.post("/logout", allow_redirects=False)).status == 503
        fake.standby = False
        lonely = await portal(users_file=tmp_path / "users")
        lonely.session.cookie_jar.update_cookies({"HSD": "B" * 43})  # a well-formed cookie
        (tmp_path / "api.sock").unlink()  # the daemon is gone
        for resp in (await lonely.get("/", allow_redirects=False), await login(lonely)):
            assert resp.status == 503
            assert "unavailable" in await resp.text()

    run(tmp_path, scenario)


# --- logout, single session, tunnel -----------------------------------------------------------


def test_logout_deletes_the_record(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        c = await portal()
        _, cookie = set_cookie(await login(c))
        resp = await c.post("/logout", allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (303, "/login")
        cleared = resp.headers["Set-Cookie"].lower()
        assert "max-age=0" in cleared or "expires=thu, 01 jan 1970" in cleared
        assert digest(cookie) not in fake.records
        assert ("DELETE", f"/v1/records/sslvpn_web_session/{digest(cookie)}") in [
            (m, p) for m, p, _ in fake.calls
        ]
        # The old cookie, presented again (another node would do the same look-up): refused.
        other = await portal("fw-b")
        other.session.cookie_jar.update_cookies({"HSD": cookie})
        assert (await other.get("/", allow_redirects=False)).status == 303

    run(tmp_path, scenario)


def test_single_session_ends_the_users_earlier_session(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        first, second, bob = [await portal(single_session=True) for _ in range(3)]
        await login(first)
        await login(bob, "bob")
        await login(second)  # alice again, elsewhere
        assert (await first.get("/", allow_redirects=False)).status == 303
        assert (await second.get("/", allow_redirects=False)).status == 200
        assert (await bob.get("/", allow_redirects=False)).status == 200
        assert sorted(r["user"] for r in fake.records.values()) == ["alice", "bob"]

        many = [await portal(single_session=False) for _ in range(2)]
        for c in many:
            await login(c)
        for c in many:
            assert (await c.get("/", allow_redirects=False)).status == 200

    run(tmp_path, scenario)


def test_tunnel_needs_a_login_on_this_node(tmp_path: Path) -> None:
    async def scenario(fake: FakeApi, portal: Any, clock: Clock) -> None:
        a = await portal("fw-a")
        assert (await a.get("/tunnel")).status == 401  # not logged in
        _, cookie = set_cookie(await login(a))
        resp = await a.get("/tunnel")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        line = b""
        while not line.startswith(b"data: "):
            line = await resp.content.readline()
        hello = json.loads(line[6:])
        assert hello["node"] == "fw-a" and hello["user"] == "alice"
        resp.close()
        # Another node shares the web session (a replicated record), not the tunnel.
        b = await portal("fw-b")
        b.session.cookie_jar.update_cookies({"HSD": cookie})
        assert (await b.get("/", allow_redirects=False)).status == 200
        resp = await b.get("/tunnel")
        assert resp.status == 401
        assert (await resp.json())["error"] == "tunnel_login_required"
        assert not any("tunnel" in p for _, p, _ in fake.calls)  # nothing stored for it
        await login(b)  # logging in again on this node opens it
        resp = await b.get("/tunnel")
        assert resp.status == 200
        resp.close()

    run(tmp_path, scenario)


# --- users file and config --------------------------------------------------------------------


def test_portal_user_add_writes_salted_scrypt_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users"
    for password in ("first password", "second password"):
        monkeypatch.setattr(sys, "stdin", StringIO(password + "\n"))
        rc = cli.main(
            ["portal-user", "add", "carol", "--users-file", str(users), "--password-stdin"]
        )
        assert rc == 0
    monkeypatch.setattr(sys, "stdin", StringIO("dave password\n"))
    assert (
        cli.main(["portal-user", "add", "dave", "--users-file", str(users), "--password-stdin"])
        == 0
    )
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    text = users.read_text()
    assert "password" not in text
    lines = text.splitlines()
    assert [ln.split(":")[:2] for ln in lines] == [["carol", "scrypt"], ["dave", "scrypt"]]
    loaded = read_users(users)
    assert verify(loaded, "carol", "second password")
    assert not verify(loaded, "carol", "first password")
    assert not verify(loaded, "eve", "second password")
    assert loaded["carol"].salt != loaded["dave"].salt
    assert "<redacted>" in repr(loaded["carol"])
    monkeypatch.setattr(sys, "stdin", StringIO("x\n"))
    assert (
        cli.main(["portal-user", "add", "bad name", "--users-file", str(users), "--password-stdin"])
        == 2
    )
    assert "bad name" in capsys.readouterr().err
    users.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_users(users)


def _config(tmp_path: Path, portal: str) -> Any:
    text = f"""
[node]
name = "fw-a"
[link]
listen = "127.0.0.1:7000"
peers = ["127.0.0.1:7001"]
psk_file = "psk"
[api]
socket = "api.sock"
{portal}
"""
    return parse_config(tomllib.loads(text), tmp_path / "x.toml", load_key=False)


def test_portal_section_is_optional_and_validated(tmp_path: Path) -> None:
    assert _config(tmp_path, "").portal is None
    cfg = _config(tmp_path, '[portal]\nlisten = "0.0.0.0:8443"\nusers_file = "users"\n')
    assert cfg.portal.users_file == (tmp_path / "users").absolute()
    assert cfg.portal.cookie_name == "HASYNCD_SESSION"
    assert (cfg.portal.idle_timeout_s, cfg.portal.single_session) == (1800, False)
    for bad, match in (
        ('listen = "0.0.0.0:8443"\nusers_file = "u"\ntls_cert = "c"', "both tls_cert"),
        ('listen = "0.0.0.0:8443"', "users_file is required"),
        ('listen = "0.0.0.0:8443"\nusers_file = "u"\nidle_timeout_s = 5', "idle_timeout_s"),
        ('listen = "0.0.0.0:8443"\nusers_file = "u"\ncookie_name = "a b"', "cookie_name"),
        ('listen = "0.0.0.0:8443"\nusers_file = "u"\ncolour = 1', "unknown key"),
    ):
        with pytest.raises(ConfigError, match=match):
            _config(tmp_path, "[portal]\n" + bad)


def test_portal_command_refuses_bad_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_key(tmp_path / "psk")
    common = (
        '[node]\nname = "fw-a"\n[link]\nlisten = "127.0.0.1:7000"\n'
        'peers = ["127.0.0.1:7001"]\npsk_file = "psk"\n[api]\nsocket = "api.sock"\n'
    )
    portal = '[portal]\nlisten = "127.0.0.1:8443"\nusers_file = "users"\n'
    cases = (
        (common, "no [portal] section"),
        (common + portal, 'needs [sync] mode = "sync"'),
        (common + '[sync]\nmode = "sync"\n' + portal, "chmod 600"),
    )
    (tmp_path / "users").write_text("")
    (tmp_path / "users").chmod(0o644)
    for text, reason in cases:
        cfg = tmp_path / "x.toml"
        cfg.write_text(text)
        assert cli.main(["portal", "-c", str(cfg)]) == 2
        assert reason in capsys.readouterr().err
    # portal-user with --config writes the config's users_file
    (tmp_path / "users").unlink()
    monkeypatch.setattr(sys, "stdin", StringIO("pw for erin\n"))
    assert cli.main(["portal-user", "add", "erin", "-c", str(cfg), "--password-stdin"]) == 0
    assert verify(read_users(tmp_path / "users"), "erin", "pw for erin")
