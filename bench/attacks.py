"""Per-attack-class figures (issue 13, THREAT_MODEL.md): attack two real daemons from outside.

    .venv/bin/python bench/attacks.py [--out bench/out/attacks.json] [--keep]

Starts two real ``hasyncd run`` processes on loopback (hasyncd.lab.LabCluster)
with a token-protected TCP API each and their HA link through a byte-flipping
TCP proxy (the on-path attacker), writes a known set of records, then runs
every attack class against them while a client keeps writing to the primary:
unauthenticated TCP API requests, slowloris heads, slow bodies, an idle
connection flood past the cap, wrong Content-Types, over-long URLs and
headers, malformed PUT and batch bodies, wrong-key handshakes and a
handshake flood on the link port, corrupted and garbage link frames, and
socket-directory impostor starts.  For each class it prints attempts,
rejections (by status or code) and acceptances (0 where the attack must
fail).  At the end it checks that nothing was lost (both nodes hold the
same records at the same versions, the known set plus every acknowledged
write made during the attacks) and nothing leaked (neither node's log holds
the link key, the API token, a full session digest or any SA/IKE key).
Writes JSON to bench/out/.  A measurement tool, not a test: it exits 1 if
something was lost, leaked or accepted that must not be.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from attack_api import (
    content_types,
    idle_flood,
    malformed,
    oversized,
    slowloris,
    unauthenticated,
)
from attack_kit import FlipProxy, Outcome
from attack_link import impostor, link_corruption, link_handshakes, metric_sum

from hasyncd import samples
from hasyncd.lab import LabCluster, LabNode, free_port

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "out" / "attacks.json"
KINDS = ("ipsec_sa", "ike_sa", "sslvpn_web_session")
KNOWN_SA = 200  # child SAs (both directions of 100) written before the attacks
KNOWN_IKE = 20
KNOWN_WEB = 100


class Writer(threading.Thread):
    """Keeps writing child SAs to the primary over its Unix socket; remembers what was acked."""

    def __init__(self, node: LabNode) -> None:
        super().__init__(daemon=True)
        self.node, self.stop = node, threading.Event()
        self.acked: list[str] = []
        self.refused: dict[int, int] = {}

    def run(self) -> None:
        i = 100_000
        while not self.stop.is_set():
            rid, rec = samples.ipsec_sa(i, "out", time.time())
            try:
                code, _ = self.node.client.put(f"/v1/records/ipsec_sa/{rid}", rec)
            except OSError:
                code = 0
            if code in (200, 201, 202):
                self.acked.append(rid)
                i += 1
            else:
                self.refused[code] = self.refused.get(code, 0) + 1  # retried with the same id
            time.sleep(0.02)


def token_of(lab: LabCluster) -> str:
    return lab.api_token.read_text().strip()


def all_records(node: LabNode) -> dict[tuple[str, str], tuple[int, int]]:
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for kind in KINDS:
        after = ""
        while True:
            path = f"/v1/records/{kind}?limit=1000" + (f"&after={after}" if after else "")
            code, body = node.client.get(path)
            assert code == 200, (code, body)
            for item in body["items"]:
                out[(kind, item["id"])] = (item["version"]["epoch"], item["version"]["seq"])
            if not body["next"]:
                break
            after = body["next"]
    return out


# --- leaks --------------------------------------------------------------------------------


def secrets_of(lab: LabCluster, now: float) -> dict[str, list[str]]:
    web = [samples.web_session(i, now)[0] for i in range(KNOWN_WEB)]
    sa = [samples.ipsec_sa(i // 2, "out" if i % 2 == 0 else "in", now)[1]["enc"]["key"]
          for i in range(KNOWN_SA)]  # fmt: skip
    ike = [
        v
        for i in range(KNOWN_IKE)
        for v in samples.ike_sa(i, now)[1]["keys"].values()
        if isinstance(v, str)
    ]
    return {
        "link key": [lab.psk.read_text().strip()],
        "api token": [token_of(lab)],
        "full session digests": web,
        "SA keys": sa,
        "IKE keys": ike,
    }


def leaks(lab: LabCluster, secrets: dict[str, list[str]]) -> dict[str, int]:
    logs = "".join(n.log.read_text(errors="replace") for n in lab.nodes.values())
    return {
        what: sum(1 for s in values if s.lower() in logs.lower())
        for what, values in secrets.items()
    }


# --- the run -------------------------------------------------------------------------------


def start(workdir: Path) -> tuple[LabCluster, list[FlipProxy]]:
    base: dict[str, dict[str, Any]] = {
        "sync": {"mode": "sync", "sync_timeout_ms": 500},
        "log": {"level": "info"},
    }
    lab = LabCluster.loopback(workdir, base=base)
    a, b = lab.nodes.values()
    proxies = [FlipProxy(a.link), FlipProxy(b.link)]  # to a, to b
    for p in proxies:
        p.start()
    a.extra = {
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "link": {"peers": [proxies[1].address]},
    }
    b.extra = {
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "link": {"peers": [proxies[0].address]},
    }
    lab.start()
    return lab, proxies


def write_known(primary: LabNode, now: float) -> None:
    ops = []
    for i in range(KNOWN_SA):
        rid, rec = samples.ipsec_sa(i // 2, "out" if i % 2 == 0 else "in", now)
        ops.append({"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec})
    for i in range(KNOWN_IKE):
        rid, rec = samples.ike_sa(i, now)
        ops.append({"op": "put", "kind": "ike_sa", "id": rid, "record": rec})
    for i in range(KNOWN_WEB):
        rid, rec = samples.web_session(i, now)
        ops.append({"op": "put", "kind": "sslvpn_web_session", "id": rid, "record": rec})
    code, body = primary.client.batch(ops)
    assert code == 200 and all(r["status"] in (200, 201) for r in body["results"]), body


def role_facts(lab: LabCluster) -> dict[str, tuple[str, int, float]]:
    out = {}
    for n in lab.nodes.values():
        st = n.status() or {}
        out[n.name] = (
            str(st.get("role")),
            int(st.get("epoch", 0)),
            metric_sum(n, "hasyncd_promotions_total"),
        )
    return out


def table(outcomes: list[Outcome]) -> str:
    rows = [("attack class", "target", "attempts", "rejected (by status/code)", "accepted")]
    for o in outcomes:
        rej = "; ".join(f"{k} x{v}" for k, v in o.rejected.most_common())
        rows.append((o.name, o.target, str(o.attempts), rej or "-", str(o.accepted)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="hasyncd-attacks-"))
    lab, proxies = start(workdir)
    t0 = time.monotonic()
    try:
        primary, secondary = lab.wait_pair(60)
        now = time.time()
        write_known(primary, now)
        lab.wait(lambda: all_records(secondary) == all_records(primary), 30, "the known set")
        known = all_records(primary)
        roles0 = role_facts(lab)
        writer = Writer(primary)
        writer.start()
        token = token_of(lab)
        outcomes: list[Outcome] = []
        slow = threading.Thread(target=slowloris, args=(primary, token, outcomes))
        slow.start()  # 30-odd seconds of held connections, while the rest runs
        for node in (primary, secondary):
            outcomes.append(unauthenticated(node))
        outcomes.append(content_types(primary, token))
        outcomes.append(oversized(primary))
        outcomes.append(malformed(primary, token))
        for node in (primary, secondary):
            outcomes += link_handshakes(node)
        slow.join()
        outcomes.append(idle_flood(primary))
        outcomes.append(link_corruption(lab, proxies, primary, secondary))
        outcomes.append(impostor(lab))
        writer.stop.set()
        writer.join(10)
        # Nothing lost: both nodes hold the same records at the same versions, the
        # known set unchanged, plus every write acknowledged during the attacks.
        lab.wait(lambda: all_records(secondary) == all_records(primary), 60, "convergence")
        final_p, final_s = all_records(primary), all_records(secondary)
        lost_known = sum(1 for k, v in known.items() if final_p.get(k) != v)
        lost_writes = sum(1 for rid in writer.acked if ("ipsec_sa", rid) not in final_s)
        extra = set(final_p) - set(known) - {("ipsec_sa", r) for r in writer.acked}
        roles1 = role_facts(lab)
        leaked = leaks(lab, secrets_of(lab, now))
        bad = [o.name for o in outcomes if o.must_fail and o.accepted]
        summary = {
            "nodes identical": final_p == final_s,
            "known records": len(known),
            "known records changed or lost": lost_known,
            "writes acknowledged during the attacks": len(writer.acked),
            "acknowledged writes missing on the secondary": lost_writes,
            "writes refused during the attacks (retried), by status": writer.refused,
            "records written by an attack": len(extra),
            "roles, epochs and promotions before": roles0,
            "roles, epochs and promotions after": roles1,
            "secrets found in the logs": leaked,
            "attack classes with an acceptance": bad,
            "duration_s": round(time.monotonic() - t0, 1),
        }
        print(table(outcomes))
        for o in outcomes:
            if o.note:
                print(f"  {o.name}: {o.note}")
        print(json.dumps(summary, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "command": "bench/attacks.py",
            "outcomes": [{**asdict(o), "rejected": dict(o.rejected)} for o in outcomes],
            "summary": summary,
        }
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
        ok = (
            final_p == final_s
            and not lost_known
            and not lost_writes
            and not extra
            and not any(leaked.values())
            and not bad
            and roles0 == roles1
        )
        return 0 if ok else 1
    finally:
        lab.stop()
        for p in proxies:
            p.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
