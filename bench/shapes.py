"""Records of the benchmark's realistic shape (issue 8), in API JSON form.

The shape itself is ``hasyncd.samples.bench_ipsec_sa`` (AES-CBC-256 +
HMAC-SHA-512 keys, 6 selectors, ESN, a 256-packet replay window on inbound
SAs); this module only interleaves directions for the in-process benchmarks.
"""

from __future__ import annotations

from typing import Any

from hasyncd import samples


def sa_pair(i: int, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """Record ``i`` of a stream that alternates outbound and inbound SAs."""
    return samples.bench_ipsec_sa(i // 2, "out" if i % 2 == 0 else "in", now)
