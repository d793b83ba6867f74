"""The three replicated kinds: their schemas, limits and domain rules.

For each kind: the schema (``hasyncd.schema`` codecs, one declaration giving
the wire and API Structs), the cross-field rules a wire value must pass, how
its id derives from its fields, when it expires, how two versions merge after
a split brain (counters never go backwards), and what a promotion changes
(outbound ESP sequence jump, IKE message-ID sync).  ``hasyncd.records`` binds
them into ``Kind`` objects.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hasyncd.errors import RecordError
from hasyncd.schema import (
    IP,
    Bool,
    CachedList,
    Enum,
    Field,
    Hex,
    Int,
    Nullable,
    Num,
    Prefix,
    Str,
    Struct,
    check_ip,
    format_ip,
    prefix_error,
    prefix_ok,
)

U32 = 2**32 - 1
U64 = 2**64 - 1
# Unix seconds up to the year 36812: far beyond any lifetime, still exact in a float.
MAX_TIME = 2.0**40
MAX_KEY_BYTES = 128  # longest IPsec/IKE key: 64-byte HMAC-SHA512 key plus salt, doubled
MAX_SELECTORS = 64  # strongSwan's traffic selector lists are far shorter in practice
MAX_GROUPS = 64
# 64 ASCII groups of 128 characters encode to ~8.5 KiB, below MAX_RECORD_BYTES;
# multi-byte characters can pass it, which the encoder refuses with a clear error.
MAX_GROUP_LEN = 128
# A record's encoded size limit: the largest legal record (an inbound SA with
# an 8 KiB replay bitmap and 64 selectors) encodes to about 12 KiB; 16 KiB
# keeps any record far inside one 64 KiB transport frame.  Checked at encode.
MAX_RECORD_BYTES = 16 * 1024
MAX_REPLAY_WINDOW = 65536  # packets; Linux caps ESN replay bitmaps well below this
ALG = r"[a-z0-9][a-z0-9()_.,+-]{0,63}"  # xfrm ("rfc4106(gcm(aes))") and IKE names

_KEY = Struct("Key", Field("alg", Str(1, 64, ALG)), Field("key", Hex(1, MAX_KEY_BYTES)))
_LIFETIME = Struct(
    "Lifetime",
    *(
        Field(name, Nullable(Int(0, U64)), None)
        for name in ("soft_s", "hard_s", "soft_bytes", "hard_bytes", "soft_packets", "hard_packets")
    ),
)
_SELECTOR = Struct(
    "Selector",
    Field("src", Prefix()),
    Field("dst", Prefix()),
    Field("proto", Int(0, 255), 0),
    Field("sport", Int(0, 65535), 0),
    Field("dport", Int(0, 65535), 0),
)


def _check_selectors(selectors: list[Any], path: str) -> None:
    for i, sel in enumerate(selectors):
        for end in ("src", "dst"):
            if not prefix_ok(getattr(sel, end)):
                raise prefix_error(f"{path}[{i}].{end}")
        if len(sel.src.net) != len(sel.dst.net):
            raise RecordError(
                f"{path}[{i}]: src and dst must be of one family", field=f"{path}[{i}]"
            )


_SELECTORS = CachedList("selectors", _SELECTOR, MAX_SELECTORS, _check_selectors)
_GROUPS = CachedList("groups", Str(1, MAX_GROUP_LEN), MAX_GROUPS)
_ENDPOINT = Struct("Endpoint", Field("addr", IP()), Field("port", Int(1, 65535)))

IPSEC_SA = Struct(
    "IpsecSa",
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
                "Encap",
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
    Field("selectors", _SELECTORS, []),
    Field("ike_sa", Nullable(Hex(16, 16)), None),
    Field("rekey_required", Bool(), False),
)

IKE_SA = Struct(
    "IkeSa",
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
            "Algs",
            Field("enc", Str(1, 64, ALG)),
            Field("integ", Nullable(Str(1, 64, ALG)), None),
            Field("prf", Str(1, 64, ALG)),
            Field("dh", Str(1, 64, ALG)),
        ),
    ),
    Field(
        "keys",
        Struct(
            "IkeKeys",
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
    "WebSession",
    Field("user", Str(1, 255)),
    Field("groups", _GROUPS, []),
    Field("realm", Str(0, 255), ""),
    Field("auth_method", Str(1, 64)),
    Field("portal", Str(1, 255)),
    Field("client_ip", Nullable(IP()), None),
    Field("created_at", Num(0, MAX_TIME)),
    Field("last_seen", Num(0, MAX_TIME)),
    Field("idle_timeout_s", Int(1, 2**31)),
    Field("expires_at", Num(0, MAX_TIME)),
)


# --- ipsec_sa ----------------------------------------------------------------

_DIR_IN, _DIR_OUT = 0, 1
_ESP, _AH = 0, 1
_PROTO_NAMES = ("esp", "ah")


def _sa_id(w: Any) -> str:
    return f"{_PROTO_NAMES[w.proto]}-{w.spi:08x}@{format_ip(w.dst)}"


def _sa_check(w: Any, lists: bool = True) -> None:
    """The SA's cross-field rules; ``lists=False``: its selectors were checked on conversion."""
    n = len(w.src)
    if n not in {4, 16}:
        check_ip(w.src, "src")
    if len(w.dst) != n:
        check_ip(w.dst, "dst")
        raise RecordError("src and dst must be addresses of one family", field="dst")
    if w.proto == _ESP:
        if w.enc is None:
            raise RecordError("an ESP SA needs enc ({alg, key})", field="enc")
    else:
        if w.enc is not None:
            raise RecordError("an AH SA has no encryption: enc must be null", field="enc")
        if w.auth is None:
            raise RecordError("an AH SA needs auth ({alg, key})", field="auth")
        if w.encap is not None:
            raise RecordError("UDP encapsulation applies to ESP only", field="encap")
    if w.replay_bitmap is not None and w.direction != _DIR_IN:
        raise RecordError("replay_bitmap applies to inbound SAs only", field="replay_bitmap")
    if not w.esn and w.seq > U32:
        raise RecordError("seq exceeds 2^32-1 on an SA without ESN", field="seq")
    if lists:
        _SELECTORS.check(w.selectors, "selectors")


def _sa_expiry(w: Any) -> float | None:
    hard = w.lifetime.hard_s
    return None if hard is None else float(w.created_at + hard)


_replace = msgspec.structs.replace


def _sa_merge(winner: Any, loser: Any) -> Any:
    """Counters never go backwards: keep the winner's fields, the larger counters."""
    changes: dict[str, Any] = {
        "bytes": max(winner.bytes, loser.bytes),
        "packets": max(winner.packets, loser.packets),
        "rekey_required": winner.rekey_required or loser.rekey_required,
    }
    if loser.seq > winner.seq:
        changes["seq"] = loser.seq
        changes["replay_bitmap"] = loser.replay_bitmap
    return _replace(winner, **changes)


def advance_outbound_seq(wire: Any, margin: int) -> Any | None:
    """The promotion's replay-counter jump for one SA; None if it does not apply.

    The old primary sent packets past the last replicated ``seq``; the peer's
    replay window drops anything at or below what it has seen.  Jumping by a
    margin larger than the packets sent between two replications makes the
    first packets of the new primary acceptable.  Without ESN a counter that
    would pass 2^32-1 is pinned there and the SA marked for rekeying.
    """
    if wire.direction != _DIR_OUT:
        return None
    limit = U64 if wire.esn else U32
    seq = wire.seq + margin
    if seq > limit:
        return _replace(wire, seq=limit, rekey_required=True)
    return _replace(wire, seq=seq)


# --- ike_sa ------------------------------------------------------------------


def _ike_id(w: Any) -> str:
    return str(w.ispi.hex() + w.rspi.hex())


def _ike_check(w: Any, lists: bool = True) -> None:
    if w.ispi == bytes(8):
        raise RecordError("ispi must not be zero", field="ispi")
    check_ip(w.local.addr, "local.addr")
    check_ip(w.remote.addr, "remote.addr")
    if len(w.local.addr) != len(w.remote.addr):
        raise RecordError("local and remote must be addresses of one family", field="remote")
    if w.expires_at < w.established_at:
        raise RecordError("expires_at is before established_at", field="expires_at")


def _ike_expiry(w: Any) -> float | None:
    return float(w.expires_at)


def _ike_merge(winner: Any, loser: Any) -> Any:
    differs = winner.msgid_send != loser.msgid_send or winner.msgid_recv != loser.msgid_recv
    # Both sides used the SA during the split: the IKE daemon must resynchronize.
    return _replace(
        winner,
        msgid_send=max(winner.msgid_send, loser.msgid_send),
        msgid_recv=max(winner.msgid_recv, loser.msgid_recv),
        mid_sync_required=differs or winner.mid_sync_required or loser.mid_sync_required,
    )


def require_mid_sync(wire: Any) -> Any | None:
    """Promotion: flag the IKE SA for RFC 6311 message-ID sync (None if already flagged)."""
    if wire.mid_sync_required:
        return None
    return _replace(wire, mid_sync_required=True)


# --- sslvpn_web_session -----------------------------------------------------


def _web_check(w: Any, lists: bool = True) -> None:
    """The session's rules; ``lists=False``: its groups were checked on conversion."""
    if lists:
        _GROUPS.check(w.groups, "groups")
    if w.client_ip is not None:
        check_ip(w.client_ip, "client_ip")
    if w.last_seen < w.created_at:
        raise RecordError("last_seen is before created_at", field="last_seen")
    if w.expires_at < w.created_at:
        raise RecordError("expires_at is before created_at", field="expires_at")


def _web_expiry(w: Any) -> float | None:
    return float(min(w.expires_at, w.last_seen + w.idle_timeout_s))


def _web_merge(winner: Any, loser: Any) -> Any:
    return _replace(winner, last_seen=max(winner.last_seen, loser.last_seen))
