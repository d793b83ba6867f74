"""The data-plane API with real daemons: counters, leases, and the sequence bound across kill -9."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hasyncd import samples
from hasyncd.lab import LabCluster, LabNode

pytestmark = pytest.mark.integration

N = 20  # SAs per direction


def put_sas(node: LabNode, n: int) -> dict[str, dict[str, Any]]:
    now = time.time()
    out = {}
    for i in range(n):
        for d in ("out", "in"):
            rid, rec = samples.ipsec_sa(i, d, now)
            code, body = node.client.put(f"/v1/records/ipsec_sa/{rid}", rec)
            assert code == 201, body
            out[rid] = rec
    return out


def out_ids(sas: dict[str, dict[str, Any]]) -> list[str]:
    return [rid for rid, rec in sas.items() if rec["direction"] == "out"]


def metric(node: LabNode, name: str, **labels: str) -> float:
    code, text = node.client.get("/metrics")
    assert code == 200
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_counters_apply_ignore_stale_and_refuse_bad_items(make_cluster: Any) -> None:
    cluster: LabCluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    sas = put_sas(primary, 3)
    outs = out_ids(sas)
    ins = [rid for rid in sas if rid not in outs]
    non_esn = next(rid for rid in outs if not sas[rid]["esn"])
    updates = [
        {"id": outs[0], "seq": sas[outs[0]]["seq"] + 500, "bytes": 10, "packets": 500},
        {
            "id": ins[0],
            "seq": sas[ins[0]]["seq"] + 9,
            "replay_bitmap": "ff00",
            "bytes": 1,
            "packets": 9,
        },
        {"id": outs[1], "seq": 0},  # older than what is stored: ignored
        {"id": "esp-0000ffff@198.51.100.1", "seq": 1},  # no such SA
        {"id": "not an id", "seq": 1},
        {"id": non_esn, "seq": 2**32},  # no ESN: past 2^32-1
        {"id": outs[2], "seq": "12"},  # not an integer
        {"id": outs[2], "seq": 5, "replay_bitmap": "00"},  # outbound has no bitmap
    ]
    code, body = primary.client.post("/v1/counters", {"updates": updates})
    assert code == 200, body
    assert (body["applied"], body["ignored"]) == (2, 1), body
    assert body["unknown"] == ["esp-0000ffff@198.51.100.1"]
    assert sorted(e["error"] for e in body["errors"]) == [
        "invalid_counter",
        "invalid_id",
        "invalid_item",
        "out_of_range",
    ]
    code, rec = primary.client.get(f"/v1/records/ipsec_sa/{outs[0]}")
    assert code == 200
    assert rec["record"]["seq"] == sas[outs[0]]["seq"] + 500
    code, rec = primary.client.get(f"/v1/records/ipsec_sa/{ins[0]}")
    assert rec["record"]["seq"] == sas[ins[0]]["seq"] + 9
    assert rec["record"]["replay_bitmap"] == "ff00"
    # A refused item changed nothing; the SA record itself was never rewritten.
    code, rec = primary.client.get(f"/v1/records/ipsec_sa/{outs[2]}")
    assert rec["record"] == sas[outs[2]]
    assert metric(primary, "hasyncd_counter_updates_total", result="applied") == 2
    assert metric(primary, "hasyncd_counter_updates_total", result="error") == 4
    assert metric(primary, "hasyncd_api_errors_total", error="out_of_range") == 1
    # Replicated (asynchronously) to the secondary, which reads the same view.
    cluster.wait(
        lambda: (
            secondary.client.get(f"/v1/records/ipsec_sa/{outs[0]}")[1]["record"]["seq"]
            == sas[outs[0]]["seq"] + 500
        ),
        5,
        "counters replicated",
    )
    # Whole-request refusals: clear codes, nothing applied.
    for bad, want in (
        ({"update": []}, (400, "invalid_body")),
        ({"updates": [{"id": outs[0], "seq": 1}] * 10_001}, (413, "too_many_items")),
        ([1, 2], (400, "invalid_body")),
    ):
        code, body = primary.client.post("/v1/counters", bad)
        assert (code, body["error"]) == want, body
    code, body = primary.client.request("POST", "/v1/counters", raw=b"{")
    assert (code, body["error"]) == (400, "invalid_json")
    code, body = secondary.client.post("/v1/counters", {"updates": []})
    assert (code, body["error"]) == (409, "not_primary"), body
    # The internal kinds are read, never written, through the records API.
    code, body = primary.client.put(f"/v1/records/sa_counters/{outs[0]}", {"seq": 1})
    assert (code, body["error"]) == (400, "read_only_kind"), body


def test_leases_are_replicated_before_granted_and_bound_the_new_primary(
    make_cluster: Any,
) -> None:
    cluster: LabCluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    sas = put_sas(primary, 2)
    outs = out_ids(sas)
    ins = [rid for rid in sas if rid not in outs]
    limit = sas[outs[0]]["seq"] + 1_000_000
    code, body = primary.client.post(
        "/v1/leases",
        {
            "leases": [
                {"id": outs[0], "seq_limit": limit},
                {"id": ins[0], "seq_limit": 10**9},  # inbound: no lease
                {"id": outs[1], "seq_limit": 0},  # not above the current seq
            ]
        },
    )
    assert code == 200, body
    assert body["granted"] == [{"id": outs[0], "seq_limit": limit}]
    assert body["replicated"] is True
    assert sorted(e["error"] for e in body["errors"]) == ["invalid_lease", "invalid_lease"]
    # Granted means the secondary already holds it: kill the primary at once.
    primary.kill()
    cluster.wait(lambda: secondary.role() == "primary", 5, "promotion")
    code, rec = secondary.client.get(f"/v1/records/ipsec_sa/{outs[0]}")
    assert code == 200
    assert rec["record"]["seq"] == limit  # starts at the ceiling: nothing reused
    code, rec = secondary.client.get(f"/v1/records/ipsec_sa/{outs[1]}")
    assert rec["record"]["seq"] == sas[outs[1]]["seq"] + 65536  # unleased: the margin
    # Alone, the new primary cannot make a lease durable: none is granted.
    code, body = secondary.client.post(
        "/v1/leases", {"leases": [{"id": outs[0], "seq_limit": limit + 1000}]}
    )
    assert (code, body["error"]) == (503, "no_in_sync_secondary"), body


def test_kill9_new_primary_shows_seq_advanced_past_the_rate_bound(make_cluster: Any) -> None:
    cluster: LabCluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    sas = put_sas(primary, N)
    outs = out_ids(sas)
    rate = 200_000  # sequence numbers per second per SA, simulated by the reports
    seq = {rid: sas[rid]["seq"] for rid in outs}
    t0 = time.monotonic()
    last = t0
    while time.monotonic() - t0 < 1.0:
        time.sleep(0.1)
        now = time.monotonic()
        for rid in outs:
            seq[rid] += int(rate * (now - last))
        last = now
        code, body = primary.client.post(
            "/v1/counters",
            {
                "updates": [
                    {"id": rid, "seq": s, "bytes": s, "packets": s} for rid, s in seq.items()
                ]
            },
        )
        assert code == 200 and body["applied"] == len(outs), body
    cluster.wait(
        lambda: all(
            secondary.client.get(f"/v1/records/ipsec_sa/{rid}")[1]["record"]["seq"] == s
            for rid, s in seq.items()
        ),
        5,
        "counters replicated",
    )
    reported_at = time.time()
    primary.kill()
    cluster.wait(lambda: secondary.role() == "primary", 5, "promotion")
    promoted_at = time.time()
    st = secondary.status()
    assert st is not None
    detection = 0.5  # lab heartbeat 100 ms x 5
    safety = 2.0
    for rid, s in seq.items():
        code, rec = secondary.client.get(f"/v1/records/ipsec_sa/{rid}")
        assert code == 200
        # What the old primary's data plane can have sent since its last report,
        # at the measured rate, is inside the jump (the margin alone is not).
        used = math.ceil(rate * (promoted_at - reported_at))
        assert rec["record"]["seq"] >= s + used
        assert rec["record"]["seq"] >= s + int(rate * detection * safety * 0.9)
        assert rec["record"]["seq"] > s + 65536
    fresh = st["counters"]
    assert fresh["sas_reporting"] == len(outs)
    assert fresh["age_p99_s"] is not None
