"""The operator's CLI against a real three-node cluster: status, history, records."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from hasyncd import samples
from hasyncd.lab import LabCluster, LabNode
from hasyncd.statusview import HIDDEN, hide_keys

pytestmark = pytest.mark.integration


def cli(node: LabNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hasyncd", *args, "--api", str(node.socket)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_hide_keys_hides_every_key_field_and_nothing_else() -> None:
    _rid, rec = samples.ike_sa(1, 1.7e9)
    hidden = hide_keys(rec)
    assert all(v == HIDDEN for v in hidden["keys"].values() if v is not None)
    assert hidden["ispi"] == rec["ispi"] and hidden["local"] == rec["local"]
    _, sa = samples.ipsec_sa(1, "in", 1.7e9)
    assert hide_keys(sa)["enc"] == {"alg": sa["enc"]["alg"], "key": HIDDEN}


def test_status_history_and_records_on_three_nodes(make_cluster: Any) -> None:
    cluster: LabCluster = make_cluster(
        names=("fw-a", "fw-b", "fw-c"), priorities=(200, 150, 100), base={"sync": {"mode": "sync"}}
    )
    a, _ = cluster.wait_pair()
    now = time.time()
    ids = []
    for i in range(12):
        rid, rec = samples.ike_sa(i, now)
        assert a.client.put(f"/v1/records/ike_sa/{rid}", rec)[0] == 201
        ids.append(rid)
    assert a.client.post("/v1/failover")[0] == 200
    cluster.wait_pair()
    b = cluster["fw-b"]
    cluster.wait(lambda: all(p["link"] == "up" for p in (b.status() or {"peers": []})["peers"]))

    out = cli(b, "status")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("hasyncd fw-b: PRIMARY in epoch ")
    assert "why: handover from fw-a: manual failover" in text
    # The 12 written and the promotion history: fw-a's cold start, fw-b's handover.
    assert "records: 14 (" in text
    assert "promotion 2" in text
    assert re.search(r"^  api connections: unix \d+/256 \(0 refused\)$", text, re.M), text
    peers = [line.split() for line in text.splitlines() if line.startswith("  fw-")]
    assert [(p[0], p[2], p[3], p[4]) for p in peers] == [
        ("fw-a", "up", "secondary", "yes"),
        ("fw-c", "up", "secondary", "yes"),
    ]
    assert "secondary -> primary" in text.split("last role changes:")[1]
    doc = json.loads(cli(b, "status", "--json").stdout)
    assert doc["role"] == "primary" and doc["node"] == "fw-b"

    hist = cli(a, "history")
    assert hist.returncode == 0
    lines = hist.stdout.splitlines()
    assert "primary -> secondary" in lines[1] and "starting -> primary" in lines[2]
    assert [h["new"] for h in json.loads(cli(a, "history", "--json").stdout)["history"]] == [
        "secondary",
        "primary",
    ]

    listed = cli(a, "records", "ike_sa")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == sorted(ids)
    assert cli(a, "records", "ike_sa", "--limit", "5").stdout.count("\n") == 5
    assert cli(a, "records", "ike_sa", "--count").stdout.strip() == "12"
    one = json.loads(cli(a, "records", "ike_sa", ids[0]).stdout)
    assert set(one["record"]["keys"].values()) <= {HIDDEN, None}
    shown = json.loads(cli(a, "records", "ike_sa", ids[0], "--show-keys").stdout)
    assert shown["record"]["keys"]["sk_d"] not in (HIDDEN, None)
    for bad in (("records", "tunnel_thing"), ("records", "ike_sa", "0" * 32)):
        err = cli(a, *bad)
        assert err.returncode == 1
        assert len(err.stderr.strip().splitlines()) == 1, err.stderr
        assert "Traceback" not in err.stderr
