"""API defects from the review's "Fix first" list, against real daemons on loopback.

- a request body that arrives in several TCP segments or HTTP chunks is read whole;
- a batch refused as a whole stores (and replicates) nothing: the body is decoded
  and bounded before any op is applied, while a per-op error fails only that op;
- deeply nested bodies and malformed ``Last-Event-ID`` headers get a 400 with an
  error code (counted in ``hasyncd_api_errors_total``), never a 500.

One two-node cluster serves the whole module; every test uses its own record ids
and checks record counts relative to what it saw first.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hasyncd import samples
from hasyncd.daemon.api import MAX_RECORD_BODY
from hasyncd.daemon.bodies import MAX_BATCH_OPS
from hasyncd.lab import LabCluster, LabNode, free_port

from .test_integration_spine import api_up

pytestmark = pytest.mark.integration

GAP_S = 0.05  # the pause between the two parts of a body, as in the report
MAX_BODY_MIB = 1  # the cluster's [api] max_body_mib: keeps the too-large bodies small
PUT_LIMIT = MAX_RECORD_BODY


# --- the cluster and helpers -----------------------------------------------------------


class Pair:
    def __init__(self, cluster: LabCluster, primary: LabNode, secondary: LabNode) -> None:
        self.cluster, self.primary, self.secondary = cluster, primary, secondary
        self.tcp = {n.name: n.extra["api"]["listen"] for n in cluster.nodes.values()}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    workdir: Path = tmp_path_factory.mktemp("api-defects")
    cluster = LabCluster.loopback(workdir, base={"api": {"max_body_mib": MAX_BODY_MIB}})
    for node in cluster.nodes.values():
        node.extra = {"api": {"listen": f"127.0.0.1:{free_port()}"}}
    try:
        cluster.start()
        cluster.wait(lambda: all(api_up(n) for n in cluster.nodes.values()), 20, "the APIs")
        primary, secondary = cluster.wait_pair()
        yield Pair(cluster, primary, secondary)
    finally:
        for node in cluster.nodes.values():
            node.kill()


def metric(node: LabNode, name: str, **labels: str) -> float:
    code, text = node.client.get("/metrics")
    assert code == 200, text
    want = tuple(sorted(labels.items()))
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and tuple(sorted(s.labels.items())) == want:
                return float(s.value)
    return 0.0


def api_errors(node: LabNode, code: str) -> float:
    return metric(node, "hasyncd_api_errors_total", error=code)


def records(node: LabNode) -> dict[str, int]:
    st = node.status()
    assert st is not None, f"{node.name} does not answer /v1/status"
    return dict(st["records"])


def settle(pair: Pair, marker: int) -> None:
    """Write one marker record and wait until the secondary has everything the primary has.

    After this, anything a refused request had written would be on the secondary too.
    """
    rid, rec = samples.ipsec_sa(marker, "out", time.time())
    code, body = pair.primary.client.put(f"/v1/records/ipsec_sa/{rid}", rec)
    assert code == 201, body
    p, s = pair.primary, pair.secondary

    def caught_up() -> bool:
        ps, ss = p.status(), s.status()
        return (
            ps is not None
            and ss is not None
            and ss["in_sync"] is True
            and ss["version"] == ps["version"]
            and ss["records"] == ps["records"]
        )

    pair.cluster.wait(caught_up, 20, "the secondary to catch up")


def absent(pair: Pair, kind: str, rid: str) -> None:
    for node in (pair.primary, pair.secondary):
        code, body = node.client.get(f"/v1/records/{kind}/{rid}")
        assert code == 404, (node.name, rid, code, body)


def _connect(pair: Pair, via: str) -> socket.socket:
    if via == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(pair.primary.socket))
        return s
    host, _, port = pair.tcp[pair.primary.name].rpartition(":")
    return socket.create_connection((host, int(port)), timeout=10)


def raw_request(
    pair: Pair, via: str, head: str, parts: list[bytes], gap: float = GAP_S
) -> tuple[int, Any]:
    """Send ``head`` then each of ``parts`` with ``gap`` seconds between them; parse the reply.

    The reply body is read by its Content-Length (an event stream has none: body None).
    """
    if via == "tcp":
        head += f"Authorization: Bearer {pair.cluster.api_token.read_text().strip()}\r\n"
    with _connect(pair, via) as s:
        s.sendall(head.encode("utf-8") + b"\r\n")
        try:
            for i, part in enumerate(parts):
                if i:
                    time.sleep(gap)
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (and close) before the whole body is sent
        buf = b""
        while b"\r\n\r\n" not in buf:
            got = s.recv(65536)
            assert got, f"connection closed before a reply: {buf!r}"
            buf += got
        head_raw, _, rest = buf.partition(b"\r\n\r\n")
        lines = head_raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        if "content-length" not in headers:
            return status, None
        n = int(headers["content-length"])
        while len(rest) < n:
            got = s.recv(65536)
            assert got, "connection closed inside the reply body"
            rest += got
    return status, json.loads(rest[:n])


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def split_body(body: bytes, encoding: str, at: int = 100) -> tuple[str, list[bytes]]:
    """The header lines for ``body`` and the body in two parts split after ``at`` bytes."""
    if encoding == "content-length":
        return f"Content-Length: {len(body)}\r\n", [body[:at], body[at:]]
    return "Transfer-Encoding: chunked\r\n", [_chunk(body[:at]), _chunk(body[at:]) + b"0\r\n\r\n"]


def http_head(method: str, path: str, extra: str = "", ctype: str = "application/json") -> str:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: {ctype}\r\n{extra}"
    )


def put_op(i: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    rid, rec = samples.ipsec_sa(i, "out", time.time())
    return rid, rec, {"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec}


# --- 5: a body in more than one segment or chunk ----------------------------------------


@pytest.mark.parametrize("via", ["unix", "tcp"])
@pytest.mark.parametrize("encoding", ["content-length", "chunked"])
def test_put_body_in_two_parts_is_read_whole(pair: Pair, via: str, encoding: str) -> None:
    i = {"unix": 100, "tcp": 200}[via] + {"content-length": 0, "chunked": 1}[encoding]
    rid, rec = samples.ipsec_sa(i, "out", time.time())
    body = json.dumps(rec).encode()
    assert len(body) > 200
    extra, parts = split_body(body, encoding)
    code, reply = raw_request(
        pair, via, http_head("PUT", f"/v1/records/ipsec_sa/{rid}", extra), parts
    )
    assert code == 201, reply
    code, got = pair.primary.client.get(f"/v1/records/ipsec_sa/{rid}")
    assert code == 200 and got["record"] == rec, got


@pytest.mark.parametrize("encoding", ["content-length", "chunked"])
def test_batch_body_in_two_parts_is_read_whole(pair: Pair, encoding: str) -> None:
    ops = [put_op(300 + j + (10 if encoding == "chunked" else 0)) for j in range(3)]
    body = b"".join(json.dumps(op).encode() + b"\n" for _, _, op in ops)
    extra, parts = split_body(body, encoding)
    head = http_head("POST", "/v1/records:batch", extra, "application/x-ndjson")
    code, reply = raw_request(pair, "unix", head, parts)
    assert code == 200, reply
    assert [r["status"] for r in reply["results"]] == [201, 201, 201], reply


@pytest.mark.parametrize("encoding", ["content-length", "chunked"])
def test_put_body_past_the_limit_is_413_body_too_large(pair: Pair, encoding: str) -> None:
    rid, _ = samples.ipsec_sa(400, "out", time.time())
    body = b" " * (PUT_LIMIT + 1000)
    extra, parts = split_body(body, encoding, at=PUT_LIMIT // 2)
    before = api_errors(pair.primary, "body_too_large")
    code, reply = raw_request(
        pair, "unix", http_head("PUT", f"/v1/records/ipsec_sa/{rid}", extra), parts
    )
    assert (code, reply["error"]) == (413, "body_too_large"), reply
    assert api_errors(pair.primary, "body_too_large") == before + 1


def test_batch_body_past_max_body_is_413_body_too_large(pair: Pair) -> None:
    rid, _, op = put_op(410)
    line = json.dumps(op).encode() + b"\n"
    body = line * (MAX_BODY_MIB * 1024 * 1024 // len(line) + 1)
    before = api_errors(pair.primary, "body_too_large")
    code, reply = pair.primary.client.request(
        "POST", "/v1/records:batch", raw=body, content_type="application/x-ndjson"
    )
    assert (code, reply["error"]) == (413, "body_too_large"), reply
    assert api_errors(pair.primary, "body_too_large") == before + 1
    absent(pair, "ipsec_sa", rid)


# --- 7: a batch refused as a whole stores nothing -----------------------------------------


def _msgpack_cases() -> dict[str, Callable[[dict[str, Any]], tuple[bytes, str]]]:
    def with_second(second: bytes, code: str) -> Callable[[dict[str, Any]], tuple[bytes, str]]:
        return lambda op: (b"\x92" + msgpack.packb(op, use_bin_type=True) + second, code)

    return {
        "truncated": lambda op: (
            msgpack.packb([op, op], use_bin_type=True)[:-7],
            "invalid_msgpack",
        ),
        "ext_type": with_second(msgpack.packb(msgpack.ExtType(1, b"ab")), "invalid_msgpack"),
        "int_map_key": with_second(msgpack.packb({1: "x"}), "invalid_msgpack"),
        "nested_2000": with_second(b"\x91" * 2000 + b"\xc0", "invalid_msgpack"),
        "nested_1000": with_second(b"\x91" * 1000 + b"\xc0", "nesting_too_deep"),
        "nested_100": with_second(b"\x91" * 100 + b"\xc0", "nesting_too_deep"),
        "trailing_data": lambda op: (msgpack.packb([op]) + b"\xc0", "invalid_batch"),
    }


MSGPACK_CASES = _msgpack_cases()


@pytest.mark.parametrize("case", sorted(MSGPACK_CASES))
def test_msgpack_batch_refused_whole_stores_nothing(pair: Pair, case: str) -> None:
    i = 500 + sorted(MSGPACK_CASES).index(case)
    rid, _, op = put_op(i)
    body, want = MSGPACK_CASES[case](op)
    before_p, before_err = records(pair.primary), api_errors(pair.primary, want)
    code, reply = pair.primary.client.request(
        "POST", "/v1/records:batch", raw=body, content_type="application/msgpack"
    )
    assert (code, reply.get("error")) == (400, want), reply
    assert api_errors(pair.primary, want) == before_err + 1
    assert records(pair.primary) == before_p, "a refused batch changed the store"
    settle(pair, i + 50)
    absent(pair, "ipsec_sa", rid)


def test_ndjson_batch_over_the_op_limit_stores_nothing(pair: Pair) -> None:
    rid, _, op = put_op(600)
    # The first line is a valid put; the rest are empty objects (each would fail alone).
    body = json.dumps(op).encode() + b"\n" + b"{}\n" * MAX_BATCH_OPS
    before_p, before_err = records(pair.primary), api_errors(pair.primary, "batch_too_large")
    code, reply = pair.primary.client.request(
        "POST", "/v1/records:batch", raw=body, content_type="application/x-ndjson"
    )
    assert (code, reply["error"]) == (413, "batch_too_large"), reply
    assert api_errors(pair.primary, "batch_too_large") == before_err + 1
    assert records(pair.primary) == before_p, "a refused batch changed the store"
    settle(pair, 601)
    absent(pair, "ipsec_sa", rid)


def test_ndjson_deep_line_fails_alone_with_400(pair: Pair) -> None:
    """A line nested 100,000 deep is a per-op 400 (it was a 500 after applying the rest)."""
    rid1, rec1, op1 = put_op(700)
    rid2, rec2, op2 = put_op(701)
    deep = b"[" * 100_000 + b"]" * 100_000
    body = json.dumps(op1).encode() + b"\n" + deep + b"\n" + json.dumps(op2).encode() + b"\n"
    before = api_errors(pair.primary, "nesting_too_deep")
    code, reply = pair.primary.client.request(
        "POST", "/v1/records:batch", raw=body, content_type="application/x-ndjson"
    )
    assert code == 200, reply
    got = [(r["status"], r.get("error")) for r in reply["results"]]
    assert got == [(201, None), (400, "nesting_too_deep"), (201, None)], reply
    assert api_errors(pair.primary, "nesting_too_deep") == before + 1
    settle(pair, 702)
    for rid, rec in ((rid1, rec1), (rid2, rec2)):
        code, stored = pair.secondary.client.get(f"/v1/records/ipsec_sa/{rid}")
        assert code == 200 and stored["record"] == rec, stored


def _post_batch(pair: Pair, ops: list[dict[str, Any]], fmt: str) -> tuple[int, Any]:
    """POST ``ops`` to the primary's batch route as NDJSON or as msgpack."""
    if fmt == "ndjson":
        return pair.primary.client.batch(ops)
    return pair.primary.client.request(
        "POST", "/v1/records:batch", raw=msgpack.packb(ops), content_type="application/msgpack"
    )


@pytest.mark.parametrize("fmt", ["ndjson", "msgpack"])
def test_batch_per_op_error_fails_only_that_op(pair: Pair, fmt: str) -> None:
    base = 800 if fmt == "ndjson" else 810
    rid1, rec1, op1 = put_op(base)
    rid2, rec2, _ = put_op(base + 1)
    rid3, rec3, op3 = put_op(base + 2)
    bad = {"op": "put", "kind": "ipsec_sa", "id": rid2, "record": {**rec2, "colour": "red"}}
    ops = [op1, bad, op3]
    code, reply = _post_batch(pair, ops, fmt)
    assert code == 200, reply
    got = [(r["status"], r.get("error"), r.get("field")) for r in reply["results"]]
    assert got == [(201, None, None), (400, "unknown_field", "colour"), (201, None, None)], reply
    settle(pair, base + 3)
    absent(pair, "ipsec_sa", rid2)
    for rid, rec in ((rid1, rec1), (rid3, rec3)):
        code, stored = pair.secondary.client.get(f"/v1/records/ipsec_sa/{rid}")
        assert code == 200 and stored["record"] == rec, stored


@pytest.mark.parametrize("fmt", ["ndjson", "msgpack"])
def test_batch_put_of_an_internal_kind_fails_alone_read_only(pair: Pair, fmt: str) -> None:
    """A well-formed sa_counters put decodes in one pass, and is refused as PUT refuses it."""
    base = 820 if fmt == "ndjson" else 830
    rid1, rec1, op1 = put_op(base)
    crid, crec = samples.sa_counters(base, "out")
    ops = [op1, {"op": "put", "kind": "sa_counters", "id": crid, "record": crec}]
    code, reply = _post_batch(pair, ops, fmt)
    assert code == 200, reply
    got = [(r["status"], r.get("error")) for r in reply["results"]]
    assert got == [(201, None), (400, "read_only_kind")], reply
    settle(pair, base + 1)
    code, stored = pair.secondary.client.get(f"/v1/records/ipsec_sa/{rid1}")
    assert code == 200 and stored["record"] == rec1, stored
    assert pair.primary.client.get(f"/v1/records/sa_counters/{crid}")[0] == 404


# --- 7: 400 with a code, never a 500 ---------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 30_000])  # 30,000 deep: 60 KB, under the PUT limit
def test_deeply_nested_put_body_is_400(pair: Pair, depth: int) -> None:
    rid, _ = samples.ipsec_sa(900 + (depth > 1000), "out", time.time())
    body = b"[" * depth + b"]" * depth
    extra = f"Content-Length: {len(body)}\r\n"
    before_p = records(pair.primary)
    before = api_errors(pair.primary, "nesting_too_deep")
    code, reply = raw_request(
        pair, "unix", http_head("PUT", f"/v1/records/ipsec_sa/{rid}", extra), [body], gap=0
    )
    assert (code, reply["error"]) == (400, "nesting_too_deep"), reply
    assert api_errors(pair.primary, "nesting_too_deep") == before + 1
    assert api_errors(pair.primary, "internal_error") == 0
    assert records(pair.primary) == before_p


@pytest.mark.parametrize(
    "value",
    [
        "99999999999999999999999999",  # 26 digits: no u64 event id
        "18446744073709551616",  # 2**64: 20 digits, one past the largest u64
        "\u0661\u0662\u0663",  # Arabic-Indic 123: str.isdigit() is true, int() accepts it
        "\u00b2",  # superscript two: str.isdigit() is true, int() raises
        "12a",
        "-1",
    ],
)
def test_bad_last_event_id_is_400(pair: Pair, value: str) -> None:
    before = api_errors(pair.primary, "invalid_last_event_id")
    head = (
        "GET /v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Last-Event-ID: {value}\r\n"
    )
    code, reply = raw_request(pair, "unix", head, [])
    assert code == 400 and reply is not None, (value, code)
    assert reply["error"] == "invalid_last_event_id", reply
    assert api_errors(pair.primary, "invalid_last_event_id") == before + 1
    assert api_errors(pair.primary, "internal_error") == 0


def test_good_last_event_id_still_streams(pair: Pair) -> None:
    head = (
        "GET /v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        "Last-Event-ID: 18446744073709551615\r\n"
    )
    code, reply = raw_request(pair, "unix", head, [])
    assert (code, reply) == (200, None)
