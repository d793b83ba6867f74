"""Every refusal of the hand-written schema (before msgspec) is still a refusal.

One table of bad values, one row per field limit of PROTOCOL.md section 8 (types,
ranges, lengths, patterns, enums, addresses, prefixes, hex, nesting, unknown and
missing fields, cross-field rules, ids).  Each row is refused on both API paths
(JSON text decoded straight into the API Struct, and Python values as a msgpack
batch gives them) with a RecordError naming the field, and a refused value is
never echoed in the message.  The link's check of blobs has its own table in
tests/test_records.py (test_decode_enforces_field_types).
"""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasyncd import samples
from hasyncd.errors import RecordError
from hasyncd.records import KINDS, U32, U64
from hasyncd.schema import Bad, parse_ip, parse_prefix

NOW = 1_700_000_000
MISSING = object()

SA_OUT = samples.ipsec_sa(3, "out", now=NOW)
SA_IN = samples.ipsec_sa(3, "in", now=NOW)
IKE = samples.ike_sa(3, now=NOW)
WEB = samples.web_session(3, now=NOW)
PROMO = samples.promotion(3, now=NOW)
CTR = samples.sa_counters(3, "in", now=NOW)
BASE = {"sa_out": SA_OUT, "sa_in": SA_IN, "ike": IKE, "web": WEB, "promo": PROMO, "ctr": CTR}
KIND_OF = {
    "sa_out": "ipsec_sa",
    "sa_in": "ipsec_sa",
    "ike": "ike_sa",
    "web": "sslvpn_web_session",
    "promo": "promotion",
    "ctr": "sa_counters",
}

# (sample, path, bad value, field the error must name)
BAD: list[tuple[str, str, Any, str]] = [
    # Str: type, length, control characters (also a trailing newline), surrogates
    ("sa_out", "tunnel", "", "tunnel"),
    ("sa_out", "tunnel", "x" * 129, "tunnel"),
    ("sa_out", "tunnel", 5, "tunnel"),
    ("sa_out", "tunnel", None, "tunnel"),
    ("sa_out", "tunnel", "a\nb", "tunnel"),
    ("sa_out", "tunnel", "site\n", "tunnel"),
    ("sa_out", "tunnel", "a\x00", "tunnel"),
    ("sa_out", "tunnel", "a\x7f", "tunnel"),
    ("sa_out", "tunnel", "a\x85", "tunnel"),
    ("sa_out", "tunnel", "a\u2028", "tunnel"),
    ("sa_out", "tunnel", "a\u2029", "tunnel"),
    ("sa_out", "tunnel", "site-\ud800", "tunnel"),
    ("ike", "local_id", "x" * 256, "local_id"),
    ("web", "user", "", "user"),
    ("web", "user", "u" * 256, "user"),
    ("web", "auth_method", "a" * 65, "auth_method"),
    ("web", "portal", "", "portal"),
    ("web", "realm", "r" * 256, "realm"),
    ("web", "groups", ["g"] * 65, "groups"),
    ("web", "groups", ["g" * 129], "groups[0]"),
    ("web", "groups", [""], "groups[0]"),
    ("web", "groups", ["ok", 5], "groups[1]"),
    ("web", "groups", "vpn-users", "groups"),
    # ALG pattern
    ("sa_out", "enc.alg", "AES", "enc.alg"),
    ("sa_out", "enc.alg", "", "enc.alg"),
    ("sa_out", "enc.alg", "a" * 65, "enc.alg"),
    ("sa_out", "enc.alg", "aes gcm", "enc.alg"),
    ("sa_out", "enc.alg", "aes\n", "enc.alg"),
    ("sa_out", "enc.alg", "-aes", "enc.alg"),
    ("ike", "algs.prf", "PRF", "algs.prf"),
    ("ike", "algs.integ", "Sha1", "algs.integ"),
    # Int: type, bool, float, range
    ("sa_out", "spi", 255, "spi"),
    ("sa_out", "spi", U32 + 1, "spi"),
    ("sa_out", "spi", -1, "spi"),
    ("sa_out", "spi", True, "spi"),
    ("sa_out", "spi", 300.0, "spi"),
    ("sa_out", "spi", "300", "spi"),
    ("sa_out", "reqid", -1, "reqid"),
    ("sa_out", "reqid", U32 + 1, "reqid"),
    ("sa_out", "seq", -1, "seq"),
    ("sa_out", "bytes", U64 + 1, "bytes"),
    ("sa_out", "packets", -1, "packets"),
    ("sa_out", "packets", 2**70, "packets"),
    ("sa_out", "lifetime.hard_s", U64 + 1, "lifetime.hard_s"),
    ("sa_out", "lifetime.soft_bytes", -5, "lifetime.soft_bytes"),
    ("sa_out", "lifetime.hard_packets", 1.5, "lifetime.hard_packets"),
    ("sa_in", "replay_window", 65537, "replay_window"),
    ("sa_in", "replay_window", -1, "replay_window"),
    ("sa_out", "selectors[0].proto", 256, "selectors[0].proto"),
    ("sa_out", "selectors[0].sport", 65536, "selectors[0].sport"),
    ("sa_out", "selectors[0].dport", -1, "selectors[0].dport"),
    ("sa_out", "encap", {"type": "espinudp", "sport": 0, "dport": 4500}, "encap.sport"),
    ("sa_out", "encap", {"type": "espinudp", "sport": 4500, "dport": 65536}, "encap.dport"),
    ("ike", "version", 0, "version"),
    ("ike", "version", 3, "version"),
    ("ike", "msgid_send", U32 + 1, "msgid_send"),
    ("ike", "msgid_recv", -1, "msgid_recv"),
    ("ike", "local.port", 0, "local.port"),
    ("ike", "remote.port", 65536, "remote.port"),
    ("web", "idle_timeout_s", 0, "idle_timeout_s"),
    ("web", "idle_timeout_s", 2**31 + 1, "idle_timeout_s"),
    # Num: range, type, non-finite
    ("sa_out", "created_at", -1, "created_at"),
    ("sa_out", "created_at", 2**40 + 1, "created_at"),
    ("sa_out", "created_at", 2.0**41, "created_at"),
    ("sa_out", "created_at", "1700000000", "created_at"),
    ("sa_out", "created_at", True, "created_at"),
    ("sa_out", "created_at", None, "created_at"),
    ("ike", "expires_at", -0.5, "expires_at"),
    ("web", "last_seen", [], "last_seen"),
    # Bool
    ("sa_out", "esn", 1, "esn"),
    ("sa_out", "esn", "true", "esn"),
    ("sa_out", "rekey_required", None, "rekey_required"),
    ("ike", "initiator", 0, "initiator"),
    ("ike", "mid_sync_required", "no", "mid_sync_required"),
    # Enum
    ("sa_out", "direction", "sideways", "direction"),
    ("sa_out", "direction", "IN", "direction"),
    ("sa_out", "direction", 0, "direction"),
    ("sa_out", "proto", "gre", "proto"),
    ("sa_out", "mode", "beet", "mode"),
    ("sa_out", "encap", {"type": "udp", "sport": 4500, "dport": 4500}, "encap.type"),
    # IP
    ("sa_out", "src", "198.51.100.256", "src"),
    ("sa_out", "src", "198.51.100", "src"),
    ("sa_out", "src", "198.51.100.01", "src"),
    ("sa_out", "src", " 198.51.100.1", "src"),
    ("sa_out", "src", "198.51.100.1 ", "src"),
    ("sa_out", "src", "fe80::1%eth0", "src"),
    ("sa_out", "src", "2001:db8::g", "src"),
    ("sa_out", "src", "2001:db8:::1", "src"),
    ("sa_out", "src", "10.0.0.0/8", "src"),
    ("sa_out", "src", "", "src"),
    ("sa_out", "src", "x" * 46, "src"),
    ("sa_out", "src", 3325256705, "src"),
    ("sa_out", "dst", "١٩٨.51.100.1", "dst"),
    ("ike", "local.addr", "gw.example.net", "local.addr"),
    ("web", "client_ip", "192.0.2", "client_ip"),
    # Prefix
    ("sa_out", "selectors[0].src", "10.0.0.1/16", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0/33", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0/", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0/-1", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0/+8", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0/ 8", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0/8/8", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0/255.0.255.0", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0/٨", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "2001:db8::1/64", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "2001:db8::/129", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "fe80::%eth0/64", "selectors[0].src"),
    ("sa_out", "selectors[0].src", "10.0.0.0/" + "0" * 60, "selectors[0].src"),
    ("sa_out", "selectors[0].dst", None, "selectors[0].dst"),
    ("sa_out", "selectors[0].dst", ["10.0.0.0", 8], "selectors[0].dst"),
    # Hex
    ("sa_out", "enc.key", "", "enc.key"),
    ("sa_out", "enc.key", "abc", "enc.key"),
    ("sa_out", "enc.key", "zz" * 16, "enc.key"),
    ("sa_out", "enc.key", "ab cd", "enc.key"),
    ("sa_out", "enc.key", "ab" * 129, "enc.key"),
    ("sa_out", "enc.key", "0x" + "ab" * 16, "enc.key"),
    ("sa_out", "enc.key", "ab\n" * 2, "enc.key"),
    ("sa_out", "enc.key", "١٢" * 4, "enc.key"),
    ("sa_out", "enc.key", 1234, "enc.key"),
    ("sa_out", "ike_sa", "ab" * 15, "ike_sa"),
    ("sa_out", "ike_sa", "ab" * 17, "ike_sa"),
    ("sa_in", "replay_bitmap", "ab" * 8193, "replay_bitmap"),
    ("ike", "ispi", "ab" * 7, "ispi"),
    ("ike", "keys.sk_d", "", "keys.sk_d"),
    ("ike", "keys.sk_ai", "x", "keys.sk_ai"),
    # Structs and lists: type, unknown and missing fields
    ("sa_out", "enc", "aes", "enc"),
    ("sa_out", "enc", [], "enc"),
    ("sa_out", "enc", {"alg": "aes"}, "enc.key"),
    ("sa_out", "enc", {"alg": "aes", "key": "ab", "iv": "00"}, "enc.iv"),
    ("sa_out", "lifetime", None, "lifetime"),
    ("sa_out", "lifetime", {"hard": 5}, "lifetime.hard"),
    ("sa_out", "selectors", {}, "selectors"),
    ("sa_out", "selectors", [{"src": "10.0.0.0/8"}], "selectors[0].dst"),
    ("sa_out", "selectors", [{"src": "10.0.0.0/8", "dst": "10.0.0.0/8", "x": 1}], "selectors[0].x"),
    ("sa_out", "selectors", [{"src": "10.0.0.0/8", "dst": "10.0.0.0/8"}] * 65, "selectors"),
    ("ike", "algs", {"enc": "aes", "prf": "sha", "dh": "x", "zz": 1}, "algs.zz"),
    ("ike", "keys", None, "keys"),
    ("sa_out", "colour", "red", "colour"),
    ("sa_out", "tunnel", MISSING, "tunnel"),
    ("sa_out", "created_at", MISSING, "created_at"),
    ("ike", "keys.sk_pr", MISSING, "keys.sk_pr"),
    ("web", "expires_at", MISSING, "expires_at"),
    ("ike", "tunnel", "", "tunnel"),
    ("ike", "rspi", "ab" * 9, "rspi"),
    ("ike", "remote_id", "a\tb", "remote_id"),
    ("ike", "established_at", 2**41, "established_at"),
    ("web", "created_at", -3, "created_at"),
    # cross-field rules
    ("sa_out", "dst", "2001:db8::1", "dst"),
    ("sa_out", "enc", None, "enc"),
    ("sa_out", "auth", {"alg": "HMAC", "key": "ab"}, "auth.alg"),
    ("sa_out", "auth", {"alg": "hmac(sha1)", "key": ""}, "auth.key"),
    ("sa_out", "auth", "hmac", "auth"),
    ("sa_out", "replay_bitmap", "00", "replay_bitmap"),
    ("sa_out", "esn", False, "seq"),  # with seq beyond 2^32-1, set below
    ("sa_out", "selectors[0].dst", "2001:db8::/32", "selectors[0]"),
    ("ike", "ispi", "00" * 8, "ispi"),
    ("ike", "remote.addr", "2001:db8::1", "remote"),
    ("ike", "expires_at", 1, "expires_at"),
    ("web", "last_seen", 1, "last_seen"),
    ("web", "expires_at", 1, "expires_at"),
    # The internal kinds (issue 10): written by hasyncd, validated all the same.
    ("promo", "epoch", 0, "epoch"),
    ("promo", "epoch", 2**63, "epoch"),
    ("promo", "at", -1, "at"),
    ("promo", "margin", -1, "margin"),
    ("promo", "safety", 0.5, "safety"),
    ("promo", "detection_s", 3601, "detection_s"),
    ("promo", "inbound", "later", "inbound"),
    ("promo", "inbound", MISSING, "inbound"),
    ("ctr", "seq", -1, "seq"),
    ("ctr", "bytes", "1", "bytes"),
    ("ctr", "packets", 1.5, "packets"),
    ("ctr", "replay_bitmap", "zz", "replay_bitmap"),
    ("ctr", "replay_bitmap", "ff" * 8193, "replay_bitmap"),
    ("ctr", "rate", -1.0, "rate"),
    ("ctr", "rate", 1e11, "rate"),
    ("ctr", "at", 2.0**41, "at"),
    ("ctr", "seq_limit", -1, "seq_limit"),
    ("ctr", "expires", "soon", "expires"),
]


def _set(rec: Any, path: str, value: Any) -> None:
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        steps.append(name)
        if index:
            steps.append(int(index.rstrip("]")))
    *parents, last = steps
    for step in parents:
        rec = rec[step]
    if value is MISSING:
        del rec[last]
    else:
        rec[last] = value


def _bad_record(sample: str, path: str, value: Any) -> tuple[str, str, dict[str, Any]]:
    rid, rec = copy.deepcopy(BASE[sample])
    if sample == "sa_out" and path == "esn":
        rec["seq"] = U32 + 1
    _set(rec, path, value)
    return KIND_OF[sample], rid, rec


@pytest.mark.parametrize(("sample", "path", "value", "field"), BAD, ids=lambda x: repr(x)[:40])
def test_every_bad_value_is_refused_on_both_api_paths(
    sample: str, path: str, value: Any, field: str
) -> None:
    kind_name, rid, rec = _bad_record(sample, path, value)
    kind = KINDS[kind_name]
    with pytest.raises(RecordError) as from_values:
        kind.from_json(rec, rid)
    assert from_values.value.field == field, from_values.value.message
    try:
        text = json.dumps(rec).encode()
    except (ValueError, UnicodeEncodeError):  # pragma: no cover - every row is JSON
        return
    with pytest.raises(RecordError) as from_text:
        kind.parse_json(text, rid)
    if "\\ud800" not in text.decode():  # a lone surrogate escape is not valid JSON text
        assert from_text.value.field == field, from_text.value.message
    for err in (from_values.value, from_text.value):
        if isinstance(value, str) and len(value) >= 3 and value not in field:
            assert value not in err.message.replace("like 10.0.0.0/24", "")


def test_the_table_covers_every_field_of_every_kind() -> None:
    """A new field needs its refusals in BAD (cross-field rows aside)."""
    covered = {(KIND_OF[s], p.split("[")[0].split(".")[0]) for s, p, _, _ in BAD}
    for name, kind in KINDS.items():
        for f in kind.schema.fields:
            assert (name, f.name) in covered, (name, f.name)


@pytest.mark.parametrize(
    ("kind_name", "rid"),
    [
        ("ipsec_sa", "esp-c0000008@203.0.113.4"),  # another SPI
        ("ipsec_sa", "esp-c0000006@203.0.113.5"),  # another dst
        ("ipsec_sa", "ah-c0000006@203.0.113.4"),
        ("ipsec_sa", "esp-C0000006@203.0.113.4"),
        ("ipsec_sa", "not an id"),
        ("ipsec_sa", ""),
        ("ike_sa", "00" * 16),
        ("ike_sa", "AB" * 16),
        ("sslvpn_web_session", "ab" * 31),
        ("sslvpn_web_session", "AB" * 32),
        ("sslvpn_web_session", "g" * 64),
    ],
)
def test_ids_that_do_not_match_are_refused(kind_name: str, rid: str) -> None:
    sample = {"ipsec_sa": "sa_out", "ike_sa": "ike", "sslvpn_web_session": "web"}[kind_name]
    _, rec = copy.deepcopy(BASE[sample])
    with pytest.raises(RecordError) as err:
        KINDS[kind_name].from_json(rec, rid)
    assert err.value.field == "id"


# --- the fast address parsers accept exactly what ipaddress accepts --------------------

_TRICKY = [
    "0.0.0.0",
    "255.255.255.255",
    "1.2.3.4",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3",
    "1.2.3.4.5",
    "1..2.3",
    "256.1.1.1",
    "1.2.3.4 ",
    "0x1.2.3.4",
    "::",
    "::1",
    "::ffff:1.2.3.4",
    "::1.2.3.4",
    "1::2::3",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7::",
    "::2:3:4:5:6:7:8",
    "01234::",
    "0001:0002::",
    "fe80::1%1",
    "1.2.3.4/32",
    "",
    " ",
]
_ALPHABET = "0123456789abcdefABCDEF.:%/ x"


def _reference_ip(text: str) -> bytes | None:
    if "%" in text or len(text) > 45:
        return None
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        return None


def _ours_ip(text: str) -> bytes | None:
    try:
        return parse_ip(text)
    except Bad:
        return None


def _reference_prefix(text: str) -> tuple[bytes, int] | None:
    if "%" in text or "/" not in text or len(text) > 49:
        return None
    try:
        n = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None
    return n.network_address.packed, n.prefixlen


def _ours_prefix(text: str) -> tuple[bytes, int] | None:
    try:
        p = parse_prefix(text)
    except Bad:
        return None
    return p.net, p.plen


@pytest.mark.parametrize("text", _TRICKY)
def test_ip_parser_agrees_with_ipaddress_on_tricky_text(text: str) -> None:
    assert _ours_ip(text) == _reference_ip(text)
    for plen in ("0", "8", "24", "32", "64", "128", "129", "024", "255.255.255.0"):
        candidate = f"{text}/{plen}"
        assert _ours_prefix(candidate) == _reference_prefix(candidate), candidate


@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(st.text(_ALPHABET, max_size=24) | st.ip_addresses().map(str))
def test_ip_parser_agrees_with_ipaddress(text: str) -> None:
    assert _ours_ip(text) == _reference_ip(text)


@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(
    st.text(_ALPHABET, max_size=28)
    | st.builds(
        lambda a, p: f"{a}/{p}",
        st.ip_addresses().map(str),
        st.integers(0, 130),
    )
)
def test_prefix_parser_agrees_with_ipaddress(text: str) -> None:
    assert _ours_prefix(text) == _reference_prefix(text)


@pytest.mark.parametrize(("sample", "path", "value", "field"), BAD, ids=lambda x: repr(x)[:40])
def test_the_list_text_path_refuses_as_the_full_decode_does(
    sample: str, path: str, value: Any, field: str
) -> None:
    """``parse_json`` first keeps lists (selectors, groups) as JSON text for their cache;
    every refusal must read exactly as the record decoded in full names it."""
    kind_name, rid, rec = _bad_record(sample, path, value)
    kind = KINDS[kind_name]
    text = json.dumps(rec).encode()  # every row is JSON
    with pytest.raises(RecordError) as full:
        kind._parse_json_full(text, rid)
    with pytest.raises(RecordError) as fast:
        kind.parse_json(text, rid)
    assert (fast.value.field, fast.value.message) == (full.value.field, full.value.message)
    if kind.schema.api_raw is not kind.schema.api:  # the batch path: the op decoded as text
        try:
            api = msgspec.json.decode(text, type=kind.schema.api_raw)
        except msgspec.MsgspecError:
            return  # refused by that decode: the batch takes its general path (Op + parse_json)
        with pytest.raises(RecordError) as batch:
            kind.from_api(api, rid)
        assert (batch.value.field, batch.value.message) == (full.value.field, full.value.message)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 400), st.sampled_from(["in", "out"]), st.booleans())
def test_the_list_text_path_stores_what_the_full_decode_stores(
    i: int, direction: str, spaced: bool
) -> None:
    """Same blob, expiry and id on the text path, on a cache hit as on a miss."""
    for rid, rec, name in (
        (*samples.ipsec_sa(i, direction, now=NOW), "ipsec_sa"),
        (*samples.web_session(i, now=NOW), "sslvpn_web_session"),
    ):
        kind = KINDS[name]
        text = json.dumps(rec, indent=1 if spaced else None).encode()
        full = kind._parse_json_full(text, rid)
        for _ in range(2):  # the second reads the list from its cache
            fast = kind.parse_json(text, rid)
            api = msgspec.json.decode(text, type=kind.schema.api_raw)
            assert type(api) is not kind.schema.api
            batch = kind.from_api(api, rid)
            for got in (fast, batch):
                assert (got.id, got.blob, got.expires) == (full.id, full.blob, full.expires)
