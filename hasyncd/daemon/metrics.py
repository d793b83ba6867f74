"""Prometheus metrics (``GET /metrics``), built on prometheus-client.

Counters the core keeps (``NodeCore.stats``: link errors by code, refused
messages, promotions, suppressed losses...) and gauges read from its state
(role, epoch, per-peer link, sync, lag and RTT) are collected at scrape time,
so the core never depends on the metrics library.  Shell-side measurements
(API requests, loop lag, hooks) are ordinary prometheus-client metrics.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hasyncd import __version__
from hasyncd.core.counters import COUNTERS
from hasyncd.core.events import Event
from hasyncd.core.replication import writes_behind
from hasyncd.policy import KIND_BY_CODE, POLICY
from hasyncd.wire.messages import Role

if TYPE_CHECKING:
    from hasyncd.daemon.shell import Daemon

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HOOKS = ("on_primary", "on_secondary", "on_fault")
HOOK_RESULTS = ("ok", "failed", "timeout", "error")

# No ``*_created`` series: one family per metric, as the README documents.
disable_created_metrics()  # type: ignore[no-untyped-call]
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _CoreCollector(Collector):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        core = self.daemon.core
        roles = core.roles
        now = self.daemon.clock()
        for name, spec in COUNTERS.items():
            counts: Mapping[str, int] = core.stats.get(name, {})
            if spec.label is None:
                yield CounterMetricFamily(f"hasyncd_{name}", spec.help, value=counts.get("", 0))
                continue
            fam = CounterMetricFamily(f"hasyncd_{name}", spec.help, labels=[spec.label])
            for label, value in sorted(counts.items()):
                fam.add_metric([label], value)
            yield fam
        role = GaugeMetricFamily("hasyncd_role", "1 for the node's current role", labels=["role"])
        for r in Role:
            role.add_metric([r.name.lower()], 1.0 if roles.role is r else 0.0)
        yield role
        yield GaugeMetricFamily("hasyncd_epoch", "current cluster epoch", value=roles.epoch)
        yield GaugeMetricFamily(
            "hasyncd_in_sync",
            "1 if this node holds a complete copy",
            value=1.0 if roles.is_primary or roles.in_sync else 0.0,
        )
        yield GaugeMetricFamily(
            "hasyncd_writes_fenced",
            "1 while this primary refuses writes until peers confirm it (fenced)",
            value=1.0 if roles.fence else 0.0,
        )
        yield GaugeMetricFamily(
            "hasyncd_promotion_suspended",
            "1 while automatic promotion is suspended by flap damping",
            value=1.0 if roles.suspended_since is not None else 0.0,
        )
        fresh = core.freshness.status(core.wall())
        for key, name, text in (
            ("age_p50_s", "counter_age_p50_seconds", "median age of the last SA counter update"),
            ("age_p99_s", "counter_age_p99_seconds", "p99 age of the last SA counter update"),
            (
                "recovery_point_packets",
                "counter_recovery_point_packets",
                "estimated packets sent that no replicated counter shows yet (rate x age)",
            ),
        ):
            v = fresh[key]  # NaN until the first pass over the counters has ended
            gauge = float(v) if isinstance(v, int | float) else math.nan
            yield GaugeMetricFamily(f"hasyncd_{name}", text, value=gauge)
        yield GaugeMetricFamily(
            "hasyncd_rekey_pending",
            "SAs waiting in the rekey governor",
            value=float(len(core.governor.queue)),
        )
        records = GaugeMetricFamily("hasyncd_records", "stored records", labels=["kind"])
        for code, n in core.store.counts().items():
            records.add_metric([KIND_BY_CODE[code]], n)
        yield records
        up = GaugeMetricFamily("hasyncd_peer_up", "1 while the peer is alive", labels=["peer"])
        link = GaugeMetricFamily("hasyncd_peer_link", "1 while a link is open", labels=["peer"])
        silence = GaugeMetricFamily(
            "hasyncd_peer_silence_seconds", "since the last frame", labels=["peer"]
        )
        rtt = GaugeMetricFamily("hasyncd_peer_rtt_seconds", "heartbeat round trip", labels=["peer"])
        pending = GaugeMetricFamily(
            "hasyncd_replication_pending", "records queued for a peer", labels=["peer"]
        )
        inflight = GaugeMetricFamily(
            "hasyncd_replication_inflight_bytes",
            "unacknowledged replication bytes",
            labels=["peer"],
        )
        insync = GaugeMetricFamily(
            "hasyncd_peer_in_sync", "1 when the secondary is in sync", labels=["peer"]
        )
        lag_s = GaugeMetricFamily(
            "hasyncd_replication_lag_seconds",
            "how long the oldest write the secondary has not acknowledged has waited",
            labels=["peer"],
        )
        lag_n = GaugeMetricFamily(
            "hasyncd_replication_lag_records",
            "writes of the current epoch the secondary has not acknowledged",
            labels=["peer"],
        )
        current = core.version
        for p in core.peers.values():
            up.add_metric([p.name], 1.0 if p.up else 0.0)
            link.add_metric([p.name], 1.0 if p.conn is not None else 0.0)
            silence.add_metric([p.name], now - p.last_rx if p.last_rx else 0.0)
            if p.rtt is not None:
                rtt.add_metric([p.name], p.rtt)
            if p.session is not None:
                pending.add_metric([p.name], len(p.session.pending))
                insync.add_metric([p.name], 1.0 if p.session.in_sync else 0.0)
                lag_s.add_metric([p.name], p.lag.lag(now))
                lag_n.add_metric([p.name], writes_behind(p.session.acked, current))
            inflight.add_metric([p.name], p.flow.in_flight)
        yield from (up, link, silence, rtt, pending, inflight, insync, lag_s, lag_n)


class Metrics:
    def __init__(self, daemon: Daemon) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_CoreCollector(daemon))
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes...
        Info("hasyncd_build", "hasyncd and Python versions of this process", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.api_requests = Counter(
            "hasyncd_api_requests",
            "API requests by route and HTTP status",
            ["route", "status"],
            registry=r,
        )
        self.api_errors = Counter(
            "hasyncd_api_errors", "API requests refused, by error code", ["error"], registry=r
        )
        self.not_replicated = Counter(
            "hasyncd_not_replicated_writes",
            "writes refused because the kind is not replicated by design",
            ["kind"],
            registry=r,
        )
        self.sync_writes = Counter(
            "hasyncd_sync_writes", "sync-mode writes by outcome", ["replicated"], registry=r
        )
        self.events = Counter(
            "hasyncd_events", "core events (as on GET /v1/events), by type", ["type"], registry=r
        )
        self.reloads = Counter(
            "hasyncd_reloads",
            "configuration reloads (SIGHUP) by outcome: applied or refused",
            ["result"],
            registry=r,
        )
        for result in ("applied", "refused"):
            self.reloads.labels(result)
        self.hooks = Counter(
            "hasyncd_hook_runs", "hook runs by result", ["hook", "result"], registry=r
        )
        self.hook_seconds = Histogram(
            "hasyncd_hook_duration_seconds", "hook run time", ["hook"], registry=r
        )
        # Every series whose labels are known in advance exists from start-up, at zero.
        for hook in HOOKS:
            self.hook_seconds.labels(hook)
            for result in HOOK_RESULTS:
                self.hooks.labels(hook, result)
        for replicated in ("true", "false"):
            self.sync_writes.labels(replicated)
        for p in POLICY:
            if not p.replicated:
                self.not_replicated.labels(p.kind)
        self.lag = Histogram(
            "hasyncd_loop_lag_seconds",
            "event-loop lag of this node",
            buckets=LAG_BUCKETS,
            registry=r,
        )

    def on_event(self, ev: Event) -> None:
        self.events.labels(type(ev).__name__).inc()

    def hook_run(self, hook: str, result: str, seconds: float) -> None:
        self.hooks.labels(hook, result).inc()
        self.hook_seconds.labels(hook).observe(seconds)

    def loop_lag(self, seconds: float) -> None:
        self.lag.observe(seconds)

    def render(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out
