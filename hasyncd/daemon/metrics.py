"""Prometheus metrics (``GET /metrics``), built on prometheus-client.

Counters the core keeps (``NodeCore.stats``: link errors by code, refused
messages, promotions, suppressed losses...) and gauges read from its state
(role, epoch, per-peer link, sync, lag and RTT) are collected at scrape time,
so the core never depends on the metrics library.  Shell-side measurements
(API requests, loop lag, hooks) are ordinary prometheus-client metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hasyncd.core.events import Event
from hasyncd.policy import KIND_BY_CODE
from hasyncd.wire.messages import Role

if TYPE_CHECKING:
    from hasyncd.daemon.shell import Daemon

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _CoreCollector(Collector):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        core = self.daemon.core
        roles = core.roles
        now = self.daemon.clock()
        for name, counter in sorted(core.stats.items()):
            fam = CounterMetricFamily(
                f"hasyncd_{name}", f"hasyncd core counter {name}", labels=["label"]
            )
            for label, value in sorted(counter.items()):
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
            "hasyncd_fenced", "1 while writes are fenced", value=1.0 if roles.fence else 0.0
        )
        yield GaugeMetricFamily(
            "hasyncd_suspended",
            "1 while automatic promotion is suspended",
            value=1.0 if roles.suspended_since is not None else 0.0,
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
        for p in core.peers.values():
            up.add_metric([p.name], 1.0 if p.up else 0.0)
            link.add_metric([p.name], 1.0 if p.conn is not None else 0.0)
            silence.add_metric([p.name], now - p.last_rx if p.last_rx else 0.0)
            if p.rtt is not None:
                rtt.add_metric([p.name], p.rtt)
            if p.session is not None:
                pending.add_metric([p.name], len(p.session.pending))
                insync.add_metric([p.name], 1.0 if p.session.in_sync else 0.0)
            inflight.add_metric([p.name], p.flow.in_flight)
        yield from (up, link, silence, rtt, pending, inflight, insync)


class Metrics:
    def __init__(self, daemon: Daemon) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_CoreCollector(daemon))
        r = self.registry
        self.api_requests = Counter(
            "hasyncd_api_requests", "API requests", ["route", "status"], registry=r
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
        self.events = Counter("hasyncd_events", "core events", ["type"], registry=r)
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
