"""Measure batch ingest, end-to-end replication and snapshot time on two real daemons.

    .venv/bin/python bench/ingest.py --records 200000

Starts a two-node lab on loopback, writes N ipsec_sa records through the
NDJSON batch API, and reports (to stdout and bench/out/ingest.json):

* ingest rate: records/s accepted by the primary's batch API;
* replication tail: seconds from the last batch's response until the
  secondary holds all N;
* snapshot: seconds from restarting the secondary until it is in sync again
  (includes process start and the 1 s hello hold-down).

These are measurements, not assertions: compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from hasyncd import samples
from hasyncd.lab import LabCluster

BATCH = 20_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
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
                    rid, rec = samples.ipsec_sa(i // 2, "out" if i % 2 == 0 else "in", now)
                    op = {"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec}
                    lines.append(json.dumps(op).encode())
                bodies.append(b"\n".join(lines))
            t0 = time.monotonic()
            for body in bodies:
                code, _ = primary.client.request(
                    "POST", "/v1/records:batch", raw=body, content_type="application/x-ndjson"
                )
                assert code == 200
            ingest = time.monotonic() - t0
            t1 = time.monotonic()
            lab.wait(
                lambda: (secondary.status() or {}).get("records", {}).get("ipsec_sa") == n, 300
            )
            tail = time.monotonic() - t1
            secondary.kill()
            t2 = time.monotonic()
            secondary.start()
            lab.wait(lambda: (secondary.status() or {}).get("in_sync") is True, 600)
            snapshot = time.monotonic() - t2
        finally:
            lab.stop()
    result = {
        "records": n,
        "ingest_records_per_s": round(n / ingest),
        "replication_tail_s": round(tail, 3),
        "snapshot_with_restart_s": round(snapshot, 3),
        "machine": f"{platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(__file__).parent / "out" / "ingest.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
