"""Prometheus metrics (``GET /metrics``), built on prometheus-client.

Counters the core keeps (``NodeCore.stats``: link errors by code, refused
messages, promotions, suppressed losses...) and gauges read from its state
(role, epoch, per-peer link, sync, lag and RTT) are collected at scrape time
from a ``NodeGauges`` snapshot (``hasyncd.daemon.views``), so the core never
depends on the metrics library and the metrics never see the core.  Shell-side measurements
(API requests, loop lag, hooks) are ordinary prometheus-client metrics.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
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
from hasyncd.daemon.views import NodeGauges
from hasyncd.policy import POLICY
from hasyncd.wire.messages import Role

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HOOKS = ("on_primary", "on_secondary", "on_fault")
HOOK_RESULTS = ("ok", "failed", "timeout", "error")

# No ``*_created`` series: one family per metric, as the README documents.
disable_created_metrics()  # type: ignore[no-untyped-call]
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _CoreCollector(Collector):
    def __init__(self, gauges: Callable[[], NodeGauges]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        g = self.gauges()
        for name, spec in COUNTERS.items():
            counts: Mapping[str, int] = g.stats.get(name, {})
            if spec.label is None:
                yield CounterMetricFamily(f"hasyncd_{name}", spec.help, value=counts.get("", 0))
                continue
            fam = CounterMetricFamily(f"hasyncd_{name}", spec.help, labels=[spec.label])
            for label, value in sorted(counts.items()):
                fam.add_metric([label], value)
            yield fam
        role = GaugeMetricFamily("hasyncd_role", "1 for the node's current role", labels=["role"])
        for r in Role:
            role.add_metric([r.name.lower()], 1.0 if g.role is r else 0.0)
        yield role
        yield GaugeMetricFamily("hasyncd_epoch", "current cluster epoch", value=g.epoch)
        yield GaugeMetricFamily(
            "hasyncd_in_sync", "1 if this node holds a complete copy", value=float(g.in_sync)
        )
        yield GaugeMetricFamily(
            "hasyncd_writes_fenced",
            "1 while this primary refuses writes until peers confirm it (fenced)",
            value=float(g.fenced),
        )
        yield GaugeMetricFamily(
            "hasyncd_promotion_suspended",
            "1 while automatic promotion is suspended by flap damping",
            value=float(g.suspended),
        )
        fresh = g.freshness
        for field, name, text in (
            ("age_p50_s", "counter_age_p50_seconds", "median age of the last SA counter update"),
            ("age_p99_s", "counter_age_p99_seconds", "p99 age of the last SA counter update"),
            (
                "recovery_point_packets",
                "counter_recovery_point_packets",
                "estimated packets sent that no replicated counter shows yet (rate x age)",
            ),
        ):
            v = fresh[field]  # NaN until the first pass over the counters has ended
            gauge = float(v) if isinstance(v, int | float) else math.nan
            yield GaugeMetricFamily(f"hasyncd_{name}", text, value=gauge)
        yield GaugeMetricFamily(
            "hasyncd_rekey_pending",
            "SAs waiting in the rekey governor",
            value=float(g.rekey_pending),
        )
        records = GaugeMetricFamily("hasyncd_records", "stored records", labels=["kind"])
        for kind, n in g.records.items():
            records.add_metric([kind], n)
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
        key = GaugeMetricFamily(
            "hasyncd_peer_link_key",
            "1 for the key the link is under, by key id and which of this node's keys it is "
            "(current, next, retired): retire a key only when no link is under it",
            labels=["peer", "key_id", "key"],
        )
        for p in g.peers:
            if p.key is not None:
                key.add_metric([p.name, *p.key], 1.0)
            up.add_metric([p.name], float(p.up))
            link.add_metric([p.name], float(p.link))
            silence.add_metric([p.name], p.silence)
            if p.rtt is not None:
                rtt.add_metric([p.name], p.rtt)
            if p.session is not None:
                pending.add_metric([p.name], p.session.pending)
                insync.add_metric([p.name], float(p.session.in_sync))
                lag_s.add_metric([p.name], p.session.lag_seconds)
                lag_n.add_metric([p.name], p.session.lag_records)
            inflight.add_metric([p.name], p.in_flight)
        yield from (up, link, silence, rtt, pending, inflight, insync, lag_s, lag_n, key)


class Metrics:
    """The registry; ``gauges`` is called at each scrape for the core's state."""

    def __init__(self, gauges: Callable[[], NodeGauges]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_CoreCollector(gauges))
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
        self.api_refused = Counter(
            "hasyncd_api_connections_refused",
            "API connections answered 503 too_many_connections past their listener's cap",
            ["listener"],
            registry=r,
        )
        self.api_open = Gauge(
            "hasyncd_api_connections", "API connections open, by listener", ["listener"], registry=r
        )
        self.api_cap = Gauge(
            "hasyncd_api_connection_cap",
            "API connections a listener admits at once (its own budget)",
            ["listener"],
            registry=r,
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
        self._event_children: dict[type, Any] = {}
        self._request_children: dict[tuple[str, int], Any] = {}
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
        self.gc_pauses = Histogram(
            "hasyncd_gc_pause_seconds",
            "time each run of the cycle collector held the event loop, by generation",
            ["generation"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self._gc_children = [self.gc_pauses.labels(str(g)) for g in range(3)]

    # -- the API's counters (hasyncd.daemon.views.ApiCounters) --

    def count_api_error(self, code: str) -> None:
        self.api_errors.labels(code).inc()

    def count_connection_refused(self, listener: str) -> None:
        self.api_refused.labels(listener).inc()

    def watch_api_listener(self, listener: str, cap: int, open_now: Callable[[], float]) -> None:
        self.api_open.labels(listener).set_function(open_now)
        self.api_cap.labels(listener).set(cap)
        self.api_refused.labels(listener)  # present from start-up, at zero

    def count_api_request(self, route: str, status: int) -> None:
        key = (route, status)  # routes and statuses are few: one child each, looked up once
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.api_requests.labels(route, str(status))
        child.inc()

    def count_not_replicated(self, kind: str) -> None:
        self.not_replicated.labels(kind).inc()

    def count_sync_write(self, replicated: bool) -> None:
        self.sync_writes.labels("true" if replicated else "false").inc()

    def on_event(self, ev: Event) -> None:
        cls = type(ev)
        child = self._event_children.get(cls)
        if child is None:  # a labels() lookup per event was a visible share at 10k events/s
            child = self._event_children[cls] = self.events.labels(cls.__name__)
        child.inc()

    def hook_run(self, hook: str, result: str, seconds: float) -> None:
        self.hooks.labels(hook, result).inc()
        self.hook_seconds.labels(hook).observe(seconds)

    def loop_lag(self, seconds: float) -> None:
        self.lag.observe(seconds)

    def gc_pause(self, generation: int, seconds: float) -> None:
        self._gc_children[generation].observe(seconds)

    def render(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out
