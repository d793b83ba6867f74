"""The Redis side of the benchmark: redis-server primary -> replica on loopback, redis-py + hiredis.

The same records are stored as their API JSON under ``ipsec_sa:<id>``, written
in pipelines of 1000.  No persistence (``--save "" --appendonly no``), no
diskless-sync delay (Redis waits 5 s by default before a full resync, which
would only measure that timer), and no replica output-buffer limit (so a
large pipelined run is not cut off into a second full resync).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hasyncd_bench import WATCH_GRACE_S, lag_figures
from observe import Watcher
from stats import percentiles_ms
from sysinfo import cpu_seconds, rss_bytes
from workload import KIND, Workload, redis_key

from hasyncd.lab import free_port

try:
    import redis
except ImportError:  # --no-redis runs need no Redis client
    redis = None

PIPELINE = 1000  # commands per pipeline (issue 8)
POLL_S = 0.005
START_TIMEOUT_S = 10.0
SYNC_TIMEOUT_S = 900.0
COMMON = [
    "--bind", "127.0.0.1",
    "--protected-mode", "no",
    "--save", "",
    "--appendonly", "no",
    "--repl-diskless-sync-delay", "0",
    "--client-output-buffer-limit", "replica 0 0 0",
]  # fmt: skip


def available() -> str | None:
    """Why Redis cannot run here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    if redis is None:
        return "redis-py is not installed (pip install -e '.[bench]')"
    return None


def version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


class Server:
    """One redis-server process on a free loopback port."""

    def __init__(self, workdir: Path, name: str, replica_of: int | None = None) -> None:
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = ["redis-server", "--port", str(self.port), "--dir", str(self.dir), *COMMON]
        args += ["--logfile", str(self.dir / "redis.log")]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of), "--notify-keyspace-events", "KA"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        _wait(self._pings, START_TIMEOUT_S, f"redis-server on port {self.port}")

    def _pings(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def synced(self, n: int) -> bool:
        info = self.client.info("replication")
        return (
            info.get("master_link_status") == "up"
            and not info.get("master_sync_in_progress")
            and self.client.dbsize() >= n
        )

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _wait(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_S)


def start_pair(workdir: Path) -> tuple[Server, Server]:
    primary = Server(workdir, "primary")
    replica = Server(workdir, "replica", replica_of=primary.port)
    _wait(lambda: replica.synced(0), SYNC_TIMEOUT_S, "the replica to sync")
    return primary, replica


def _items(work: Workload, start: int, n: int) -> list[tuple[str, bytes]]:
    return [(redis_key(rid), json.dumps(rec).encode()) for rid, rec in work.records(start, n)]


def _set_all(client: Any, items: list[tuple[str, bytes]]) -> None:
    for first in range(0, len(items), PIPELINE):
        pipe = client.pipeline(transaction=False)
        for key, value in items[first : first + PIPELINE]:
            pipe.set(key, value)
        pipe.execute()


def throughput(
    primary: Server, replica: Server, work: Workload, start: int, n: int
) -> dict[str, float]:
    """Figure 1 and 6: first pipeline sent until the replica holds all N; its CPU per key."""
    items = _items(work, start, n)
    before = replica.client.dbsize()
    cpu0, pcpu0 = replica.cpu(), primary.cpu()
    t0 = time.monotonic()
    _set_all(primary.client, items)
    acked = time.monotonic() - t0
    _wait(lambda: replica.client.dbsize() >= before + n, SYNC_TIMEOUT_S, "the replica")
    took = time.monotonic() - t0
    cpu, pcpu = replica.cpu() - cpu0, primary.cpu() - pcpu0
    return {
        "rec_s": n / took,
        "ingest_rec_s": n / acked,
        "cpu_us_per_rec": cpu / n * 1e6,
        "primary_cpu_us_per_rec": pcpu / n * 1e6,
    }


def lag(
    primary: Server,
    replica: Server,
    work: Workload,
    start: int,
    rate: int,
    duration: float,
    batch: int,
) -> dict[str, float]:
    """Figure 2: pipelined SETs of ``batch`` keys at a fixed rate; keyspace events on the replica.

    The replica publishes a keyspace notification as it applies each SET
    (``notify-keyspace-events KA``); its arrival at the watcher is "visible".
    """
    n = int(rate * duration)
    prefix = f"{KIND}:"
    recs = list(work.records(start, n))
    parts = [recs[i : i + batch] for i in range(0, n, batch)]
    deadline = time.monotonic() + duration + WATCH_GRACE_S
    with Watcher("redis", (replica.port, prefix, deadline)) as watcher:
        acks = _paced(primary.client, parts, batch / rate, duration)
        sent = parts[: len(acks)]
        watcher.expect(sum(len(p) for p in sent))
        arrivals = watcher.result(timeout=deadline - time.monotonic() + 5)
    return lag_figures(sent, acks, arrivals, duration)


def _paced(
    client: Any, parts: list[list[tuple[str, Any]]], interval: float, duration: float
) -> list[float]:
    """As hasyncd_bench._paced: pipeline k due at ``k * interval`` s, until ``duration``."""
    values = [[(redis_key(rid), json.dumps(rec).encode()) for rid, rec in p] for p in parts]
    acks: list[float] = []
    t0 = time.monotonic()
    for k, part in enumerate(values):
        if time.monotonic() - t0 >= duration:
            break
        wait = t0 + k * interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        pipe = client.pipeline(transaction=False)
        for key, value in part:
            pipe.set(key, value)
        pipe.execute()
        acks.append(time.monotonic())
    return acks


def set_latency(
    primary: Server, work: Workload, start: int, count: int, wait: bool
) -> dict[str, float]:
    """Figure 3: one SET at a time, or SET + WAIT 1 0 pipelined in one round trip."""
    items = _items(work, start, count)
    client = primary.client
    times: list[float] = []
    for key, value in items:
        t = time.perf_counter()
        if wait:
            pipe = client.pipeline(transaction=False)
            pipe.set(key, value)
            pipe.execute_command("WAIT", 1, 0)
            _, acked = pipe.execute()
            if acked < 1:
                raise RuntimeError("WAIT 1 returned without a replica")
        else:
            client.set(key, value)
        times.append(time.perf_counter() - t)
    warm = min(len(times) // 10, 200)
    return percentiles_ms(times[warm:])


class JoinBench:
    """Figure 4 and 5 for Redis: a fresh replica's full resync from a primary holding N keys."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.primary = Server(workdir, "join-primary")
        self.runs = 0

    def fill(self, work: Workload, start: int, n: int) -> None:
        for first in range(start, start + n, 50_000):
            _set_all(self.primary.client, _items(work, first, min(50_000, start + n - first)))
        self.n = n

    def join_once(self) -> dict[str, Any]:
        self.runs += 1
        replica = Server(self.dir, f"join-replica-{self.runs}", replica_of=self.primary.port)
        try:
            _wait(lambda: replica.synced(self.n), SYNC_TIMEOUT_S, "the full resync")
            took = time.monotonic() - replica.started
            return {
                "in_sync_s": took,
                "rss_bytes": replica.rss(),
                "used_memory": replica.used_memory(),
            }
        finally:
            replica.stop()

    def stop(self) -> None:
        self.primary.stop()
