"""Batch replies are assembled from encoded results: they decode as the dict they stand for."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import msgspec
import pytest

from hasyncd import samples
from hasyncd.daemon.batchops import (
    COUNT_LINES,
    PUT_KINDS,
    Op,
    OpError,
    batch_reply,
    count_ndjson_ops,
    iter_msgpack_ops,
    iter_ndjson_ops,
    ndjson_op_counts,
)
from hasyncd.daemon.bodies import MAX_BATCH_OPS, ApiError, BadLine, iter_msgpack_batch
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


def test_ndjson_puts_decode_from_the_body_and_bad_lines_keep_their_numbers() -> None:
    """Puts are decoded from views of the body; blank lines are skipped, not numbered."""
    rid, rec = samples.ipsec_sa(3)
    put = json.dumps({"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec}).encode()
    body = b"\n".join([b"", put, b" \t", put + b"\r", b"{nope", b"", put, b'{"op":']) + b"\n\n"
    got = list(iter_ndjson_ops(body))
    assert [type(x) in PUT_KINDS for x in got] == [True, True, False, True, False]
    assert all(x.id == rid for x in got if type(x) in PUT_KINDS)
    assert [(x.line, x.error.code) for x in got if isinstance(x, BadLine)] == [
        (3, "invalid_json"),
        (5, "invalid_json"),
    ]
    assert count_ndjson_ops(body) == 5


def test_ndjson_op_count_is_bounded() -> None:
    with pytest.raises(ApiError) as err:
        count_ndjson_ops(b"{}\n" * (MAX_BATCH_OPS + 1))
    assert err.value.code == "batch_too_large"
    with pytest.raises(ApiError) as err:  # the stepwise count the handler yields between
        list(ndjson_op_counts(b"{}\n" * (MAX_BATCH_OPS + 1)))
    assert err.value.code == "batch_too_large"
    assert count_ndjson_ops(b"{}\n" * MAX_BATCH_OPS) == MAX_BATCH_OPS


def test_ndjson_ops_are_counted_in_steps_the_handler_can_yield_between() -> None:
    body = (b"{}\n \n" * (2 * COUNT_LINES + 10)) + b"{}"  # blank lines between: not ops
    counts = list(ndjson_op_counts(body))
    assert counts == [COUNT_LINES, 2 * COUNT_LINES, 2 * COUNT_LINES + 11]
    assert count_ndjson_ops(body) == 2 * COUNT_LINES + 11
    assert list(ndjson_op_counts(b"")) == [0]


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


def _msgpack_bodies() -> dict[str, bytes]:
    rid, rec = samples.ipsec_sa(1)
    op = {"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec}

    def with_second(second: bytes) -> bytes:
        return b"\x92" + msgpack.packb(op, use_bin_type=True) + second

    return {
        "truncated": msgpack.packb([op, op], use_bin_type=True)[:-7],
        "ext": with_second(msgpack.packb(msgpack.ExtType(1, b"ab"))),
        "int_map_key": with_second(msgpack.packb({1: "x"})),
        "nested_2000": with_second(b"\x91" * 2000 + b"\xc0"),
        "nested_100": with_second(b"\x91" * 100 + b"\xc0"),
        "bad_utf8": with_second(b"\xa2\xff\xfe"),
        "trailing": msgpack.packb([op]) + b"\xc0",
        "not_an_array": msgpack.packb({"a": 1}),
        "too_many": b"\xdd" + (MAX_BATCH_OPS + 1).to_bytes(4, "big"),
        "bin_spi": msgpack.packb([dict(op, record=dict(rec, spi=bytes(4)))], use_bin_type=True),
        "delete_then_put": msgpack.packb([{"op": "delete", "kind": "ipsec_sa", "id": rid}, op]),
        "bad_record": msgpack.packb([dict(op, record={"spi": "x"}), op]),
        "empty": msgpack.packb([]),
    }


def _read(reader: Any, body: bytes) -> tuple[Any, ...]:
    try:
        return ("ops", [op if isinstance(op, dict) else PUT_KINDS[type(op)] for op in reader(body)])
    except ApiError as exc:
        return ("refused", exc.status, exc.code, exc.message)


@pytest.mark.parametrize(("name", "body"), sorted(_msgpack_bodies().items()))
def test_msgpack_ops_refuse_and_read_as_the_general_reader(name: str, body: bytes) -> None:
    old, new = _read(iter_msgpack_batch, body), _read(iter_msgpack_ops, body)
    if old[0] == "refused":
        assert new == old
    else:  # the same ops, well-formed puts as put Structs, every other op as before
        assert len(new[1]) == len(old[1])
        for a, b in zip(old[1], new[1], strict=True):
            assert b == a or (b == "ipsec_sa" and a["op"] == "put" and a["kind"] == b)
        one_pass = [b == "ipsec_sa" for b in new[1]]
        want = {"delete_then_put": [False, True], "bad_record": [False, True], "bin_spi": [False]}
        assert one_pass == want.get(name, one_pass)


def test_msgpack_put_structs_give_the_general_paths_record() -> None:
    rid, rec = samples.ipsec_sa(9, "in", 1.7e9)
    body = msgpack.packb([{"op": "put", "kind": "ipsec_sa", "id": rid, "record": rec}])
    (put,) = iter_msgpack_ops(body)
    (general,) = iter_msgpack_batch(body)
    sa = KINDS["ipsec_sa"]
    got, want = sa.from_api(put.record, put.id), sa.from_json(general["record"], rid)
    assert (got.blob, got.expires) == (want.blob, want.expires)
