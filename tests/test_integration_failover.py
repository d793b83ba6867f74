"""Failover with real processes: kill -9, SIGSTOP, graceful stop, manual failover, events."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hasyncd import samples
from hasyncd.lab import LabCluster, LabNode

pytestmark = pytest.mark.integration

HOOK = """#!/bin/sh
out="{dir}/hook-$HASYNCD_NODE-$HASYNCD_HOOK-$$.json"
cat > "$out.tmp"
env | grep '^HASYNCD_' | sort > "$out.env"
mv "$out.tmp" "$out"
"""


def hooked_cluster(make_cluster: Any, tmp_path: Path, **base: Any) -> LabCluster:
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK.format(dir=tmp_path))
    hook.chmod(0o755)
    cfg: dict[str, dict[str, Any]] = {
        "hooks": {"on_primary": str(hook), "on_secondary": str(hook), "on_fault": str(hook)}
    }
    cfg.update(base)
    cluster: LabCluster = make_cluster(base=cfg)
    return cluster


def hook_runs(tmp_path: Path, node: str, hook: str) -> list[tuple[dict[str, Any], str]]:
    runs = []
    for f in sorted(tmp_path.glob(f"hook-{node}-{hook}-*.json")):
        env = Path(str(f) + ".env")
        runs.append((json.loads(f.read_text()), env.read_text() if env.exists() else ""))
    return runs


def write_mix(node: LabNode, n: int, now: float) -> dict[tuple[str, str], dict[str, Any]]:
    """n child SAs (both directions), n/10 IKE SAs, n web sessions, one PUT each."""
    written: dict[tuple[str, str], dict[str, Any]] = {}
    gen = [("ipsec_sa", samples.ipsec_sa(i, d, now)) for i in range(n) for d in ("out", "in")]
    gen += [("ike_sa", samples.ike_sa(i, now)) for i in range(max(1, n // 10))]
    gen += [("sslvpn_web_session", samples.web_session(i, now)) for i in range(n)]
    for kind, (rid, rec) in gen:
        code, body = node.client.put(f"/v1/records/{kind}/{rid}", rec)
        assert code == 201, body
        assert body.get("replicated") is True, body
        written[(kind, rid)] = rec
    return written


def test_kill9_of_the_primary_loses_no_acknowledged_record(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = hooked_cluster(make_cluster, tmp_path, sync={"mode": "sync", "sync_timeout_ms": 2000})
    primary, secondary = cluster.wait_pair()
    written = write_mix(primary, 150, time.time())
    primary.kill()
    t0 = time.monotonic()
    cluster.wait(lambda: secondary.role() == "primary", 5, "promotion")
    took = time.monotonic() - t0
    assert took < 1.5, f"promotion took {took:.3f} s"
    cluster.wait(
        lambda: ((secondary.status() or {}).get("promotion") or {}).get("complete") is True, 5
    )
    st = secondary.status()
    assert st is not None
    assert st["promotion"]["esp_advanced"] == 150
    assert st["promotion"]["ike_flagged"] == 15
    margin = 65536
    for (kind, rid), rec in written.items():
        code, body = secondary.client.get(f"/v1/records/{kind}/{rid}")
        assert code == 200, (kind, rid)
        got = body["record"]
        if kind == "ipsec_sa" and rec["direction"] == "out":
            limit = 2**64 - 1 if rec["esn"] else 2**32 - 1
            assert got["seq"] == min(rec["seq"] + margin, limit)
            got = {**got, "seq": rec["seq"]}
        if kind == "ike_sa":
            assert got["mid_sync_required"] is True
            got = {**got, "mid_sync_required": False}
        assert got == rec, (kind, rid)
    cluster.wait(lambda: bool(hook_runs(tmp_path, secondary.name, "on_primary")), 5, "hook")
    doc, env = hook_runs(tmp_path, secondary.name, "on_primary")[-1]
    assert doc["node"] == secondary.name
    assert doc["new_role"] == "primary"
    assert doc["epoch"] == st["epoch"]
    assert doc["records"]["ipsec_sa"] == 300
    assert f"HASYNCD_EPOCH={st['epoch']}" in env
    assert "HASYNCD_NEW_ROLE=primary" in env
    recent = [h for h in st["hooks"]["recent"] if h["hook"] == "on_primary"]
    if not recent:
        st = secondary.status()
        assert st is not None
        recent = [h for h in st["hooks"]["recent"] if h["hook"] == "on_primary"]
    assert recent[-1]["result"] == "ok"
    assert recent[-1]["exit"] == 0


def test_sigstop_primary_steps_down_on_resume_with_no_dual_writes(make_cluster: Any) -> None:
    cluster = make_cluster(base={"sync": {"mode": "sync"}})
    primary, secondary = cluster.wait_pair()
    now = time.time()
    rid0, rec0 = samples.web_session(0, now)
    assert primary.client.put(f"/v1/records/sslvpn_web_session/{rid0}", rec0)[0] == 201
    primary.signal(signal.SIGSTOP)
    try:
        cluster.wait(lambda: secondary.role() == "primary", 5, "promotion of the secondary")
        rid1, rec1 = samples.web_session(1, now)
        # Committed; 202 because no secondary is in sync to acknowledge it.
        assert secondary.client.put(f"/v1/records/sslvpn_web_session/{rid1}", rec1)[0] == 202
        time.sleep(1.0)
    finally:
        primary.signal(signal.SIGCONT)
    # Hammer the old primary from the moment it resumes: it must accept nothing.
    accepted = []
    deadline = time.monotonic() + 2.0
    i = 100
    while time.monotonic() < deadline:
        rid, rec = samples.web_session(i, now)
        code, body = primary.client.put(f"/v1/records/sslvpn_web_session/{rid}", rec)
        if code in (200, 201, 202):
            accepted.append((rid, code))
        else:
            assert body["error"] in ("fenced", "not_primary"), body
        i += 1
    assert accepted == []
    cluster.wait(lambda: primary.role() == "secondary", 5, "old primary to step down")
    cluster.wait(lambda: (primary.status() or {}).get("in_sync") is True, 10, "resync")
    code, body = primary.client.get(f"/v1/records/sslvpn_web_session/{rid1}")
    assert code == 200
    assert body["record"] == rec1
    assert secondary.role() == "primary"


def test_sigterm_of_the_primary_hands_over_without_waiting_for_detection(
    make_cluster: Any,
) -> None:
    cluster = make_cluster(base={"sync": {"mode": "sync"}})
    primary, secondary = cluster.wait_pair()
    written = write_mix(primary, 20, time.time())
    t0 = time.monotonic()
    primary.signal(signal.SIGTERM)
    cluster.wait(lambda: secondary.role() == "primary", 5, "handover")
    took = time.monotonic() - t0
    assert primary.proc is not None
    assert primary.proc.wait(10) == 0
    # A handover does not wait out the 0.5 s failure detection.
    assert took < 0.45, f"handover took {took:.3f} s"
    st = secondary.status()
    assert st is not None
    assert "handover" in st["role_reason"]
    assert st["split_brain"] is None
    for (kind, rid), _rec in written.items():
        assert secondary.client.get(f"/v1/records/{kind}/{rid}")[0] == 200


def test_manual_failover_through_the_api_and_the_cli(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    code, body = primary.client.post("/v1/failover")
    assert code == 200, body
    assert body["new_primary"] == secondary.name
    assert primary.role() == "secondary"
    cluster.wait(lambda: (primary.status() or {}).get("in_sync") is True, 10, "resync")
    out = subprocess.run(
        [sys.executable, "-m", "hasyncd", "failover", "--api", str(secondary.socket)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert primary.name in out.stdout
    cluster.wait(lambda: primary.role() == "primary", 5)
    # Refused with a reason when no secondary is in sync.
    secondary.kill()
    cluster.wait(
        lambda: all(p["link"] == "down" for p in (primary.status() or {"peers": []})["peers"]), 5
    )
    code, body = primary.client.post("/v1/failover")
    assert code == 409, body
    assert body["error"] == "no_in_sync_secondary"
    assert primary.role() == "primary"


class SSE:
    """A minimal Server-Sent Events reader over the API's Unix socket."""

    def __init__(self, path: Path, query: str = "", last_id: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(10)
        extra = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
        req = f"GET /v1/events{query} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"
        self.sock.sendall(req.encode())
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                self.buf += data
                while b"\n\n" in self.buf:
                    block, self.buf = self.buf.split(b"\n\n", 1)
                    ev: dict[str, Any] = {}
                    for line in block.decode().splitlines():
                        key, _, value = line.partition(": ")
                        if key in ("id", "event", "data"):
                            ev[key] = value
                    if "event" in ev:
                        with self._lock:
                            self.events.append(ev)
        except OSError:
            return

    def of(self, etype: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == etype]

    def close(self) -> None:
        self.sock.close()


def test_event_stream_follows_records_and_roles(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = cluster.wait_pair()
    stream = SSE(secondary.socket)
    try:
        cluster.wait(lambda: bool(stream.of("hello")), 5, "hello event")
        now = time.time()
        ids = []
        for i in range(5):
            rid, rec = samples.web_session(i, now)
            assert primary.client.put(f"/v1/records/sslvpn_web_session/{rid}", rec)[0] == 201
            ids.append(rid)
        assert primary.client.delete(f"/v1/records/sslvpn_web_session/{ids[0]}")[0] == 200
        cluster.wait(lambda: len(stream.of("record_changed")) >= 6, 5, "record events")
        recs = [json.loads(e["data"]) for e in stream.of("record_changed")]
        assert [r["id"] for r in recs[:5]] == ids
        assert recs[5]["op"] == "delete"
        seqs = [int(e["id"]) for e in stream.events if "id" in e]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        last = seqs[-1]
        primary.kill()
        cluster.wait(lambda: bool(stream.of("role_changed")), 5, "role event")
        role = json.loads(stream.of("role_changed")[-1]["data"])
        assert role["new"] == "primary"
    finally:
        stream.close()
    # A reconnecting client resumes after its Last-Event-ID.
    resumed = SSE(secondary.socket, last_id=last)
    try:
        cluster.wait(lambda: bool(resumed.of("role_changed")), 5, "replayed role event")
        assert not resumed.of("record_changed")  # those came before last_id
    finally:
        resumed.close()


def metric(node: LabNode, name: str) -> float:
    """An unlabelled sample of /metrics (every core counter is present from start-up)."""
    code, text = node.client.get("/metrics")
    assert code == 200
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"{name} missing from /metrics")


@pytest.mark.slow
def test_no_false_promotion_during_a_million_record_snapshot(tmp_path: Path) -> None:
    (tmp_path / "lab").mkdir()
    cluster = LabCluster.loopback(tmp_path / "lab")
    cluster.write()
    a, b = cluster["fw-a"], cluster["fw-b"]
    try:
        a.start()
        cluster.wait(lambda: a.role() == "primary", 15, "lone primary")
        total, batch, now = 1_000_000, 25_000, time.time()
        for start in range(0, total, batch):
            lines = []
            for i in range(start, start + batch):
                rid, rec = samples.web_session(i, now)
                op = {"op": "put", "kind": "sslvpn_web_session", "id": rid, "record": rec}
                lines.append(json.dumps(op).encode())
            code, body = a.client.request(
                "POST",
                "/v1/records:batch",
                raw=b"\n".join(lines),
                content_type="application/x-ndjson",
            )
            assert code == 200
            assert all(r["status"] == 201 for r in body["results"])
        # A secondary joins and pulls the whole table while heartbeats keep flowing.
        b.start()
        t0 = time.monotonic()
        worst_silence = 0.0
        while True:
            sa, sb = a.status(), b.status()
            if sa is not None and sb is not None:
                assert sa["role"] == "primary", sa["role_reason"]
                assert sb["role"] in ("starting", "secondary"), sb["role_reason"]
                for st in (sa, sb):
                    for p in st["peers"]:
                        if p["link"] == "up" and p["last_seen_ms"] is not None:
                            worst_silence = max(worst_silence, p["last_seen_ms"] / 1000)
                if sb["in_sync"] and sb["records"]["sslvpn_web_session"] == total:
                    break
            assert time.monotonic() - t0 < 120, "snapshot did not finish in 120 s"
            time.sleep(0.05)
        took = time.monotonic() - t0
        print(
            f"1M-record snapshot: in sync {took:.2f} s after starting the secondary "
            f"(includes its start-up and 1 s hold-down); worst heartbeat silence seen "
            f"{worst_silence * 1000:.0f} ms"
        )
        for node in (a, b):
            assert metric(node, "hasyncd_peers_lost_total") == 0
            assert metric(node, "hasyncd_promotions_total") == (1 if node is a else 0)
            assert metric(node, "hasyncd_fenced_total") == 0
        assert worst_silence < 0.5
    finally:
        for node in (a, b):
            node.kill()


def test_api_socket_has_mode_0660(make_cluster: Any) -> None:
    cluster = make_cluster()
    cluster.wait_pair()
    for node in cluster.nodes.values():
        assert oct(os.stat(node.socket).st_mode & 0o777) == "0o660"
