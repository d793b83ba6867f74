"""The figures of the benchmark: how each is taken from the runs, its target, and the table.

Every figure is the median over runs (``join_false_promotion``: whether any
run saw one).  ``ratio`` is hasyncd / Redis in the figure's own unit, so it
is above 1 where hasyncd is faster for rates and slower for times.  A lag
can be negative: the record was visible on the secondary before the writer
had read the primary's ack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stats import median

Runs = list[dict[str, Any]]
Extract = Callable[[dict[str, Any], Any], list[Any]]


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    target: str
    hasyncd: Extract
    redis: Extract | None = None
    any_run: bool = False  # a flag: true if any run saw it, instead of the median


def _runs(*path: str) -> Extract:
    def get(side: dict[str, Any], _p: Any) -> list[Any]:
        out = []
        for run in side["runs"]:
            v: Any = run
            for key in path:
                v = v[key]
            out.append(v)
        return out

    return get


def _joins(key: str) -> Extract:
    return lambda side, _p: [j[key] for j in side["joins"]]


def _per_record(key: str, empty: str) -> Extract:
    """(value at N records - value of an empty node) / N, per join run."""

    def get(side: dict[str, Any], p: Any) -> list[Any]:
        base = median([r[empty] for r in side["runs"]])
        return [] if base is None else [(j[key] - base) / p.join for j in side["joins"]]

    return get


def _worst_lag(side: dict[str, Any], _p: Any) -> list[Any]:
    """Per join: the upper bound of the highest loop-lag bucket either node reached."""
    return [max(j["worst_loop_lag_le_s"].values()) for j in side["joins"]]


FIGURES = [
    Figure("throughput_ndjson_rec_s", "end-to-end replication, batch API, one client (NDJSON)",
           "rec/s", ">= 150,000 and >= 1.3x Redis", _runs("ndjson", "rec_s"),
           _runs("throughput", "rec_s")),
    Figure("throughput_msgpack_rec_s", "end-to-end replication, batch API, one client (msgpack)",
           "rec/s", ">= 150,000 and >= 1.3x Redis", _runs("msgpack", "rec_s"),
           _runs("throughput", "rec_s")),
    Figure("ingest_ndjson_rec_s", "primary acks of the batches (NDJSON; Redis: pipelines)",
           "rec/s", "-", _runs("ndjson", "ingest_rec_s"), _runs("throughput", "ingest_rec_s")),
    Figure("lag_p50_ms", "lag primary ack -> visible on secondary, p50", "ms", "<= 0.5",
           _runs("lag", "p50_ms"), _runs("lag", "p50_ms")),
    Figure("lag_p99_ms", "lag primary ack -> visible on secondary, p99", "ms", "<= 1",
           _runs("lag", "p99_ms"), _runs("lag", "p99_ms")),
    Figure("lag_achieved_w_s", "write rate achieved in the lag run", "w/s", "10,000",
           _runs("lag", "achieved_w_s"), _runs("lag", "achieved_w_s")),
    Figure("put_async_p50_ms", "single PUT, async, p50 (Redis: SET)", "ms", "-",
           _runs("put_async", "p50_ms"), _runs("set", "p50_ms")),
    Figure("put_async_p99_ms", "single PUT, async, p99 (Redis: SET)", "ms", "<= 0.3",
           _runs("put_async", "p99_ms"), _runs("set", "p99_ms")),
    Figure("put_sync_p50_ms", "single PUT, sync, p50 (Redis: SET + WAIT 1)", "ms", "-",
           _runs("put_sync", "p50_ms"), _runs("set_wait", "p50_ms")),
    Figure("put_sync_p99_ms", "single PUT, sync, p99 (Redis: SET + WAIT 1)", "ms", "<= 1",
           _runs("put_sync", "p99_ms"), _runs("set_wait", "p99_ms")),
    Figure("join_in_sync_s", "empty secondary joins: process start to in sync", "s",
           "<= 5 and <= Redis", _joins("in_sync_s"), _joins("in_sync_s")),
    Figure("join_worst_heartbeat_silence_ms", "during the join: worst heartbeat silence seen",
           "ms", "-", _joins("worst_heartbeat_silence_ms")),
    Figure("join_stalls_over_50ms", "during the join: event-loop lag probes over 50 ms", "count",
           "0", _joins("stalls_over_50ms")),
    Figure("join_worst_loop_lag_s", "during the join: worst event-loop lag (histogram bucket)",
           "<= s", "<= 0.05", _worst_lag),
    Figure("join_false_promotion", "during the join: a false promotion", "any run",
           "no", _joins("false_promotion"), any_run=True),
    Figure("join_peers_lost", "during the join: peers declared lost (both nodes)", "count",
           "0", _joins("peers_lost")),
    Figure("rss_per_record_b", "RSS per stored record on the secondary", "B", "<= 500 and <= Redis",
           _per_record("rss_bytes", "empty_rss_bytes"),
           _per_record("rss_bytes", "empty_rss_bytes")),
    Figure("used_memory_per_record_b", "Redis used_memory per key on the replica", "B", "-",
           lambda _s, _p: [], _per_record("used_memory", "empty_used_memory")),
    Figure("cpu_per_record_us", "CPU per replicated record on the secondary (NDJSON run)", "us",
           "<= 5", _runs("ndjson", "cpu_us_per_rec"), _runs("throughput", "cpu_us_per_rec")),
    Figure("primary_cpu_per_record_us", "CPU per record on the primary (NDJSON run)", "us", "-",
           _runs("ndjson", "primary_cpu_us_per_rec"),
           _runs("throughput", "primary_cpu_us_per_rec")),
]  # fmt: skip


def _aggregate(fig: Figure, values: list[Any]) -> Any:
    if not values:
        return None
    return any(values) if fig.any_run else median(values)


def summarize(raw: dict[str, Any], preset: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for fig in FIGURES:
        h_runs = fig.hasyncd(raw["hasyncd"], preset)
        r_runs = fig.redis(raw["redis"], preset) if fig.redis and raw["redis"]["runs"] else []
        h, r = _aggregate(fig, h_runs), _aggregate(fig, r_runs)
        numeric = isinstance(h, int | float) and isinstance(r, int | float)
        # A ratio of a negative lag (visible before the ack was read) means nothing.
        ratio = h / r if numeric and not fig.any_run and h > 0 and r > 0 else None
        out[fig.key] = {
            "label": fig.label,
            "unit": fig.unit,
            "target": fig.target,
            "hasyncd": h,
            "redis": r,
            "ratio": ratio,
            "hasyncd_runs": h_runs,
            "redis_runs": r_runs,
        }
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and v != v:  # NaN: nothing arrived
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def table(figures: dict[str, dict[str, Any]], result: dict[str, Any]) -> str:
    m = result["machine"]
    redis = result["redis"] or f"Redis not run: {result['redis_skipped']}"
    head = (
        f"hasyncd {m['hasyncd_commit'][:12]} | {redis}\n"
        f"{m['nproc']} CPUs, {m['cpu_model']}, {m['python']} | preset {result['preset']}, "
        f"median of {result['runs']} run(s) | records: {result['records']['api_json_bytes']:.0f} B "
        "API JSON each\n"
    )
    rows = [("figure", "unit", "hasyncd", "Redis", "ratio", "target")]
    for f in figures.values():
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        rows.append(
            (f["label"], f["unit"], _fmt(f["hasyncd"]), _fmt(f["redis"]), ratio, f["target"])
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return head + "\n".join(lines)
