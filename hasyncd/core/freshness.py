"""How stale the replicated SA counters are: age percentiles and the recovery point.

Once a second (the core's sweep tick) a slice of the ``sa_counters`` table
is read; when a pass over the whole table ends, its figures are published:
the p50 and p99 age of the last counter update across SAs, and the
estimated recovery point in packets (sum over SAs of rate x age: what the
data plane sent that no replicated counter shows yet, which is what a
failover right now would have to jump over).  A table larger than
``MAX_SAMPLE`` is sampled at an even stride.  Primary and secondaries both
run it on their own copy.  Sans-IO: the caller passes ``wall``.
"""

from __future__ import annotations

import math

from hasyncd.core.seqview import CTR
from hasyncd.records import KINDS_BY_CODE
from hasyncd.store import Store

SLICE = 8192  # records read per tick: ~8 ms of decoding a second at most
MAX_SAMPLE = 65_536  # SAs whose figures one pass keeps


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


class Freshness:
    def __init__(self) -> None:
        self._cursor: str | None = None
        self._stride = 1
        self._i = 0
        self._ats: list[float] = []
        self._rates: list[float] = []
        self._seen = 0
        self.published: dict[str, object] = {
            "sas_reporting": 0,
            "age_p50_s": None,
            "age_p99_s": None,
            "recovery_point_packets": None,
            "as_of": None,
        }

    def run(self, store: Store, wall: float) -> None:
        if self._cursor is None and not self._ats:
            total = store.tables[CTR].live
            self._stride = max(1, math.ceil(total / MAX_SAMPLE))
            self._i = self._seen = 0
        ids = store.ids_after(CTR, self._cursor, SLICE)
        decode = KINDS_BY_CODE[CTR].decode
        for rid in ids:
            entry = store.get(CTR, rid, wall)
            if entry is None or entry.blob is None:
                continue
            self._seen += 1
            self._i += 1
            if self._i % self._stride:
                continue
            ctr = decode(entry.blob)
            if ctr.at is not None:
                self._ats.append(ctr.at)
                self._rates.append(ctr.rate)
        if len(ids) == SLICE:
            self._cursor = ids[-1]
            return
        self._publish(wall)

    def _publish(self, wall: float) -> None:
        ages = sorted(max(0.0, wall - at) for at in self._ats)
        rpo = sum(r * max(0.0, wall - at) for r, at in zip(self._rates, self._ats, strict=True))
        self.published = {
            "sas_reporting": self._seen,
            "age_p50_s": _round(_percentile(ages, 0.5)),
            "age_p99_s": _round(_percentile(ages, 0.99)),
            "recovery_point_packets": math.ceil(rpo * self._stride) if ages else None,
            "as_of": wall,
        }
        self._cursor = None
        self._ats, self._rates = [], []

    def status(self, wall: float) -> dict[str, object]:
        """The last pass's figures, ages moved on to ``wall``."""
        out = dict(self.published)
        as_of = out["as_of"]
        if isinstance(as_of, float):
            shift = max(0.0, wall - as_of)
            for k in ("age_p50_s", "age_p99_s"):
                v = out[k]
                if isinstance(v, float):
                    out[k] = round(v + shift, 3)
        return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
