"""Unit tests for the record kinds: schemas, ids, cross-field rules, expiry, merge, promotion."""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import re
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hasyncd import records, samples
from hasyncd.counterkinds import PROMOTION, SA_COUNTERS, promotion_id
from hasyncd.errors import IdMismatch, RecordError, UnknownField
from hasyncd.records import (
    ALG,
    IKE_SA,
    IPSEC_SA,
    MAX_RECORD_BYTES,
    U32,
    U64,
    WEB_SESSION,
)
from hasyncd.schema import (
    IP,
    Bool,
    Enum,
    Hex,
    Int,
    ListOf,
    Nullable,
    Num,
    Prefix,
    Str,
    Struct,
)
from hasyncd.schema import (
    Codec as FieldType,
)

NOW = 1_700_000_000.0


class Kind:
    """A record kind seen through its positional wire value (PROTOCOL.md section 8).

    The tests below state the record rules on the wire value as the protocol
    defines it: a positional list, with bytes for addresses and hex, indices
    for enums.  This adapter gives each ``hasyncd.records.Kind`` operation
    that view: records are validated by the real API path (``from_json``) or
    link path (``from_blob``), and lists are the msgpack value of the blob.
    """

    def __init__(self, kind: records.Kind) -> None:
        self.real = kind
        self.name, self.code, self.schema = kind.name, kind.code, kind.schema
        self.id_pattern = kind.id_pattern

    def from_json(self, body: Any, rid: str) -> list[Any]:
        blob = self.real.from_json(body, rid).blob
        as_json = self.real.parse_json(json.dumps(body).encode(), rid).blob
        assert as_json == blob  # decoding JSON text and Python values agree
        return _plain(blob)

    def encode(self, wire: list[Any]) -> bytes:
        blob: bytes = msgpack.packb(wire, use_bin_type=True)
        if len(blob) > MAX_RECORD_BYTES:
            self.real.encode(self.real._wire_decoder.decode(blob))  # raises the size error
        return blob

    def decode(self, blob: bytes) -> list[Any]:
        self.real.decode(blob)
        return _plain(blob)

    def _value(self, wire: list[Any]) -> Any:
        return self.real.decode(self.encode(wire))

    def to_json(self, wire: list[Any]) -> dict[str, Any]:
        return self.real.to_json(self._value(wire))

    def check_id(self, wire: list[Any], rid: str) -> None:
        self.real.check_id(self._value(wire), rid)

    def expiry(self, wire: list[Any]) -> float | None:
        return self.real.expiry(self._value(wire))

    def merge(self, winner: list[Any], loser: list[Any]) -> list[Any]:
        merged = self.real.merge(self._value(winner), self._value(loser))
        return _plain(self.real.encode(merged))


def _plain(blob: bytes) -> list[Any]:
    return msgpack.unpackb(blob, raw=False)  # type: ignore[no-any-return]


def advance_outbound_seq(wire: list[Any], margin: int) -> list[Any] | None:
    new = records.advance_outbound_seq(SA._value(wire), margin)
    return None if new is None else _plain(SA.real.encode(new))


def require_mid_sync(wire: list[Any]) -> list[Any] | None:
    new = records.require_mid_sync(IKE._value(wire))
    return None if new is None else _plain(IKE.real.encode(new))


KINDS = {name: Kind(k) for name, k in records.KINDS.items()}
SA = KINDS["ipsec_sa"]
IKE = KINDS["ike_sa"]
WEB = KINDS["sslvpn_web_session"]

HYPOTHESIS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --- helpers -----------------------------------------------------------------------------


def sample(kind: str, i: int = 1, direction: str = "out") -> tuple[str, dict[str, Any]]:
    if kind == "ipsec_sa":
        return samples.ipsec_sa(i, direction, now=NOW)
    if kind == "ike_sa":
        return samples.ike_sa(i, now=NOW)
    if kind == "promotion":
        return samples.promotion(i, now=NOW)
    if kind == "sa_counters":
        return samples.sa_counters(i, direction, now=NOW)
    return samples.web_session(i, now=NOW)


_STEP = re.compile(r"([A-Za-z_]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    out: list[str | int] = []
    for part in path.split("."):
        for name, index in _STEP.findall(part):
            out.append(name if name else int(index))
    return out


def set_path(rec: Any, path: str, value: Any) -> None:
    *parents, last = _steps(path)
    for step in parents:
        rec = rec[step]
    rec[last] = value


def del_path(rec: Any, path: str) -> None:
    *parents, last = _steps(path)
    for step in parents:
        rec = rec[step]
    del rec[last]


def sa_id(rec: dict[str, Any]) -> str:
    """The ipsec_sa id computed independently of hasyncd: proto-spi@canonical dst."""
    return f"{rec['proto']}-{rec['spi']:08x}@{ipaddress.ip_address(rec['dst'])}"


def rid_for(kind: Kind, rec: dict[str, Any], fallback: str) -> str:
    """The id the record must carry (fields that feed the id may have been mutated)."""
    if kind is SA:
        try:
            return sa_id(rec)
        except (TypeError, ValueError, KeyError):
            return fallback
    if kind is IKE:
        ispi, rspi = rec.get("ispi"), rec.get("rspi")
        if isinstance(ispi, str) and isinstance(rspi, str):
            candidate = (ispi + rspi).lower()
            if re.fullmatch(r"[0-9a-f]{32}", candidate):
                return candidate
        return fallback
    return fallback


def roundtrip(kind: Kind, rid: str, rec: dict[str, Any]) -> dict[str, Any]:
    wire = kind.from_json(rec, rid)
    blob = kind.encode(wire)
    assert isinstance(blob, bytes)
    decoded = kind.decode(blob)
    assert decoded == wire
    kind.check_id(decoded, rid)
    return kind.to_json(decoded)


def wire_of(kind: Kind, rec: dict[str, Any], rid: str | None = None) -> list[Any]:
    return kind.from_json(rec, rid if rid is not None else rid_for(kind, rec, "0" * 64))


def expect_error(
    kind: Kind, rec: Any, rid: str, field: str, *, in_message: bool = True
) -> RecordError:
    with pytest.raises(RecordError) as info:
        kind.from_json(rec, rid)
    assert info.value.field == field, (info.value.field, info.value.message)
    if in_message:
        assert field in info.value.message
    assert info.value.code == "invalid_record" or isinstance(info.value, UnknownField)
    return info.value


KIND_SAMPLES = [
    ("ipsec_sa", 0, "out"),
    ("ipsec_sa", 1, "in"),
    ("ipsec_sa", 3, "out"),
    ("ipsec_sa", 5, "in"),
    ("ipsec_sa", 10, "out"),
    ("ike_sa", 0, "out"),
    ("ike_sa", 7, "out"),
    ("sslvpn_web_session", 0, "out"),
    ("sslvpn_web_session", 9, "out"),
]


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind_name", "i", "direction"), KIND_SAMPLES)
def test_sample_roundtrip_is_identical(kind_name: str, i: int, direction: str) -> None:
    kind = KINDS[kind_name]
    rid, rec = sample(kind_name, i, direction)
    original = copy.deepcopy(rec)
    out = roundtrip(kind, rid, rec)
    assert out == original
    assert json.dumps(out, sort_keys=True) == json.dumps(original, sort_keys=True)
    assert rec == original  # from_json does not mutate its input


@pytest.mark.parametrize(("kind_name", "i", "direction"), KIND_SAMPLES)
def test_wire_form_is_a_positional_list_of_schema_length(
    kind_name: str, i: int, direction: str
) -> None:
    kind = KINDS[kind_name]
    rid, rec = sample(kind_name, i, direction)
    wire = kind.from_json(rec, rid)
    assert type(wire) is list
    assert len(wire) == len(kind.schema.fields)
    assert msgpack.unpackb(kind.encode(wire), raw=False) == wire


def test_wire_is_compact_enums_addresses_and_hex_are_binary() -> None:
    rid, rec = sample("ipsec_sa", 1, "in")
    wire = SA.from_json(rec, rid)
    pos = IPSEC_SA.pos
    assert wire[pos["direction"]] == 0
    assert wire[pos["proto"]] == 0
    assert wire[pos["src"]] == ipaddress.ip_address(rec["src"]).packed
    assert wire[pos["enc"]][1] == bytes.fromhex(rec["enc"]["key"])
    assert wire[pos["selectors"]][0][0] == [ipaddress.ip_address("10.101.0.0").packed, 16]


def test_hex_input_is_canonicalized_to_lowercase() -> None:
    rid, rec = sample("ipsec_sa", 1)
    rec["enc"]["key"] = rec["enc"]["key"].upper()
    out = roundtrip(SA, rid, rec)
    assert out["enc"]["key"] == rec["enc"]["key"].lower()


def test_ipv6_addresses_are_canonicalized() -> None:
    _, rec = sample("ipsec_sa", 2)
    rec["src"] = "2001:DB8:0:0:0:0:0:1"
    rec["dst"] = "2001:0db8::00ff"
    rec["selectors"] = [{"src": "2001:DB8:1::/48", "dst": "2001:db8:2:0::/64"}]
    out = roundtrip(SA, "esp-c0000004@2001:db8::ff", rec)
    assert out["src"] == "2001:db8::1"
    assert out["dst"] == "2001:db8::ff"
    assert out["selectors"][0]["src"] == "2001:db8:1::/48"
    assert out["selectors"][0]["dst"] == "2001:db8:2::/64"


def test_float_and_int_times_survive_the_wire_unchanged() -> None:
    rid, rec = sample("sslvpn_web_session", 1)
    rec["created_at"] = 1_700_000_000.125
    rec["last_seen"] = 1_700_000_001
    out = roundtrip(WEB, rid, rec)
    assert type(out["created_at"]) is float
    assert out["created_at"] == 1_700_000_000.125
    assert type(out["last_seen"]) is int


# --- field validation ------------------------------------------------------------------------

# (path, bad value, field the error must name)
IPSEC_BAD: list[tuple[str, Any, str]] = [
    ("tunnel", "", "tunnel"),
    ("tunnel", "x" * 129, "tunnel"),
    ("tunnel", 5, "tunnel"),
    ("tunnel", None, "tunnel"),
    ("tunnel", "a\x00b", "tunnel"),
    ("tunnel", "a\nb", "tunnel"),
    ("tunnel", "a\x1bb", "tunnel"),
    ("tunnel", "a\x7fb", "tunnel"),
    ("tunnel", "tab\there", "tunnel"),
    ("direction", "inbound", "direction"),
    ("direction", "IN", "direction"),
    ("direction", 0, "direction"),
    ("direction", None, "direction"),
    ("proto", "ESP", "proto"),
    ("proto", "udp", "proto"),
    ("proto", 1, "proto"),
    ("mode", "tun", "mode"),
    ("spi", 255, "spi"),
    ("spi", 0, "spi"),
    ("spi", -1, "spi"),
    ("spi", 2**32, "spi"),
    ("spi", "3221225474", "spi"),
    ("spi", 3221225474.0, "spi"),
    ("spi", True, "spi"),
    ("spi", None, "spi"),
    ("src", "10.0.0.256", "src"),
    ("src", "gw.example.net", "src"),
    ("src", "fe80::1%eth0", "src"),
    ("src", "10.0.0.0/24", "src"),
    ("src", " 198.51.100.1", "src"),
    ("src", "198.51.100.1\n", "src"),
    ("src", "", "src"),
    ("src", 3325256705, "src"),
    ("src", "1" * 46, "src"),
    ("dst", "203.0.113.300", "dst"),
    ("dst", "::g", "dst"),
    ("dst", None, "dst"),
    ("reqid", -1, "reqid"),
    ("reqid", 2**32, "reqid"),
    ("reqid", "1", "reqid"),
    ("enc", "aes", "enc"),
    ("enc", [], "enc"),
    ("enc.alg", "AES", "enc.alg"),
    ("enc.alg", "", "enc.alg"),
    ("enc.alg", "a" * 65, "enc.alg"),
    ("enc.alg", "-aes", "enc.alg"),
    ("enc.alg", "aes cbc", "enc.alg"),
    ("enc.alg", None, "enc.alg"),
    ("enc.key", "abc", "enc.key"),
    ("enc.key", "zz" * 16, "enc.key"),
    ("enc.key", "ab cd", "enc.key"),
    ("enc.key", " abcd", "enc.key"),
    ("enc.key", "abcd\n", "enc.key"),
    ("enc.key", "0x" + "ab" * 8, "enc.key"),
    ("enc.key", "", "enc.key"),
    ("enc.key", "00" * 129, "enc.key"),
    ("enc.key", 1234, "enc.key"),
    ("enc.key", None, "enc.key"),
    ("auth", 7, "auth"),
    ("encap", "espinudp", "encap"),
    ("encap.type", "espinudp2", "encap.type"),
    ("encap.sport", 0, "encap.sport"),
    ("encap.dport", 65536, "encap.dport"),
    ("esn", 1, "esn"),
    ("esn", "true", "esn"),
    ("esn", None, "esn"),
    ("seq", -1, "seq"),
    ("seq", 2**64, "seq"),
    ("seq", 1.0, "seq"),
    ("replay_window", 65537, "replay_window"),
    ("replay_window", -1, "replay_window"),
    ("lifetime", "x", "lifetime"),
    ("lifetime", None, "lifetime"),
    ("lifetime.hard_s", -1, "lifetime.hard_s"),
    ("lifetime.hard_s", 2**64, "lifetime.hard_s"),
    ("lifetime.hard_s", 1.5, "lifetime.hard_s"),
    ("lifetime.soft_s", "3000", "lifetime.soft_s"),
    ("lifetime.hard_bytes", True, "lifetime.hard_bytes"),
    ("lifetime.soft_packets", -5, "lifetime.soft_packets"),
    ("created_at", -1, "created_at"),
    ("created_at", 2**40 + 1, "created_at"),
    ("created_at", math.nan, "created_at"),
    ("created_at", math.inf, "created_at"),
    ("created_at", "1700000000", "created_at"),
    ("created_at", None, "created_at"),
    ("created_at", True, "created_at"),
    ("bytes", -1, "bytes"),
    ("bytes", 2**64, "bytes"),
    ("packets", -1, "packets"),
    ("packets", 2**64, "packets"),
    ("selectors", "x", "selectors"),
    ("selectors", None, "selectors"),
    ("selectors[0]", "10.0.0.0/8", "selectors[0]"),
    ("selectors[0].src", "10.0.0.1/16", "selectors[0].src"),
    ("selectors[0].dst", "10.100.0.0/33", "selectors[0].dst"),
    ("selectors[0].dst", "10.100.0.1/16", "selectors[0].dst"),
    ("selectors[0].dst", "10.100.0.0/16 ", "selectors[0].dst"),
    ("selectors[0].dst", "fe80::/10%eth0", "selectors[0].dst"),
    ("selectors[0].dst", "host.example/16", "selectors[0].dst"),
    ("selectors[0].dst", 5, "selectors[0].dst"),
    ("selectors[0].proto", 256, "selectors[0].proto"),
    ("selectors[0].sport", 65536, "selectors[0].sport"),
    ("selectors[0].dport", -1, "selectors[0].dport"),
    ("ike_sa", "00" * 15, "ike_sa"),
    ("ike_sa", "00" * 17, "ike_sa"),
    ("ike_sa", "zz" * 16, "ike_sa"),
    ("rekey_required", 0, "rekey_required"),
]

IKE_BAD: list[tuple[str, Any, str]] = [
    ("tunnel", "", "tunnel"),
    ("tunnel", "x" * 129, "tunnel"),
    ("version", 0, "version"),
    ("version", 3, "version"),
    ("version", "2", "version"),
    ("ispi", "00" * 7, "ispi"),
    ("ispi", "00" * 9, "ispi"),
    ("ispi", "g" * 16, "ispi"),
    ("ispi", "0" * 15, "ispi"),
    ("rspi", 1, "rspi"),
    ("rspi", "ab" * 7 + " a", "rspi"),
    ("local", "198.51.100.1:500", "local"),
    ("local.addr", "1.2.3", "local.addr"),
    ("local.port", 0, "local.port"),
    ("local.port", 65536, "local.port"),
    ("remote.addr", "2001:db8::/32", "remote.addr"),
    ("remote.port", "4500", "remote.port"),
    ("initiator", "yes", "initiator"),
    ("initiator", None, "initiator"),
    ("local_id", "x" * 256, "local_id"),
    ("local_id", "a\tb", "local_id"),
    ("remote_id", "a\rb", "remote_id"),
    ("remote_id", None, "remote_id"),
    ("algs", None, "algs"),
    ("algs.enc", "AES-GCM", "algs.enc"),
    ("algs.integ", "", "algs.integ"),
    ("algs.prf", "prf sha384", "algs.prf"),
    ("algs.dh", "x" * 65, "algs.dh"),
    ("keys", [], "keys"),
    ("keys.sk_d", "", "keys.sk_d"),
    ("keys.sk_d", "0", "keys.sk_d"),
    ("keys.sk_ai", "abc", "keys.sk_ai"),
    ("keys.sk_ar", "qq", "keys.sk_ar"),
    ("keys.sk_ei", "00" * 129, "keys.sk_ei"),
    ("keys.sk_er", None, "keys.sk_er"),
    ("keys.sk_pi", "ab\ncd", "keys.sk_pi"),
    ("keys.sk_pr", 5, "keys.sk_pr"),
    ("msgid_send", -1, "msgid_send"),
    ("msgid_send", 2**32, "msgid_send"),
    ("msgid_recv", 1.0, "msgid_recv"),
    ("established_at", -1, "established_at"),
    ("established_at", math.inf, "established_at"),
    ("expires_at", math.nan, "expires_at"),
    ("expires_at", 2**40 + 1, "expires_at"),
    ("mid_sync_required", "no", "mid_sync_required"),
]

WEB_BAD: list[tuple[str, Any, str]] = [
    ("user", "", "user"),
    ("user", "x" * 256, "user"),
    ("user", "a\x1bb", "user"),
    ("user", ["alice"], "user"),
    ("groups", "vpn-users", "groups"),
    ("groups", ["g"] * 65, "groups"),
    ("groups", [""], "groups[0]"),
    ("groups", ["ok", 5], "groups[1]"),
    ("groups", ["ok", "ok", "bad\nline"], "groups[2]"),
    ("groups", ["g" * 129], "groups[0]"),
    ("realm", "x" * 256, "realm"),
    ("realm", None, "realm"),
    ("auth_method", "x" * 65, "auth_method"),
    ("auth_method", "", "auth_method"),
    ("portal", "", "portal"),
    ("client_ip", "300.1.1.1", "client_ip"),
    ("client_ip", "client.example", "client_ip"),
    ("created_at", -1, "created_at"),
    ("last_seen", "x", "last_seen"),
    ("idle_timeout_s", 0, "idle_timeout_s"),
    ("idle_timeout_s", 2**31 + 1, "idle_timeout_s"),
    ("idle_timeout_s", 1.5, "idle_timeout_s"),
    ("expires_at", math.inf, "expires_at"),
]


@pytest.mark.parametrize(("path", "value", "field"), IPSEC_BAD)
@pytest.mark.parametrize("direction", ["out", "in"])
def test_ipsec_field_validation_names_the_field(
    direction: str, path: str, value: Any, field: str
) -> None:
    rid, rec = sample("ipsec_sa", 5, direction)
    if path.startswith("encap") and "." in path:
        rec["encap"] = {"type": "espinudp", "sport": 4500, "dport": 4500}
    set_path(rec, path, value)
    expect_error(SA, rec, rid, field)


@pytest.mark.parametrize(("path", "value", "field"), IKE_BAD)
def test_ike_field_validation_names_the_field(path: str, value: Any, field: str) -> None:
    rid, rec = sample("ike_sa", 4)
    set_path(rec, path, value)
    expect_error(IKE, rec, rid_for(IKE, rec, rid), field)


@pytest.mark.parametrize(("path", "value", "field"), WEB_BAD)
def test_web_field_validation_names_the_field(path: str, value: Any, field: str) -> None:
    rid, rec = sample("sslvpn_web_session", 4)
    set_path(rec, path, value)
    expect_error(WEB, rec, rid, field)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("auth.key", "abc"),
        ("auth.key", "zz"),
        ("auth.key", "00" * 129),
        ("auth.alg", "HMAC"),
    ],
)
def test_ipsec_auth_key_validation(path: str, value: Any) -> None:
    rid, rec = sample("ipsec_sa", 1)
    rec["auth"] = {"alg": "hmac(sha256)", "key": "11" * 32}
    set_path(rec, path, value)
    expect_error(SA, rec, rid, path)


def test_replay_bitmap_validation_on_an_inbound_sa() -> None:
    rid, rec = sample("ipsec_sa", 1, "in")
    for bad in ("0", "00" * 8193, "xy", 5):
        rec["replay_bitmap"] = bad
        expect_error(SA, rec, rid, "replay_bitmap")
    rec["replay_bitmap"] = "ff" * 8192  # the largest bitmap: a 65536-packet window
    rec["replay_window"] = 65536
    assert roundtrip(SA, rid, rec)["replay_bitmap"] == "ff" * 8192
    rec["replay_bitmap"] = ""
    assert roundtrip(SA, rid, rec)["replay_bitmap"] == ""


def test_too_many_selectors() -> None:
    rid, rec = sample("ipsec_sa", 1)
    sel = rec["selectors"][0]
    rec["selectors"] = [dict(sel) for _ in range(64)]
    assert len(roundtrip(SA, rid, rec)["selectors"]) == 64
    rec["selectors"].append(dict(sel))
    expect_error(SA, rec, rid, "selectors")


def test_error_in_a_later_selector_names_its_index() -> None:
    rid, rec = sample("ipsec_sa", 1)
    sel = rec["selectors"][0]
    rec["selectors"] = [dict(sel), dict(sel), dict(sel, dst="10.1.2.3/8")]
    expect_error(SA, rec, rid, "selectors[2].dst")
    rec["selectors"][2] = dict(sel, sport=-1)
    expect_error(SA, rec, rid, "selectors[2].sport")


@pytest.mark.parametrize(
    ("kind_name", "path", "value"),
    [
        ("ipsec_sa", "spi", 256),
        ("ipsec_sa", "spi", U32),
        ("ipsec_sa", "tunnel", "x" * 128),
        ("ipsec_sa", "tunnel", "tünnel-ü-\u2603"),
        ("ipsec_sa", "enc.key", "ab"),
        ("ipsec_sa", "enc.key", "cd" * 128),
        ("ipsec_sa", "enc.alg", "a" * 64),
        ("ipsec_sa", "enc.alg", "cbc(aes),hmac(sha1)+x_y.z-1"),
        ("ipsec_sa", "reqid", 0),
        ("ipsec_sa", "reqid", U32),
        ("ipsec_sa", "seq", U32),
        ("ipsec_sa", "bytes", U64),
        ("ipsec_sa", "packets", U64),
        ("ipsec_sa", "lifetime.hard_s", U64),
        ("ipsec_sa", "lifetime.hard_s", 0),
        ("ipsec_sa", "created_at", 0),
        ("ipsec_sa", "created_at", 2.0**40),
        ("ipsec_sa", "created_at", 1.5),
        ("ipsec_sa", "selectors[0].proto", 255),
        ("ipsec_sa", "selectors[0].dport", 65535),
        ("ipsec_sa", "selectors[0].src", "0.0.0.0/0"),
        ("ipsec_sa", "selectors[0].dst", "10.100.0.1/32"),
        ("ike_sa", "version", 1),
        ("ike_sa", "local_id", ""),
        ("ike_sa", "remote_id", "x" * 255),
        ("ike_sa", "msgid_send", U32),
        ("ike_sa", "local.port", 65535),
        ("ike_sa", "keys.sk_ai", "01"),
        ("sslvpn_web_session", "idle_timeout_s", 1),
        ("sslvpn_web_session", "idle_timeout_s", 2**31),
        ("sslvpn_web_session", "groups", []),
        ("sslvpn_web_session", "groups", ["g"] * 64),
        ("sslvpn_web_session", "realm", ""),
        ("sslvpn_web_session", "client_ip", None),
        ("sslvpn_web_session", "client_ip", "2001:db8::7"),
        ("sslvpn_web_session", "user", "x" * 255),
    ],
)
def test_boundary_values_are_accepted(kind_name: str, path: str, value: Any) -> None:
    kind = KINDS[kind_name]
    rid, rec = sample(kind_name, 3, "out")
    set_path(rec, path, value)
    rid = rid_for(kind, rec, rid)
    assert roundtrip(kind, rid, rec) == rec


def test_str_accepted_by_from_json_can_be_encoded() -> None:
    """A string that passes validation must be storable.

    JSON allows a lone surrogate escape (json.loads('"\\ud800"') gives '\\ud800');
    Str.from_json accepts it, then msgpack cannot encode it (UnicodeEncodeError, not a
    RecordError): the API answers 500 and a batch stops halfway.
    """
    rid, rec = sample("ipsec_sa", 1)
    rec["tunnel"] = json.loads('"site-\\ud800"')
    error: RecordError | None = None
    try:
        wire = SA.from_json(rec, rid)
    except RecordError as exc:
        error = exc
    if error is not None:
        assert error.field == "tunnel"
        return
    try:
        blob = SA.encode(wire)
    except RecordError:
        return  # refused at encode: a clean 400, acceptable
    except UnicodeEncodeError as exc:
        pytest.fail(f"from_json accepted a string that encode() cannot store: {exc!r}")
    assert SA.decode(blob) == wire


FACE = "\U0001f600"  # four bytes in UTF-8


def test_largest_legal_records_fit_the_encoded_size_limit() -> None:
    _, rec = sample("ipsec_sa", 5, "in")
    rec.update(
        tunnel=FACE * 128,
        src="ffff::1",
        dst="ffff::2",
        spi=U32,
        reqid=U32,
        enc={"alg": "a" * 64, "key": "ff" * 128},
        auth={"alg": "b" * 64, "key": "ee" * 128},
        esn=True,
        seq=U64,
        replay_window=65536,
        replay_bitmap="ff" * 8192,
        lifetime=dict.fromkeys(rec["lifetime"], U64),
        created_at=2.0**40 - 0.5,
        bytes=U64,
        packets=U64,
        selectors=[
            {
                "src": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120",
                "dst": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
                "proto": 255,
                "sport": 65535,
                "dport": 65535,
            }
        ]
        * 64,
    )
    assert roundtrip(SA, sa_id(rec), rec) == rec
    rid, irec = sample("ike_sa", 1)
    irec.update(tunnel=FACE * 128, local_id=FACE * 255, remote_id=FACE * 255)
    irec["algs"] = {"enc": "a" * 64, "integ": "b" * 64, "prf": "c" * 64, "dh": "d" * 64}
    irec["keys"] = dict.fromkeys(irec["keys"], "ab" * 128)
    assert roundtrip(IKE, rid, irec) == irec
    wid, wrec = sample("sslvpn_web_session", 1)
    wrec.update(user=FACE * 255, groups=["g" * 128] * 64, portal=FACE * 255, realm=FACE * 255)
    assert roundtrip(WEB, wid, wrec) == wrec


def test_an_oversized_record_is_refused_with_a_record_error() -> None:
    wid, wrec = sample("sslvpn_web_session", 1)
    wrec["groups"] = [FACE * 127 + f"{i % 10}" for i in range(64)]  # ~32 KiB of UTF-8
    with pytest.raises(RecordError) as info:  # encoding is part of validating a record
        WEB.from_json(wrec, wid)
    assert info.value.field == "record"
    assert FACE not in info.value.message


def test_non_object_record_bodies_are_refused() -> None:
    for kind_name, kind in KINDS.items():
        rid, _ = sample(kind_name)
        for body in (None, [], "x", 5, [["tunnel", "x"]]):
            expect_error(kind, body, rid, "record")


# --- unknown and missing fields -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind_name", "path"),
    [
        ("ipsec_sa", "colour"),
        ("ipsec_sa", "Tunnel"),
        ("ipsec_sa", "enc.iv"),
        ("ipsec_sa", "lifetime.hard_seconds"),
        ("ipsec_sa", "selectors[0].ports"),
        ("ike_sa", "spi"),
        ("ike_sa", "local.host"),
        ("ike_sa", "algs.mac"),
        ("ike_sa", "keys.sk_x"),
        ("sslvpn_web_session", "cookie"),
    ],
)
def test_unknown_fields_are_named(kind_name: str, path: str) -> None:
    kind = KINDS[kind_name]
    rid, rec = sample(kind_name, 1)
    set_path(rec, path, 1)
    expected = path
    with pytest.raises(UnknownField) as info:
        kind.from_json(rec, rid)
    assert info.value.field == expected
    assert expected in info.value.message
    assert info.value.code == "unknown_field"


def test_unknown_field_in_encap_and_long_names_are_cut() -> None:
    rid, rec = sample("ipsec_sa", 5)
    rec["encap"]["mtu"] = 1400
    with pytest.raises(UnknownField) as info:
        SA.from_json(rec, rid)
    assert info.value.field == "encap.mtu"
    rid, rec = sample("ipsec_sa", 1)
    rec["y" * 1000] = 1
    with pytest.raises(UnknownField) as info:
        SA.from_json(rec, rid)
    assert info.value.field == "y" * 64
    assert "y" * 65 not in info.value.message


def _required_paths(struct: Struct, prefix: str = "") -> list[str]:
    out: list[str] = []
    for f in struct.fields:
        if not f.required:
            continue
        out.append(prefix + f.name)
        if isinstance(f.type, Struct):
            out.extend(_required_paths(f.type, f"{prefix}{f.name}."))
    return out


def _all_required() -> list[tuple[str, str]]:
    out = [("ipsec_sa", p) for p in _required_paths(IPSEC_SA)]
    out += [("ipsec_sa", "enc.alg"), ("ipsec_sa", "enc.key")]
    out += [("ipsec_sa", "selectors[0].src"), ("ipsec_sa", "selectors[0].dst")]
    out += [("ipsec_sa", "encap.type"), ("ipsec_sa", "encap.sport"), ("ipsec_sa", "encap.dport")]
    out += [("ike_sa", p) for p in _required_paths(IKE_SA)]
    out += [("sslvpn_web_session", p) for p in _required_paths(WEB_SESSION)]
    return out


def test_required_field_list_is_what_the_schema_says() -> None:
    assert _required_paths(IPSEC_SA) == [
        "tunnel",
        "direction",
        "proto",
        "spi",
        "src",
        "dst",
        "mode",
        "created_at",
    ]
    assert "keys.sk_d" in _required_paths(IKE_SA)
    assert "keys.sk_ai" not in _required_paths(IKE_SA)
    assert "algs.integ" not in _required_paths(IKE_SA)
    assert _required_paths(WEB_SESSION) == [
        "user",
        "auth_method",
        "portal",
        "created_at",
        "last_seen",
        "idle_timeout_s",
        "expires_at",
    ]


@pytest.mark.parametrize(("kind_name", "path"), _all_required())
def test_missing_required_field(kind_name: str, path: str) -> None:
    kind = KINDS[kind_name]
    rid, rec = sample(kind_name, 5)
    del_path(rec, path)
    err = expect_error(kind, rec, rid, path)
    assert err.message == f"missing field {path}"


def test_ipsec_optional_fields_default() -> None:
    rec = {
        "tunnel": "t",
        "direction": "out",
        "proto": "esp",
        "spi": 0x1234,
        "src": "192.0.2.1",
        "dst": "192.0.2.2",
        "mode": "transport",
        "created_at": 100,
        "enc": {"alg": "aes", "key": "00" * 16},
    }
    out = roundtrip(SA, "esp-00001234@192.0.2.2", rec)
    assert out == dict(
        rec,
        reqid=None,
        auth=None,
        encap=None,
        esn=False,
        seq=0,
        replay_window=0,
        replay_bitmap=None,
        lifetime={
            "soft_s": None,
            "hard_s": None,
            "soft_bytes": None,
            "hard_bytes": None,
            "soft_packets": None,
            "hard_packets": None,
        },
        bytes=0,
        packets=0,
        selectors=[],
        ike_sa=None,
        rekey_required=False,
    )


def test_nested_optional_fields_default() -> None:
    rid, rec = sample("ipsec_sa", 1)
    rec["lifetime"] = {"hard_s": 60}
    rec["selectors"] = [{"src": "10.0.0.0/8", "dst": "0.0.0.0/0"}]
    out = roundtrip(SA, rid, rec)
    assert out["lifetime"] == dict.fromkeys(
        ("soft_s", "hard_s", "soft_bytes", "hard_bytes", "soft_packets", "hard_packets")
    ) | {"hard_s": 60}
    assert out["selectors"] == [
        {"src": "10.0.0.0/8", "dst": "0.0.0.0/0", "proto": 0, "sport": 0, "dport": 0}
    ]


def test_ike_and_web_optional_fields_default() -> None:
    rid, rec = sample("ike_sa", 2)
    del rec["algs"]["integ"], rec["keys"]["sk_ai"], rec["keys"]["sk_ar"]
    del rec["mid_sync_required"]
    out = roundtrip(IKE, rid, rec)
    assert out["algs"]["integ"] is None
    assert out["keys"]["sk_ai"] is None
    assert out["keys"]["sk_ar"] is None
    assert out["mid_sync_required"] is False
    rid, rec = sample("sslvpn_web_session", 2)
    for name in ("groups", "realm", "client_ip"):
        del rec[name]
    out = roundtrip(WEB, rid, rec)
    assert out["groups"] == []
    assert out["realm"] == ""
    assert out["client_ip"] is None


def test_defaults_are_not_shared_between_records() -> None:
    rid, rec = sample("ipsec_sa", 1)
    del rec["lifetime"], rec["selectors"]
    a = SA.from_json(rec, rid)
    b = SA.from_json(rec, rid)
    pos = IPSEC_SA.pos
    a[pos["lifetime"]][1] = 99
    a[pos["selectors"]].append("junk")
    assert b[pos["lifetime"]] == [None] * 6
    assert b[pos["selectors"]] == []
    assert SA.from_json(rec, rid)[pos["lifetime"]] == [None] * 6


# --- ids -------------------------------------------------------------------------------------


def test_ipsec_id_format() -> None:
    rid, rec = sample("ipsec_sa", 1)
    assert rid == sa_id(rec)
    rec["spi"] = 0x100
    assert roundtrip(SA, "esp-00000100@203.0.113.2", rec)
    rec["proto"], rec["auth"], rec["enc"], rec["encap"] = (
        "ah",
        {"alg": "hmac(sha256)", "key": "22" * 32},
        None,
        None,
    )
    assert roundtrip(SA, "ah-00000100@203.0.113.2", rec)
    with pytest.raises(IdMismatch) as info:
        SA.from_json(rec, "esp-00000100@203.0.113.2")
    assert info.value.field == "id"
    assert "ah-00000100@203.0.113.2" in info.value.message


def test_ipsec_id_uses_canonical_ipv6() -> None:
    _, rec = sample("ipsec_sa", 1)
    rec["src"] = "2001:db8::1"
    rec["dst"] = "2001:0DB8:0000::0A"
    rec["spi"] = 0xABCDEF01
    assert roundtrip(SA, "esp-abcdef01@2001:db8::a", rec)
    with pytest.raises(IdMismatch):
        SA.from_json(rec, "esp-abcdef01@2001:0db8::a")
    with pytest.raises(IdMismatch):
        SA.from_json(rec, "esp-abcdef01@2001:db8:0:0:0:0:0:a")
    # Uppercase is not even a well-formed id.
    with pytest.raises(RecordError) as info:
        SA.from_json(rec, "esp-abcdef01@2001:DB8::A")
    assert type(info.value) is RecordError
    assert info.value.field == "id"
    with pytest.raises(RecordError) as info:
        SA.from_json(rec, "esp-ABCDEF01@2001:db8::a")
    assert type(info.value) is RecordError


@pytest.mark.parametrize(
    "rid",
    [
        "",
        "esp-c0000002@",
        "esp-c0000002",
        "esp-c000002@203.0.113.2",
        "esp-0c0000002@203.0.113.2",
        "udp-c0000002@203.0.113.2",
        "esp_c0000002@203.0.113.2",
        "esp-c0000002@203.0.113.2 ",
        "esp-c0000002@203.0.113.2\n",
        "esp-c0000002@host.example",
        "esp-c0000002@" + "1" * 46,
    ],
)
def test_malformed_ipsec_ids(rid: str) -> None:
    _, rec = sample("ipsec_sa", 1)
    with pytest.raises(RecordError) as info:
        SA.from_json(rec, rid)
    assert type(info.value) is RecordError
    assert info.value.field == "id"


@pytest.mark.parametrize(
    ("field", "value"),
    [("enc", {"alg": "aes", "key": "zz"}), ("src", "not-an-address"), ("seq", 2**40)],
)
def test_malformed_id_is_refused_before_the_value(field: str, value: object) -> None:
    """The id's pattern is checked first, even though the fast path converts first."""
    _, rec = sample("ipsec_sa", 1)
    rec[field] = value
    with pytest.raises(RecordError) as info:
        SA.from_json(rec, "esp-c0000002@host.example")
    assert info.value.field == "id"
    with pytest.raises(RecordError) as info:
        SA.from_json(rec, "esp-c0000002@203.0.113.2")
    assert info.value.field != "id"


@pytest.mark.parametrize(
    "rid",
    [
        "esp-c0000003@203.0.113.2",  # wrong spi
        "ah-c0000002@203.0.113.2",  # wrong proto
        "esp-c0000002@198.51.100.1",  # src instead of dst
        "esp-c0000002@203.0.113.20",
    ],
)
def test_ipsec_id_mismatch(rid: str) -> None:
    good, rec = sample("ipsec_sa", 1)
    assert good == "esp-c0000002@203.0.113.2"
    with pytest.raises(IdMismatch) as info:
        SA.from_json(rec, rid)
    assert info.value.field == "id"
    assert info.value.code == "id_mismatch"
    assert good in info.value.message


def test_ike_id_is_ispi_then_rspi() -> None:
    rid, rec = sample("ike_sa", 1)
    assert rid == rec["ispi"] + rec["rspi"]
    rec["ispi"], rec["rspi"] = "0123456789ABCDEF", "FEDCBA9876543210"
    assert roundtrip(IKE, "0123456789abcdeffedcba9876543210", rec)["ispi"] == "0123456789abcdef"
    with pytest.raises(IdMismatch) as info:
        IKE.from_json(rec, "fedcba98765432100123456789abcdef")  # swapped
    assert info.value.field == "id"
    for bad in ("0123456789ABCDEFFEDCBA9876543210", "0123456789abcdef", "x" * 32, ""):
        with pytest.raises(RecordError) as rinfo:
            IKE.from_json(rec, bad)
        assert type(rinfo.value) is RecordError
        assert rinfo.value.field == "id"


def test_web_session_id_is_64_lowercase_hex_and_not_derived() -> None:
    _, rec = sample("sslvpn_web_session", 1)
    for rid in ("0" * 64, "f" * 64, "0123456789abcdef" * 4):
        assert roundtrip(WEB, rid, rec) == rec
    for bad in ("0" * 63, "0" * 65, "A" * 64, "g" * 64, "", " " + "0" * 63):
        with pytest.raises(RecordError) as info:
            WEB.from_json(rec, bad)
        assert type(info.value) is RecordError
        assert info.value.field == "id"


def test_check_id_on_decoded_records() -> None:
    rid, rec = sample("ipsec_sa", 1)
    wire = SA.decode(SA.encode(SA.from_json(rec, rid)))
    SA.check_id(wire, rid)
    with pytest.raises(RecordError) as info:
        SA.check_id(wire, "not an id")
    assert type(info.value) is RecordError
    assert info.value.field == "id"
    with pytest.raises(IdMismatch):
        SA.check_id(wire, "esp-c0000004@203.0.113.2")
    iid, irec = sample("ike_sa", 1)
    iwire = IKE.from_json(irec, iid)
    IKE.check_id(iwire, iid)
    with pytest.raises(IdMismatch):
        IKE.check_id(iwire, "0" * 32)
    wid, wrec = sample("sslvpn_web_session", 1)
    wwire = WEB.from_json(wrec, wid)
    WEB.check_id(wwire, "1" * 64)  # any well-formed id: web session ids are not derived
    with pytest.raises(RecordError):
        WEB.check_id(wwire, "1" * 63)


def test_check_id_mismatch_names_the_id_field() -> None:
    """IdMismatch from check_id (the replication path) must name field "id" like from_json."""
    rid, rec = sample("ipsec_sa", 1)
    wire = SA.from_json(rec, rid)
    with pytest.raises(IdMismatch) as from_json_info:
        SA.from_json(rec, "esp-c0000004@203.0.113.2")
    assert from_json_info.value.field == "id"
    with pytest.raises(IdMismatch) as info:
        SA.check_id(wire, "esp-c0000004@203.0.113.2")
    assert info.value.field == "id"


# --- cross-field rules ------------------------------------------------------------------------


def _ah(rec: dict[str, Any]) -> dict[str, Any]:
    return dict(
        rec, proto="ah", enc=None, encap=None, auth={"alg": "hmac(sha256)", "key": "33" * 32}
    )


def test_esp_needs_enc() -> None:
    rid, rec = sample("ipsec_sa", 1)
    rec["enc"] = None
    rec["auth"] = {"alg": "hmac(sha256)", "key": "33" * 32}
    expect_error(SA, rec, rid, "enc")
    del rec["enc"]
    expect_error(SA, rec, rid, "enc")


def test_esp_with_enc_and_auth_is_valid() -> None:
    rid, rec = sample("ipsec_sa", 1)
    rec["enc"] = {"alg": "cbc(aes)", "key": "44" * 16}
    rec["auth"] = {"alg": "hmac(sha256)", "key": "33" * 32}
    assert roundtrip(SA, rid, rec) == rec


def test_ah_rules() -> None:
    _, rec = sample("ipsec_sa", 1)
    rec = _ah(rec)
    rid = sa_id(rec)
    assert roundtrip(SA, rid, rec) == rec
    expect_error(SA, dict(rec, enc={"alg": "aes", "key": "00" * 16}), rid, "enc")
    expect_error(SA, dict(rec, auth=None), rid, "auth")
    noauth = dict(rec)
    del noauth["auth"]
    expect_error(SA, noauth, rid, "auth")
    expect_error(
        SA, dict(rec, encap={"type": "espinudp", "sport": 4500, "dport": 4500}), rid, "encap"
    )


def test_replay_bitmap_only_on_inbound_sas() -> None:
    rid, rec = sample("ipsec_sa", 1, "out")
    rec["replay_bitmap"] = "00" * 16
    expect_error(SA, rec, rid, "replay_bitmap")
    rec["replay_bitmap"] = ""
    expect_error(SA, rec, rid, "replay_bitmap")
    rec["replay_bitmap"] = None
    assert roundtrip(SA, rid, rec)
    rid, rec = sample("ipsec_sa", 1, "in")
    assert rec["replay_bitmap"] is not None
    assert roundtrip(SA, rid, rec) == rec


def test_seq_beyond_32_bits_needs_esn() -> None:
    rid, rec = sample("ipsec_sa", 1)
    rec["esn"] = False
    rec["seq"] = U32
    assert roundtrip(SA, rid, rec) == rec
    rec["seq"] = U32 + 1
    expect_error(SA, rec, rid, "seq")
    rec["esn"] = True
    assert roundtrip(SA, rid, rec) == rec
    rec["seq"] = U64
    assert roundtrip(SA, rid, rec) == rec


@pytest.mark.parametrize(
    ("src", "dst"),
    [("198.51.100.1", "2001:db8::1"), ("2001:db8::1", "203.0.113.2"), ("::", "0.0.0.0")],
)
def test_src_and_dst_family_must_match(src: str, dst: str) -> None:
    _, rec = sample("ipsec_sa", 1)
    rec["src"], rec["dst"] = src, dst
    expect_error(SA, rec, sa_id(rec), "dst")


def test_selector_families_must_match() -> None:
    rid, rec = sample("ipsec_sa", 1)
    good = rec["selectors"][0]
    rec["selectors"] = [good, {"src": "10.0.0.0/8", "dst": "2001:db8::/32"}]
    expect_error(SA, rec, rid, "selectors[1]", in_message=False)
    rec["selectors"] = [good, {"src": "2001:db8::/32", "dst": "2001:db9::/32"}]
    assert roundtrip(SA, rid, rec)["selectors"][1]["dst"] == "2001:db9::/32"


def test_ike_cross_field_rules() -> None:
    rid, rec = sample("ike_sa", 1)
    rec["expires_at"] = rec["established_at"]
    assert roundtrip(IKE, rid, rec) == rec
    rec["expires_at"] = rec["established_at"] - 0.5
    expect_error(IKE, rec, rid, "expires_at")
    rid, rec = sample("ike_sa", 1)
    rec["ispi"] = "00" * 8
    expect_error(IKE, rec, rid_for(IKE, rec, rid), "ispi")
    rec["ispi"] = "00" * 7 + "01"
    assert roundtrip(IKE, rid_for(IKE, rec, rid), rec)
    rid, rec = sample("ike_sa", 1)
    rec["rspi"] = "00" * 8  # responder SPI is zero until IKE_SA_INIT completes
    assert roundtrip(IKE, rid_for(IKE, rec, rid), rec)
    rid, rec = sample("ike_sa", 1)
    rec["remote"]["addr"] = "2001:db8::2"
    expect_error(IKE, rec, rid, "remote")
    rec["local"]["addr"] = "2001:db8::1"
    assert roundtrip(IKE, rid, rec)


def test_web_cross_field_rules() -> None:
    rid, rec = sample("sslvpn_web_session", 1)
    rec["last_seen"] = rec["created_at"]
    rec["expires_at"] = rec["created_at"]
    assert roundtrip(WEB, rid, rec) == rec
    bad = dict(rec, last_seen=rec["created_at"] - 1)
    expect_error(WEB, bad, rid, "last_seen")
    bad = dict(rec, expires_at=rec["created_at"] - 0.001)
    expect_error(WEB, bad, rid, "expires_at")
    # last_seen after expires_at is allowed (the session is simply expired)
    ok = dict(rec, last_seen=rec["created_at"] + 100, expires_at=rec["created_at"] + 10)
    assert roundtrip(WEB, rid, ok) == ok


# --- the same rules on the decode path --------------------------------------------------------


def _decode_error(kind: Kind, wire: list[Any]) -> RecordError:
    blob = msgpack.packb(wire, use_bin_type=True)
    with pytest.raises(RecordError) as info:
        kind.decode(blob)
    return info.value


def test_decode_enforces_cross_field_rules() -> None:
    pos = IPSEC_SA.pos
    rid, rec = sample("ipsec_sa", 1, "out")
    wire = SA.from_json(rec, rid)
    cases: list[tuple[str, Any, str]] = [
        ("enc", None, "enc"),
        ("replay_bitmap", b"\x00", "replay_bitmap"),
        ("seq", U32 + 1, "seq"),
        ("dst", bytes(16), "dst"),
    ]
    for name, value, field in cases:
        w = copy.deepcopy(wire)
        w[pos[name]] = value
        if name == "seq":
            w[pos["esn"]] = False
        assert _decode_error(SA, w).field == field
    w = copy.deepcopy(wire)
    w[pos["proto"]] = 1  # ah with enc
    assert _decode_error(SA, w).field == "enc"
    iid, irec = sample("ike_sa", 1)
    iwire = IKE.from_json(irec, iid)
    w = copy.deepcopy(iwire)
    w[IKE_SA.pos["ispi"]] = bytes(8)
    assert _decode_error(IKE, w).field == "ispi"
    w = copy.deepcopy(iwire)
    w[IKE_SA.pos["expires_at"]] = 0
    assert _decode_error(IKE, w).field == "expires_at"
    wid, wrec = sample("sslvpn_web_session", 1)
    wwire = WEB.from_json(wrec, wid)
    w = copy.deepcopy(wwire)
    w[WEB_SESSION.pos["last_seen"]] = 0
    assert _decode_error(WEB, w).field == "last_seen"


def test_decode_enforces_field_types() -> None:
    pos = IPSEC_SA.pos
    rid, rec = sample("ipsec_sa", 1, "in")
    wire = SA.from_json(rec, rid)
    cases: list[tuple[list[Any], Any, str]] = [
        ([pos["spi"]], 255, "spi"),
        ([pos["spi"]], True, "spi"),
        ([pos["direction"]], 2, "direction"),
        ([pos["direction"]], "in", "direction"),
        ([pos["src"]], b"\x01\x02\x03\x04\x05", "src"),
        ([pos["src"]], "198.51.100.1", "src"),
        ([pos["enc"], 1], "00" * 16, "enc.key"),
        ([pos["enc"], 1], b"", "enc.key"),
        ([pos["enc"], 1], b"\x00" * 129, "enc.key"),
        ([pos["enc"], 0], "AES", "enc.alg"),
        ([pos["lifetime"], 1], -1, "lifetime.hard_s"),
        ([pos["selectors"], 0, 1], [b"\x0a\x64\x00\x01", 16], "selectors[0].dst"),
        ([pos["selectors"], 0, 1], [b"\x0a\x64\x00\x00", 33], "selectors[0].dst"),
        ([pos["selectors"], 0, 1], [b"\x0a\x64\x00\x00"], "selectors[0].dst"),
        ([pos["selectors"], 0], [], "selectors[0]"),
        ([pos["created_at"]], math.nan, "created_at"),
        ([pos["created_at"]], None, "created_at"),
        ([pos["ike_sa"]], b"\x00" * 15, "ike_sa"),
        ([pos["replay_bitmap"]], "00", "replay_bitmap"),
        ([pos["tunnel"]], "a\nb", "tunnel"),
        ([pos["lifetime"]], [None] * 5, "lifetime"),
    ]
    for where, value, field in cases:
        w = copy.deepcopy(wire)
        target = w
        for step in where[:-1]:
            target = target[step]
        target[where[-1]] = value
        err = _decode_error(SA, w)
        assert err.field == field, (where, err.field, err.message)
    big = copy.deepcopy(wire)
    big[pos["replay_bitmap"]] = b"\x00" * 8193  # beyond Hex(0, 8192)
    assert _decode_error(SA, big).field == "replay_bitmap"
    assert _decode_error(SA, wire[:-1]).field == "record"
    assert _decode_error(SA, [*wire, None]).field == "record"


def test_decode_refuses_another_kinds_blob() -> None:
    rid, rec = sample("ike_sa", 1)
    blob = IKE.encode(IKE.from_json(rec, rid))
    for kind in (SA, WEB):
        with pytest.raises(RecordError):
            kind.decode(blob)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\xc1",
        b"\x91",
        b"\x81\xa1a\x01",
        b"\x80",
        b"\xc7\x00\x05",
        b"\xd6\xff\x00\x00\x00\x01",
        b"\x91" * 3000 + b"\xc0",
        b"\xdd\xff\xff\xff\xff",
        b"\xa2\xff\xfe",
        b"\x90\x90",
        b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    ],
)
def test_decode_garbage_raises_record_error(blob: bytes) -> None:
    for kind in KINDS.values():
        with pytest.raises(RecordError):
            kind.decode(blob)


# --- expiry ---------------------------------------------------------------------------------


def test_ipsec_expiry() -> None:
    rid, rec = sample("ipsec_sa", 1)
    assert SA.expiry(SA.from_json(rec, rid)) == NOW + 3600
    rec["created_at"] = 1000.5
    rec["lifetime"]["hard_s"] = 10
    exp = SA.expiry(SA.from_json(rec, rid))
    assert exp == 1010.5
    assert type(exp) is float
    rec["created_at"] = 1000
    assert type(SA.expiry(SA.from_json(rec, rid))) is float
    rec["lifetime"]["hard_s"] = None
    rec["lifetime"]["soft_s"] = 5  # only the hard limit ends the SA
    assert SA.expiry(SA.from_json(rec, rid)) is None
    rec["lifetime"] = {}
    assert SA.expiry(SA.from_json(rec, rid)) is None


def test_ike_expiry() -> None:
    rid, rec = sample("ike_sa", 1)
    assert IKE.expiry(IKE.from_json(rec, rid)) == int(NOW) + 86400
    rec["expires_at"] = rec["established_at"] + 0.25
    exp = IKE.expiry(IKE.from_json(rec, rid))
    assert exp == rec["established_at"] + 0.25
    assert type(exp) is float


def test_web_expiry_is_the_earlier_of_absolute_and_idle() -> None:
    rid, rec = sample("sslvpn_web_session", 1)
    rec.update(created_at=1000, last_seen=1100, idle_timeout_s=300, expires_at=5000)
    assert WEB.expiry(WEB.from_json(rec, rid)) == 1400.0
    rec.update(expires_at=1200)
    assert WEB.expiry(WEB.from_json(rec, rid)) == 1200.0
    rec.update(expires_at=1400)
    assert WEB.expiry(WEB.from_json(rec, rid)) == 1400.0
    rec.update(last_seen=1100.5, expires_at=9999)
    exp = WEB.expiry(WEB.from_json(rec, rid))
    assert exp == 1400.5
    assert type(exp) is float


# --- merge ------------------------------------------------------------------------------------


def _sa_pair() -> tuple[str, dict[str, Any], dict[str, Any]]:
    rid, rec = sample("ipsec_sa", 1, "in")
    winner = copy.deepcopy(rec)
    loser = copy.deepcopy(rec)
    winner.update(reqid=7, seq=100, replay_bitmap="aa" * 16, bytes=5000, packets=10)
    loser.update(reqid=8, seq=200, replay_bitmap="bb" * 16, bytes=4000, packets=20)
    loser["lifetime"]["hard_s"] = 99
    return rid, winner, loser


def _merge_json(kind: Kind, rid: str, winner: Any, loser: Any) -> dict[str, Any]:
    w, lo = kind.from_json(winner, rid), kind.from_json(loser, rid)
    w_copy, lo_copy = copy.deepcopy(w), copy.deepcopy(lo)
    merged = kind.merge(w, lo)
    assert w == w_copy  # inputs untouched
    assert lo == lo_copy
    # the merged record is itself valid
    assert kind.decode(kind.encode(merged)) == merged
    return kind.to_json(merged)


def test_ipsec_merge_takes_larger_counters_and_the_matching_bitmap() -> None:
    rid, winner, loser = _sa_pair()
    out = _merge_json(SA, rid, winner, loser)
    assert out["reqid"] == 7
    assert out["lifetime"] == winner["lifetime"]
    assert out["seq"] == 200
    assert out["replay_bitmap"] == "bb" * 16  # the bitmap that goes with seq 200
    assert out["bytes"] == 5000
    assert out["packets"] == 20
    assert out["rekey_required"] is False
    # winner ahead: its seq and its bitmap
    loser["seq"] = 50
    out = _merge_json(SA, rid, winner, loser)
    assert (out["seq"], out["replay_bitmap"]) == (100, "aa" * 16)
    # equal seq: the winner's bitmap
    loser["seq"] = 100
    out = _merge_json(SA, rid, winner, loser)
    assert (out["seq"], out["replay_bitmap"]) == (100, "aa" * 16)


@pytest.mark.parametrize(("a", "b"), [(False, False), (True, False), (False, True), (True, True)])
def test_ipsec_merge_rekey_required_is_or(a: bool, b: bool) -> None:
    rid, winner, loser = _sa_pair()
    winner["rekey_required"], loser["rekey_required"] = a, b
    assert _merge_json(SA, rid, winner, loser)["rekey_required"] is (a or b)


def test_ipsec_merge_of_outbound_sas_with_esn() -> None:
    rid, rec = sample("ipsec_sa", 3, "out")
    assert rec["esn"] is True
    winner = dict(rec, seq=10)
    loser = dict(rec, seq=U32 + 10, rekey_required=True)
    out = _merge_json(SA, rid, winner, loser)
    assert out["seq"] == U32 + 10
    assert out["replay_bitmap"] is None
    assert out["rekey_required"] is True


def test_ike_merge() -> None:
    rid, rec = sample("ike_sa", 1)
    winner = dict(rec, msgid_send=5, msgid_recv=9, local_id="winner")
    loser = dict(rec, msgid_send=7, msgid_recv=3, local_id="loser")
    out = _merge_json(IKE, rid, winner, loser)
    assert (out["msgid_send"], out["msgid_recv"]) == (7, 9)
    assert out["local_id"] == "winner"
    assert out["mid_sync_required"] is True
    # only one of the two counters differs: still a split use of the SA
    out = _merge_json(IKE, rid, dict(winner, msgid_send=7), loser)
    assert out["mid_sync_required"] is True
    out = _merge_json(IKE, rid, dict(winner, msgid_recv=3), loser)
    assert (out["msgid_send"], out["msgid_recv"]) == (7, 3)
    assert out["mid_sync_required"] is True
    # identical counters: nothing to synchronize
    same = dict(rec, msgid_send=4, msgid_recv=4)
    out = _merge_json(IKE, rid, same, same)
    assert out["mid_sync_required"] is False
    # a flag already set on either side survives
    flagged = dict(same, mid_sync_required=True)
    assert _merge_json(IKE, rid, flagged, same)["mid_sync_required"] is True
    assert _merge_json(IKE, rid, same, flagged)["mid_sync_required"] is True


def test_web_merge_keeps_latest_last_seen() -> None:
    rid, rec = sample("sslvpn_web_session", 1)
    winner = dict(rec, last_seen=rec["created_at"] + 10, portal="winner")
    loser = dict(rec, last_seen=rec["created_at"] + 20, portal="loser", expires_at=2**39)
    out = _merge_json(WEB, rid, winner, loser)
    assert out["last_seen"] == rec["created_at"] + 20
    assert out["portal"] == "winner"
    assert out["expires_at"] == rec["expires_at"]
    out = _merge_json(WEB, rid, loser, winner)
    assert out["last_seen"] == rec["created_at"] + 20
    assert out["portal"] == "loser"


# --- promotion -------------------------------------------------------------------------------


def test_advance_outbound_seq_leaves_inbound_alone() -> None:
    rid, rec = sample("ipsec_sa", 1, "in")
    wire = SA.from_json(rec, rid)
    before = copy.deepcopy(wire)
    assert advance_outbound_seq(wire, 1 << 16) is None
    assert wire == before


def test_advance_outbound_seq_adds_the_margin() -> None:
    rid, rec = sample("ipsec_sa", 1, "out")
    assert rec["esn"] is False
    wire = SA.from_json(rec, rid)
    before = copy.deepcopy(wire)
    out = advance_outbound_seq(wire, 1 << 16)
    assert out is not None
    assert wire == before
    j = SA.to_json(out)
    assert j["seq"] == 1000 + (1 << 16)
    assert j["rekey_required"] is False
    assert j == dict(rec, seq=1000 + (1 << 16))


def test_advance_outbound_seq_without_esn_saturates_and_requests_rekey() -> None:
    rid, rec = sample("ipsec_sa", 1, "out")
    rec["seq"] = U32 - 10
    wire = SA.from_json(rec, rid)
    out = advance_outbound_seq(wire, 100)
    assert out is not None
    j = SA.to_json(out)
    assert j["seq"] == U32
    assert j["rekey_required"] is True
    assert SA.decode(SA.encode(out)) == out  # still a valid non-ESN record
    # exactly reaching the limit does not pass it
    out = advance_outbound_seq(wire, 10)
    assert out is not None
    assert SA.to_json(out)["seq"] == U32
    assert SA.to_json(out)["rekey_required"] is False


def test_advance_outbound_seq_with_esn() -> None:
    rid, rec = sample("ipsec_sa", 3, "out")
    assert rec["esn"] is True
    rec["seq"] = U32 - 10
    wire = SA.from_json(rec, rid)
    out = advance_outbound_seq(wire, 100)
    assert out is not None
    assert SA.to_json(out)["seq"] == U32 + 90
    assert SA.to_json(out)["rekey_required"] is False
    rec["seq"] = U64 - 5
    out = advance_outbound_seq(SA.from_json(rec, rid), 1 << 16)
    assert out is not None
    assert SA.to_json(out)["seq"] == U64
    assert SA.to_json(out)["rekey_required"] is True
    assert SA.decode(SA.encode(out)) == out


def test_require_mid_sync() -> None:
    rid, rec = sample("ike_sa", 1)
    wire = IKE.from_json(rec, rid)
    before = copy.deepcopy(wire)
    out = require_mid_sync(wire)
    assert out is not None
    assert wire == before
    assert IKE.to_json(out) == dict(rec, mid_sync_required=True)
    assert require_mid_sync(out) is None


# --- no key material in errors ----------------------------------------------------------------

KEY = "5ec7e7" + "a1b2c3d4" * 8  # 70 hex characters, 35 bytes


def _assert_no_key(exc: BaseException, key: str = KEY) -> None:
    texts = [str(exc), repr(exc), getattr(exc, "message", ""), str(getattr(exc, "field", ""))]
    texts += [str(a) for a in exc.args]
    for text in texts:
        assert key not in text
        assert key[:16] not in text
        assert key.upper()[:16] not in text


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("enc.key", KEY[:-1]),  # odd length
        ("enc.key", KEY + "g"),  # not hex
        ("enc.key", KEY + " "),  # whitespace
        ("enc.key", KEY * 4),  # too long
        ("enc.key", KEY.upper() + "z"),
        ("enc", KEY),  # key where an object belongs
        ("enc.alg", KEY),  # key pasted into the wrong field
        ("auth", {"alg": "hmac(sha256)", "key": KEY + "0"}),
        ("tunnel", KEY + "\n"),
        ("spi", KEY),
        ("selectors[0].dst", KEY),
        ("replay_bitmap", KEY),
    ],
)
def test_errors_never_echo_key_material(path: str, value: Any) -> None:
    rid, rec = sample("ipsec_sa", 1)
    rec["enc"]["key"] = KEY
    set_path(rec, path, value)
    with pytest.raises(RecordError) as info:
        SA.from_json(rec, rid)
    _assert_no_key(info.value)


def test_errors_elsewhere_in_a_keyed_record_never_echo_the_keys() -> None:
    _, rec = sample("ipsec_sa", 1)
    rec["enc"]["key"] = KEY
    for mutate in (
        lambda r: r.update(spi=1),
        lambda r: r.update(enc=None),
        lambda r: r.update(extra=KEY),
        lambda r: r.update(direction="both"),
    ):
        bad = copy.deepcopy(rec)
        mutate(bad)
        with pytest.raises(RecordError) as info:
            SA.from_json(bad, sa_id(bad))
        _assert_no_key(info.value)
    with pytest.raises(IdMismatch) as mismatch:
        SA.from_json(rec, "esp-c0000004@203.0.113.2")
    _assert_no_key(mismatch.value)


def test_ike_key_errors_never_echo_key_material() -> None:
    rid, rec = sample("ike_sa", 1)
    for name in ("sk_d", "sk_ai", "sk_ei", "sk_pr"):
        bad = copy.deepcopy(rec)
        bad["keys"][name] = KEY[:-1]
        with pytest.raises(RecordError) as info:
            IKE.from_json(bad, rid)
        assert info.value.field == f"keys.{name}"
        _assert_no_key(info.value, KEY[:-1])


def test_decode_errors_never_echo_key_material() -> None:
    rid, rec = sample("ipsec_sa", 1)
    rec["enc"]["key"] = KEY
    wire = SA.from_json(rec, rid)
    pos = IPSEC_SA.pos
    for bad_key in (KEY, bytes.fromhex(KEY) * 4, [bytes.fromhex(KEY)]):
        w = copy.deepcopy(wire)
        w[pos["enc"]][1] = bad_key
        _assert_no_key(_decode_error(SA, w))
    w = copy.deepcopy(wire)
    w[pos["proto"]] = 1  # AH with enc: names enc, must not show it
    err = _decode_error(SA, w)
    _assert_no_key(err)
    assert bytes.fromhex(KEY).hex() not in err.message


# --- hypothesis: generated records ------------------------------------------------------------

_ALG_STRATEGY = st.from_regex(ALG, fullmatch=True)
_TEXT_CHARS = st.characters(exclude_categories=("Cc", "Cs"))


def _ip_text() -> st.SearchStrategy[str]:
    return st.ip_addresses().map(str)


def _prefix_text(version: int) -> st.SearchStrategy[str]:
    bits = 32 if version == 4 else 128
    return st.builds(
        lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
        st.ip_addresses(v=version),  # type: ignore[arg-type]
        st.integers(0, bits),
    )


def json_strategy(ft: FieldType) -> st.SearchStrategy[Any]:
    """A strategy for valid JSON values of one field type (cross-field rules aside)."""
    if isinstance(ft, Struct):
        return st.fixed_dictionaries({f.name: json_strategy(f.type) for f in ft.fields})
    if isinstance(ft, Nullable):
        return st.none() | json_strategy(ft.inner)
    if isinstance(ft, ListOf):
        return st.lists(json_strategy(ft.inner), max_size=min(ft.max_items, 3))
    if isinstance(ft, Str):
        if ft.pattern.pattern == ALG + r"\Z":
            return _ALG_STRATEGY.filter(lambda s: ft.min_len <= len(s) <= ft.max_len)
        return st.text(_TEXT_CHARS, min_size=ft.min_len, max_size=min(ft.max_len, 24))
    if isinstance(ft, Int):
        return st.integers(ft.lo, ft.hi)
    if isinstance(ft, Num):
        return st.integers(int(ft.lo), int(ft.hi)) | st.floats(
            ft.lo, ft.hi, allow_nan=False, allow_infinity=False
        )
    if isinstance(ft, Bool):
        return st.booleans()
    if isinstance(ft, Enum):
        return st.sampled_from(ft.names)
    if isinstance(ft, IP):
        return _ip_text()
    if isinstance(ft, Prefix):
        return st.sampled_from([4, 6]).flatmap(_prefix_text)
    if isinstance(ft, Hex):
        return st.binary(min_size=ft.min_bytes, max_size=min(ft.max_bytes, 40)).map(bytes.hex)
    raise AssertionError(f"no strategy for {ft!r}")


def _family(addr: str) -> int:
    return ipaddress.ip_address(addr.split("/", maxsplit=1)[0]).version


def _fix_ipsec(rec: dict[str, Any]) -> dict[str, Any]:
    if _family(rec["src"]) != _family(rec["dst"]):
        rec["dst"] = rec["src"]
    if rec["proto"] == "esp":
        if rec["enc"] is None:
            rec["enc"] = {"alg": "rfc4106(gcm(aes))", "key": "01" * 20}
    else:
        rec["enc"] = None
        rec["encap"] = None
        if rec["auth"] is None:
            rec["auth"] = {"alg": "hmac(sha256)", "key": "02" * 32}
    if rec["direction"] == "out":
        rec["replay_bitmap"] = None
    if not rec["esn"]:
        rec["seq"] &= U32
    for sel in rec["selectors"]:
        if _family(sel["src"]) != _family(sel["dst"]):
            sel["dst"] = sel["src"]
    return rec


def _fix_ike(rec: dict[str, Any]) -> dict[str, Any]:
    if int(rec["ispi"], 16) == 0:
        rec["ispi"] = "01" * 8
    if _family(rec["local"]["addr"]) != _family(rec["remote"]["addr"]):
        rec["remote"]["addr"] = rec["local"]["addr"]
    lo, hi = sorted([rec["established_at"], rec["expires_at"]])
    rec["established_at"], rec["expires_at"] = lo, hi
    return rec


def _fix_web(rec: dict[str, Any]) -> dict[str, Any]:
    rec["created_at"] = min(rec["created_at"], rec["last_seen"], rec["expires_at"])
    return rec


VALID_RECORDS: dict[str, st.SearchStrategy[tuple[str, dict[str, Any]]]] = {
    "ipsec_sa": json_strategy(IPSEC_SA).map(_fix_ipsec).map(lambda r: (sa_id(r), r)),
    "ike_sa": json_strategy(IKE_SA).map(_fix_ike).map(lambda r: (r["ispi"] + r["rspi"], r)),
    "sslvpn_web_session": st.tuples(
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        json_strategy(WEB_SESSION).map(_fix_web),
    ),
    "promotion": json_strategy(PROMOTION).map(lambda r: (promotion_id(r["epoch"]), r)),
    "sa_counters": st.tuples(
        st.integers(0, 600).map(lambda i: samples.ipsec_sa(i, "out", now=NOW)[0]),
        json_strategy(SA_COUNTERS),
    ),
}


@pytest.mark.parametrize("kind_name", list(KINDS))
@HYPOTHESIS
@given(data=st.data())
def test_generated_records_roundtrip(kind_name: str, data: st.DataObject) -> None:
    kind = KINDS[kind_name]
    rid, rec = data.draw(VALID_RECORDS[kind_name])
    original = copy.deepcopy(rec)
    assert roundtrip(kind, rid, rec) == original
    wire = kind.from_json(rec, rid)
    assert kind.from_json(kind.to_json(wire), rid) == wire
    exp = kind.expiry(wire)
    assert exp is None or type(exp) is float


@st.composite
def mutated_sample(draw: st.DrawFn, kind_name: str) -> tuple[str, dict[str, Any]]:
    i = draw(st.integers(0, 600))
    direction = draw(st.sampled_from(["in", "out"]))
    rid, rec = sample(kind_name, i, direction)
    t = st.integers(0, 2**40) | st.floats(0, 2.0**40)
    if kind_name == "ipsec_sa":
        rec["seq"] = draw(st.integers(0, U64 if rec["esn"] else U32))
        rec["bytes"] = draw(st.integers(0, U64))
        rec["packets"] = draw(st.integers(0, U64))
        rec["created_at"] = draw(t)
        rec["replay_window"] = draw(st.integers(0, 65536))
        for name in rec["lifetime"]:
            rec["lifetime"][name] = draw(st.none() | st.integers(0, U64))
        rec["reqid"] = draw(st.none() | st.integers(0, U32))
        rec["spi"] = draw(st.integers(256, U32))
        rid = sa_id(rec)
    elif kind_name == "ike_sa":
        rec["msgid_send"] = draw(st.integers(0, U32))
        rec["msgid_recv"] = draw(st.integers(0, U32))
        a, b = sorted([draw(t), draw(t)])
        rec["established_at"], rec["expires_at"] = a, b
    elif kind_name == "promotion":
        rec["at"] = draw(t)
        rec["margin"] = draw(st.integers(0, U64))
        rec["safety"] = draw(st.integers(1, 1000) | st.floats(1, 1000))
    elif kind_name == "sa_counters":
        for name in ("seq", "bytes", "packets", "seq_limit"):
            rec[name] = draw(st.integers(0, U64))
        rec["rate"] = draw(st.floats(0, 1e10))
        rec["at"] = draw(st.none() | t)
        rec["expires"] = draw(st.none() | t)
    else:
        a, b, c = sorted([draw(t), draw(t), draw(t)])
        rec["created_at"] = a
        rec["last_seen"], rec["expires_at"] = draw(st.permutations([b, c]))
        rec["idle_timeout_s"] = draw(st.integers(1, 2**31))
    return rid, rec


@pytest.mark.parametrize("kind_name", list(KINDS))
@HYPOTHESIS
@given(data=st.data())
def test_mutated_samples_roundtrip(kind_name: str, data: st.DataObject) -> None:
    kind = KINDS[kind_name]
    rid, rec = data.draw(mutated_sample(kind_name))
    original = copy.deepcopy(rec)
    assert roundtrip(kind, rid, rec) == original


@HYPOTHESIS
@given(data=st.data())
def test_merge_never_moves_counters_backwards(data: st.DataObject) -> None:
    rid, base = data.draw(mutated_sample("ipsec_sa"))
    limit = U64 if base["esn"] else U32
    winner, loser = copy.deepcopy(base), copy.deepcopy(base)
    for rec in (winner, loser):
        rec["seq"] = data.draw(st.integers(0, limit))
        rec["bytes"] = data.draw(st.integers(0, U64))
        rec["packets"] = data.draw(st.integers(0, U64))
        rec["rekey_required"] = data.draw(st.booleans())
        if rec["direction"] == "in":
            rec["replay_bitmap"] = data.draw(st.binary(max_size=8)).hex()
    out = _merge_json(SA, rid, winner, loser)
    src = loser if loser["seq"] > winner["seq"] else winner
    assert out["seq"] == max(winner["seq"], loser["seq"])
    assert out["replay_bitmap"] == src["replay_bitmap"]
    assert out["bytes"] == max(winner["bytes"], loser["bytes"])
    assert out["packets"] == max(winner["packets"], loser["packets"])
    assert out["rekey_required"] == (winner["rekey_required"] or loser["rekey_required"])


@HYPOTHESIS
@given(data=st.data())
def test_advance_outbound_seq_properties(data: st.DataObject) -> None:
    rid, rec = data.draw(mutated_sample("ipsec_sa"))
    rec["rekey_required"] = False
    wire = SA.from_json(rec, rid)
    margin = data.draw(st.integers(1, U32))
    out = advance_outbound_seq(wire, margin)
    if rec["direction"] == "in":
        assert out is None
        return
    assert out is not None
    limit = U64 if rec["esn"] else U32
    j = SA.to_json(out)
    assert j["seq"] == min(rec["seq"] + margin, limit)
    assert j["rekey_required"] is (rec["seq"] + margin > limit)
    assert SA.decode(SA.encode(out)) == out


# --- hypothesis: fuzzing the decoder -----------------------------------------------------------

_msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
_msgpack_values = st.recursive(
    _msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=25)
        | st.dictionaries(
            st.text(max_size=5) | st.integers(-(2**63), 2**64 - 1), children, max_size=4
        )
    ),
    max_leaves=60,
)


def _decode_only_record_errors(kind: Kind, blob: bytes) -> None:
    try:
        wire = kind.decode(blob)
    except RecordError:
        return
    # Accepted: it must then be a fully valid record that survives a round trip.
    assert kind.decode(kind.encode(wire)) == wire
    kind.to_json(wire)
    kind.expiry(wire)


@pytest.mark.parametrize("kind_name", list(KINDS))
@HYPOTHESIS
@given(blob=st.binary(max_size=300))
def test_decode_fuzz_bytes(kind_name: str, blob: bytes) -> None:
    _decode_only_record_errors(KINDS[kind_name], blob)


@pytest.mark.parametrize("kind_name", list(KINDS))
@HYPOTHESIS
@given(value=_msgpack_values)
def test_decode_fuzz_msgpack_values(kind_name: str, value: Any) -> None:
    _decode_only_record_errors(KINDS[kind_name], msgpack.packb(value, use_bin_type=True))


def _positions(w: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    if type(w) is list:
        for i, x in enumerate(w):
            out.append((*prefix, i))
            out.extend(_positions(x, (*prefix, i)))
    return out


@pytest.mark.parametrize("kind_name", list(KINDS))
@HYPOTHESIS
@given(data=st.data())
def test_decode_fuzz_mutated_valid_wire(kind_name: str, data: st.DataObject) -> None:
    """Replace one (possibly nested) element of a valid wire value by anything."""
    kind = KINDS[kind_name]
    rid, rec = sample(
        kind_name, data.draw(st.integers(0, 20)), data.draw(st.sampled_from(["in", "out"]))
    )
    wire = kind.from_json(rec, rid)
    where = data.draw(st.sampled_from(_positions(wire)))
    target = wire
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = data.draw(_msgpack_values)
    _decode_only_record_errors(kind, msgpack.packb(wire, use_bin_type=True))


@pytest.mark.parametrize("kind_name", list(KINDS))
@HYPOTHESIS
@given(data=st.data())
def test_from_json_fuzz_only_record_errors(kind_name: str, data: st.DataObject) -> None:
    """Arbitrary JSON values in any field: from_json raises RecordError or the record is valid."""
    kind = KINDS[kind_name]
    rid, rec = sample(kind_name, 2, data.draw(st.sampled_from(["in", "out"])))
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )
    paths = _json_paths(rec)
    path = data.draw(st.sampled_from(paths))
    set_path(rec, path, data.draw(json_values))
    try:
        wire = kind.from_json(rec, rid_for(kind, rec, rid))
        blob = kind.encode(wire)
    except RecordError:
        return
    assert kind.decode(blob) == wire


def _json_paths(v: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(v, dict):
        for k, x in v.items():
            p = f"{prefix}.{k}" if prefix else k
            out.append(p)
            out.extend(_json_paths(x, p))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            p = f"{prefix}[{i}]"
            out.append(p)
            out.extend(_json_paths(x, p))
    return out
