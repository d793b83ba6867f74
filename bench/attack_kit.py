"""The attacker's tools of bench/attacks.py: raw HTTP, raw link connections, a byte-flipping proxy.

Everything here talks to the daemons from outside, over loopback sockets,
as a local unprivileged user or an on-path attacker would.  Nothing imports
the daemon's internals except the wire format's public pieces (a Channel to
build INITs under a key the attacker chose).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from hasyncd.secret import Secret
from hasyncd.wire import handshake as hs
from hasyncd.wire.channel import Channel
from hasyncd.wire.messages import Hello

REPLY_TIMEOUT_S = 10.0  # an answer to a complete request on loopback comes in milliseconds


@dataclass
class Outcome:
    """One attack class: what was tried, how the nodes answered."""

    name: str
    target: str
    attempts: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by status/code or close reason
    accepted: int = 0  # must be 0 where the attack must fail
    must_fail: bool = True
    note: str = ""

    def add(self, label: str, ok: bool) -> None:
        self.attempts += 1
        if ok:
            self.accepted += 1
        else:
            self.rejected[label] += 1


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def http_raw(address: str, data: bytes, timeout: float = REPLY_TIMEOUT_S) -> tuple[int, bytes]:
    """Send raw bytes to a TCP or Unix (a path) HTTP server: (status, body), status 0 if none."""
    if address.startswith("/"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = address
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = host_port(address)
    with s:
        s.settimeout(timeout)
        s.connect(target)
        s.sendall(data)
        raw = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                raw += chunk
                if _complete(raw):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    if not raw.startswith(b"HTTP/1."):
        return 0, raw
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def request(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    token: str | None = None,
    ctype: str | None = "application/json",
    extra: bytes = b"",
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: hasyncd", "Connection: close"]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    if body or method in ("PUT", "POST"):
        if ctype is not None:
            head.append(f"Content-Type: {ctype}")
        head.append(f"Content-Length: {len(body)}")
    return "\r\n".join(head).encode() + b"\r\n" + extra + b"\r\n" + body


def error_code(body: bytes) -> str:
    """The API's JSON error code, or ``not-json`` (a refusal outside the API's format)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "not-json"
    return str(doc.get("error", "no-error-field")) if isinstance(doc, dict) else "not-object"


# --- held connections (slowloris, slow bodies, idle floods) -------------------------------


def open_conn(address: str, timeout: float) -> socket.socket:
    """Connect; on a Unix socket whose listen backlog is full, keep trying (as a flood does)."""
    if not address.startswith("/"):
        return socket.create_connection(host_port(address), timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(address)
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
            continue
        return s


def wait_closed(s: socket.socket, deadline: float) -> tuple[bool, bytes]:
    """Read until the server closes or ``deadline``: (closed, what it sent)."""
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, got
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return False, got
        except OSError:
            return True, got
        if not chunk:
            return True, got
        got += chunk


def trickle(
    s: socket.socket, deadline: float, every: float, byte: bytes = b"x"
) -> tuple[bool, bytes]:
    """Send one byte every ``every`` seconds until the server answers, closes, or ``deadline``."""
    got = b""
    while time.monotonic() < deadline:
        try:
            s.sendall(byte)
        except OSError:
            return True, got
        closed, more = wait_closed(s, min(deadline, time.monotonic() + every))
        got += more
        if closed or got:
            return closed, got
    return False, got


# --- the HA link -------------------------------------------------------------------------


def wrong_key_init(group_id: int) -> bytes:
    """An INIT frame under a random key: what a host without the cluster key can send."""
    ch = Channel(
        initiator=True,
        psk=Secret(os.urandom(32)),
        group_id=group_id,
        hello=Hello("attacker", os.urandom(16), 4242, 1 << 20, ""),
    )
    ch.start()
    return ch.take_output()


async def link_attempt(address: str, payload: bytes, wait: float) -> str:
    """Connect to a link port, send ``payload``; how the node ended it."""
    host, port = host_port(address)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
    except (OSError, TimeoutError):
        return "connect_failed"
    try:
        if payload:
            writer.write(payload)
            await writer.drain()
        try:
            head = await asyncio.wait_for(reader.readexactly(4), wait)
        except asyncio.IncompleteReadError:
            return "closed"
        except TimeoutError:
            return "still_open"
        (size,) = struct.unpack(">I", head)
        body = await asyncio.wait_for(reader.readexactly(min(size, 1024)), wait)
        _version, kind = hs.parse_kind(body)
        if kind is hs.HsType.REJECT:
            return "reject:" + hs.parse_reject(body)[0]
        return "answered:" + kind.name.lower()  # a RESP would mean the attacker got in
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return "closed"
    finally:
        writer.close()


class FlipProxy:
    """A TCP forwarder on the HA link path (the on-path attacker).

    ``corrupt(n)`` flips one byte in each of the next ``n`` chunks that pass
    after a connection's first 512 bytes (past the handshake); ``garbage(n)``
    injects 64 random bytes before the next ``n`` such chunks.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.address = ""
        self._flips = 0
        self._garbage = 0
        self.done_flips = 0
        self.done_garbage = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def clear(self) -> None:
        """Drop tampering not done yet (the proxy that carried no link keeps none pending)."""
        with self._lock:
            self._flips = self._garbage = 0

    def corrupt(self, n: int) -> None:
        with self._lock:
            self._flips += n

    def garbage(self, n: int) -> None:
        with self._lock:
            self._garbage += n

    def _take(self, which: str) -> bool:
        with self._lock:
            if which == "flip" and self._flips > 0:
                self._flips -= 1
                self.done_flips += 1
                return True
            if which == "garbage" and self._garbage > 0:
                self._garbage -= 1
                self.done_garbage += 1
                return True
            return False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()

    async def _conn(self, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        self.connections += 1
        host, port = host_port(self.target)
        try:
            r2, w2 = await asyncio.open_connection(host, port)
        except OSError:
            w1.close()
            return
        await asyncio.gather(self._pipe(r1, w2), self._pipe(r2, w1), return_exceptions=True)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        passed = 0
        try:
            while chunk := await r.read(65536):
                if passed > 512 and len(chunk) > 8 and self._take("flip"):
                    mid = len(chunk) // 2
                    chunk = chunk[:mid] + bytes((chunk[mid] ^ 0x40,)) + chunk[mid + 1 :]
                elif passed > 512 and self._take("garbage"):
                    chunk = os.urandom(64) + chunk
                passed += len(chunk)
                w.write(chunk)
                await w.drain()
        finally:
            w.close()
