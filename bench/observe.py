"""Seeing writes arrive on a secondary, in a separate process so it never competes for the GIL.

``watch`` runs in a child process: it subscribes to the secondary (hasyncd's
``GET /v1/events?types=record_changed`` SSE stream, or a Redis replica's
keyspace notifications) and stamps every record's arrival with
``time.monotonic()``, the same system-wide clock the writer stamps acks with.
It sends back ``{id: arrival}`` once it has seen as many ids as the writer
said it wrote (``Watcher.expect``) or the deadline passed.

``UnixHTTP`` is a keep-alive HTTP/1.1 connection to an API Unix socket.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

try:
    import redis
except ImportError:  # the hasyncd-only run needs no Redis client
    redis = None

READY_TIMEOUT_S = 10.0
UNKNOWN = 2**62  # expected arrivals before the writer has said how many it wrote


class UnixHTTP(http.client.HTTPConnection):
    """One persistent connection to the local API over its Unix socket."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock

    def call(
        self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": ctype} if body is not None else {}
        self.request(method, path, body=body, headers=headers)
        resp = self.getresponse()
        return resp.status, resp.read()


def _watch_sse(sock: str, deadline: float, expected: Any, ready: Any) -> dict[str, float]:
    # The stream is silent only when writes stop: a read timeout past the deadline ends it.
    conn = UnixHTTP(sock, timeout=max(1.0, deadline - time.monotonic()))
    conn.request("GET", "/v1/events?types=record_changed")
    resp = conn.getresponse()
    seen: dict[str, float] = {}
    while len(seen) < expected.value and time.monotonic() < deadline:
        try:
            line = resp.readline()
        except TimeoutError:
            break
        now = time.monotonic()
        if line.startswith(b"event: hello"):
            ready.set()
        elif line.startswith(b"data: "):
            ev = json.loads(line[6:])
            if ev.get("op") == "put":
                seen.setdefault(ev["id"], now)
        elif not line:
            break
    conn.close()
    return seen


def _watch_redis(
    port: int, prefix: str, deadline: float, expected: Any, ready: Any
) -> dict[str, float]:
    if redis is None:
        raise RuntimeError("redis-py is not installed (pip install -e '.[bench]')")
    r = redis.Redis(host="127.0.0.1", port=port)
    sub = r.pubsub(ignore_subscribe_messages=True)
    channel = f"__keyspace@0__:{prefix}"
    sub.psubscribe(channel + "*")
    sub.get_message(timeout=READY_TIMEOUT_S)  # the psubscribe confirmation
    ready.set()
    seen: dict[str, float] = {}
    cut = len(channel)
    while len(seen) < expected.value and time.monotonic() < deadline:
        msg = sub.get_message(timeout=0.5)
        if msg is None:
            continue
        now = time.monotonic()
        if msg["data"] == b"set":
            seen.setdefault(msg["channel"][cut:].decode(), now)
    sub.close()
    return seen


def _child(target: str, args: tuple[Any, ...], expected: Any, ready: Any, out: Connection) -> None:
    fn = _watch_sse if target == "sse" else _watch_redis
    out.send(fn(*args, expected, ready))
    out.close()


class Watcher:
    """The watcher process: ``with Watcher("sse", (sock, deadline)) as w:`` write,
    ``w.expect(n)``, then ``w.result(timeout)`` gives the arrivals."""

    def __init__(self, target: str, args: tuple[Any, ...]) -> None:
        ctx = mp.get_context("spawn")
        self._ready = ctx.Event()
        self._expected = ctx.RawValue("q", UNKNOWN)
        self._recv, send = ctx.Pipe(duplex=False)
        child_args = (target, args, self._expected, self._ready, send)
        self._proc = ctx.Process(target=_child, args=child_args, daemon=True)
        self._proc.start()
        send.close()

    def __enter__(self) -> Watcher:
        if not self._ready.wait(READY_TIMEOUT_S):
            self._proc.kill()
            raise RuntimeError("the arrival watcher did not subscribe in time")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.is_alive():
            self._proc.join(1.0)
        if self._proc.is_alive():
            self._proc.kill()

    def expect(self, n: int) -> None:
        """The writer is done: ``n`` records were written."""
        self._expected.value = n

    def result(self, timeout: float) -> dict[str, float]:
        if not self._recv.poll(timeout):
            self._proc.kill()
            raise RuntimeError("the arrival watcher did not report in time")
        seen: dict[str, float] = self._recv.recv()
        self._proc.join(5.0)
        return seen
