"""Batch replies are assembled from encoded results: they decode as the dict they stand for."""

from __future__ import annotations

import json

import msgpack
import msgspec
import pytest

from hasyncd import samples
from hasyncd.daemon.batchops import (
    PUT_KINDS,
    Op,
    OpError,
    batch_reply,
    count_ndjson_ops,
    iter_ndjson_ops,
)
from hasyncd.daemon.bodies import MAX_BATCH_OPS, ApiError, BadLine
from hasyncd.records import KINDS


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65535, 65536, 70000])
@pytest.mark.parametrize("replicated", [None, True, False])
def test_batch_reply_is_the_encoding_of_the_results(n: int, replicated: bool | None) -> None:
    results = [{"status": 201, "id": f"r{i}", "version": {"epoch": 7, "seq": i}} for i in range(n)]
    want: dict[str, object] = {"results": results}
    if replicated is not None:
        want["replicated"] = replicated
    packed = batch_reply([msgspec.msgpack.encode(r) for r in results], replicated, True)
    assert msgpack.unpackb(packed, raw=False) == want
    text = batch_reply([msgspec.json.encode(r) for r in results], replicated, False)
    assert json.loads(text) == want


def test_ndjson_ops_decode_into_structs_and_bad_lines_fail_alone() -> None:
    op = {"op": "put", "kind": "ipsec_sa", "id": "x", "record": {"a": [1, {"b": 2}]}}
    deep = b"[" * 50 + b"]" * 50
    body = b"\n".join(
        [json.dumps(op).encode(), b"  ", b"{nope", b'{"op":"put","kind":"k","id":"x","zz":1}', deep]
    )
    assert count_ndjson_ops(body) == 4
    got = list(iter_ndjson_ops(body))
    assert isinstance(got[0], Op)
    assert json.loads(bytes(got[0].record)) == op["record"]
    assert isinstance(got[1], BadLine) and got[1].error.code == "invalid_json"
    assert isinstance(got[2], OpError) and got[2].error.code == "unknown_field"
    assert isinstance(got[3], BadLine) and got[3].error.code == "nesting_too_deep"


def test_ndjson_op_count_is_bounded() -> None:
    with pytest.raises(ApiError) as err:
        count_ndjson_ops(b"{}\n" * (MAX_BATCH_OPS + 1))
    assert err.value.code == "batch_too_large"


def test_a_well_formed_put_decodes_in_one_pass_into_its_kind() -> None:
    lines = []
    for i, (rid, rec) in enumerate([samples.ipsec_sa(3, "in", 1.7e9), samples.ipsec_sa(4)]):
        lines.append(json.dumps({"id": rid, "record": rec, "kind": "ipsec_sa", "op": "put"}))
        if i == 0:
            lines.append(json.dumps({"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec}))
    got = list(iter_ndjson_ops("\n".join(lines).encode()))
    assert [PUT_KINDS.get(type(op)) for op in got] == ["ipsec_sa"] * 3
    sa = KINDS["ipsec_sa"]
    for op, line in zip(got, lines, strict=True):
        raw = msgspec.json.encode(json.loads(line)["record"])
        want = sa.parse_json(raw, op.id)  # the general path's result
        got_rec = sa.from_api(op.record, op.id)
        assert (got_rec.blob, got_rec.expires) == (want.blob, want.expires)


@pytest.mark.parametrize(
    "line",
    [
        {"op": "delete", "kind": "ipsec_sa", "id": "esp-00000001@192.0.2.1"},
        {"op": "put", "kind": "no_such_kind", "id": "x", "record": {}},
        {"op": "put", "kind": "ipsec_sa", "id": "x", "record": {"spi": "not a number"}},
        {"op": "put", "kind": "ipsec_sa", "id": "x", "record": None},
        {"op": "put", "kind": "ipsec_sa", "id": "x"},
    ],
    ids=["delete", "unknown kind", "bad record", "null record", "no record"],
)
def test_any_other_line_takes_the_general_path(line: dict[str, object]) -> None:
    (got,) = iter_ndjson_ops(json.dumps(line).encode())
    assert isinstance(got, Op)  # its errors are the general path's, unchanged
