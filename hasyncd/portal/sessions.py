"""The portal's three calls to the local hasyncd API, over its Unix socket (or loopback TCP).

* create: ``PUT /v1/records/sslvpn_web_session/{sha256(cookie)}`` (sync mode);
* look up: ``GET`` the same path (an expired record reads as absent on every node);
* delete: ``DELETE`` it (logout, single session), replicated as a tombstone.

Plus ``touch`` (the coalesced ``last_seen`` refresh, a PUT) and ``of_user``
(a paged scan, for ``single_session``).  Only the digest ever leaves the
portal; log lines and errors name a session by ``short(digest)``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp

from hasyncd.errors import PortalError

KIND = "sslvpn_web_session"
DIGEST_PREFIX = 8  # hex characters of a session digest that logs may show
# The API's own longest wait is the sync timeout (<= 60 s); a little above it.
API_TIMEOUT_S = 65.0
LIST_PAGE = 1000  # the API's largest page


def digest(cookie: str) -> str:
    """The record id: SHA-256 hex of the raw cookie value."""
    return hashlib.sha256(cookie.encode()).hexdigest()


def short(rid: str) -> str:
    return rid[:DIGEST_PREFIX]


class SessionApi:
    """An async client of one node's local API; ``socket`` or ``address`` (host:port)."""

    def __init__(self, *, socket: str | None = None, address: str | None = None) -> None:
        if (socket is None) == (address is None):
            raise ValueError("give exactly one of socket= or address=")
        self._socket, self._address = socket, address
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector: aiohttp.BaseConnector
        if self._socket is not None:
            connector = aiohttp.UnixConnector(path=self._socket)
            base = "http://localhost"
        else:
            connector = aiohttp.TCPConnector()
            base = f"http://{self._address}"
        self._http = aiohttp.ClientSession(
            base_url=base,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S),
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self._http is not None, "start() first"
        try:
            async with self._http.request(method, path, json=body) as resp:
                data = await resp.json(content_type=None)
                return resp.status, data
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PortalError(
                "api_unreachable", f"the local hasyncd API did not answer: {type(exc).__name__}"
            ) from None
        except ValueError:
            raise PortalError("api_error", "the local hasyncd API sent no JSON") from None

    @staticmethod
    def _refused(what: str, rid: str, code: int, body: Any) -> PortalError:
        err = body.get("error") if isinstance(body, dict) else None
        if err == "not_primary":
            return PortalError("not_primary", f"{what} {short(rid)}: this node is not primary")
        if err in ("fenced", "handover_in_progress"):
            return PortalError(str(err), f"{what} {short(rid)}: the node refuses writes ({err})")
        return PortalError("api_error", f"{what} {short(rid)}: HTTP {code} {err}")

    async def create(self, rid: str, record: dict[str, Any]) -> bool:
        """Store a new session; True if the secondaries confirmed it (sync mode)."""
        code, body = await self._call("PUT", f"/v1/records/{KIND}/{rid}", record)
        if code not in (200, 201, 202):
            raise self._refused("create", rid, code, body)
        return bool(body.get("replicated", False))

    async def touch(self, rid: str, record: dict[str, Any]) -> bool:
        """Rewrite with a new ``last_seen``; False if the record was gone (it was re-created)."""
        code, body = await self._call("PUT", f"/v1/records/{KIND}/{rid}", record)
        if code not in (200, 201, 202):
            raise self._refused("refresh", rid, code, body)
        return code != 201

    async def get(self, rid: str) -> dict[str, Any] | None:
        code, body = await self._call("GET", f"/v1/records/{KIND}/{rid}")
        if code == 404:
            return None
        if code != 200 or not isinstance(body, dict) or not isinstance(body.get("record"), dict):
            raise PortalError("api_error", f"look up {short(rid)}: HTTP {code}")
        record: dict[str, Any] = body["record"]
        return record

    async def delete(self, rid: str) -> bool:
        """True if a record was deleted, False if there was none."""
        code, body = await self._call("DELETE", f"/v1/records/{KIND}/{rid}")
        if code == 404:
            return False
        if code not in (200, 202):
            raise self._refused("delete", rid, code, body)
        return True

    async def of_user(self, user: str) -> list[str]:
        """Ids of the live sessions of ``user`` (a scan of every session, in pages)."""
        out: list[str] = []
        after = ""
        while True:
            path = f"/v1/records/{KIND}?limit={LIST_PAGE}" + (f"&after={after}" if after else "")
            code, body = await self._call("GET", path)
            if code != 200 or not isinstance(body, dict):
                raise PortalError("api_error", f"list sessions: HTTP {code}")
            out.extend(item["id"] for item in body["items"] if item["record"]["user"] == user)
            after = body.get("next") or ""
            if not after:
                return out

    async def role(self) -> str | None:
        code, body = await self._call("GET", "/v1/status")
        return str(body.get("role")) if code == 200 and isinstance(body, dict) else None
