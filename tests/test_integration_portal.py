"""End to end, HTTP client: a web-mode login survives kill -9 of its node; a tunnel does not.

Two real hasyncd nodes on loopback, each with its own real ``hasyncd portal``
process (HTTPS, the lab's self-signed certificate).  One aiohttp client with
one cookie jar logs in on fw-a's portal; fw-a's daemon and portal are killed
with SIGKILL; the same client is then served by fw-b's portal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hasyncd.lab import LabCluster, free_port
from hasyncd.portal import lab as portal_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USERS = {"alice": "alice pass 1", "bob": "bob pass 2", "carol": "carol pass 3"}
ADD_USER = [sys.executable, "-m", "hasyncd", "portal-user", "add"]
IDLE_S = 12  # short, so that the expiry case ends within the test


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[LabCluster, portal_lab.PortalSetup]]:
    lab = LabCluster.loopback(tmp_path, base={"sync": {"mode": "sync", "sync_timeout_ms": 1000}})
    setup = portal_lab.configure(
        lab,
        {name: f"127.0.0.1:{free_port()}" for name in lab.nodes},
        {},
        tls_names=["127.0.0.1"],
        idle_timeout_s=IDLE_S,
        session_lifetime_s=3600,
    )
    for user, password in USERS.items():  # through the CLI, as an operator would
        proc = subprocess.run(
            [*ADD_USER, user, "--users-file", str(setup.users_file), "--password-stdin"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    lab.start()
    try:
        lab.wait_pair()
        for node in lab.nodes.values():
            node.start_portal()
        for node in lab.nodes.values():
            portal_lab.wait_portal(lab, node, setup.urls[node.name], setup.ssl_context())
        yield lab, setup
    finally:
        for node in lab.nodes.values():
            node.kill()


class Client:
    """One user agent: an aiohttp session with its own cookie jar."""

    def __init__(self, ctx: ssl.SSLContext | None) -> None:
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # unsafe: allows IP-address hosts
            connector=aiohttp.TCPConnector(ssl=ctx if ctx is not None else False),
        )

    async def login(self, base: str, user: str, password: str) -> aiohttp.ClientResponse:
        async with self.http.post(
            f"{base}/login", data={"username": user, "password": password}, allow_redirects=False
        ) as resp:
            await resp.read()
            return resp

    async def page(self, base: str) -> tuple[int, str, str]:
        """GET / following redirects: (status, final path, body)."""
        async with self.http.get(f"{base}/") as resp:
            return resp.status, resp.url.path, await resp.text()

    async def tunnel(self, base: str) -> tuple[int, dict[str, Any]]:
        """Open /tunnel; the first SSE event's data, or the JSON refusal."""
        async with self.http.get(f"{base}/tunnel") as resp:
            if resp.status != 200:
                return resp.status, await resp.json()
            async for line in resp.content:
                if line.startswith(b"data: "):
                    resp.close()  # the client ends its tunnel
                    return 200, json.loads(line[6:])
        return resp.status, {}

    def cookie(self, name: str = "HASYNCD_SESSION") -> str:
        return next(c.value for c in self.http.cookie_jar if c.key == name)


def served_by(body: str) -> str | None:
    m = re.search(r'id="welcome".*<span class="node" id="node">([^<]+)</span>', body, re.S)
    return m.group(1) if m else None


def test_web_login_survives_kill_of_node_and_portal_tunnel_does_not(
    cluster: tuple[LabCluster, portal_lab.PortalSetup],
) -> None:
    lab, setup = cluster
    a, b = lab["fw-a"], lab["fw-b"]
    assert lab.primary() is a
    url_a, url_b = setup.urls["fw-a"], setup.urls["fw-b"]
    ctx = setup.ssl_context()

    async def main() -> None:
        alice, bob, carol = Client(ctx), Client(ctx), Client(ctx)
        try:
            # carol logs in first and then stays idle: her session expires by itself.
            assert (await carol.login(url_a, "carol", USERS["carol"])).status == 303
            t_carol = time.time()
            resp = await alice.login(url_a, "alice", USERS["alice"])
            assert resp.status == 303
            assert resp.headers["Location"] == "/"
            attrs = {x.strip().lower() for x in resp.headers["Set-Cookie"].split(";")}
            assert {"httponly", "samesite=lax", "secure"} <= attrs
            status, path, body = await alice.page(url_a)
            assert (status, path, served_by(body)) == (200, "/", "fw-a")
            code, hello = await alice.tunnel(url_a)
            assert code == 200 and hello["node"] == "fw-a"
            # bob logs in and out before the failover: his logout must hold on fw-b.
            assert (await bob.login(url_a, "bob", USERS["bob"])).status == 303
            bob_cookie = bob.cookie()
            async with bob.http.post(f"{url_a}/logout", allow_redirects=False) as r:
                assert r.status == 303
            bob.http.cookie_jar.update_cookies({"HASYNCD_SESSION": bob_cookie})  # replays it

            a.kill()  # SIGKILL of fw-a's hasyncd and of its portal
            t_kill = time.monotonic()
            lab.wait(lambda: b.role() == "primary", 10, "fw-b to promote")

            status, path, body = await alice.page(url_b)
            assert (status, path) == (200, "/"), body
            assert served_by(body) == "fw-b"
            assert '<span id="user">alice</span>' in body
            assert 'id="login"' not in body  # no login form
            print(f"alice served by fw-b {time.monotonic() - t_kill:.2f} s after the kill")

            status, path, body = await bob.page(url_b)
            assert (status, path) == (200, "/login")  # logged out before the failover
            assert 'id="login"' in body

            code, refused = await alice.tunnel(url_b)
            assert code == 401
            assert refused["error"] == "tunnel_login_required"

            # carol's idle timeout passes on fw-b (alice stays active meanwhile).
            while time.time() < t_carol + IDLE_S + 1:
                assert (await alice.page(url_b))[1] == "/"
                await asyncio.sleep(1)
            status, path, _ = await carol.page(url_b)
            assert (status, path) == (200, "/login")
            carol_id = hashlib.sha256(carol.cookie().encode()).hexdigest()
            assert b.client.get(f"/v1/records/sslvpn_web_session/{carol_id}")[0] == 404
            alice_id = hashlib.sha256(alice.cookie().encode()).hexdigest()
            code, rec = b.client.get(f"/v1/records/sslvpn_web_session/{alice_id}")
            assert code == 200
            assert rec["record"]["last_seen"] > t_carol + 5  # refreshed through fw-b

            # The tunnel needs a new login, which then works on fw-b.
            assert (await alice.login(url_b, "alice", USERS["alice"])).status == 303
            code, hello = await alice.tunnel(url_b)
            assert code == 200 and hello["node"] == "fw-b"
            cookies = [alice_id, carol_id, bob_cookie, alice.cookie(), carol.cookie()]
        finally:
            for c in (alice, bob, carol):
                await c.http.close()
            await asyncio.sleep(0.25)  # aiohttp: lets SSL transports finish closing
        # The raw cookies never reached hasyncd or any log; digests only as 8-hex prefixes.
        full_ids = [hashlib.sha256(c.encode()).hexdigest() for c in cookies[2:]]
        logs = {p.name: p.read_text() for n in lab.nodes.values() for p in (n.log, n.portal_log)}
        for name, text in logs.items():
            for secret in cookies + full_ids:
                assert secret not in text, f"{name} shows a cookie or a full digest"
        assert alice_id[:8] in logs["fw-a-portal.log"]

    asyncio.run(main())
