"""Records of the benchmark's realistic shape (issue 8), in API JSON form.

AES-CBC-256 + HMAC-SHA-512 keys, 6 selectors (3 local x 2 remote prefixes),
ESN, inbound: a 256-packet replay window with its 32-byte bitmap; the IKE SA
reference and NAT-T on one in five come from ``hasyncd.samples.ipsec_sa``.
"""

from __future__ import annotations

from typing import Any

from hasyncd import samples


def realistic_sa(
    i: int, direction: str = "out", now: float | None = None
) -> tuple[str, dict[str, Any]]:
    rid, rec = samples.ipsec_sa(i, direction, now)
    site = 100 + i % 100
    local = ["10.0.0.0/16", "10.1.0.0/16", "172.16.0.0/20"]
    remotes = [f"10.{site}.0.0/16", f"192.168.{site}.0/24"]
    pairs = [(lo, re) for lo in local for re in remotes]
    rec["enc"] = {"alg": "cbc(aes)", "key": samples._hex(f"enc{i}{direction}", 32)}
    rec["auth"] = {"alg": "hmac(sha512)", "key": samples._hex(f"auth{i}{direction}", 64)}
    rec["esn"] = True
    rec["replay_window"] = 256 if direction == "in" else 0
    rec["replay_bitmap"] = samples._hex(f"bmp{i}", 32) if direction == "in" else None
    rec["selectors"] = [
        {"src": lo, "dst": re, "proto": 0, "sport": 0, "dport": 0}
        if direction == "out"
        else {"src": re, "dst": lo, "proto": 0, "sport": 0, "dport": 0}
        for lo, re in pairs
    ]
    return rid, rec


def sa_pair(i: int, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """Record ``i`` of a stream that alternates outbound and inbound SAs."""
    return realistic_sa(i // 2, "out" if i % 2 == 0 else "in", now)
