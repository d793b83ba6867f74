"""``hasyncd lab``: a two-node cluster of real daemons on loopback, shown step by step.

The launcher (``LabCluster``, ``LabNode``) lives in ``hasyncd.labcluster``
and is re-exported here; the integration tests and benchmarks use it too.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from hasyncd import samples
from hasyncd.labcluster import API_TOKEN_FILE, HOOK_SCRIPT, LabCluster, LabNode, free_port
from hasyncd.portal import lab as portal_lab

__all__ = ["API_TOKEN_FILE", "HOOK_SCRIPT", "LabCluster", "LabNode", "free_port", "run_lab"]


# --- the lab command -------------------------------------------------------------------


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_lab(records: int = 200, keep: bool = False, workdir: Path | None = None) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="hasyncd-lab-")) if workdir is None else workdir
    tmp.mkdir(parents=True, exist_ok=True)
    hook = tmp / "hook.sh"
    hook.write_text(HOOK_SCRIPT.format(dir=tmp))
    hook.chmod(0o755)
    base: dict[str, dict[str, Any]] = {
        "sync": {"mode": "sync", "sync_timeout_ms": 500},
        "hooks": {"on_primary": str(hook), "on_secondary": str(hook)},
    }
    lab = LabCluster.loopback(tmp, base=base)
    portal = portal_lab.configure(
        lab,
        {name: f"127.0.0.1:{free_port()}" for name in lab.nodes},
        {portal_lab.LAB_USER: portal_lab.LAB_PASSWORD},
        tls_names=["127.0.0.1"],
    )
    ok = False
    try:
        ok = (
            _lab_steps(lab, records) and portal_lab.lab_steps(lab, portal, _say) and _esp_steps(lab)
        )
        if ok:
            _say("== lab passed")
    except (TimeoutError, RuntimeError, AssertionError) as exc:
        _say(f"LAB FAILED: {exc}")
    finally:
        lab.stop()
        if keep or not ok:
            _say(f"lab directory kept: {tmp} (configs, key, logs)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


def _lab_steps(lab: LabCluster, records: int) -> bool:
    _say(f"== starting two hasyncd nodes on loopback in {lab.dir}")
    lab.start()
    primary, secondary = lab.wait_pair()
    st = primary.status() or {}
    _say(f"   {primary.name} is primary (epoch {st.get('epoch')}): {st.get('role_reason')}")
    _say(f"   {secondary.name} is secondary and in sync")

    _say(
        f"== writing {records} child SAs (both directions), {records // 10} IKE SAs and "
        f"{records} web-mode sessions to {primary.name} (sync mode)"
    )
    now = time.time()
    written: dict[tuple[str, str], dict[str, Any]] = {}
    ops = []
    for i in range(records):
        for direction in ("out", "in"):
            rid, rec = samples.ipsec_sa(i, direction, now)
            written[("ipsec_sa", rid)] = rec
            ops.append({"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec})
    for i in range(max(1, records // 10)):
        rid, rec = samples.ike_sa(i, now)
        written[("ike_sa", rid)] = rec
        code, body = primary.client.put(f"/v1/records/ike_sa/{rid}", rec)
        assert code == 201, (code, body)
    for i in range(records):
        rid, rec = samples.web_session(i, now)
        written[("sslvpn_web_session", rid)] = rec
        ops.append({"op": "put", "kind": "sslvpn_web_session", "id": rid, "record": rec})
    t0 = time.monotonic()
    code, body = primary.client.batch(ops)
    assert code == 200 and all(r["status"] == 201 for r in body["results"]), body
    _say(
        f"   batch of {len(ops)} writes acknowledged in {time.monotonic() - t0:.3f} s, "
        f"replicated: {body.get('replicated')}"
    )
    code, body = primary.client.put("/v1/records/sslvpn_tunnel_session/x", {"user": "u"})
    _say(
        f"   a tunnel-mode session is refused by policy: HTTP {code} {body['error']}: "
        f"{body['reason']}"
    )

    _say(f"== reading everything back from {secondary.name}")
    mismatches = _compare(secondary, written)
    _say(f"   {len(written) - mismatches}/{len(written)} records identical on the secondary")
    if mismatches:
        return False

    out_sas = [
        (rid, rec)
        for (k, rid), rec in written.items()
        if k == "ipsec_sa" and rec["direction"] == "out"
    ]
    _say(f"== failover: kill -9 {primary.name}")
    primary.kill()
    t_kill = time.monotonic()
    lab.wait(lambda: secondary.role() == "primary", 10, "promotion")
    promoted = time.monotonic() - t_kill
    st = secondary.status() or {}
    _say(
        f"   {secondary.name} promoted {promoted * 1000:.0f} ms after the kill "
        f"(epoch {st.get('epoch')}): {st.get('role_reason')}"
    )
    lab.wait(
        lambda: ((secondary.status() or {}).get("promotion") or {}).get("complete") is True,
        10,
        "promotion steps",
    )
    promo = (secondary.status() or {}).get("promotion") or {}
    _say(
        f"   promotion: {promo.get('esp_advanced')} outbound SAs advanced, "
        f"{promo.get('ike_flagged')} IKE SAs flagged for RFC 6311 sync, "
        f"in {promo.get('duration_ms')} ms"
    )
    rid, rec = out_sas[1]
    code, body = secondary.client.get(f"/v1/records/ipsec_sa/{rid}")
    _say(f"   {rid}: seq {rec['seq']} -> {body['record']['seq']}")
    missing = sum(
        1
        for (kind, rid), _ in written.items()
        if secondary.client.get(f"/v1/records/{kind}/{rid}")[0] != 200
    )
    _say(f"   {len(written) - missing}/{len(written)} records present on the new primary")
    lab.wait(
        lambda: any(lab.dir.glob(f"hook-{secondary.name}-on_primary-*.json")), 10, "on_primary hook"
    )
    _say(f"   on_primary hook ran on {secondary.name}")

    _say(f"== restarting {primary.name}: it must come back as secondary and resync")
    primary.start()
    lab.wait(
        lambda: (primary.status() or {}).get("in_sync") is True and primary.role() == "secondary",
        20,
        "the old primary to rejoin",
    )
    st = primary.status() or {}
    _say(f"   {primary.name} is {st['role']}, in sync, records {st['records']}")
    return missing == 0


def _esp_steps(lab: LabCluster) -> bool:
    """An ESP flow through the reference endpoints across a kill -9, checked by scapy."""
    try:
        from hasyncd.contrib import espflow  # noqa: PLC0415 - scapy is an optional extra
    except ImportError:
        _say("== ESP failover: skipped (scapy is not installed: pip install scapy)")
        return True
    for node in lab.nodes.values():
        if not node.running:  # the portal steps leave their killed node down
            _say(f"== restarting {node.name} for the ESP step")
            node.start()
    _say("== ESP failover: a scapy IPsec peer, one reference endpoint per node (lease mode)")
    res = espflow.run(lab, "leases", _say, rate=300, before_s=1.0, after_s=1.0)
    _say(f"   {espflow.summary(res)}")
    return (
        not res.rejected_after
        and res.accepted_after + res.kernel_drops_after == res.sent_after > 0
        and res.undecryptable == 0
        and res.peer_kernel_drops == 0
        and not res.replay_refused
        and not res.reused
        and res.nonce_reused == 0
        and res.replay[1] - res.replay[4] <= res.replay[2] <= res.replay[1]
    )


def _compare(node: LabNode, written: dict[tuple[str, str], dict[str, Any]]) -> int:
    mismatches = 0
    for (kind, rid), rec in written.items():
        code, body = node.client.get(f"/v1/records/{kind}/{rid}")
        if code != 200 or body["record"] != rec:
            mismatches += 1
            if mismatches <= 3:
                _say(f"   MISMATCH {kind} {rid}: HTTP {code}")
    return mismatches
