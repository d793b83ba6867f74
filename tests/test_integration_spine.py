"""The spine end to end: real ``hasyncd run`` processes on loopback, real sockets.

Every test starts daemons with ``hasyncd.lab`` (through the ``make_cluster``
fixture, or the local ``lab`` fixture when the configs or the start order must
be shaped by hand) and talks to them only through their API sockets, their
logs and their exit codes.
"""

from __future__ import annotations

import gc
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hasyncd import samples
from hasyncd.client import Client
from hasyncd.config import write_key
from hasyncd.lab import LabCluster, LabNode, free_port
from hasyncd.policy import POLICY

from .product import INTERNAL, NOT_REPLICATED
from .product import REPLICATED as KINDS

REASONS = {p.kind: p.reason for p in POLICY}

Written = dict[tuple[str, str], tuple[dict[str, Any], dict[str, int]]]
Samples = list[tuple[str, dict[str, Any]]]  # (id, API record)


# --- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Callable[..., LabCluster]]:
    """Factory for clusters whose configs are written but whose nodes are not started.

    For the tests that need a start order (a late secondary) or hand-made
    configs (wrong key, wrong group); every node is killed at teardown.
    """
    made: list[LabCluster] = []

    def factory(**kw: Any) -> LabCluster:
        workdir = tmp_path / f"lab{len(made)}"
        workdir.mkdir()
        cluster = LabCluster.loopback(workdir, **kw)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        for node in cluster.nodes.values():
            node.kill()


def tail(node: LabNode, n: int = 3000) -> str:
    return node.log.read_text()[-n:] if node.log.exists() else "(no log)"


def wait(cluster: LabCluster, cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """cluster.wait with the node logs in the failure message."""
    try:
        cluster.wait(cond, timeout, what)
    except TimeoutError as exc:
        logs = "\n".join(f"--- {n.name} ---\n{tail(n)}" for n in cluster.nodes.values())
        raise AssertionError(f"{exc}\n{logs}") from None


def api_up(node: LabNode) -> bool:
    """Probe the API socket without hasyncd.client (which leaks a socket on a refused connect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(node.socket))
        except OSError:
            return False
    return True


def wait_api(cluster: LabCluster, *nodes: LabNode) -> None:
    """Wait until the API of the given (default: every started) node accepts connections."""
    todo = nodes or tuple(n for n in cluster.nodes.values() if n.proc is not None)
    wait(cluster, lambda: all(api_up(n) for n in todo), "the API sockets")


def start_pair(cluster: LabCluster) -> tuple[LabNode, LabNode]:
    wait_api(cluster)
    return cluster.wait_pair()


def vtuple(version: dict[str, int]) -> tuple[int, int]:
    return version["epoch"], version["seq"]


def metrics(node: LabNode) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, text = node.client.get("/metrics")
    assert code == 200, text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(node: LabNode, name: str, **labels: str) -> float:
    return metrics(node).get((name, tuple(sorted(labels.items()))), 0.0)


def status(node: LabNode) -> dict[str, Any]:
    st = node.status()
    assert st is not None, f"{node.name} does not answer /v1/status:\n{tail(node)}"
    return st


def caught_up(primary: LabNode, secondary: LabNode) -> Callable[[], bool]:
    """True once the secondary applied the primary's newest version and is in sync."""

    def cond() -> bool:
        p, s = primary.status(), secondary.status()
        return (
            p is not None
            and s is not None
            and s["in_sync"] is True
            and s["version"] == p["version"]
            and s["records"] == p["records"]
        )

    return cond


def list_all(node: LabNode, kind: str, limit: int) -> list[dict[str, Any]]:
    """Page through GET /v1/records/{kind}?after=&limit= to the end."""
    items: list[dict[str, Any]] = []
    after = ""
    for _ in range(100_000):
        code, body = node.client.get(
            f"/v1/records/{kind}?after={quote(after, safe='')}&limit={limit}"
        )
        assert code == 200, body
        assert body["kind"] == kind
        page = body["items"]
        assert len(page) <= limit
        items.extend(page)
        if body["next"] is None:
            return items
        assert len(page) == limit, f"a page with a next cursor has {len(page)} < {limit} items"
        assert body["next"] == page[-1]["id"]
        after = body["next"]
    raise AssertionError("the listing never ended")


def check_listing(node: LabNode, kind: str, limit: int, written: Written) -> None:
    items = list_all(node, kind, limit)
    ids = [it["id"] for it in items]
    assert ids == sorted(ids), f"{node.name}: {kind} listing is not sorted by id"
    assert len(set(ids)) == len(ids), f"{node.name}: {kind} listing repeats ids"
    expected = {rid: rv for (k, rid), rv in written.items() if k == kind}
    assert set(ids) == set(expected), f"{node.name}: {kind} listing differs from what was written"
    for it in items:
        rec, version = expected[it["id"]]
        assert it["record"] == rec, f"{node.name}: {kind} {it['id']} differs in the listing"
        assert it["version"] == version, f"{node.name}: {kind} {it['id']} version differs"


def check_records(node: LabNode, written: Written) -> None:
    """GET every record: the "record" and "version" equal what the primary acknowledged."""
    bad = []
    for (kind, rid), (rec, version) in written.items():
        code, body = node.client.get(f"/v1/records/{kind}/{rid}")
        if code != 200 or body["record"] != rec or body["version"] != version:
            bad.append((kind, rid, code, body if code != 200 else body["version"]))
    assert not bad, f"{node.name}: {len(bad)}/{len(written)} records differ, first: {bad[:3]}"


def put_ops(kind: str, items: Samples) -> list[dict[str, Any]]:
    return [{"op": "put", "kind": kind, "id": rid, "record": rec} for rid, rec in items]


def record_batch(written: Written, ops: list[dict[str, Any]], body: Any) -> None:
    assert len(body["results"]) == len(ops)
    for op, res in zip(ops, body["results"], strict=True):
        assert res["status"] == 201, res
        assert res["id"] == op["id"]
        written[(op["kind"], op["id"])] = (op["record"], res["version"])


def msgpack_batch(node: LabNode, ops: list[dict[str, Any]]) -> tuple[int, Any]:
    return node.client.request(
        "POST",
        "/v1/records:batch",
        raw=msgpack.packb(ops, use_bin_type=True),
        content_type="application/msgpack",
    )


def sample_sets(n_sa: int, n_ike: int, n_web: int, now: float) -> tuple[Samples, Samples, Samples]:
    """n_sa child SAs (both directions: 2 * n_sa records), IKE SAs and web sessions."""
    sas = [samples.ipsec_sa(i, d, now) for i in range(n_sa) for d in ("out", "in")]
    ikes = [samples.ike_sa(i, now) for i in range(n_ike)]
    webs = [samples.web_session(i, now) for i in range(n_web)]
    return sas, ikes, webs


def write_via_batch(node: LabNode, written: Written, ops: list[dict[str, Any]]) -> None:
    code, body = node.client.batch(ops)
    assert code == 200, body
    record_batch(written, ops, body)


def write_samples(
    node: LabNode, n_sa: int, n_ike: int, n_web: int, now: float
) -> tuple[Written, Samples, Samples, Samples]:
    """``sample_sets`` written to ``node`` in one batch: what was written, and the sets."""
    sas, ikes, webs = sample_sets(n_sa, n_ike, n_web, now)
    written: Written = {}
    ops = put_ops("ipsec_sa", sas) + put_ops("ike_sa", ikes) + put_ops("sslvpn_web_session", webs)
    write_via_batch(node, written, ops)
    return written, sas, ikes, webs


def counts(written: Written) -> dict[str, int]:
    return {k: sum(1 for kind, _ in written if kind == k) for k in KINDS}


def user_records(st: dict[str, Any]) -> dict[str, int]:
    """Status ``records`` of the API-written kinds (not the internal promotion/sa_counters)."""
    return {k: st["records"][k] for k in KINDS}


# --- 1 and 8: bulk replication, listings, status -------------------------------------------


@pytest.mark.integration
def test_records_replicate_identically_and_list_sorted(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = start_pair(cluster)
    assert (primary.name, secondary.name) == ("fw-a", "fw-b")
    now = time.time()
    sas, ikes, webs = sample_sets(500, 100, 1000, now)
    assert len(sas) == 1000
    written: Written = {}

    # singly, via PUT
    singles = [("ipsec_sa", x) for x in sas[:10]]
    singles += [("ike_sa", x) for x in ikes[:10]]
    singles += [("sslvpn_web_session", x) for x in webs[:10]]
    for kind, (rid, rec) in singles:
        code, body = primary.client.put(f"/v1/records/{kind}/{rid}", rec)
        assert code == 201, (kind, rid, body)
        assert body["id"] == rid
        assert "replicated" not in body  # async mode
        written[(kind, rid)] = (rec, body["version"])

    # most via NDJSON batches
    ndjson = [
        put_ops("ipsec_sa", sas[10:700]) + put_ops("ike_sa", ikes[10:50]),
        put_ops("ike_sa", ikes[50:]) + put_ops("sslvpn_web_session", webs[10:700]),
    ]
    for ops in ndjson:
        write_via_batch(primary, written, ops)

    # one batch as msgpack; some keys as msgpack bin (the API presents them as hex)
    ops = put_ops("ipsec_sa", sas[700:]) + put_ops("sslvpn_web_session", webs[700:])
    packed = []
    for i, op in enumerate(ops):
        if op["kind"] == "ipsec_sa" and i % 7 == 0:
            rec = json.loads(json.dumps(op["record"]))
            rec["enc"]["key"] = bytes.fromhex(rec["enc"]["key"])
            packed.append({**op, "record": rec})
        else:
            packed.append(op)
    code, body = msgpack_batch(primary, packed)
    assert code == 200, body
    assert isinstance(body, dict), "a msgpack batch is answered in msgpack"
    record_batch(written, ops, body)

    expected_counts = {"ipsec_sa": 1000, "ike_sa": 100, "sslvpn_web_session": 1000}
    assert counts(written) == expected_counts
    newest = max((v for _, v in written.values()), key=vtuple)
    wait(cluster, caught_up(primary, secondary), "the secondary to apply every write", 20)

    # read back identical, one by one, on the secondary
    check_records(secondary, written)
    # and the listing pages through everything, sorted by id, on both nodes
    for node in (primary, secondary):
        check_listing(node, "ipsec_sa", 97, written)
        check_listing(node, "ike_sa", 7, written)
        check_listing(node, "sslvpn_web_session", 1000, written)

    # 8. status of both nodes
    wait(
        cluster,
        lambda: all(
            p["rtt_ms"] is not None for n in (primary, secondary) for p in status(n)["peers"]
        ),
        "a heartbeat round trip on both nodes",
    )
    pst, sst = status(primary), status(secondary)
    for st, me, other, role in (
        (pst, primary, secondary, "primary"),
        (sst, secondary, primary, "secondary"),
    ):
        assert st["node"] == me.name
        assert st["role"] == role
        assert isinstance(st["epoch"], int) and st["epoch"] > 0
        assert st["primary"] == primary.name
        assert st["in_sync"] is True
        assert user_records(st) == expected_counts
        assert st["version"] == newest
        assert [p["node"] for p in st["peers"]] == [other.name]
        peer = st["peers"][0]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", peer["address"]), peer
        assert peer["link"] == "up"
        assert peer["in_sync"] is True
        assert isinstance(peer["last_seen_ms"], int) and 0 <= peer["last_seen_ms"] < 2000, peer
        assert isinstance(peer["rtt_ms"], int | float) and 0 <= peer["rtt_ms"] < 1000, peer
    assert sst["epoch"] == pst["epoch"] == newest["epoch"]
    assert pst["peers"][0]["address"] == secondary.link


# --- 2: updates and deletes -------------------------------------------------------------


@pytest.mark.integration
def test_updates_and_deletes_replicate(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = start_pair(cluster)
    now = time.time()
    written, sas, ikes, webs = write_samples(primary, 20, 5, 10, now)
    wait(cluster, caught_up(primary, secondary), "the initial writes to replicate")

    # updates: a PUT of a changed record answers 200 (not 201) with a higher version
    changed: list[tuple[str, str, dict[str, Any]]] = []
    for rid, rec in sas[:10]:
        changed.append(
            ("ipsec_sa", rid, {**rec, "seq": rec["seq"] + 5000, "bytes": rec["bytes"] + 7})
        )
    for rid, rec in ikes:
        changed.append(("ike_sa", rid, {**rec, "msgid_send": rec["msgid_send"] + 3}))
    for rid, rec in webs[:5]:
        changed.append(("sslvpn_web_session", rid, {**rec, "last_seen": rec["last_seen"] + 4}))
    for kind, rid, rec in changed:
        old = written[(kind, rid)][1]
        code, body = primary.client.put(f"/v1/records/{kind}/{rid}", rec)
        assert code == 200, (kind, rid, body)
        assert vtuple(body["version"]) > vtuple(old)
        written[(kind, rid)] = (rec, body["version"])
    # an update inside a batch is a 200 too
    rid, rec = webs[5]
    upd = {**rec, "groups": ["vpn-users", "admins"]}
    code, body = primary.client.batch(put_ops("sslvpn_web_session", [(rid, upd)]))
    assert code == 200 and body["results"][0]["status"] == 200, body
    assert vtuple(body["results"][0]["version"]) > vtuple(written[("sslvpn_web_session", rid)][1])
    written[("sslvpn_web_session", rid)] = (upd, body["results"][0]["version"])

    # deletes: singly and in a batch
    gone = [("ipsec_sa", sas[10][0]), ("ike_sa", ikes[0][0]), ("sslvpn_web_session", webs[9][0])]
    for kind, rid in gone:
        code, body = primary.client.delete(f"/v1/records/{kind}/{rid}")
        assert code == 200, (kind, rid, body)
        assert vtuple(body["version"]) > vtuple(written[(kind, rid)][1])
    batch_gone = [("ipsec_sa", sas[11][0]), ("ipsec_sa", sas[12][0])]
    code, body = primary.client.batch([{"op": "delete", "kind": k, "id": r} for k, r in batch_gone])
    assert code == 200 and [r["status"] for r in body["results"]] == [200, 200], body
    for kind, rid in gone + batch_gone:
        del written[(kind, rid)]
        code, body = primary.client.get(f"/v1/records/{kind}/{rid}")
        assert (code, body["error"]) == (404, "not_found"), (kind, rid, body)

    # deleting what does not exist (or no longer exists) is a 404
    for kind, rid in [*gone, ("ipsec_sa", samples.ipsec_sa(999, "out", now)[0])]:
        code, body = primary.client.delete(f"/v1/records/{kind}/{rid}")
        assert (code, body["error"]) == (404, "not_found"), (kind, rid, body)
    code, body = primary.client.batch([{"op": "delete", "kind": "ipsec_sa", "id": sas[11][0]}])
    assert code == 200 and body["results"][0]["status"] == 404, body

    wait(cluster, caught_up(primary, secondary), "the updates and deletes to replicate")
    for kind, rid in gone + batch_gone:
        code, body = secondary.client.get(f"/v1/records/{kind}/{rid}")
        assert (code, body["error"]) == (404, "not_found"), (kind, rid, body)
    check_records(secondary, written)
    for node in (primary, secondary):
        assert user_records(status(node)) == counts(written)
        for kind in KINDS:
            check_listing(node, kind, 3, written)

    # a deleted record can be created again: 201, and it replicates
    kind, rid = gone[0]
    rec = dict(sas)[rid]
    code, body = primary.client.put(f"/v1/records/{kind}/{rid}", rec)
    assert code == 201, body
    written[(kind, rid)] = (rec, body["version"])
    wait(cluster, caught_up(primary, secondary), "the re-created record to replicate")
    check_records(secondary, written)


# --- 3: a late secondary catches up by snapshot -----------------------------------------


@pytest.mark.integration
def test_late_secondary_catches_up_by_snapshot(lab: Callable[..., LabCluster]) -> None:
    cluster = lab()
    cluster.write()
    primary, late = cluster["fw-a"], cluster["fw-b"]
    primary.start()
    t0 = time.monotonic()
    wait_api(cluster, primary)
    wait(cluster, lambda: primary.role() == "primary", "the lone node to become primary")
    assert time.monotonic() - t0 >= 0.9, "promoted before its hello hold-down (1000 ms)"

    now = time.time()
    written, sas, _, _ = write_samples(primary, 300, 30, 300, now)
    # a few deletes: their tombstones must not reach the late node as records
    for rid, _ in sas[:4]:
        code, body = primary.client.delete(f"/v1/records/ipsec_sa/{rid}")
        assert code == 200, body
        del written[("ipsec_sa", rid)]
    pst = status(primary)
    assert user_records(pst) == counts(written)

    late.start()
    wait_api(cluster, late)
    wait(
        cluster,
        lambda: (late.status() or {}).get("in_sync") is True,
        "the late node to be in sync",
        20,
    )
    sst = status(late)
    assert sst["role"] == "secondary"
    assert sst["primary"] == primary.name
    assert user_records(sst) == user_records(status(primary)) == counts(written)
    assert sst["version"] == pst["version"]
    check_records(late, written)
    for rid, _ in sas[:4]:
        code, _body = late.client.get(f"/v1/records/ipsec_sa/{rid}")
        assert code == 404
    for kind in KINDS:
        check_listing(late, kind, 1000, written)
    assert re.search(r"snapshot \d+ from fw-a started", late.log.read_text()), tail(late)


# --- 4: wrong key, wrong group -------------------------------------------------------------


@pytest.mark.integration
def test_wrong_key_and_wrong_group_never_pair(lab: Callable[..., LabCluster]) -> None:
    cluster = lab(names=("fw-a", "fw-b", "fw-c", "fw-d"), priorities=(200, 100, 150, 150))
    a, b, c, d = (cluster[n] for n in ("fw-a", "fw-b", "fw-c", "fw-d"))
    write_key(cluster.psk)
    other_psk = cluster.dir / "psk-other"
    write_key(other_psk)
    d.extra = {"link": {"group_id": 7}}
    a.write_config([b.link, c.link, d.link], cluster.psk, cluster.base)
    b.write_config([a.link], cluster.psk, cluster.base)
    c.write_config([a.link], other_psk, cluster.base)  # wrong key
    d.write_config([a.link], cluster.psk, cluster.base)  # wrong group
    for node in (a, b, c, d):
        node.start()
    wait_api(cluster)

    def paired() -> bool:
        sa, sb = a.status(), b.status()
        return (
            sa is not None
            and sb is not None
            and sa["role"] == "primary"
            and sb["role"] == "secondary"
            and sb["in_sync"] is True
        )

    wait(cluster, paired, "fw-a primary with fw-b in sync")

    def logged(node: LabNode, word: str) -> bool:
        return node.log.exists() and word in node.log.read_text()

    wait(
        cluster,
        lambda: (
            logged(a, "psk_mismatch")
            and logged(c, "psk_mismatch")
            and logged(a, "group_mismatch")
            and logged(d, "group_mismatch")
        ),
        "psk_mismatch and group_mismatch logged on both sides",
    )

    now = time.time()
    written, sas, _, _ = write_samples(a, 50, 10, 50, now)
    wait(cluster, caught_up(a, b), "fw-b to receive the writes")
    check_records(b, written)

    for node in (c, d):
        st = status(node)
        assert not [p for p in st["peers"] if p["link"] == "up"], (node.name, st["peers"])
        assert all(n == 0 for n in user_records(st).values()), (node.name, st["records"])
        for kind in KINDS:
            code, body = node.client.get(f"/v1/records/{kind}?limit=1000")
            assert code == 200, body
            assert body["items"] == [], f"{node.name} received {kind} records"
    ast = status(a)
    up = [p["node"] for p in ast["peers"] if p["link"] == "up"]
    assert up == ["fw-b"], ast["peers"]
    assert metric(a, "hasyncd_link_errors_total", code="psk_mismatch") >= 1
    assert metric(a, "hasyncd_link_errors_total", code="group_mismatch") >= 1

    # the reason names the key id at most, never the key (nor record keys)
    secrets = [cluster.psk.read_text().strip(), other_psk.read_text().strip()]
    secrets += [rec["enc"]["key"] for _, rec in sas[:20]]
    assert all(len(s) >= 64 for s in secrets[:2])
    for node in (a, b, c, d):
        text = node.log.read_text()
        for s in secrets:
            assert s.lower() not in text.lower(), f"{node.name}'s log contains key material"


# --- 5: kinds that are not replicated ---------------------------------------------------


@pytest.mark.integration
def test_not_replicated_kinds_are_refused_and_counted(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = start_pair(cluster)
    for kind in NOT_REPLICATED:
        code, body = primary.client.put(f"/v1/records/{kind}/x1", {"user": "alice"})
        assert code == 422, (kind, body)
        assert body["error"] == "not_replicated"
        assert body["kind"] == kind
        assert body["reason"] == REASONS[kind] and body["reason"]
    code, body = primary.client.batch(
        [{"op": "put", "kind": "proxy_session", "id": "p", "record": {}}]
    )
    assert code == 200, body
    res = body["results"][0]
    assert (res["status"], res["error"], res["kind"]) == (422, "not_replicated", "proxy_session")

    code, body = primary.client.put("/v1/records/ftp_session/x1", {"user": "alice"})
    assert (code, body["error"]) == (404, "unknown_kind"), body

    code, body = primary.client.get("/v1/policy")
    assert code == 200
    table = {p["kind"]: p for p in body["policy"]}
    assert set(table) == set(KINDS) | set(NOT_REPLICATED) | set(INTERNAL)
    for kind in NOT_REPLICATED:
        assert table[kind]["replicated"] is False
        assert table[kind]["reason"] == REASONS[kind]
    for kind in KINDS:
        assert table[kind]["replicated"] is True

    for kind in NOT_REPLICATED:
        want = 2.0 if kind == "proxy_session" else 1.0
        got = metric(primary, "hasyncd_not_replicated_writes_total", kind=kind)
        assert got == want, (kind, got)
    assert metric(primary, "hasyncd_api_errors_total", error="not_replicated") == 10
    assert metric(primary, "hasyncd_api_errors_total", error="unknown_kind") == 1
    for node in (primary, secondary):
        assert all(n == 0 for n in user_records(status(node)).values())


@pytest.mark.integration
def test_reads_of_not_replicated_kinds_are_not_counted_as_writes(make_cluster: Any) -> None:
    """hasyncd_not_replicated_writes_total counts "writes refused": reads are not writes."""
    cluster = make_cluster()
    primary, _ = start_pair(cluster)
    code, body = primary.client.put("/v1/records/proxy_session/p1", {"user": "alice"})
    assert code == 422, body
    code, _ = primary.client.get("/v1/records/proxy_session/p1")
    assert code == 422
    code, _ = primary.client.get("/v1/records/proxy_session?limit=10")
    assert code == 422
    got = metric(primary, "hasyncd_not_replicated_writes_total", kind="proxy_session")
    assert got == 1.0, f"1 refused write, 2 reads: the write counter says {got}"


# --- 6: sync mode ------------------------------------------------------------------------


@pytest.mark.integration
def test_sync_mode_acknowledges_after_the_secondary_holds_the_record(make_cluster: Any) -> None:
    cluster = make_cluster(base={"sync": {"mode": "sync", "sync_timeout_ms": 3000}})
    primary, secondary = start_pair(cluster)
    now = time.time()
    sas, _, webs = sample_sets(150, 0, 50, now)
    items = [("ipsec_sa", x) for x in sas] + [("sslvpn_web_session", x) for x in webs]
    for kind, (rid, rec) in items:
        code, body = primary.client.put(f"/v1/records/{kind}/{rid}", rec)
        assert (code, body.get("replicated")) == (201, True), (kind, rid, body)
        # no polling: the secondary must already hold it
        code, got = secondary.client.get(f"/v1/records/{kind}/{rid}")
        assert code == 200, f"acknowledged {kind} {rid} is not on the secondary: {got}"
        assert got["record"] == rec and got["version"] == body["version"]
    for rid, rec in sas[:20]:
        upd = {**rec, "seq": rec["seq"] + 1}
        code, body = primary.client.put(f"/v1/records/ipsec_sa/{rid}", upd)
        assert (code, body.get("replicated")) == (200, True), body
        code, got = secondary.client.get(f"/v1/records/ipsec_sa/{rid}")
        assert code == 200 and got["record"] == upd and got["version"] == body["version"], got
    for rid, _ in sas[20:30]:
        code, body = primary.client.delete(f"/v1/records/ipsec_sa/{rid}")
        assert (code, body.get("replicated")) == (200, True), body
        code, got = secondary.client.get(f"/v1/records/ipsec_sa/{rid}")
        assert code == 404, got
    batch = [samples.web_session(i, now) for i in range(50, 250)]
    code, body = primary.client.batch(put_ops("sslvpn_web_session", batch))
    assert code == 200 and body["replicated"] is True, body
    for rid, rec in batch:
        code, got = secondary.client.get(f"/v1/records/sslvpn_web_session/{rid}")
        assert code == 200 and got["record"] == rec, (rid, got)

    # without an in-sync secondary a write is acknowledged at once as not replicated
    secondary.kill()
    wait(
        cluster,
        lambda: all(p["link"] != "up" for p in status(primary)["peers"]),
        "the primary to see the secondary's link down",
    )
    for i in range(1000, 1005):
        rid, rec = samples.ipsec_sa(i, "out", now)
        t0 = time.monotonic()
        code, body = primary.client.put(f"/v1/records/ipsec_sa/{rid}", rec)
        elapsed = time.monotonic() - t0
        assert code == 202, body
        assert body["replicated"] is False
        assert elapsed < 1.0, f"PUT with no in-sync secondary took {elapsed:.3f} s"
        code, got = primary.client.get(f"/v1/records/ipsec_sa/{rid}")
        assert code == 200 and got["record"] == rec
    t0 = time.monotonic()
    code, body = primary.client.delete(f"/v1/records/ipsec_sa/{sas[40][0]}")
    assert (code, body["replicated"]) == (202, False), body
    assert time.monotonic() - t0 < 1.0


# --- 7: API input errors -------------------------------------------------------------------


@pytest.mark.integration
def test_api_input_errors(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = start_pair(cluster)
    now = time.time()
    rid, rec = samples.ipsec_sa(1, "out", now)
    other_rid, _ = samples.ipsec_sa(2, "out", now)
    path = f"/v1/records/ipsec_sa/{rid}"

    code, body = primary.client.request("PUT", path, raw=b'{"tunnel": "site-0",')
    assert (code, body["error"]) == (400, "invalid_json"), body
    # In a batch, a line that is not JSON fails alone; the other ops still apply.
    batch_rid, batch_rec = samples.ipsec_sa(3, "out", now)
    good = json.dumps(
        {"op": "put", "kind": "ipsec_sa", "id": batch_rid, "record": batch_rec}
    ).encode()
    code, body = primary.client.request(
        "POST",
        "/v1/records:batch",
        raw=b"{not json}\n" + good + b"\n",
        content_type="application/x-ndjson",
    )
    assert code == 200, body
    assert [(r["status"], r.get("error")) for r in body["results"]] == [
        (400, "invalid_json"),
        (201, None),
    ], body

    code, body = primary.client.put(path, {**rec, "colour": "red"})
    assert (code, body["error"], body.get("field")) == (400, "unknown_field", "colour"), body
    code, body = primary.client.put(path, {**rec, "enc": {**rec["enc"], "iv": "00"}})
    assert (code, body["error"], body.get("field")) == (400, "unknown_field", "enc.iv"), body

    code, body = primary.client.put(f"/v1/records/ipsec_sa/{other_rid}", rec)
    assert (code, body["error"], body.get("field")) == (400, "id_mismatch", "id"), body

    code, body = secondary.client.put(path, rec)
    assert (code, body["error"], body["primary"]) == (409, "not_primary", "fw-a"), body
    code, body = secondary.client.delete(path)
    assert (code, body["error"], body["primary"]) == (409, "not_primary", "fw-a"), body

    for q in ("limit=0", "limit=1001", "limit=ten", "after=x&limit=-1"):
        code, body = primary.client.get(f"/v1/records/ipsec_sa?{q}")
        assert (code, body["error"]) == (400, "invalid_query"), (q, body)

    errors = {"invalid_json": 2, "unknown_field": 2, "id_mismatch": 1, "invalid_query": 4}
    for error, n in errors.items():
        got = metric(primary, "hasyncd_api_errors_total", error=error)
        assert got == n, (error, got)
    assert metric(secondary, "hasyncd_api_errors_total", error="not_primary") == 2
    wait(cluster, caught_up(primary, secondary), "the batch's good op to replicate")
    assert status(secondary)["records"]["ipsec_sa"] == 1  # only the batch's good op

    # the daemons keep working
    code, body = primary.client.put(path, rec)
    assert code == 201, body
    wait(cluster, caught_up(primary, secondary), "the write after the errors to replicate")
    code, got = secondary.client.get(path)
    assert code == 200 and got["record"] == rec and got["version"] == body["version"]
    assert primary.running and secondary.running


# --- 9: configuration errors ---------------------------------------------------------------


def _config_text(node: str, link: str, peer: str, psk: Path, sock: Path, extra: str = "") -> str:
    return (
        f'[node]\nname = "{node}"\n\n'
        f'[link]\nlisten = "{link}"\npeers = ["{peer}"]\npsk_file = "{psk}"\n{extra}\n'
        f'[api]\nsocket = "{sock}"\n'
    )


def _run(args: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hasyncd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.integration
@pytest.mark.parametrize("case", ["unknown_key", "out_of_range", "key_mode_0644", "port_in_use"])
def test_config_errors_exit_with_one_line(tmp_path: Path, case: str) -> None:
    psk = tmp_path / "psk"
    write_key(psk)
    port = free_port()
    link, peer = f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"
    sock = tmp_path / "api.sock"
    good = tmp_path / "good.toml"
    good.write_text(_config_text("fw-a", link, peer, psk, sock))
    checked = _run(["check-config", "--config", str(good)])
    assert checked.returncode == 0, checked.stderr

    bad = tmp_path / "bad.toml"
    blocker: socket.socket | None = None
    if case == "unknown_key":
        bad.write_text(_config_text("fw-a", link, peer, psk, sock, "heartbeat_ms = 100\n"))
        want = ["[link]", "unknown key", "heartbeat_ms"]
    elif case == "out_of_range":
        bad.write_text(_config_text("fw-a", link, peer, psk, sock, "heartbeat_interval_ms = 5\n"))
        want = ["[link].heartbeat_interval_ms", "10..10000", "5"]
    elif case == "key_mode_0644":
        os.chmod(psk, 0o644)
        bad.write_text(good.read_text())
        want = ["[link].psk_file", "0644"]
    else:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        bad.write_text(good.read_text())
        want = [f"127.0.0.1:{port}", "in use"]
    try:
        proc = _run(["run", "--config", str(bad)])
    finally:
        if blocker is not None:
            blocker.close()
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line reason, got:\n{proc.stderr}"
    for w in want:
        assert w in lines[0], (w, lines[0])
    assert psk.read_text().strip() not in proc.stderr
    assert not sock.exists(), "a refused start left its API socket behind"


# --- 10: the lab command ---------------------------------------------------------------------


@pytest.mark.integration
def test_lab_command_passes(tmp_path: Path) -> None:
    proc = _run(["lab", "--records", "20", "--dir", str(tmp_path / "lab")], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lab passed" in proc.stdout
    assert "== ESP failover: a scapy IPsec peer" in proc.stdout  # scapy is a test extra


# --- bugs found on the way ---------------------------------------------------------------------


@pytest.mark.integration
def test_status_peer_address_is_the_peers_link_address(lab: Callable[..., LabCluster]) -> None:
    """The status must name a peer by its link address, whichever side dialed first.

    Start fw-b first: fw-a's dial reaches it before fw-b's retry reaches fw-a.
    """
    cluster = lab()
    cluster.write()
    a, b = cluster["fw-a"], cluster["fw-b"]
    b.start()
    wait_api(cluster, b)
    a.start()
    start_pair(cluster)
    wait(cluster, lambda: len(status(b)["peers"]) == 1, "fw-b to list fw-a")
    assert status(a)["peers"][0]["address"] == b.link
    seen = status(b)["peers"][0]["address"]
    assert seen == a.link, (
        f"fw-b reports fw-a at {seen}, the source address of fw-a's connection, "
        f"not fw-a's link address {a.link}"
    )


@pytest.mark.integration
def test_client_closes_its_socket_when_the_api_is_not_up(tmp_path: Path) -> None:
    """Polling a node that is still starting must not leak a socket per attempt.

    LabNode.status() (used by LabCluster.wait_pair) polls exactly like this; with
    the project's filterwarnings = error every leaked socket fails the test.
    """
    missing = tmp_path / "not-yet.sock"  # the daemon has not created it yet
    refusing = tmp_path / "refusing.sock"  # bound, not listening: connection refused
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(refusing))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for path in (missing, refusing):
                with pytest.raises(OSError):
                    Client(socket=str(path), timeout=2.0).status()
            gc.collect()
    finally:
        bound.close()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, f"hasyncd.client leaked sockets on failed connects: {leaks}"


@pytest.mark.integration
def test_late_secondary_is_not_resynced_by_duplicate_link_cleanup(
    lab: Callable[..., LabCluster],
) -> None:
    """A secondary that joined and is in sync keeps its link: one snapshot, no flap.

    fw-a starts alone (its dials to fw-b fail and back off), fw-b starts and
    dials fw-a: that link carries the snapshot.  fw-a's next retry must not
    replace the working link and force a second full snapshot (during which,
    in sync mode, writes are acknowledged as not replicated).
    """
    cluster = lab()
    cluster.write()
    a, b = cluster["fw-a"], cluster["fw-b"]
    a.start()
    wait_api(cluster, a)
    wait(cluster, lambda: a.role() == "primary", "fw-a to become primary alone")
    now = time.time()
    write_samples(a, 150, 30, 300, now)
    b.start()
    wait_api(cluster, b)
    wait(cluster, caught_up(a, b), "fw-b to catch up")
    # fw-a retries its dial within reconnect_max (1 s) plus jitter: watch 2.5 s.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        snapshots = metric(a, "hasyncd_snapshots_started_total")
        st = status(b)
        assert snapshots == 1, (
            f"fw-a sent {snapshots:.0f} full snapshots to an fw-b that was already in sync:\n"
            f"{tail(a)}\n{tail(b)}"
        )
        assert st["in_sync"] is True and st["peers"][0]["link"] == "up", st
        time.sleep(0.05)
    assert "duplicate" not in b.log.read_text(), tail(b)


@pytest.mark.integration
def test_large_batch_keeps_heartbeats_flowing(make_cluster: Any) -> None:
    """A batch well under MAX_BATCH_OPS (200,000) must not stall the primary into a failover.

    api.py slices batches "so heartbeats keep flowing"; a stall of more than
    heartbeat_lost_threshold * heartbeat_interval (500 ms) makes the
    secondary promote itself.
    """
    cluster = make_cluster()
    primary, secondary = start_pair(cluster)
    epoch = status(primary)["epoch"]
    now = time.time()
    ops = put_ops("sslvpn_web_session", [samples.web_session(i, now) for i in range(50_000)])
    code, body = primary.client.batch(ops)
    assert code == 200, body
    outcome: dict[tuple[int, str | None], int] = {}
    for res in body["results"]:
        key = (res["status"], res.get("error"))
        outcome[key] = outcome.get(key, 0) + 1
    pst, sst = status(primary), status(secondary)
    assert outcome == {(201, None): 50_000}, (
        f"batch outcome {outcome}; roles now {pst['role']}/{sst['role']}, epochs "
        f"{epoch} -> {pst['epoch']}:\n{tail(primary)}\n{tail(secondary)}"
    )
    assert (pst["role"], sst["role"], sst["epoch"]) == ("primary", "secondary", epoch)
    assert "FENCED" not in primary.log.read_text(), tail(primary)
