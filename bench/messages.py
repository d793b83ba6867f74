"""CPU per link message: encode and decode of each message type, in process.

    .venv/bin/python bench/messages.py [--loops 20000] [--repeat 5]

For every message type, one representative message is encoded
(``messages.encode``) and its plaintext decoded (``messages.decode``) ``--loops``
times; each figure is the best of ``--repeat`` runs of process CPU time, in µs
per message.  RECORDS is measured as a snapshot message of realistic
``ipsec_sa`` blobs (``bench/shapes.py``) filling one frame, and reported per
message and per change.  It writes bench/out/messages.json.  The same command
runs on older code (it uses only ``encode``/``decode`` and the message
classes), for before/after comparisons.  Measurements, not assertions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from shapes import sa_pair

from hasyncd.core.replication import BATCH_BYTES, CHANGE_OVERHEAD
from hasyncd.records import KINDS
from hasyncd.wire import messages as m

SA = KINDS["ipsec_sa"]
EPOCH = (17_000_000_000 << 16) | 1


def best_us(fn: Callable[[], Any], loops: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(loops):
            fn()
        runs.append((time.process_time() - t0) / loops * 1e6)
    return min(runs)


def records_message() -> m.Records:
    now = time.time()
    changes: list[m.Change] = []
    size = 0
    i = 0
    while True:
        rid, rec = sa_pair(i, now)
        blob = SA.parse_json(json.dumps(rec).encode(), rid).blob
        size += len(blob) + len(rid) + CHANGE_OVERHEAD
        if size > BATCH_BYTES:
            break
        changes.append(m.Change(SA.code, rid, EPOCH, i + 1, blob))
        i += 1
    return m.Records(m.Phase.BULK, tuple(changes))


def samples() -> dict[str, m.Message]:
    return {
        "HELLO": m.Hello("gw-a", bytes(range(16)), 7, 1 << 20, "192.0.2.1:7410"),
        "HEARTBEAT": m.Heartbeat(
            m.Role.PRIMARY, "gw-a", 100, 123456789, 0, m.F_IN_SYNC, EPOCH, 987654, 5555, 4444, 3
        ),
        "SYNC_REQUEST": m.SyncRequest("follow"),
        "BULK_START": m.BulkStart(3, 1_000_000),
        "BULK_END": m.BulkEnd(3, 1_000_000, EPOCH, 987654),
        "ACK": m.Ack(123456),
        "HANDOVER": m.Handover("gw-b", EPOCH, 987654, "manual"),
        "GOODBYE": m.Goodbye("shutdown", "planned stop"),
        "MERGE_END": m.MergeEnd(10, EPOCH),
        "RECORDS": records_message(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "messages.json")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    for name, msg in samples().items():
        data = m.encode(msg, EPOCH)
        assert m.decode(data) == (EPOCH, msg)
        loops = args.loops if name != "RECORDS" else max(args.loops // 100, 10)
        enc = best_us(lambda msg=msg: m.encode(msg, EPOCH), loops, args.repeat)  # type: ignore[misc]
        dec = best_us(lambda data=data: m.decode(data), loops, args.repeat)  # type: ignore[misc]
        row: dict[str, Any] = {
            "bytes": len(data),
            "encode_us": round(enc, 3),
            "decode_us": round(dec, 3),
        }
        if isinstance(msg, m.Records):
            n = len(msg.changes)
            row |= {
                "changes": n,
                "encode_us_per_change": round(enc / n, 3),
                "decode_us_per_change": round(dec / n, 3),
            }
        result[name] = row
        print(f"{name:13} {json.dumps(row)}")
    result["machine"] = (
        f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}"
    )
    result["date"] = time.strftime("%Y-%m-%d %H:%M")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
