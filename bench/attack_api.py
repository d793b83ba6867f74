"""The API attack classes of bench/attacks.py: what a local user or a misbehaving client sends.

Each function attacks one node's API from outside (its TCP port, or its
Unix socket where a local client with access could misbehave) and returns an
``Outcome``: attempts, rejections by status and error code, acceptances.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from attack_kit import (
    Outcome,
    error_code,
    http_raw,
    open_conn,
    request,
    trickle,
    wait_closed,
)

from hasyncd import samples
from hasyncd.daemon.apilimits import API_IDLE_S, BODY_TIMEOUT_S, MAX_API_CONNECTIONS
from hasyncd.lab import LabNode

WRONG_TOKENS = 100  # requests with a wrong token, and as many without one
SLOWLORIS = 50  # request heads that never end
SLOW_BODIES = 10  # bodies sent a byte every 2 s
IDLE_FLOOD = MAX_API_CONNECTIONS + 100  # past the cap whatever RLIMIT_NOFILE leaves
# Past a server timeout, how long before a still-open connection counts as accepted.
MARGIN_S = 5.0


def api_of(node: LabNode) -> str:
    return str(node.extra["api"]["listen"])


def fds_of(node: LabNode) -> int:
    assert node.proc is not None
    try:
        return len(os.listdir(f"/proc/{node.proc.pid}/fd"))
    except OSError:
        return -1


def nofile_of(node: LabNode) -> str:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


def unauthenticated(node: LabNode) -> Outcome:
    out = Outcome("TCP API without a valid token", node.name)
    rid, rec = samples.ipsec_sa(1, "out", time.time())
    body = json.dumps(rec).encode()
    asks = [
        ("GET", "/v1/records/ipsec_sa/" + rid, b""),
        ("GET", "/v1/records/ike_sa?limit=10", b""),
        ("PUT", "/v1/records/ipsec_sa/" + rid, body),
        ("DELETE", "/v1/records/ipsec_sa/" + rid, b""),
        ("POST", "/v1/failover", b""),
    ]
    for i in range(2 * WRONG_TOKENS):
        method, path, data = asks[i % len(asks)]
        token = None if i % 2 == 0 else os.urandom(32).hex()
        status, reply = http_raw(api_of(node), request(method, path, data, token=token))
        out.add(f"{status} {error_code(reply)}", 200 <= status < 300)
    return out


def content_types(node: LabNode, token: str) -> Outcome:
    out = Outcome("wrong Content-Type (with the token)", node.name)
    rid, rec = samples.ipsec_sa(2, "out", time.time())
    body = json.dumps(rec).encode()
    line = json.dumps({"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec}).encode()
    cases = [
        ("PUT", f"/v1/records/ipsec_sa/{rid}", body, "text/plain"),
        ("PUT", f"/v1/records/ipsec_sa/{rid}", body, "application/xml"),
        ("PUT", f"/v1/records/ipsec_sa/{rid}", body, None),
        ("POST", "/v1/records:batch", line + b"\n", "text/html"),
        ("POST", "/v1/records:batch", line + b"\n", "application/x-www-form-urlencoded"),
    ]
    for _ in range(10):
        for method, path, data, ctype in cases:
            status, reply = http_raw(
                api_of(node), request(method, path, data, token=token, ctype=ctype)
            )
            out.add(f"{status} {error_code(reply)}", 200 <= status < 300)
    return out


def oversized(node: LabNode) -> Outcome:
    out = Outcome("over-long URL, header, many headers", node.name)
    sid, _ = samples.web_session(3, time.time())
    cases = [
        request("GET", "/v1/records/sslvpn_web_session/" + sid + "x" * 9000),
        request("GET", "/v1/status", extra=b"X-Long: " + sid.encode() * 300 + b"\r\n"),
        request("GET", "/v1/status", extra=b"".join(b"X-%d: y\r\n" % i for i in range(200))),
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"NOT-HTTP garbage\r\n\r\n",
    ]
    for _ in range(10):
        for data in cases:
            status, reply = http_raw(api_of(node), data)
            out.add(f"{status} {error_code(reply)}", 200 <= status < 300)
    return out


def malformed(node: LabNode, token: str) -> Outcome:
    out = Outcome("malformed PUT and batch bodies (with the token)", node.name)
    rid, rec = samples.ipsec_sa(4, "out", time.time())
    bad = dict(rec, spi="not a number")
    unknown = dict(rec, extra_field=1)
    other_id, _ = samples.ipsec_sa(5, "out", time.time())
    put = f"/v1/records/ipsec_sa/{rid}"
    cases: list[tuple[str, str, bytes, str]] = [
        ("PUT", put, b"{not json", "application/json"),
        ("PUT", put, b"[1, 2, 3]", "application/json"),
        ("PUT", put, json.dumps(bad).encode(), "application/json"),
        ("PUT", put, json.dumps(unknown).encode(), "application/json"),
        ("PUT", f"/v1/records/ipsec_sa/{other_id}", json.dumps(rec).encode(), "application/json"),
        ("PUT", put, b"[" * 5000 + b"]" * 5000, "application/json"),
        ("PUT", put, b"{" + b'"a":' * 3 + b"1}" + b" " * 70000, "application/json"),
        ("POST", "/v1/records:batch", b"\xff\xfe garbage\n{]\n", "application/x-ndjson"),
        ("POST", "/v1/records:batch", b"\x93\xc1\xc1", "application/msgpack"),
        ("POST", "/v1/records:batch", b'{"op":"put","kind":"ipsec_sa"}\n', "application/x-ndjson"),
    ]
    for _ in range(10):
        for method, path, data, ctype in cases:
            status, reply = http_raw(
                api_of(node), request(method, path, data, token=token, ctype=ctype)
            )
            accepted = 200 <= status < 300
            if accepted and path.endswith("batch"):
                results = json.loads(reply).get("results", [])
                accepted = any(200 <= r.get("status", 0) < 300 for r in results)
                label = "200 every op refused: " + ",".join(
                    sorted({str(r.get("error")) for r in results})
                )
            else:
                label = f"{status} {error_code(reply)}"
            out.add(label, accepted)
    return out


def slowloris(node: LabNode, token: str, results: list[Outcome]) -> None:
    """Slow heads on TCP and the socket; slow bodies on TCP (no token) and the socket."""
    heads = Outcome("slowloris heads (TCP and Unix socket)", node.name)
    bodies = Outcome("slow bodies (Unix socket, TCP without token)", node.name)
    head = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n"
    rid, _ = samples.ipsec_sa(6, "out", time.time())
    body_head = request("PUT", f"/v1/records/ipsec_sa/{rid}", b"", ctype="application/json")
    body_head = body_head.replace(b"Content-Length: 0", b"Content-Length: 4000")
    conns = []
    for i in range(SLOWLORIS):
        where = api_of(node) if i % 2 else str(node.socket)
        s = open_conn(where, 10)
        s.sendall(head)
        conns.append(("head", s))
    for i in range(SLOW_BODIES):
        where = api_of(node) if i % 2 else str(node.socket)
        s = open_conn(where, 10)
        s.sendall(body_head)
        conns.append(("body", s))

    def watch(kind: str, s: Any) -> None:
        if kind == "head":
            closed, got = wait_closed(s, time.monotonic() + API_IDLE_S + MARGIN_S)
            label = "closed" + (f" after {got[:12].decode(errors='replace')}" if got else "")
            heads.add(label, not closed)
        else:
            t0 = time.monotonic()
            closed, got = trickle(s, t0 + BODY_TIMEOUT_S + MARGIN_S, 2.0)
            status = got[9:12].decode(errors="replace") if got.startswith(b"HTTP/1.") else ""
            reply = got.partition(b"\r\n\r\n")[2]
            label = f"{status} {error_code(reply)}" if status else "closed"
            if status == "408":
                label += f" after {time.monotonic() - t0:.0f} s"
            # Accepted: neither answered nor closed while the body kept trickling in.
            bodies.add(label, not closed and not status)
        s.close()

    threads = [threading.Thread(target=watch, args=c) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results += [heads, bodies]


def idle_flood(node: LabNode) -> Outcome:
    out = Outcome(f"idle connection flood ({IDLE_FLOOD} on TCP)", node.name)
    held = []

    def connect(_: int) -> Any:
        try:
            return open_conn(api_of(node), 5)
        except OSError as exc:
            return exc

    t0 = time.monotonic()
    with ThreadPoolExecutor(64) as pool:  # all at once: the idle timer must not free slots first
        for s in pool.map(connect, range(IDLE_FLOOD)):
            if isinstance(s, OSError):
                out.add(f"connect failed: {s.__class__.__name__}", False)
            else:
                held.append(s)
    opened = time.monotonic() - t0
    # Sample the daemon's own descriptors while the flood holds its connections.
    peak = fds_of(node)
    # Each connection ends with a 503 (over the cap: answered when accepted) or is
    # closed once idle for API_IDLE_S.  With the listen backlog (16) full, the
    # kernel completes some clients' side only; those are accepted once they
    # send a byte (or dropped with a reset), so they get a second round.  A
    # connection still held after both rounds is accepted.
    late = []
    for rnd in (1, 2):
        deadline = time.monotonic() + API_IDLE_S + MARGIN_S
        waiting, late = (held if rnd == 1 else late), []
        if rnd == 2:
            for s in waiting:
                with contextlib.suppress(OSError):
                    s.sendall(b"G")
        for s in waiting:
            closed, got = wait_closed(s, deadline)
            peak = max(peak, fds_of(node))
            if not closed and rnd == 1:
                late.append(s)
                continue
            where = "" if rnd == 1 else " (once it sent a byte)"
            if got.startswith(b"HTTP/1.1 503"):
                label = "503 too_many_connections" + where
            elif closed:
                label = f"closed idle after {API_IDLE_S:g} s" + where
            else:
                label = "still held"
            out.add(label, not closed)
            s.close()
    out.note = (
        f"{len(held)} connections open (client side) within {opened:.1f} s; "
        f"the daemon held at most {peak} descriptors (RLIMIT_NOFILE {nofile_of(node)})"
    )
    return out
