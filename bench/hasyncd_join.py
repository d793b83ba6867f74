"""Figure 4 and 5 for hasyncd: an empty secondary joins a primary holding N records.

The primary is filled once; each run starts a fresh (empty) secondary process,
times it until it reports in sync holding all N, watches both nodes' roles,
heartbeat silence and event-loop lag meanwhile, reads its RSS, then kills it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hasyncd_bench import JOIN_POLL_S, LOAD_BATCH, NDJSON, STALL_S, pid, post_batch
from observe import UnixHTTP
from prometheus_client.parser import text_string_to_metric_families
from sysinfo import rss_bytes
from workload import KIND, Workload, batches, ndjson_body

from hasyncd.lab import LabCluster, LabNode

JOIN_TIMEOUT_S = 900.0


def metrics(node: LabNode) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET /metrics as {sample name: {sorted labels: value}}."""
    conn = UnixHTTP(str(node.socket))
    status, raw = conn.call("GET", "/metrics")
    conn.close()
    if status != 200:
        raise RuntimeError(f"/metrics: HTTP {status}")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(raw.decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def counter(m: dict[str, dict[Any, float]], name: str) -> float:
    return sum(m.get(name, {}).values())


def loop_lag(
    before: dict[str, dict[Any, float]], after: dict[str, dict[Any, float]]
) -> dict[str, Any]:
    """Event-loop lag probes between two scrapes: stalls over STALL_S and the worst bucket."""

    def buckets(m: dict[str, dict[Any, float]]) -> dict[float, float]:
        return {
            float(dict(labels)["le"]): v
            for labels, v in m.get("hasyncd_loop_lag_seconds_bucket", {}).items()
        }

    b0, b1 = buckets(before), buckets(after)
    delta = {le: b1[le] - b0.get(le, 0.0) for le in b1}
    total = delta.get(float("inf"), 0.0)
    worst = min((le for le, v in delta.items() if v >= total), default=float("inf"))
    return {"stalls_over_50ms": int(total - delta.get(STALL_S, 0.0)), "worst_lag_le_s": worst}


class JoinBench:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.lab = LabCluster.loopback(workdir, base={"log": {"level": "warning"}})
        self.lab.write()
        self.a, self.b = self.lab["fw-a"], self.lab["fw-b"]

    def fill(self, work: Workload, start: int, n: int) -> None:
        """Start the primary alone and write N records to it."""
        self.a.start()
        self.lab.wait(lambda: self.a.role() == "primary", 30, "a lone primary")
        conn = UnixHTTP(str(self.a.socket))
        for part in batches(work, start, n, LOAD_BATCH):
            if post_batch(conn, ndjson_body(part), NDJSON):
                raise RuntimeError("ops failed while filling the primary")
        conn.close()
        self.n = n

    def join_once(self) -> dict[str, Any]:
        a, b = self.a, self.b
        m_a0 = metrics(a)
        b.start()
        t0 = time.monotonic()
        watch = _JoinWatch()
        while not watch.done(a.status(), b.status(), self.n):
            if time.monotonic() - t0 > JOIN_TIMEOUT_S:
                raise TimeoutError(f"secondary not in sync after {JOIN_TIMEOUT_S} s")
            time.sleep(JOIN_POLL_S)
        took = time.monotonic() - t0
        rss = rss_bytes(pid(b))
        m_a1, m_b = metrics(a), metrics(b)
        lag_a, lag_b = loop_lag(m_a0, m_a1), loop_lag({}, m_b)
        promoted = _both(m_a0, m_a1, m_b, "hasyncd_promotions_total")
        lost = _both(m_a0, m_a1, m_b, "hasyncd_peers_lost_total")
        self._kill_secondary()
        return {
            "in_sync_s": took,
            "following_s": None if watch.following is None else watch.following - t0,
            "worst_heartbeat_silence_ms": watch.worst_silence_ms,
            "stalls_over_50ms": lag_a["stalls_over_50ms"] + lag_b["stalls_over_50ms"],
            "worst_loop_lag_le_s": {
                "primary": lag_a["worst_lag_le_s"],
                "secondary": lag_b["worst_lag_le_s"],
            },
            "false_promotion": bool(watch.role_violations or promoted),
            "peers_lost": lost,
            "role_violations": watch.role_violations,
            "rss_bytes": rss,
        }

    def _kill_secondary(self) -> None:
        """Kill it, and wait until the primary declared it lost (not to count that in a join)."""
        self.b.kill()

        def declared_lost() -> bool:
            return not any(metrics(self.a).get("hasyncd_peer_up", {}).values())

        self.lab.wait(declared_lost, 30, "the primary to declare the secondary lost")

    def stop(self) -> None:
        self.lab.stop()


def _both(a0: dict[str, Any], a1: dict[str, Any], b: dict[str, Any], name: str) -> float:
    """A counter's increase on the primary during the join plus its value on the new secondary."""
    return counter(a1, name) - counter(a0, name) + counter(b, name)


class _JoinWatch:
    """What the status polls of a join showed: roles, heartbeat silence, when b followed."""

    def __init__(self) -> None:
        self.worst_silence_ms = 0.0
        self.role_violations: list[str] = []
        self.following: float | None = None

    def done(self, sa: dict[str, Any] | None, sb: dict[str, Any] | None, n: int) -> bool:
        if sa is None or sb is None:
            return False
        if sa["role"] != "primary":
            self.role_violations.append(f"primary became {sa['role']}: {sa['role_reason']}")
        if sb["role"] not in ("starting", "secondary"):
            self.role_violations.append(f"secondary became {sb['role']}: {sb['role_reason']}")
        for st in (sa, sb):
            for p in st["peers"]:
                if p["link"] == "up" and p["last_seen_ms"] is not None:
                    self.worst_silence_ms = max(self.worst_silence_ms, float(p["last_seen_ms"]))
        if self.following is None and sb["role"] == "secondary":
            self.following = time.monotonic()
        return bool(sb["in_sync"]) and sb["records"].get(KIND) == n
