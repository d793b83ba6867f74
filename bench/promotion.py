"""Promotion with a large store, and the cost of a counter update (issue 10).

    .venv/bin/python bench/promotion.py [--sas 1000000] [--daemons] [--updates 100000]

Figures (measurements on a shared machine, never assertions):

* ``core_promote_ms`` (wall) and ``core_promote_cpu_ms`` (process CPU, not
  disturbed by other load): in process, a node core holding ``--sas`` SAs is
  promoted (the simulator drives it; the store is filled directly): wall time
  of the call that elects it, writes the promotion record and emits
  ``promotion_done`` (what the shell turns into ``on_primary``), and of the
  read-only rekey scan that follows in slices (``core_scan_ms``, heartbeats
  keep flowing between slices).
* ``counter_update_us``: in process, process CPU per update of
  ``update_counters`` (10,000 updates per call, as one ``POST /v1/counters``),
  the best of 5 runs; ``api_counter_update_us`` the same through the real
  API of one daemon over its Unix socket (wall time of the request: HTTP,
  JSON decode, the core), ``api_counter_update_cpu_us`` the daemon's CPU.
* with ``--daemons``: two real daemons on loopback; the primary is filled
  with ``--sas`` SAs through the batch API, the secondary joins, then the
  primary is killed (SIGKILL).  ``election_to_on_primary_ms`` is from the
  new primary's role change (its role history) to the start of its
  ``on_primary`` hook (the hook writes the time), ``kill_to_on_primary_ms``
  from the kill.

Writes bench/out/promotion.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from hasyncd_bench import LOAD_BATCH, NDJSON, post_batch
from observe import UnixHTTP
from sysinfo import cpu_seconds, loadavg, machine
from workload import Workload, batches, ndjson_body

from hasyncd import samples
from hasyncd.core.counterpath import CounterUpdate, update_counters
from hasyncd.core.events import PromotionDone
from hasyncd.lab import LabCluster
from hasyncd.records import KINDS
from hasyncd.sim import WALL_BASE, Sim
from hasyncd.store import pack_value, pack_version
from hasyncd.wire.messages import Role

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out" / "promotion.json"
SA = KINDS["ipsec_sa"]
FILL_RETRIES = 10
POOL = 1000  # distinct sample SAs; copies get distinct ids (the core never decodes them)
# The hook's first act: write the time it started (date(1): no interpreter start-up).
HOOK = """#!/bin/sh
date +%s.%N > "{out}.tmp"
mv "{out}.tmp" "{out}"
"""


def fill_store(core: Any, n: int) -> None:
    """n outbound/inbound SAs stored as a previous primary's epoch-1 writes."""
    blobs = []
    for i in range(POOL):
        rid, rec = samples.ipsec_sa(i, "out" if i % 2 == 0 else "in", WALL_BASE)
        blobs.append(SA.from_json(rec, rid).blob)
    put = core.store.put_value
    for i in range(n):
        spi = 256 + i
        rid = f"esp-{spi:08x}@203.0.113.{1 + i % 250}"
        put(SA.code, rid, pack_value(pack_version(1, i + 1), None, blobs[i % POOL]))
    core.roles.epoch = 1 << 16  # it followed epoch 1's primary


def core_promotion(n: int) -> dict[str, Any]:
    sim = Sim(seed=1)
    node = sim.add("a", ["a", "b"], holddown=0.5)
    fill_store(node.core, n)
    roles = node.core.roles
    timing: dict[str, float] = {}
    promote = roles._promote

    def timed(now: float, reason: str, *, planned: bool) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        promote(now, reason, planned=planned)
        timing["promote_s"] = time.perf_counter() - t0
        timing["promote_cpu_s"] = time.process_time() - c0

    run_slices = roles.run_slices
    timing["scan_s"], timing["slices"] = 0.0, 0

    def timed_slices(now: float) -> None:
        busy = roles.promotion is not None
        t0 = time.perf_counter()
        run_slices(now)
        if busy:
            timing["scan_s"] += time.perf_counter() - t0
            timing["slices"] += 1

    roles._promote = timed  # type: ignore[method-assign]
    roles.run_slices = timed_slices  # type: ignore[method-assign]
    sim.run_until_true(lambda: node.role is Role.PRIMARY, limit=5, step=0.01)
    assert any(isinstance(ev, PromotionDone) for _, ev in node.events)
    sim.run_until_true(lambda: roles.promotion is None, limit=60, step=0.01)
    scan, slices = timing["scan_s"], int(timing["slices"])
    summary = roles.last_promotion or {}
    return {
        "sas": n,
        "core_promote_ms": round(timing["promote_s"] * 1000, 3),
        "core_promote_cpu_ms": round(timing["promote_cpu_s"] * 1000, 3),
        "core_scan_ms": round(scan * 1000, 1),
        "scan_slices": slices,
        "esp_advanced": summary.get("esp_advanced"),
    }


def counter_cost(n_sas: int = 10_000, repeat: int = 5) -> dict[str, Any]:
    sim = Sim(seed=2)
    node = sim.add("a", ["a", "b"], holddown=0.5)
    sim.run_until_true(lambda: node.role is Role.PRIMARY, limit=5, step=0.01)
    core = node.core
    rids = []
    for i in range(n_sas):
        rid, rec = samples.ipsec_sa(i, "out", WALL_BASE)
        core.write(SA.from_json(rec, rid), sim.now, wall=sim.wall)
        rids.append((rid, rec["seq"]))
    best = float("inf")
    for r in range(repeat):
        ups = [CounterUpdate(rid, seq + 1000 * (r + 1), 0, 0, None) for rid, seq in rids]
        sim.run_for(0.1)
        t0 = time.process_time()
        out = update_counters(core, ups, sim.now, wall=sim.wall)
        best = min(best, time.process_time() - t0)
        assert out.applied == n_sas, out
    return {"counter_update_us": round(best / n_sas * 1e6, 2), "updates_per_call": n_sas}


def api_counter_cost(tmp: Path, n_sas: int = 10_000, repeat: int = 5) -> dict[str, Any]:
    (tmp / "api").mkdir()
    lab = LabCluster.loopback(tmp / "api", base={"log": {"level": "warning"}})
    lab.write()
    a = lab["fw-a"]
    try:
        a.start()
        lab.wait(lambda: a.role() == "primary", 30, "a lone primary")
        conn = UnixHTTP(str(a.socket))
        work = Workload(time.time())
        recs = [r for r in work.records(0, 2 * n_sas) if r[1]["direction"] == "out"]
        post_batch(conn, ndjson_body(recs), NDJSON)
        best = best_cpu = float("inf")
        assert a.proc is not None
        for r in range(repeat):
            body = json.dumps(
                {"updates": [{"id": rid, "seq": rec["seq"] + 1000 * (r + 1)} for rid, rec in recs]}
            ).encode()
            c0, t0 = cpu_seconds(a.proc.pid), time.perf_counter()
            status, raw = conn.call("POST", "/v1/counters", body, "application/json")
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, cpu_seconds(a.proc.pid) - c0)
            assert status == 200, raw[:200]
            assert json.loads(raw)["applied"] == len(recs), raw[:200]
        conn.close()
        return {
            "api_counter_update_us": round(best / len(recs) * 1e6, 2),
            "api_counter_update_cpu_us": round(best_cpu / len(recs) * 1e6, 2),
        }
    finally:
        a.kill()


def daemons(tmp: Path, n: int) -> dict[str, Any]:
    hook_out = tmp / "on_primary.time"
    hook = tmp / "hook.sh"
    hook.write_text(HOOK.format(out=hook_out))
    hook.chmod(0o755)
    (tmp / "lab").mkdir()
    lab = LabCluster.loopback(
        tmp / "lab", base={"log": {"level": "warning"}, "hooks": {"on_primary": str(hook)}}
    )
    lab.write()
    a, b = lab["fw-a"], lab["fw-b"]
    try:
        a.start()
        lab.wait(lambda: a.role() == "primary", 30, "a lone primary")
        t0 = time.monotonic()
        for part in batches(Workload(time.time()), 0, n, LOAD_BATCH):
            body = ndjson_body(part)
            for _ in range(FILL_RETRIES):
                conn = UnixHTTP(str(a.socket))  # a fresh one: building a body may take > 10 s
                failed = post_batch(conn, body, NDJSON)
                conn.close()
                if not failed:
                    break
                # A loaded machine can stall a lone primary long enough to fence it
                # for a moment (503 fenced per op): puts are idempotent, send again.
                time.sleep(1.0)
            else:
                raise RuntimeError("ops kept failing while filling the primary")
        fill_s = time.monotonic() - t0
        b.start()
        t0 = time.monotonic()

        def joined() -> bool:
            st = b.status() or {}
            return bool(st.get("in_sync")) and st.get("records", {}).get("ipsec_sa") == n

        lab.wait(joined, 1800, "the secondary in sync")
        join_s = time.monotonic() - t0
        hook_out.unlink(missing_ok=True)
        killed = time.time()
        a.kill()
        lab.wait(hook_out.exists, 60, "on_primary")
        hook_at = float(hook_out.read_text())
        st = b.status() or {}
        elected = next(h["time"] for h in st["role_history"] if h["new"] == "primary")
        return {
            "sas": n,
            "fill_s": round(fill_s, 1),
            "join_s": round(join_s, 1),
            "kill_to_on_primary_ms": round((hook_at - killed) * 1000, 1),
            "election_to_on_primary_ms": round((hook_at - elected) * 1000, 1),
            "detection_s": st.get("promotion", {}).get("rule", {}).get("detection_s"),
        }
    finally:
        for node in (a, b):
            node.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sas", type=int, default=1_000_000)
    ap.add_argument("--daemons", action="store_true", help="also kill -9 real daemons")
    ap.add_argument("--daemon-sas", type=int, default=None, help="SAs for --daemons (--sas)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only-daemons", action="store_true", help="skip the in-process figures")
    args = ap.parse_args(argv)
    started, load = time.time(), loadavg()
    result: dict[str, Any] = {
        "command": " ".join(["bench/promotion.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine(REPO),
    }
    if not args.only_daemons:
        result["core"] = core_promotion(args.sas)
        print(json.dumps(result["core"]))
        result["counters"] = counter_cost()
    with tempfile.TemporaryDirectory(prefix="hasyncd-promo-") as tmp:
        if not args.only_daemons:
            result["counters"].update(api_counter_cost(Path(tmp)))
            print(json.dumps(result["counters"]))
        if args.daemons or args.only_daemons:
            result["daemons"] = daemons(Path(tmp), args.daemon_sas or args.sas)
            print(json.dumps(result["daemons"]))
    result["machine"]["loadavg_at_start"] = load
    result["machine"]["loadavg_at_end"] = loadavg()
    result["duration_s"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
