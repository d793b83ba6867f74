"""The replicated record kinds: schemas, ids, expiry, merge and promotion rules.

A record lives in three forms: the JSON object of the local API, the wire
value (a positional list, see ``hasyncd.schema``) and the blob (the wire
value's msgpack encoding), which is what the store keeps and the link sends.
A ``Kind`` converts between them and owns the kind's domain rules:

* its id, derived from its fields (an id that does not match is refused);
* when it expires (each node expires records on its own clock);
* how two versions merge after a split brain (counters never go backwards);
* what a promotion changes (outbound ESP sequence jump, IKE message-ID sync).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from hasyncd.errors import IdMismatch, RecordError
from hasyncd.policy import KIND_CODES, require_replicated
from hasyncd.schema import (
    IP,
    Bool,
    Enum,
    Field,
    Hex,
    Int,
    ListOf,
    Nullable,
    Num,
    Prefix,
    Str,
    Struct,
)

U32 = 2**32 - 1
U64 = 2**64 - 1
# Unix seconds up to the year 36812: far beyond any lifetime, still exact in a float.
MAX_TIME = 2.0**40
MAX_KEY_BYTES = 128  # longest IPsec/IKE key: 64-byte HMAC-SHA512 key plus salt, doubled
MAX_SELECTORS = 64  # strongSwan's traffic selector lists are far shorter in practice
MAX_GROUPS = 64
# 64 ASCII groups of 128 characters encode to ~8.5 KiB, below MAX_RECORD_BYTES;
# multi-byte characters can pass it, which encode() refuses with a clear error.
MAX_GROUP_LEN = 128
# A record's encoded size limit: the largest legal record (an inbound SA with
# an 8 KiB replay bitmap and 64 selectors) encodes to about 12 KiB; 16 KiB
# keeps any record far inside one 64 KiB transport frame.  Checked at encode.
MAX_RECORD_BYTES = 16 * 1024
MAX_REPLAY_WINDOW = 65536  # packets; Linux caps ESN replay bitmaps well below this
ALG = r"[a-z0-9][a-z0-9()_.,+-]{0,63}"  # xfrm ("rfc4106(gcm(aes))") and IKE names

_unpack_limits: dict[str, Any] = {
    "raw": False,
    "max_str_len": 4096,
    "max_bin_len": 8192,
    "max_array_len": 256,
    "max_map_len": 0,
    "max_ext_len": 0,
}

_KEY = Struct(Field("alg", Str(1, 64, ALG)), Field("key", Hex(1, MAX_KEY_BYTES)))
_LIFETIME = Struct(
    *(
        Field(name, Nullable(Int(0, U64)), None)
        for name in ("soft_s", "hard_s", "soft_bytes", "hard_bytes", "soft_packets", "hard_packets")
    )
)
_SELECTOR = Struct(
    Field("src", Prefix()),
    Field("dst", Prefix()),
    Field("proto", Int(0, 255), 0),
    Field("sport", Int(0, 65535), 0),
    Field("dport", Int(0, 65535), 0),
)
_ENDPOINT = Struct(Field("addr", IP()), Field("port", Int(1, 65535)))

IPSEC_SA = Struct(
    Field("tunnel", Str(1, 128)),
    Field("direction", Enum("in", "out")),
    Field("proto", Enum("esp", "ah")),
    Field("spi", Int(256, U32)),
    Field("src", IP()),
    Field("dst", IP()),
    Field("mode", Enum("tunnel", "transport")),
    Field("reqid", Nullable(Int(0, U32)), None),
    Field("enc", Nullable(_KEY), None),
    Field("auth", Nullable(_KEY), None),
    Field(
        "encap",
        Nullable(
            Struct(
                Field("type", Enum("espinudp")),
                Field("sport", Int(1, 65535)),
                Field("dport", Int(1, 65535)),
            )
        ),
        None,
    ),
    Field("esn", Bool(), False),
    Field("seq", Int(0, U64), 0),
    Field("replay_window", Int(0, MAX_REPLAY_WINDOW), 0),
    Field("replay_bitmap", Nullable(Hex(0, MAX_REPLAY_WINDOW // 8)), None),
    Field("lifetime", _LIFETIME, {}),
    Field("created_at", Num(0, MAX_TIME)),
    Field("bytes", Int(0, U64), 0),
    Field("packets", Int(0, U64), 0),
    Field("selectors", ListOf(_SELECTOR, MAX_SELECTORS), []),
    Field("ike_sa", Nullable(Hex(16, 16)), None),
    Field("rekey_required", Bool(), False),
)

IKE_SA = Struct(
    Field("tunnel", Str(1, 128)),
    Field("version", Int(1, 2)),
    Field("ispi", Hex(8, 8)),
    Field("rspi", Hex(8, 8)),
    Field("local", _ENDPOINT),
    Field("remote", _ENDPOINT),
    Field("initiator", Bool()),
    Field("local_id", Str(0, 255)),
    Field("remote_id", Str(0, 255)),
    Field(
        "algs",
        Struct(
            Field("enc", Str(1, 64, ALG)),
            Field("integ", Nullable(Str(1, 64, ALG)), None),
            Field("prf", Str(1, 64, ALG)),
            Field("dh", Str(1, 64, ALG)),
        ),
    ),
    Field(
        "keys",
        Struct(
            Field("sk_d", Hex(1, MAX_KEY_BYTES)),
            Field("sk_ai", Nullable(Hex(1, MAX_KEY_BYTES)), None),
            Field("sk_ar", Nullable(Hex(1, MAX_KEY_BYTES)), None),
            Field("sk_ei", Hex(1, MAX_KEY_BYTES)),
            Field("sk_er", Hex(1, MAX_KEY_BYTES)),
            Field("sk_pi", Hex(1, MAX_KEY_BYTES)),
            Field("sk_pr", Hex(1, MAX_KEY_BYTES)),
        ),
    ),
    Field("msgid_send", Int(0, U32)),
    Field("msgid_recv", Int(0, U32)),
    Field("established_at", Num(0, MAX_TIME)),
    Field("expires_at", Num(0, MAX_TIME)),
    Field("mid_sync_required", Bool(), False),
)

WEB_SESSION = Struct(
    Field("user", Str(1, 255)),
    Field("groups", ListOf(Str(1, MAX_GROUP_LEN), MAX_GROUPS), []),
    Field("realm", Str(0, 255), ""),
    Field("auth_method", Str(1, 64)),
    Field("portal", Str(1, 255)),
    Field("client_ip", Nullable(IP()), None),
    Field("created_at", Num(0, MAX_TIME)),
    Field("last_seen", Num(0, MAX_TIME)),
    Field("idle_timeout_s", Int(1, 2**31)),
    Field("expires_at", Num(0, MAX_TIME)),
)


@dataclass(frozen=True)
class Kind:
    name: str
    code: int
    schema: Struct
    make_id: Callable[[list[Any]], str | None]  # None: the id is not derived (web sessions)
    id_pattern: re.Pattern[str]
    check: Callable[[list[Any]], None]
    expiry: Callable[[list[Any]], float | None]
    merge: Callable[[list[Any], list[Any]], list[Any]]  # (winner, loser) -> merged

    def from_json(self, body: Any, rid: str) -> list[Any]:
        """Validate an API body for record ``rid``; returns the wire value."""
        if not self.id_pattern.match(rid):
            raise RecordError(f"invalid {self.name} id", field="id")
        wire: list[Any] = self.schema.from_json(body, "")
        self.check(wire)
        expected = self.make_id(wire)
        if expected is not None and expected != rid:
            raise IdMismatch(
                f"id {rid!r} does not match the record's fields (expected {expected!r})",
                field="id",
            )
        return wire

    def to_json(self, wire: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.schema.to_json(wire)
        return out

    def encode(self, wire: list[Any]) -> bytes:
        blob: bytes = msgpack.packb(wire, use_bin_type=True)
        if len(blob) > MAX_RECORD_BYTES:
            raise RecordError(
                f"{self.name} encodes to {len(blob)} bytes, more than the limit of "
                f"{MAX_RECORD_BYTES}",
                field="record",
            )
        return blob

    def decode(self, blob: bytes) -> list[Any]:
        """Decode and fully validate a blob (from a peer or the store)."""
        try:
            wire = msgpack.unpackb(blob, **_unpack_limits)
        except (ValueError, TypeError, msgpack.UnpackException):
            raise RecordError(f"{self.name}: undecodable record blob") from None
        self.schema.check_wire(wire, "")
        self.check(wire)
        return wire  # type: ignore[no-any-return]

    def check_id(self, wire: list[Any], rid: str) -> None:
        if not self.id_pattern.match(rid):
            raise RecordError(f"invalid {self.name} id", field="id")
        expected = self.make_id(wire)
        if expected is not None and expected != rid:
            raise IdMismatch(
                f"id {rid!r} does not match the record (expected {expected!r})", field="id"
            )


# --- ipsec_sa ----------------------------------------------------------------

_sa = IPSEC_SA.pos
_sa_hard_s = IPSEC_SA.getter("lifetime.hard_s")
_DIR_IN, _DIR_OUT = 0, 1
_ESP, _AH = 0, 1
_PROTO_NAMES = ("esp", "ah")


def _sa_id(w: list[Any]) -> str:
    return f"{_PROTO_NAMES[w[_sa['proto']]]}-{w[_sa['spi']]:08x}@{IP().to_json(w[_sa['dst']])}"


def _sa_check(w: list[Any]) -> None:
    if len(w[_sa["src"]]) != len(w[_sa["dst"]]):
        raise RecordError("src and dst must be addresses of one family", field="dst")
    if w[_sa["proto"]] == _ESP:
        if w[_sa["enc"]] is None:
            raise RecordError("an ESP SA needs enc ({alg, key})", field="enc")
    else:
        if w[_sa["enc"]] is not None:
            raise RecordError("an AH SA has no encryption: enc must be null", field="enc")
        if w[_sa["auth"]] is None:
            raise RecordError("an AH SA needs auth ({alg, key})", field="auth")
        if w[_sa["encap"]] is not None:
            raise RecordError("UDP encapsulation applies to ESP only", field="encap")
    if w[_sa["replay_bitmap"]] is not None and w[_sa["direction"]] != _DIR_IN:
        raise RecordError("replay_bitmap applies to inbound SAs only", field="replay_bitmap")
    if not w[_sa["esn"]] and w[_sa["seq"]] > U32:
        raise RecordError("seq exceeds 2^32-1 on an SA without ESN", field="seq")
    for i, sel in enumerate(w[_sa["selectors"]]):
        if Prefix.family(sel[0]) != Prefix.family(sel[1]):
            raise RecordError(
                f"selectors[{i}]: src and dst must be of one family", field=f"selectors[{i}]"
            )


def _sa_expiry(w: list[Any]) -> float | None:
    hard = _sa_hard_s(w)
    return None if hard is None else float(w[_sa["created_at"]] + hard)


def _sa_merge(winner: list[Any], loser: list[Any]) -> list[Any]:
    """Counters never go backwards: keep the winner's fields, the larger counters."""
    out = list(winner)
    seq = _sa["seq"]
    if loser[seq] > winner[seq]:
        out[seq] = loser[seq]
        out[_sa["replay_bitmap"]] = loser[_sa["replay_bitmap"]]
    for name in ("bytes", "packets"):
        out[_sa[name]] = max(winner[_sa[name]], loser[_sa[name]])
    out[_sa["rekey_required"]] = winner[_sa["rekey_required"]] or loser[_sa["rekey_required"]]
    return out


def advance_outbound_seq(wire: list[Any], margin: int) -> list[Any] | None:
    """The promotion's replay-counter jump for one SA; None if it does not apply.

    The old primary sent packets past the last replicated ``seq``; the peer's
    replay window drops anything at or below what it has seen.  Jumping by a
    margin larger than the packets sent between two replications makes the
    first packets of the new primary acceptable.  Without ESN a counter that
    would pass 2^32-1 is pinned there and the SA marked for rekeying.
    """
    if wire[_sa["direction"]] != _DIR_OUT:
        return None
    out = list(wire)
    limit = U64 if wire[_sa["esn"]] else U32
    seq = wire[_sa["seq"]] + margin
    if seq > limit:
        seq = limit
        out[_sa["rekey_required"]] = True
    out[_sa["seq"]] = seq
    return out


# --- ike_sa ------------------------------------------------------------------

_ike = IKE_SA.pos
_ike_local_addr = IKE_SA.getter("local.addr")
_ike_remote_addr = IKE_SA.getter("remote.addr")


def _ike_id(w: list[Any]) -> str:
    return str(w[_ike["ispi"]].hex() + w[_ike["rspi"]].hex())


def _ike_check(w: list[Any]) -> None:
    if w[_ike["ispi"]] == bytes(8):
        raise RecordError("ispi must not be zero", field="ispi")
    if len(_ike_local_addr(w)) != len(_ike_remote_addr(w)):
        raise RecordError("local and remote must be addresses of one family", field="remote")
    if w[_ike["expires_at"]] < w[_ike["established_at"]]:
        raise RecordError("expires_at is before established_at", field="expires_at")


def _ike_expiry(w: list[Any]) -> float | None:
    return float(w[_ike["expires_at"]])


def _ike_merge(winner: list[Any], loser: list[Any]) -> list[Any]:
    out = list(winner)
    differs = False
    for name in ("msgid_send", "msgid_recv"):
        i = _ike[name]
        differs |= winner[i] != loser[i]
        out[i] = max(winner[i], loser[i])
    # Both sides used the SA during the split: the IKE daemon must resynchronize.
    out[_ike["mid_sync_required"]] = (
        differs or winner[_ike["mid_sync_required"]] or loser[_ike["mid_sync_required"]]
    )
    return out


def require_mid_sync(wire: list[Any]) -> list[Any] | None:
    """Promotion: flag the IKE SA for RFC 6311 message-ID sync (None if already flagged)."""
    if wire[_ike["mid_sync_required"]]:
        return None
    out = list(wire)
    out[_ike["mid_sync_required"]] = True
    return out


# --- sslvpn_web_session -----------------------------------------------------

_web = WEB_SESSION.pos


def _web_check(w: list[Any]) -> None:
    if w[_web["last_seen"]] < w[_web["created_at"]]:
        raise RecordError("last_seen is before created_at", field="last_seen")
    if w[_web["expires_at"]] < w[_web["created_at"]]:
        raise RecordError("expires_at is before created_at", field="expires_at")


def _web_expiry(w: list[Any]) -> float | None:
    return float(min(w[_web["expires_at"]], w[_web["last_seen"]] + w[_web["idle_timeout_s"]]))


def _web_merge(winner: list[Any], loser: list[Any]) -> list[Any]:
    out = list(winner)
    i = _web["last_seen"]
    out[i] = max(winner[i], loser[i])
    return out


KINDS: dict[str, Kind] = {
    "ipsec_sa": Kind(
        "ipsec_sa",
        KIND_CODES["ipsec_sa"],
        IPSEC_SA,
        _sa_id,
        re.compile(r"(esp|ah)-[0-9a-f]{8}@[0-9a-f.:]{2,45}\Z"),
        _sa_check,
        _sa_expiry,
        _sa_merge,
    ),
    "ike_sa": Kind(
        "ike_sa",
        KIND_CODES["ike_sa"],
        IKE_SA,
        _ike_id,
        re.compile(r"[0-9a-f]{32}\Z"),
        _ike_check,
        _ike_expiry,
        _ike_merge,
    ),
    "sslvpn_web_session": Kind(
        "sslvpn_web_session",
        KIND_CODES["sslvpn_web_session"],
        WEB_SESSION,
        lambda _w: None,
        # The id is the SHA-256 of the cookie: the raw cookie never reaches hasyncd.
        re.compile(r"[0-9a-f]{64}\Z"),
        _web_check,
        _web_expiry,
        _web_merge,
    ),
}
KINDS_BY_CODE: dict[int, Kind] = {k.code: k for k in KINDS.values()}


def kind_for_api(name: str) -> Kind:
    """The Kind for an API path segment; raises UnknownKind / NotReplicated per policy."""
    require_replicated(name)
    return KINDS[name]
