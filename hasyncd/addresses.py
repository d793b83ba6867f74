"""Addresses and prefixes: text <-> packed bytes, fast, accepting what ``ipaddress`` does.

IPv4 text goes through ``socket.inet_pton`` (exactly ipaddress's dotted-quad
syntax); IPv6 through ``ipaddress`` (its corner cases differ from libc's).
Both directions are cached: the same gateway addresses and site subnets
recur in most records.  On the wire an address is 4 or 16 bytes and a prefix
``[network, length]`` with no host bit set (``prefix_ok``).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated

import msgspec

from hasyncd.errors import RecordError
from hasyncd.schemaerrors import Bad, field_error

# Distinct address and prefix texts remembered with their packed form: the
# same gateway addresses and site subnets recur in most records.  Bounds the
# cache's memory (about 200 B an entry); it is emptied when full.
TEXT_CACHE_SIZE = 8192
MAX_IP_TEXT = 45  # the longest IPv6 text form (with an embedded IPv4 address)
MAX_PREFIX_TEXT = 49


_IP_EXPECTED = "an IPv4 or IPv6 address"
_PREFIX_EXPECTED = "a CIDR prefix like 10.0.0.0/24 (no host bits set)"
_ip_cache: dict[str, bytes] = {}
_prefix_cache: dict[str, PrefixW] = {}
_inet_pton, _inet_ntop = socket.inet_pton, socket.inet_ntop
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def _parse_ip_text(v: str) -> bytes:
    """Address text -> packed bytes, accepting exactly what ``ipaddress.ip_address`` does."""
    if len(v) > MAX_IP_TEXT or "%" in v or not v.isascii():
        raise Bad(_IP_EXPECTED)
    if ":" not in v:
        # inet_pton(AF_INET) takes exactly a dotted quad of decimal octets
        # without leading zeros: ipaddress's IPv4 syntax.
        try:
            return _inet_pton(_AF_INET, v)
        except OSError:
            raise Bad(_IP_EXPECTED) from None
    try:  # IPv6 syntax has corner cases where libc and ipaddress differ: use ipaddress
        return ipaddress.IPv6Address(v).packed
    except ValueError:
        raise Bad(_IP_EXPECTED) from None


# The cache's lookup alone (``schemagen`` inlines it, calling ``parse_ip`` on a miss).
ip_cache_get = _ip_cache.get


def parse_ip(v: str) -> bytes:
    out = _ip_cache.get(v)
    if out is None:
        out = _parse_ip_text(v)
        if len(_ip_cache) >= TEXT_CACHE_SIZE:
            _ip_cache.clear()
        _ip_cache[v] = out
    return out


_text_of_ip: dict[bytes, str] = {}


def format_ip(packed: bytes) -> str:
    """Python's ``ipaddress`` text form (dotted quad; RFC 5952 for IPv6)."""
    out = _text_of_ip.get(packed)
    if out is None:
        if len(packed) == 4:
            out = _inet_ntop(_AF_INET, packed)
        else:
            out = str(ipaddress.IPv6Address(packed))
        if len(_text_of_ip) >= TEXT_CACHE_SIZE:
            _text_of_ip.clear()
        _text_of_ip[packed] = out
    return out


def check_ip(packed: bytes, path: str) -> None:
    if len(packed) != 4 and len(packed) != 16:
        raise field_error(path, "4 or 16 address bytes")


class PrefixW(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """A prefix on the wire: [packed network, prefix length]."""

    net: Annotated[bytes, msgspec.Meta(min_length=4, max_length=16)]
    plen: Annotated[int, msgspec.Meta(ge=0, le=128)]


# Host-bit masks by (address length, prefix length); None where the length does not fit.
_HOST_MASKS: dict[int, tuple[int | None, ...]] = {
    n: tuple((1 << (8 * n - plen)) - 1 if plen <= 8 * n else None for plen in range(129))
    for n in (4, 16)
}
_V4_MASKS, _V6_MASKS = _HOST_MASKS[4], _HOST_MASKS[16]


def _host_bits_clear(net: bytes, plen: int) -> bool:
    """The prefix length fits the address (4 or 16 bytes) and no host bit is set."""
    n = len(net)
    if not 0 <= plen <= 128:
        return False
    if n == 4:
        mask = _V4_MASKS[plen]
    elif n == 16:
        mask = _V6_MASKS[plen]
    else:
        return False
    return mask is not None and not int.from_bytes(net, "big") & mask


def _parse_prefix_text(v: str) -> PrefixW:
    if len(v) > MAX_PREFIX_TEXT or "/" not in v:
        raise Bad(_PREFIX_EXPECTED)
    addr, _, plen_text = v.partition("/")
    if not (plen_text.isascii() and plen_text.isdigit() and len(plen_text) <= 3):
        # Netmask forms (10.0.0.0/255.255.0.0) and the rest: what ipaddress accepts.
        return _parse_prefix_slow(v)
    try:
        net = _parse_ip_text(addr)
    except Bad:
        raise Bad(_PREFIX_EXPECTED) from None
    plen = int(plen_text)
    if not _host_bits_clear(net, plen):
        raise Bad(_PREFIX_EXPECTED)
    return PrefixW(net, plen)


def _parse_prefix_slow(v: str) -> PrefixW:
    if "%" in v:
        raise Bad(_PREFIX_EXPECTED)
    try:
        n = ipaddress.ip_network(v, strict=True)
    except ValueError:
        raise Bad(_PREFIX_EXPECTED) from None
    return PrefixW(n.network_address.packed, n.prefixlen)


def parse_prefix(v: str) -> PrefixW:
    out = _prefix_cache.get(v)
    if out is None:
        out = _parse_prefix_text(v)
        if len(_prefix_cache) >= TEXT_CACHE_SIZE:
            _prefix_cache.clear()
        _prefix_cache[v] = out
    return out


def format_prefix(p: PrefixW) -> str:
    return f"{format_ip(p.net)}/{p.plen}"


def prefix_ok(p: PrefixW) -> bool:
    return _host_bits_clear(p.net, p.plen)


def prefix_error(path: str) -> RecordError:
    return field_error(
        path, "a network of 4 or 16 bytes, a prefix length that fits it and no host bits set"
    )
