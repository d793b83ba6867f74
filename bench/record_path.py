"""CPU per record on the record path, in process (no sockets): where the time goes.

    .venv/bin/python bench/record_path.py [--records 20000] [--repeat 5]

Uses records of the issue-8 shape (``bench/shapes.py``) and reports, per record,
the best of ``--repeat`` runs of process CPU time (the least disturbed by other
load on the machine) (``time.process_time``):

* ``primary_api_us``: API validation, JSON text of one record to what is stored
  (id check, blob, expiry);
* ``primary_ndjson_us``: the same from an NDJSON batch body: splitting it into
  lines and decoding each op (``batchops.iter_ndjson_ops``) included;
* ``primary_msgpack_us``: the same from a msgpack batch body, both of the
  batch handler's passes (the whole-body check, then the ops) included;
* ``secondary_decode_us``: msgspec's typed decode of one blob alone (types and
  ranges, in C): the part of the check no Python code adds;
* ``secondary_check_us``: the link check of one replicated blob (decode, rules,
  id, expiry), what ``apply_changes`` runs per record;
* ``secondary_apply_us``: a RECORDS(BULK) message plaintext to stored entries:
  message decode, the check and the store write, per record (what a secondary
  spends per replicated record, less framing, decryption and asyncio);
* ``primary_snapshot_us``: the primary's snapshot walk of a stored table into
  RECORDS plaintexts, per record.

It writes bench/out/record_path.json.  The same command runs on the code before
the msgspec record path (it adapts to the older ``Kind`` API), for comparison.
These are measurements, not assertions.
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

import msgspec

sys.path.insert(0, str(Path(__file__).parent))

from shapes import sa_pair

from hasyncd.core.replication import OutboundSession

try:
    from hasyncd.core.apply import apply_changes, decode_change
except ImportError:  # the code before the split
    from hasyncd.core.replication import apply_changes, decode_change  # type: ignore[attr-defined,no-redef]
from hasyncd.daemon import batchops, bodies
from hasyncd.records import KINDS
from hasyncd.store import Entry, Store, pack_version
from hasyncd.wire import messages as m

SA = KINDS["ipsec_sa"]
EPOCH = (17_000_000_000 << 16) | 1
NEW_API = hasattr(SA, "parse_json")


def validate_api(rid: str, text: bytes) -> tuple[bytes, float | None]:
    """One record's API JSON text to (blob, expiry), as the API does it."""
    if NEW_API:
        record = SA.parse_json(text, rid)
        return record.blob, record.expires
    wire = SA.from_json(json.loads(text), rid)  # the code before: json.loads, then schema.py
    return SA.encode(wire), SA.expiry(wire)


def cpu_per_record(fn: Callable[[], Any], n: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        runs.append((time.process_time() - t0) / n * 1e6)
    return round(min(runs), 2)


def ndjson_per_record(texts: list[tuple[str, bytes]], repeat: int) -> float:
    """An NDJSON batch body of the records to validated records, as the batch handler does."""
    body = b"\n".join(
        b'{"op":"put","kind":"ipsec_sa","id":' + json.dumps(rid).encode() + b',"record":' + t + b"}"
        for rid, t in texts
    )
    put_kinds = getattr(batchops, "PUT_KINDS", {})  # older code: every line is an Op

    def run() -> None:
        for op in batchops.iter_ndjson_ops(body):
            if type(op) in put_kinds:
                SA.from_api(op.record, op.id)
            else:
                SA.parse_json(op.record, op.id)

    return cpu_per_record(run, len(texts), repeat)


def msgpack_per_record(texts: list[tuple[str, bytes]], repeat: int) -> float:
    """A msgpack batch body of the records to validated records, as the batch handler does."""
    ops = [
        {"op": "put", "kind": "ipsec_sa", "id": rid, "record": json.loads(t)} for rid, t in texts
    ]
    body = msgspec.msgpack.encode(ops)
    reader = getattr(batchops, "iter_msgpack_ops", None) or bodies.iter_msgpack_batch  # older code
    put_kinds = getattr(batchops, "PUT_KINDS", {})

    def run() -> None:
        for _ in reader(body):  # pass 1: the body as a whole
            pass
        for op in reader(body):
            if type(op) in put_kinds:
                SA.from_api(op.record, op.id)
            else:
                SA.from_json(op["record"], op["id"])

    return cpu_per_record(run, len(texts), repeat)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "out" / "record_path.json"
    )
    args = parser.parse_args()
    n, repeat = args.records, args.repeat
    now = time.time()
    texts = [(rid, json.dumps(rec).encode()) for rid, rec in (sa_pair(i, now) for i in range(n))]

    stored: list[tuple[str, bytes, float | None]] = []

    def primary() -> None:
        stored.clear()
        for rid, text in texts:
            blob, expires = validate_api(rid, text)
            stored.append((rid, blob, expires))

    primary_us = cpu_per_record(primary, n, repeat)
    ndjson_us = ndjson_per_record(texts, repeat) if NEW_API else None
    msgpack_us = msgpack_per_record(texts, repeat) if NEW_API else None
    changes = tuple(m.Change(SA.code, rid, EPOCH, i + 1, b) for i, (rid, b, _) in enumerate(stored))

    def check() -> None:
        for c in changes:
            decode_change(c)

    check_us = cpu_per_record(check, n, repeat)
    blob_decoder = msgspec.msgpack.Decoder(SA.schema.wire) if NEW_API else None

    def typed_decode() -> None:
        assert blob_decoder is not None
        for c in changes:
            blob_decoder.decode(c.blob)

    decode_us = cpu_per_record(typed_decode, n, repeat) if NEW_API else None

    source = Store()
    for i, (rid, blob, expires) in enumerate(stored):
        source.put(SA.code, rid, Entry(pack_version(EPOCH, i + 1), expires, blob))
    plaintexts: list[bytes] = []

    def snapshot() -> None:
        plaintexts.clear()
        session = OutboundSession(1)
        while True:
            nxt = session.next_message(source, pack_version(EPOCH, n))
            if nxt is None or isinstance(nxt[0], m.BulkEnd):
                break
            plaintexts.append(m.encode(nxt[0], EPOCH))

    snapshot_us = cpu_per_record(snapshot, n, repeat)

    def apply() -> None:
        store = Store()
        wall = time.time()
        for text in plaintexts:
            _epoch, msg = m.decode(text)
            if isinstance(msg, m.Records):
                result = apply_changes(store, msg.changes, wall, 3600.0)
                assert result.invalid == 0
        assert sum(store.counts().values()) == n

    apply_us = cpu_per_record(apply, n, repeat)
    result = {
        "records": n,
        "record_api_json_bytes": round(sum(len(t) for _, t in texts) / n),
        "record_blob_bytes": round(sum(len(b) for _, b, _ in stored) / n),
        "primary_api_us": primary_us,
        "primary_ndjson_us": ndjson_us,
        "primary_msgpack_us": msgpack_us,
        "secondary_check_us": check_us,
        "secondary_decode_us": decode_us,
        "secondary_apply_us": apply_us,
        "primary_snapshot_us": snapshot_us,
        "code": "msgspec record path" if NEW_API else "schema.py record path",
        "machine": f"{platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
