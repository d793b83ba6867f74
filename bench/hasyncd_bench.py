"""The hasyncd side of the benchmark: two real daemons on loopback, driven through the local API.

Only the public API is used (PUT/GET /v1/records/..., POST /v1/records:batch
with NDJSON or msgpack bodies, GET /v1/status, GET /v1/events, GET /metrics),
so the harness measures any implementation of the record path behind it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgpack
from observe import UnixHTTP, Watcher
from stats import percentiles_ms
from sysinfo import cpu_seconds
from workload import KIND, Workload, batches, msgpack_body, ndjson_body

from hasyncd.lab import LabCluster, LabNode

BATCH = 10_000  # ops per batch request in the throughput figure
LOAD_BATCH = 20_000  # ops per batch request when filling a primary before a join
POLL_S = 0.005  # polling the secondary for the last record of a run
JOIN_POLL_S = 0.05  # polling both nodes' status during a join
STALL_S = 0.05  # an event-loop lag above this is a stall (issue 8)
WATCH_GRACE_S = 30.0  # after the lag run: how long the last arrivals may take
NDJSON, MSGPACK = "application/x-ndjson", "application/msgpack"


def pid(node: LabNode) -> int:
    assert node.proc is not None
    return node.proc.pid


def start_pair(workdir: Path, sync: bool = False) -> tuple[LabCluster, LabNode, LabNode]:
    """A started two-node cluster; returns it with its primary and secondary, paired and in sync."""
    workdir.mkdir(parents=True, exist_ok=True)
    base: dict[str, dict[str, Any]] = {"log": {"level": "warning"}}
    if sync:
        base["sync"] = {"mode": "sync"}
    lab = LabCluster.loopback(workdir, base=base)
    lab.start()
    primary, secondary = lab.wait_pair(60)
    return lab, primary, secondary


def post_batch(conn: UnixHTTP, body: bytes, ctype: str) -> int:
    """POST one batch; returns how many of its ops failed."""
    status, raw = conn.call("POST", "/v1/records:batch", body, ctype)
    if status != 200:
        raise RuntimeError(f"batch refused: HTTP {status}: {raw[:200]!r}")
    reply = msgpack.unpackb(raw) if ctype == MSGPACK else json.loads(raw)
    return sum(1 for r in reply["results"] if r["status"] not in (200, 201))


def record_count(node: LabNode) -> int:
    st = node.status() or {}
    return int(st.get("records", {}).get(KIND, 0))


def wait_visible(node: LabNode, rid: str, total: int, timeout: float = 600.0) -> None:
    """Until ``rid`` (the last record written) reads back and ``node`` holds ``total`` records.

    One link delivers changes in version order, so the last record visible
    means all are; the count confirms it.
    """
    conn = UnixHTTP(str(node.socket))
    end = time.monotonic() + timeout
    while conn.call("GET", f"/v1/records/{KIND}/{rid}")[0] != 200:
        if time.monotonic() > end:
            raise TimeoutError(f"{rid} not visible on {node.name} after {timeout} s")
        time.sleep(POLL_S)
    conn.close()
    while record_count(node) < total:
        if time.monotonic() > end:
            raise TimeoutError(f"{node.name} holds {record_count(node)} of {total} records")
        time.sleep(POLL_S)


def throughput(
    primary: LabNode, secondary: LabNode, work: Workload, start: int, n: int, ctype: str
) -> dict[str, float]:
    """Figure 1 and 6: first batch sent to the secondary holding all; its CPU per record."""
    encode = msgpack_body if ctype == MSGPACK else ndjson_body
    parts = list(batches(work, start, n, BATCH))
    last_id = parts[-1][-1][0]
    bodies = [encode(p) for p in parts]
    before = record_count(secondary)
    conn = UnixHTTP(str(primary.socket))
    cpu0, pcpu0 = cpu_seconds(pid(secondary)), cpu_seconds(pid(primary))
    t0 = time.monotonic()
    failed = sum(post_batch(conn, body, ctype) for body in bodies)
    acked = time.monotonic() - t0
    wait_visible(secondary, last_id, before + n)
    took = time.monotonic() - t0
    cpu = cpu_seconds(pid(secondary)) - cpu0
    pcpu = cpu_seconds(pid(primary)) - pcpu0
    conn.close()
    return {
        "rec_s": n / took,
        "ingest_rec_s": n / acked,
        "cpu_us_per_rec": cpu / n * 1e6,
        "primary_cpu_us_per_rec": pcpu / n * 1e6,
        "failed_ops": failed,
    }


def lag(
    primary: LabNode,
    secondary: LabNode,
    work: Workload,
    start: int,
    rate: int,
    duration: float,
    batch: int,
) -> dict[str, float]:
    """Figure 2: ack of a paced batch on the primary to its records' events on the secondary.

    Batches of ``batch`` records are due every ``batch / rate`` s for
    ``duration`` s; a writer that falls behind sends at once and stops at the
    end, so the achieved rate says whether the node kept up.
    """
    parts = list(batches(work, start, int(rate * duration), batch))
    bodies = [ndjson_body(p) for p in parts]
    conn = UnixHTTP(str(primary.socket))
    deadline = time.monotonic() + duration + WATCH_GRACE_S
    with Watcher("sse", (str(secondary.socket), deadline)) as watcher:
        acks, failed = _paced(conn, bodies, batch / rate, duration, NDJSON)
        sent = parts[: len(acks)]
        watcher.expect(sum(len(p) for p in sent))
        arrivals = watcher.result(timeout=deadline - time.monotonic() + 5)
    conn.close()
    return {**lag_figures(sent, acks, arrivals, duration), "failed_ops": failed}


def lag_figures(
    sent: list[list[tuple[str, Any]]],
    acks: list[float],
    arrivals: dict[str, float],
    duration: float,
) -> dict[str, float]:
    """Percentiles of arrival - ack per record; the rate achieved; records never seen."""
    lags = [
        arrivals[rid] - ack
        for part, ack in zip(sent, acks, strict=True)
        for rid, _ in part
        if rid in arrivals
    ]
    n = sum(len(p) for p in sent)
    return {**percentiles_ms(lags), "achieved_w_s": n / duration, "missing": n - len(lags)}


def _paced(
    conn: UnixHTTP, bodies: list[bytes], interval: float, duration: float, ctype: str
) -> tuple[list[float], int]:
    """Send body k at ``k * interval`` s (at once when behind) until ``duration``; ack times."""
    acks: list[float] = []
    failed = 0
    t0 = time.monotonic()
    for k, body in enumerate(bodies):
        if time.monotonic() - t0 >= duration:
            break
        wait = t0 + k * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        failed += post_batch(conn, body, ctype)
        acks.append(time.monotonic())
    return acks, failed


def put_latency(node: LabNode, work: Workload, start: int, count: int) -> dict[str, float]:
    """Figure 3: one PUT at a time on a keep-alive connection; sync mode counts late acks."""
    reqs = [
        (f"/v1/records/{KIND}/{rid}", json.dumps(rec).encode())
        for rid, rec in work.records(start, count)
    ]
    conn = UnixHTTP(str(node.socket))
    times: list[float] = []
    not_replicated = 0
    for path, body in reqs:
        t = time.perf_counter()
        status, raw = conn.call("PUT", path, body)
        times.append(time.perf_counter() - t)
        if status not in (200, 201, 202):  # 202: sync mode, not replicated in time
            raise RuntimeError(f"PUT refused: HTTP {status}: {raw[:200]!r}")
        if json.loads(raw).get("replicated") is False:
            not_replicated += 1
    conn.close()
    warm = min(len(times) // 10, 200)  # the first requests warm caches and the connection
    return {**percentiles_ms(times[warm:]), "not_replicated": not_replicated}
