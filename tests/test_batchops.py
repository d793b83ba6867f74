"""Batch replies are assembled from encoded results: they decode as the dict they stand for."""

from __future__ import annotations

import json

import msgpack
import msgspec
import pytest

from hasyncd.daemon.batchops import Op, OpError, batch_reply, count_ndjson_ops, iter_ndjson_ops
from hasyncd.daemon.bodies import MAX_BATCH_OPS, ApiError, BadLine


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
