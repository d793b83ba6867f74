"""Unit tests for the replication policy table."""

from __future__ import annotations

import json

import pytest

from hasyncd import policy, records, store
from hasyncd.errors import NotReplicated, ReadOnlyKind, RecordError, UnknownKind
from hasyncd.policy import (
    BY_NAME,
    KIND_BY_CODE,
    KIND_CODES,
    POLICY,
    REPLICATED_KINDS,
    KindPolicy,
    policy_table,
    require_replicated,
)

from .product import INTERNAL, NOT_REPLICATED, REPLICATED


def test_replicated_kinds_are_exactly_the_three_and_the_two_internal_ones() -> None:
    assert REPLICATED_KINDS == REPLICATED + INTERNAL
    assert {p.kind for p in POLICY if p.replicated} == set(REPLICATED) | set(INTERNAL)
    assert set(records.KINDS) == set(REPLICATED) | set(INTERNAL)
    assert {p.kind for p in POLICY if p.internal} == set(INTERNAL)


@pytest.mark.parametrize("kind", INTERNAL)
def test_internal_kinds_are_read_but_never_written_through_the_api(kind: str) -> None:
    assert records.kind_for_api(kind) is records.KINDS[kind]
    assert records.KINDS[kind].api_writable is False
    with pytest.raises(ReadOnlyKind) as info:
        records.kind_for_write(kind)
    assert info.value.code == "read_only_kind"
    for user_kind in REPLICATED:
        assert records.kind_for_write(user_kind) is records.KINDS[user_kind]


def test_the_table_lists_exactly_the_twelve_kinds_once() -> None:
    kinds = [p.kind for p in POLICY]
    assert len(kinds) == len(set(kinds))
    assert set(kinds) == set(REPLICATED) | set(NOT_REPLICATED) | set(INTERNAL)
    assert {p.kind for p in POLICY if not p.replicated} == set(NOT_REPLICATED)
    assert set(BY_NAME) == set(kinds)


@pytest.mark.parametrize("kind", REPLICATED)
def test_replicated_kinds_are_accepted(kind: str) -> None:
    p = require_replicated(kind)
    assert isinstance(p, KindPolicy)
    assert p.kind == kind
    assert p.replicated is True
    assert p.code == KIND_CODES[kind]
    k = records.kind_for_api(kind)
    assert k is records.KINDS[kind]
    assert k.name == kind
    assert k.code == p.code


@pytest.mark.parametrize("kind", NOT_REPLICATED)
def test_not_replicated_kinds_are_refused_with_a_reason(kind: str) -> None:
    with pytest.raises(NotReplicated) as info:
        require_replicated(kind)
    err = info.value
    assert isinstance(err, RecordError)
    assert err.kind == kind
    assert err.reason == BY_NAME[kind].reason
    assert len(err.reason) > 10
    assert kind in err.message
    assert err.reason in err.message
    assert "not replicated" in err.message
    assert err.code == "not_replicated"
    with pytest.raises(NotReplicated) as api_info:
        records.kind_for_api(kind)
    assert api_info.value.kind == kind
    assert api_info.value.reason == err.reason


@pytest.mark.parametrize("kind", NOT_REPLICATED)
def test_not_replicated_kinds_have_no_wire_code(kind: str) -> None:
    assert BY_NAME[kind].code is None
    assert kind not in KIND_CODES
    assert kind not in KIND_BY_CODE.values()
    assert kind not in records.KINDS


@pytest.mark.parametrize(
    "kind",
    ["", "IPSEC_SA", "ipsec", "ipsec_sa ", " ike_sa", "ssl_vpn_web_session", "session", "x" * 500],
)
def test_unknown_kinds(kind: str) -> None:
    with pytest.raises(UnknownKind) as info:
        require_replicated(kind)
    assert info.value.field == "kind"
    assert info.value.code == "unknown_kind"
    assert not isinstance(info.value, NotReplicated)
    assert kind[:64] in info.value.message
    assert len(info.value.message) < 120  # long names are cut
    with pytest.raises(UnknownKind):
        records.kind_for_api(kind)


def test_every_kind_has_a_reason() -> None:
    for p in POLICY:
        assert isinstance(p.reason, str)
        assert p.reason.strip() == p.reason
        assert len(p.reason) > 10


def test_wire_codes_are_unique_small_positive_integers() -> None:
    codes = [p.code for p in POLICY if p.code is not None]
    assert len(codes) == len(set(codes)) == 5
    assert all(type(c) is int and 1 <= c <= 255 for c in codes)
    assert [p.kind for p in POLICY if p.code is not None] == list(REPLICATED + INTERNAL)
    assert {KIND_BY_CODE[c]: c for c in KIND_BY_CODE} == KIND_CODES
    assert {k.code for k in records.KINDS.values()} == set(codes)
    assert {
        records.KINDS[k].code: records.KINDS[k] for k in REPLICATED + INTERNAL
    } == records.KINDS_BY_CODE
    for kind, code in KIND_CODES.items():
        assert records.KINDS[kind].code == code


def test_the_wire_codes_are_stable() -> None:
    # The codes travel between nodes: changing one breaks mixed-version clusters.
    assert KIND_CODES == {
        "ipsec_sa": 1,
        "ike_sa": 2,
        "sslvpn_web_session": 3,
        "promotion": 4,
        "sa_counters": 5,
    }


def test_replicated_kinds_have_a_code_and_others_none() -> None:
    for p in POLICY:
        assert (p.code is not None) is p.replicated


def test_the_store_has_one_table_per_replicated_kind() -> None:
    s = store.Store()
    assert set(s.tables) == set(KIND_CODES.values())
    assert set(s.counts()) == set(KIND_CODES.values())


def test_policy_table_is_json_serializable() -> None:
    table = policy_table()
    text = json.dumps(table)
    back = json.loads(text)
    assert back == table
    assert [row["kind"] for row in back] == [p.kind for p in POLICY]
    for row, p in zip(back, POLICY, strict=True):
        assert set(row) == {"kind", "replicated", "reason"}
        assert row == {"kind": p.kind, "replicated": p.replicated, "reason": p.reason}
        assert type(row["replicated"]) is bool


def test_policy_table_returns_fresh_objects() -> None:
    table = policy_table()
    table[0]["replicated"] = False
    table.clear()
    assert policy_table()[0]["replicated"] is True
    assert len(policy_table()) == 14


def test_policy_entries_are_frozen() -> None:
    p = BY_NAME["ipsec_sa"]
    with pytest.raises(AttributeError):
        p.replicated = False  # type: ignore[misc]
    assert policy.BY_NAME["ipsec_sa"].replicated is True
