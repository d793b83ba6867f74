"""The benchmark's records: realistic ``ipsec_sa`` records and the request bodies that carry them.

Each record has the shape of ``hasyncd.samples.bench_ipsec_sa`` (AES-CBC-256 +
HMAC-SHA-512 keys, 6 selectors, ESN, inbound 256-packet replay window with its
32-byte bitmap, an IKE SA reference, NAT-T on one in five).  Building a sample
costs about 100 us, too slow for a million records, so a pool of samples is
built once and each record copies one and makes its identity and its secrets
unique: SPI (hence id), reqid, counters, both keys and the replay bitmap.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import msgpack

from hasyncd import samples

KIND = "ipsec_sa"
# Pool of distinct samples; a multiple of samples' 250 remote peers and of 5
# (NAT-T on one in five), so peer, tunnel and NAT-T follow the record number.
POOL = 1000
SPI_BASE = 0xC0000000


class Workload:
    """Record ``i`` (0-based) is direction ``i % 2`` of child SA ``i // 2``: ids never collide."""

    def __init__(self, now: float) -> None:
        self.now = now
        self._base: dict[tuple[int, str], dict[str, Any]] = {}

    def _sample(self, j: int, direction: str) -> dict[str, Any]:
        key = (j % POOL, direction)
        if key not in self._base:
            self._base[key] = samples.bench_ipsec_sa(key[0], direction, self.now)[1]
        return self._base[key]

    def record(self, i: int) -> tuple[str, dict[str, Any]]:
        j, direction = i // 2, ("out" if i % 2 == 0 else "in")
        rec = dict(self._sample(j, direction))
        rng = random.Random(i)
        spi = SPI_BASE + i
        rec["spi"] = spi
        rec["reqid"] = 1000 + j
        rec["seq"] = (1000 if direction == "out" else 990) * j
        rec["bytes"], rec["packets"] = 1500 * j, j
        rec["enc"] = {"alg": rec["enc"]["alg"], "key": rng.randbytes(32).hex()}
        rec["auth"] = {"alg": rec["auth"]["alg"], "key": rng.randbytes(64).hex()}
        if direction == "in":
            rec["replay_bitmap"] = rng.randbytes(32).hex()
        return f"esp-{spi:08x}@{rec['dst']}", rec

    def records(self, start: int, n: int) -> Iterator[tuple[str, dict[str, Any]]]:
        for i in range(start, start + n):
            yield self.record(i)


def put_op(rid: str, rec: dict[str, Any]) -> dict[str, Any]:
    return {"op": "put", "kind": KIND, "id": rid, "record": rec}


def ndjson_body(recs: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(json.dumps(put_op(rid, rec)).encode() + b"\n" for rid, rec in recs)


def msgpack_body(recs: list[tuple[str, dict[str, Any]]]) -> bytes:
    body: bytes = msgpack.packb([put_op(rid, rec) for rid, rec in recs], use_bin_type=True)
    return body


def batches(
    work: Workload, start: int, n: int, size: int
) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    for first in range(start, start + n, size):
        yield list(work.records(first, min(size, start + n - first)))


def redis_key(rid: str) -> str:
    return f"{KIND}:{rid}"


def shape(work: Workload, n: int = 1000) -> dict[str, float]:
    """Average API JSON size of the records (compact and as json.dumps writes it)."""
    recs = list(work.records(0, n))
    compact = sum(len(json.dumps(r, separators=(",", ":"))) for _, r in recs) / n
    default = sum(len(json.dumps(r)) for _, r in recs) / n
    return {"api_json_bytes": round(default, 1), "api_json_compact_bytes": round(compact, 1)}
