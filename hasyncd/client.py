"""A small synchronous client for the local API (Unix socket or TCP): CLI, lab and tests."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import msgpack

from hasyncd.secret import Secret


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """``Client(socket="/run/hasyncd/api.sock")`` or ``Client(address="127.0.0.1:7480")``."""

    def __init__(
        self,
        *,
        socket: str | None = None,
        address: str | None = None,
        timeout: float = 10.0,
        token: Secret | None = None,
    ) -> None:
        if (socket is None) == (address is None):
            raise ValueError("give exactly one of socket= or address=")
        self.socket, self.address, self.timeout = socket, address, timeout
        self._token = token  # the TCP API's bearer token

    def _conn(self) -> http.client.HTTPConnection:
        if self.socket is not None:
            return _UnixConnection(self.socket, self.timeout)
        host, _, port = str(self.address).rpartition(":")
        return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        conn = self._conn()
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            headers = {"Content-Type": content_type} if data is not None else {}
            if self._token is not None:
                headers["Authorization"] = "Bearer " + self._token.reveal().hex()
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            ctype = resp.getheader("Content-Type", "")
        finally:
            conn.close()
        if ctype.startswith("application/json"):
            return resp.status, json.loads(payload)
        if ctype.startswith("application/msgpack"):
            return resp.status, msgpack.unpackb(payload, raw=False)
        return resp.status, payload.decode("utf-8", "replace")

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def put(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> tuple[int, Any]:
        return self.request("DELETE", path)

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def batch(self, ops: list[dict[str, Any]]) -> tuple[int, Any]:
        lines = b"".join(json.dumps(op).encode() + b"\n" for op in ops)
        return self.request(
            "POST", "/v1/records:batch", raw=lines, content_type="application/x-ndjson"
        )

    def status(self) -> dict[str, Any]:
        code, body = self.get("/v1/status")
        if code != 200:
            raise RuntimeError(f"status: HTTP {code}: {body}")
        return body  # type: ignore[no-any-return]
