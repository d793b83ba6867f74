"""hasyncd benchmark suite: replication figures of issue 8, with Redis primary -> replica alongside.

    .venv/bin/python bench/run.py [--quick | --preset smoke|quick|full] [--runs N]
                                  [--out bench/out/results.json] [--no-redis] [--promotion]

Starts two real hasyncd daemons on loopback (hasyncd.lab.LabCluster) and,
when ``redis-server`` and redis-py are installed (``pip install -e '.[bench]'``),
a Redis primary and replica on loopback, drives both with the same realistic
``ipsec_sa`` records (bench/workload.py) and measures:

1. end-to-end replication throughput through the batch API, one client
   (NDJSON and msgpack bodies; Redis: pipelined SETs of 1000);
2. lag from the primary's ack to visible on the secondary at a fixed write rate;
3. single PUT latency over the Unix socket, async and sync mode (SET, SET + WAIT 1);
4. an empty secondary joining a primary holding N records (Redis: full resync);
5. RSS per stored record on the secondary (Redis: RSS and used_memory per key);
6. CPU per replicated record on the secondary;
7. with ``--promotion``: issue 10's promotion of a core holding the preset's
   join size in SAs, and µs per counter update (``bench/promotion.py``, which
   also has the kill -9 to ``on_primary`` run with real daemons).

Each figure is the median of ``--runs`` runs.  It prints a table and writes
JSON with the machine's facts.  These are measurements on a shared machine,
not assertions: compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hasyncd_bench as hb
import redis_bench as rb
from hasyncd_join import JoinBench
from report import summarize, table
from sysinfo import loadavg, machine, rss_bytes
from workload import Workload, shape

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "out" / "results.json"


@dataclass(frozen=True)
class Preset:
    throughput: int  # records per throughput run (each body format)
    lag_rate: int  # writes/s of the lag figure
    lag_s: float  # its duration
    lag_batch: int  # records per paced request
    puts: int  # single PUTs per latency run
    join: int  # records the primary holds when a secondary joins


PRESETS = {
    "smoke": Preset(1_000, 1_000, 0.5, 10, 100, 1_000),  # the harness's own test
    "quick": Preset(20_000, 10_000, 3.0, 10, 1_000, 100_000),
    "full": Preset(100_000, 10_000, 30.0, 10, 5_000, 1_000_000),
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def hasyncd_run(tmp: Path, work: Workload, p: Preset) -> dict[str, Any]:
    """One run of figures 1, 2, 3 and 6 (and the empty daemon's RSS) on fresh daemons."""
    n = p.throughput
    lab, primary, secondary = hb.start_pair(tmp / "async")
    try:
        out: dict[str, Any] = {"empty_rss_bytes": rss_bytes(hb.pid(secondary))}
        say(f"hasyncd: throughput, {n} records, NDJSON")
        out["ndjson"] = hb.throughput(primary, secondary, work, 0, n, hb.NDJSON)
        say(f"hasyncd: throughput, {n} records, msgpack")
        out["msgpack"] = hb.throughput(primary, secondary, work, n, n, hb.MSGPACK)
        say(f"hasyncd: lag at {p.lag_rate} writes/s for {p.lag_s} s")
        out["lag"] = hb.lag(primary, secondary, work, 2 * n, p.lag_rate, p.lag_s, p.lag_batch)
        say(f"hasyncd: {p.puts} single PUTs, async")
        out["put_async"] = hb.put_latency(primary, work, 3 * n, p.puts)
    finally:
        kill(lab)
    lab, primary, _ = hb.start_pair(tmp / "sync", sync=True)
    try:
        say(f"hasyncd: {p.puts} single PUTs, sync")
        out["put_sync"] = hb.put_latency(primary, work, 0, p.puts)
    finally:
        kill(lab)
    return out


def redis_run(tmp: Path, work: Workload, p: Preset) -> dict[str, Any]:
    n = p.throughput
    primary, replica = rb.start_pair(tmp)
    try:
        out: dict[str, Any] = {
            "empty_rss_bytes": replica.rss(),
            "empty_used_memory": replica.used_memory(),
        }
        say(f"redis: throughput, {n} records")
        out["throughput"] = rb.throughput(primary, replica, work, 0, n)
        say(f"redis: lag at {p.lag_rate} writes/s for {p.lag_s} s")
        out["lag"] = rb.lag(primary, replica, work, n, p.lag_rate, p.lag_s, p.lag_batch)
        say(f"redis: {p.puts} single SETs, and SET + WAIT 1")
        out["set"] = rb.set_latency(primary, work, 2 * n, p.puts, wait=False)
        out["set_wait"] = rb.set_latency(primary, work, 3 * n, p.puts, wait=True)
    finally:
        primary.stop()
        replica.stop()
    return out


def joins(bench: Any, work: Workload, n: int, runs: int, name: str) -> list[dict[str, Any]]:
    say(f"{name}: filling a primary with {n} records")
    out = []
    try:
        bench.fill(work, 0, n)
        for r in range(runs):
            say(f"{name}: empty secondary joins ({r + 1}/{runs})")
            out.append(bench.join_once())
    finally:
        bench.stop()
    return out


def kill(lab: Any) -> None:
    for node in lab.nodes.values():
        node.kill()


def measure(args: argparse.Namespace, p: Preset, tmp: Path) -> dict[str, Any]:
    work = Workload(time.time())
    skip = "--no-redis" if args.no_redis else rb.available()
    raw: dict[str, Any] = {"hasyncd": {"runs": [], "joins": []}, "redis": {"runs": [], "joins": []}}
    for r in range(args.runs):
        say(f"== run {r + 1}/{args.runs}")
        raw["hasyncd"]["runs"].append(hasyncd_run(tmp / f"h{r}", work, p))
        if skip is None:
            raw["redis"]["runs"].append(redis_run(tmp / f"r{r}", work, p))
    raw["hasyncd"]["joins"] = joins(JoinBench(tmp / "hjoin"), work, p.join, args.runs, "hasyncd")
    if skip is None:
        raw["redis"]["joins"] = joins(rb.JoinBench(tmp / "rjoin"), work, p.join, args.runs, "redis")
    return {"raw": raw, "redis_skipped": skip, "records": shape(work)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--quick", action="store_const", dest="preset", const="quick")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--no-redis", action="store_true", help="measure hasyncd only")
    ap.add_argument(
        "--promotion",
        action="store_true",
        help="also issue 10's promotion figures (bench/promotion.py, in process, "
        "the preset's join size in SAs): promotion time, rekey scan, µs per counter update",
    )
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    started, load, facts = time.time(), loadavg(), machine(REPO)  # the commit measured
    with tempfile.TemporaryDirectory(prefix="hasyncd-bench-") as tmp:
        got = measure(args, p, Path(tmp))
    figures = summarize(got["raw"], p)
    promotion = None
    if args.promotion:
        import promotion as pb  # noqa: PLC0415 - only with --promotion

        say(f"promotion with {p.join} SAs, counter updates")
        promotion = {"core": pb.core_promotion(p.join), "counters": pb.counter_cost()}
    result = {
        "command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "preset": args.preset,
        "settings": asdict(p),
        "runs": args.runs,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": {**facts, "loadavg_at_start": load, "loadavg_at_end": loadavg()},
        "redis": rb.version() if got["redis_skipped"] is None else None,
        "redis_skipped": got["redis_skipped"],
        "records": got["records"],
        "figures": figures,
        "raw": got["raw"],
    }
    if promotion is not None:
        result["promotion"] = promotion
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(figures, result))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
