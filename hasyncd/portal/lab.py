"""The portal in a ``LabCluster``: its config, users and certificate, and the lab's portal step.

``configure`` adds a ``[portal]`` section to every node of a lab (shared users
file and certificate, one listen address per node).  ``lab_steps`` is the end
of ``hasyncd lab``: a web-mode login through the primary's portal survives a
``kill -9`` of that node; its tunnel-mode session does not.
"""

from __future__ import annotations

import http.cookiejar
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hasyncd.portal.tls import write_self_signed
from hasyncd.portal.users import add_user

if TYPE_CHECKING:
    from hasyncd.labcluster import LabCluster, LabNode

LAB_USER = "alice"
# A lab account, hashed into the lab directory only.
LAB_PASSWORD = "correct horse battery staple"  # noqa: S105


@dataclass
class PortalSetup:
    users_file: Path
    cert: Path | None
    urls: dict[str, str]  # node name -> base URL of its portal

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that trusts exactly the lab certificate."""
        if self.cert is None:
            return None
        return ssl.create_default_context(cafile=str(self.cert))


def configure(
    lab: LabCluster,
    listens: Mapping[str, str],
    users: Mapping[str, str],
    *,
    tls_names: Sequence[str] | None = None,
    **portal: Any,
) -> PortalSetup:
    """Write users and (with ``tls_names``) a self-signed pair; add [portal] to every node."""
    users_file = lab.dir / "portal-users"
    for name, password in users.items():
        add_user(users_file, name, password)
    cert = key = None
    if tls_names:
        cert, key = lab.dir / "portal.crt", lab.dir / "portal.key"
        write_self_signed(cert, key, tls_names)
    section: dict[str, Any] = {"users_file": str(users_file), **portal}
    if cert is not None and key is not None:
        section.update(tls_cert=str(cert), tls_key=str(key))
    lab.base.setdefault("portal", {}).update(section)
    lab.base.setdefault("sync", {})["mode"] = "sync"
    scheme = "https" if cert is not None else "http"
    for name, listen in listens.items():
        lab[name].extra.setdefault("portal", {})["listen"] = listen
    return PortalSetup(users_file, cert, {n: f"{scheme}://{a}" for n, a in listens.items()})


def wait_portal(lab: LabCluster, node: LabNode, url: str, ctx: ssl.SSLContext | None) -> None:
    """Until the node's portal answers /healthz (it starts after its daemon's API)."""

    def up() -> bool:
        if node.portal is not None and node.portal.poll() is not None:
            tail = node.portal_log.read_text()[-2000:] if node.portal_log.exists() else ""
            raise RuntimeError(f"portal of {node.name} exited {node.portal.returncode}:\n{tail}")
        try:
            # S310: url is the lab's own http(s) portal address.
            with urllib.request.urlopen(f"{url}/healthz", timeout=2, context=ctx):  # noqa: S310
                return True
        except (OSError, urllib.error.URLError):
            return False

    lab.wait(up, 20, f"the portal of {node.name}")


class Browser:
    """A minimal HTTP client with a cookie jar (urllib): what a browser does, without one."""

    def __init__(self, ctx: ssl.SSLContext | None) -> None:
        self.jar = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), urllib.request.HTTPSHandler(context=ctx)
        )

    def request(self, url: str, form: Mapping[str, str] | None = None) -> tuple[int, str, str]:
        """(status, final URL, body); redirects are followed like a browser's."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        try:
            with self._opener.open(url, data=data, timeout=30) as resp:
                return resp.status, resp.geturl(), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.geturl(), exc.read().decode()

    def first_event(self, url: str) -> tuple[int, dict[str, Any]]:
        """Open an SSE stream, read its first event's data, close it."""
        try:
            with self._opener.open(url, timeout=30) as resp:
                for line in resp:
                    if line.startswith(b"data: "):
                        return resp.status, json.loads(line[6:])
                return resp.status, {}
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def _span(body: str, marker: str) -> str | None:
    if 'id="welcome"' not in body or marker not in body:
        return None  # not the logged-in page
    return body.split(marker, 1)[1].split("<", 1)[0]


def _served_by(body: str) -> str | None:
    return _span(body, '<span class="node" id="node">')


def _user(body: str) -> str | None:
    return _span(body, '<span id="user">')


def lab_steps(lab: LabCluster, setup: PortalSetup, say: Any) -> bool:
    """Login on the primary's portal, kill -9 that node, still logged in on the other."""
    ctx = setup.ssl_context()
    first, other = lab.wait_pair()
    home = next(iter(lab.nodes.values()))
    if first is not home:  # the story reads "log in on fw-a": hand the role back first
        code, body = first.client.post("/v1/failover")
        new = body.get("new_primary")
        say(f"== POST /v1/failover on {first.name}: HTTP {code}, new primary {new}")
        lab.wait(lambda: home.role() == "primary", 10, f"{home.name} to take over")
        first, other = lab.wait_pair()
    say(f"== web-mode portal: `hasyncd portal` on both nodes ({', '.join(setup.urls.values())})")
    for node in lab.nodes.values():
        if node.portal is None:
            node.start_portal()
    for node in lab.nodes.values():
        wait_portal(lab, node, setup.urls[node.name], ctx)
    browser = Browser(ctx)
    code, url, body = browser.request(f"{setup.urls[first.name]}/login", {"username": LAB_USER})
    say(f"   POST /login without a password on {first.name}: HTTP {code}")
    code, url, body = browser.request(
        f"{setup.urls[first.name]}/login", {"username": LAB_USER, "password": LAB_PASSWORD}
    )
    served = _served_by(body)
    say(f"   {LAB_USER} logs in on {first.name}'s portal: HTTP {code} {url}, served by {served}")
    if served != first.name:
        return False
    code, hello = browser.first_event(f"{setup.urls[first.name]}/tunnel")
    tid = hello.get("tunnel_id")
    say(f"   tunnel-mode session opened on {first.name}: HTTP {code}, tunnel {tid}")
    if code != 200:
        return False

    say(f"== failover: kill -9 {first.name} (hasyncd and its portal)")
    first.kill()
    t_kill = time.monotonic()
    lab.wait(lambda: other.role() == "primary", 10, "promotion")
    # The same client, now sent to the other node (a VIP or DNS would do this).
    code, url, body = browser.request(f"{setup.urls[other.name]}/")
    served = _served_by(body)
    form = 'id="login"' in body
    say(
        f"   GET / on {other.name} {time.monotonic() - t_kill:.2f} s after the kill: HTTP {code}, "
        f"logged in as {_user(body)}, served by {served}, login form shown: {form}"
    )
    code, refused = browser.first_event(f"{setup.urls[other.name]}/tunnel")
    why = f"{refused.get('error')}: {refused.get('message')}"
    say(f"   tunnel-mode on {other.name}: HTTP {code} {why}")
    if served != other.name or _user(body) != LAB_USER or form or code != 401:
        return False
    code, url, body = browser.request(
        f"{setup.urls[other.name]}/login", {"username": LAB_USER, "password": LAB_PASSWORD}
    )
    code, hello = browser.first_event(f"{setup.urls[other.name]}/tunnel")
    say(f"   after logging in again on {other.name}: tunnel HTTP {code} ({hello.get('node')})")
    browser.request(f"{setup.urls[other.name]}/logout", {})
    code, url, _ = browser.request(f"{setup.urls[other.name]}/")
    say(f"   after POST /logout: GET / ends at {url.rsplit('/', 1)[-1] or '/'} (HTTP {code})")
    return code == 200 and url.endswith("/login")
