"""Deterministic sample records (API JSON form) for the lab, the tests and the benchmarks."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from typing import Any

GATEWAY = "198.51.100.1"
REMOTE_NET = ipaddress.ip_network("203.0.113.0/24")


def _hex(seed: str, nbytes: int) -> str:
    out = b""
    counter = 0
    while len(out) < nbytes:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return out[:nbytes].hex()


def remote(i: int) -> str:
    return str(REMOTE_NET[1 + i % 250])


def ike_sa(i: int, now: float | None = None) -> tuple[str, dict[str, Any]]:
    now = time.time() if now is None else now
    ispi, rspi = _hex(f"ispi{i}", 8), _hex(f"rspi{i}", 8)
    if int(ispi, 16) == 0:  # pragma: no cover - sha256 output
        ispi = "01" * 8
    rec = {
        "tunnel": f"site-{i}",
        "version": 2,
        "ispi": ispi,
        "rspi": rspi,
        "local": {"addr": GATEWAY, "port": 500},
        "remote": {"addr": remote(i), "port": 4500},
        "initiator": i % 2 == 0,
        "local_id": "gw.example.net",
        "remote_id": f"site-{i}.example.net",
        "algs": {"enc": "aes256gcm16", "integ": None, "prf": "prfsha384", "dh": "ecp384"},
        "keys": {
            "sk_d": _hex(f"skd{i}", 48),
            "sk_ai": None,
            "sk_ar": None,
            "sk_ei": _hex(f"skei{i}", 36),
            "sk_er": _hex(f"sker{i}", 36),
            "sk_pi": _hex(f"skpi{i}", 48),
            "sk_pr": _hex(f"skpr{i}", 48),
        },
        "msgid_send": i % 17,
        "msgid_recv": i % 13,
        "established_at": int(now) - 60,
        "expires_at": int(now) + 86400,
        "mid_sync_required": False,
    }
    return ispi + rspi, rec


def ipsec_sa(
    i: int, direction: str = "out", now: float | None = None
) -> tuple[str, dict[str, Any]]:
    """One direction of child SA ``i``; SPIs are unique per (i, direction)."""
    now = time.time() if now is None else now
    spi = 0xC0000000 + 2 * i + (1 if direction == "in" else 0)
    peer = remote(i)
    src, dst = (GATEWAY, peer) if direction == "out" else (peer, GATEWAY)
    ike_id, _ = ike_sa(i // 2, now)
    rec: dict[str, Any] = {
        "tunnel": f"site-{i // 2}",
        "direction": direction,
        "proto": "esp",
        "spi": spi,
        "src": src,
        "dst": dst,
        "mode": "tunnel",
        "reqid": 1000 + i,
        "enc": {"alg": "rfc4106(gcm(aes))", "key": _hex(f"enc{i}{direction}", 36)},
        "auth": None,
        "encap": {"type": "espinudp", "sport": 4500, "dport": 4500} if i % 5 == 0 else None,
        "esn": i % 3 == 0,
        "seq": 1000 * i if direction == "out" else 990 * i,
        "replay_window": 128 if direction == "in" else 0,
        "replay_bitmap": _hex(f"bmp{i}", 16) if direction == "in" else None,
        "lifetime": {
            "soft_s": 3000,
            "hard_s": 3600,
            "soft_bytes": None,
            "hard_bytes": 2**40,
            "soft_packets": None,
            "hard_packets": None,
        },
        "created_at": int(now),
        "bytes": 1500 * i,
        "packets": i,
        "selectors": [
            {
                "src": "10.0.0.0/16",
                "dst": f"10.{100 + i % 100}.0.0/16",
                "proto": 0,
                "sport": 0,
                "dport": 0,
            }
            if direction == "out"
            else {
                "src": f"10.{100 + i % 100}.0.0/16",
                "dst": "10.0.0.0/16",
                "proto": 0,
                "sport": 0,
                "dport": 0,
            }
        ],
        "ike_sa": ike_id,
        "rekey_required": False,
    }
    return f"esp-{spi:08x}@{dst}", rec


def web_session(i: int, now: float | None = None) -> tuple[str, dict[str, Any]]:
    now = time.time() if now is None else now
    cookie = f"SVPNCOOKIE-{i}-{_hex(f'cookie{i}', 16)}"
    rid = hashlib.sha256(cookie.encode()).hexdigest()
    rec = {
        "user": f"user{i}@example.net",
        "groups": ["vpn-users", "engineering" if i % 2 else "sales"],
        "realm": "corp",
        "auth_method": "ldap+totp",
        "portal": "full-access",
        "client_ip": f"192.0.2.{1 + i % 250}",
        "created_at": int(now) - 120,
        "last_seen": int(now) - 5,
        "idle_timeout_s": 1800,
        "expires_at": int(now) + 28800,
    }
    return rid, rec


def bench_ipsec_sa(
    i: int, direction: str = "out", now: float | None = None
) -> tuple[str, dict[str, Any]]:
    """A child SA of the benchmark's realistic shape (issue 8), built on ``ipsec_sa``.

    AES-CBC-256 + HMAC-SHA-512 keys, 6 selectors (3 local x 2 remote prefixes),
    ESN, inbound: a 256-packet replay window with its 32-byte bitmap; the IKE SA
    reference and NAT-T on one in five come from ``ipsec_sa``.
    """
    rid, rec = ipsec_sa(i, direction, now)
    site = 100 + i % 100
    local = ["10.0.0.0/16", "10.1.0.0/16", "172.16.0.0/20"]
    remotes = [f"10.{site}.0.0/16", f"192.168.{site}.0/24"]
    pairs = [(lo, re) for lo in local for re in remotes]
    rec["enc"] = {"alg": "cbc(aes)", "key": _hex(f"enc{i}{direction}", 32)}
    rec["auth"] = {"alg": "hmac(sha512)", "key": _hex(f"auth{i}{direction}", 64)}
    rec["esn"] = True
    rec["replay_window"] = 256 if direction == "in" else 0
    rec["replay_bitmap"] = _hex(f"bmp{i}", 32) if direction == "in" else None
    rec["selectors"] = [
        {"src": lo, "dst": re, "proto": 0, "sport": 0, "dport": 0}
        if direction == "out"
        else {"src": re, "dst": lo, "proto": 0, "sport": 0, "dport": 0}
        for lo, re in pairs
    ]
    return rid, rec


def promotion(i: int, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """A promotion history record (written by hasyncd itself at each promotion)."""
    now = time.time() if now is None else now
    epoch = ((int(now * 10) + i) << 16) | (1 + i % 65535)
    rec = {
        "epoch": epoch,
        "at": now,
        "margin": 1 << 16,
        "safety": 2.0,
        "detection_s": 0.5,
        "inbound": "advance" if i % 2 else "replicated",
    }
    return f"{epoch:016x}", rec


def sa_counters(
    i: int, direction: str = "out", now: float | None = None
) -> tuple[str, dict[str, Any]]:
    """The data plane's counters for child SA ``i`` (POST /v1/counters, /v1/leases)."""
    now = time.time() if now is None else now
    rid, sa = ipsec_sa(i, direction, now)
    rec = {
        "seq": 1000 + i,
        "bytes": 150_000 * (i + 1),
        "packets": 1000 + i,
        "replay_bitmap": "ff" * 4 if direction == "in" else None,
        "rate": 250.0 + i,
        "at": now,
        "seq_limit": 0 if direction == "in" or i % 2 else 1_000_000 + i,
        "expires": now + 3600,
    }
    del sa
    return rid, rec
