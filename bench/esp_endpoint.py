"""The reference ESP endpoint's per-packet cost (issue 10): seal and open, per transform.

    .venv/bin/python bench/esp_endpoint.py [--packets 20000] [--size 100]

Figures (measurements on a shared machine, never assertions): process CPU
per packet of ``OutboundSa.seal`` and ``InboundSa.open`` (the replay check
included) for ``rfc4106(gcm(aes))`` and ``cbc(aes)`` + ``hmac(sha256)``, the
best of 5 runs, and the packets per second of one core that follow from them.
Writes bench/out/esp_endpoint.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from hasyncd.contrib import esp


def _records(alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    base: dict[str, Any] = {"proto": "esp", "spi": 0x1000, "esn": True, "seq": 0}
    if alg == "gcm":
        base.update(enc={"alg": "rfc4106(gcm(aes))", "key": os.urandom(36).hex()}, auth=None)
    else:
        base.update(
            enc={"alg": "cbc(aes)", "key": os.urandom(32).hex()},
            auth={"alg": "hmac(sha256)", "key": os.urandom(32).hex()},
        )
    return base, {**base, "replay_window": 64}


def run(alg: str, packets: int, size: int) -> dict[str, float]:
    out_rec, in_rec = _records(alg)
    payload = os.urandom(size)
    best_seal = best_open = float("inf")
    for _ in range(5):
        out = esp.outbound("o", out_rec, ("127.0.0.1", 4500))
        inb = esp.inbound("i", in_rec)
        t0 = time.process_time()
        wires = [out.seal(payload, 4) for _ in range(packets)]
        t1 = time.process_time()
        for w in wires:
            inb.open(w)
        t2 = time.process_time()
        best_seal, best_open = min(best_seal, t1 - t0), min(best_open, t2 - t1)
    seal_us, open_us = best_seal / packets * 1e6, best_open / packets * 1e6
    return {
        "seal_us": round(seal_us, 2),
        "open_us": round(open_us, 2),
        "packets_per_s_one_core": round(1e6 / (seal_us + open_us)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--size", type=int, default=100, help="inner packet bytes")
    args = ap.parse_args()
    res = {alg: run(alg, args.packets, args.size) for alg in ("gcm", "cbc")}
    res["conditions"] = {"packets": args.packets, "size": args.size}  # type: ignore[assignment]
    print(json.dumps(res, indent=2))
    out = Path(__file__).parent / "out" / "esp_endpoint.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
