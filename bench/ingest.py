"""Measure batch ingest, end-to-end replication and snapshot time on two real daemons.

    .venv/bin/python bench/ingest.py --records 200000 [--shape realistic]

Starts a two-node lab on loopback, writes N ipsec_sa records through the
NDJSON batch API, and reports (to stdout and bench/out/ingest.json):

* ingest rate: records/s accepted by the primary's batch API;
* replication tail: seconds from the last batch's response until the
  secondary holds all N;
* snapshot: seconds from restarting the secondary until it is in sync again
  (includes process start and the 1 s hello hold-down);
* the secondary's CPU seconds (user + system, from /proc) per replicated
  record during ingest and during the snapshot, and its RSS growth per
  record from the restarted, empty node (API up) to in sync (Linux only).

``--shape realistic`` writes the issue-8 record shape (``bench/shapes.py``:
CBC+HMAC keys, 6 selectors, ESN, replay bitmaps); the default is
``hasyncd.samples.ipsec_sa``.

These are measurements, not assertions: compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from shapes import sa_pair

from hasyncd import samples
from hasyncd.lab import LabCluster, LabNode

BATCH = 20_000


def cpu_s(node: LabNode) -> float:
    """User + system CPU seconds of a lab node's process so far."""
    assert node.proc is not None
    fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(node: LabNode) -> int:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def sample_sa(i: int, now: float, shape: str) -> tuple[str, dict[str, object]]:
    if shape == "realistic":
        return sa_pair(i, now)
    return samples.ipsec_sa(i // 2, "out" if i % 2 == 0 else "in", now)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--shape", choices=("samples", "realistic"), default="samples")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "ingest.json")
    args = parser.parse_args()
    n = args.records
    with tempfile.TemporaryDirectory(prefix="hasyncd-bench-") as tmp:
        lab = LabCluster.loopback(Path(tmp), base={"log": {"level": "warning"}})
        lab.start()
        try:
            primary, secondary = lab.wait_pair()
            now = time.time()
            bodies = []
            for start in range(0, n, BATCH):
                lines = []
                for i in range(start, min(n, start + BATCH)):
                    rid, rec = sample_sa(i, now, args.shape)
                    op = {"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec}
                    lines.append(json.dumps(op).encode())
                bodies.append(b"\n".join(lines))
            cpu0 = cpu_s(secondary)
            t0 = time.monotonic()
            refused: dict[str, int] = {}
            for body in bodies:
                code, out = primary.client.request(
                    "POST", "/v1/records:batch", raw=body, content_type="application/x-ndjson"
                )
                assert code == 200
                for r in out["results"]:
                    if r["status"] not in (200, 201):
                        refused[r["error"]] = refused.get(r["error"], 0) + 1
            written = n - sum(refused.values())
            ingest = time.monotonic() - t0
            t1 = time.monotonic()
            lab.wait(
                lambda: (secondary.status() or {}).get("records", {}).get("ipsec_sa") == written,
                300,
            )
            tail = time.monotonic() - t1
            cpu_ingest = cpu_s(secondary) - cpu0
            secondary.kill()
            t2 = time.monotonic()
            secondary.start()
            # Start-up (imports) done once the API answers; the snapshot starts
            # after the 1 s hello hold-down, so this is the empty node's baseline.
            lab.wait(lambda: secondary.status() is not None, 30)
            rss0, cpu1 = rss_bytes(secondary), cpu_s(secondary)
            lab.wait(lambda: (secondary.status() or {}).get("in_sync") is True, 600)
            snapshot = time.monotonic() - t2
            cpu_snap = cpu_s(secondary) - cpu1
            rss1 = rss_bytes(secondary)
        finally:
            lab.stop()
    result = {
        "records": n,
        "refused_ops": refused,
        "ingest_records_per_s": round(n / ingest),
        "replication_tail_s": round(tail, 3),
        "snapshot_with_restart_s": round(snapshot, 3),
        "secondary_cpu_us_per_record_ingest": round(cpu_ingest / n * 1e6, 2),
        "secondary_cpu_us_per_record_snapshot": round(cpu_snap / n * 1e6, 2),
        "secondary_rss_bytes_per_record": round((rss1 - rss0) / n),
        "shape": args.shape,
        "machine": f"{platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
