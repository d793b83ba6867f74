"""The schema's leaf codecs: one scalar type each, with its wire and API forms.

A codec carries the msgspec annotation of its wire form (what a blob holds:
enums as small integers, addresses as packed bytes, hex as raw bytes) and of
its API form (JSON: names, address text, hex text), and the conversions
between them.  ``hasyncd.schema`` builds lists and Structs out of them; the
record kinds are declared there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from hasyncd.addresses import (
    MAX_PREFIX_TEXT,
    PrefixW,
    format_ip,
    format_prefix,
    parse_ip,
    parse_prefix,
)
from hasyncd.schemaerrors import Bad


class Codec:
    """One schema type: its wire and API annotations and the conversions between them."""

    wire_type: Any
    json_type: Any
    expected = "a value"
    # None: the API value is the wire value (no conversion at all).
    to_wire: Callable[[Any], Any] | None = None
    to_json: Callable[[Any], Any] | None = None


# No C0/C1 control characters and no Unicode line/paragraph separators:
# these strings end up in logs and data-plane hook input (``Str.ok``).
_NO_CONTROL_RE = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z")
# Distinct pattern-checked strings (algorithm names) remembered as valid.
PATTERN_CACHE_SIZE = 4096


class Str(Codec):
    """A string; length checked by msgspec, characters by ``ok`` (see ``Struct.check_strings``).

    msgspec's own pattern check costs more than half of a blob's decode, so
    the characters are checked in Python: printable ASCII (the common case)
    needs no regex, and pattern-checked names (algorithms) come from a small
    vocabulary that is remembered.
    """

    def __init__(self, min_len: int = 1, max_len: int = 255, pattern: str | None = None) -> None:
        self.min_len, self.max_len = min_len, max_len
        self.pattern = re.compile(pattern + r"\Z") if pattern else _NO_CONTROL_RE
        what = f"matching {pattern}" if pattern else "without control characters"
        self.expected = f"a string of {min_len}..{max_len} characters {what}"
        self.wire_type = self.json_type = Annotated[
            str, msgspec.Meta(min_length=min_len, max_length=max_len)
        ]
        if pattern:
            seen: set[str] = set()
            rx = self.pattern

            def ok(v: str) -> bool:
                if v in seen:
                    return True
                if rx.match(v) is None:
                    return False
                if len(seen) >= PATTERN_CACHE_SIZE:
                    seen.clear()
                seen.add(v)
                return True

        else:

            def ok(v: str) -> bool:
                return (v.isascii() and v.isprintable()) or _NO_CONTROL_RE.match(v) is not None

        self.ok = ok


# msgspec bounds must fit an int64.  Larger upper bounds (u64 counters) are
# the msgpack integer range itself: a blob cannot hold more, and an API value
# beyond it makes the encoder fail, which ``find_unencodable`` turns into the
# field's error.
_INT64_MAX = 2**63 - 1


class Int(Codec):
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        if hi > _INT64_MAX:
            assert hi == 2**64 - 1, "only the u64 range may exceed int64"
            meta = msgspec.Meta(ge=lo)
        else:
            meta = msgspec.Meta(ge=lo, le=hi)
        self.wire_type = self.json_type = Annotated[int, meta]


class Num(Codec):
    """A number of seconds: integer or finite float, kept as given (round trips exactly)."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.wire_type = self.json_type = (
            Annotated[int, msgspec.Meta(ge=int(lo), le=int(hi))]
            | Annotated[float, msgspec.Meta(ge=float(lo), le=float(hi))]
        )


class Bool(Codec):
    wire_type = json_type = bool


class Enum(Codec):
    """A string from a fixed list; on the wire its index."""

    inline = "enum"  # how schemagen inlines its conversion

    def __init__(self, *names: str) -> None:
        self.names = names
        index = {n: i for i, n in enumerate(names)}
        self.wire_type = Annotated[int, msgspec.Meta(ge=0, le=len(names) - 1)]
        self.json_type = Literal[names]
        self.to_wire = index.__getitem__
        self.to_json = names.__getitem__


class Hex(Codec):
    """Binary data written as hex in JSON (keys, SPIs); raw bytes on the wire."""

    inline = "hex"  # how schemagen inlines its conversion

    def __init__(self, min_bytes: int, max_bytes: int) -> None:
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        size = f"{min_bytes}" if min_bytes == max_bytes else f"{min_bytes}..{max_bytes}"
        expected = f"a hex string of {size} bytes"
        self.wire_type = Annotated[bytes, msgspec.Meta(min_length=min_bytes, max_length=max_bytes)]
        self.json_type = Annotated[
            str, msgspec.Meta(min_length=2 * min_bytes, max_length=2 * max_bytes)
        ]

        def to_wire(v: str) -> bytes:
            try:
                out = bytes.fromhex(v)
            except ValueError:
                raise Bad(expected) from None
            if 2 * len(out) != len(v):  # fromhex skips whitespace: refuse it
                raise Bad(expected)
            return out

        self.to_wire = to_wire
        self.to_json = bytes.hex


class IP(Codec):
    """An IPv4 or IPv6 address; on the wire its 4 or 16 packed bytes."""

    inline = "ip"  # how schemagen inlines its conversion

    wire_type = Annotated[bytes, msgspec.Meta(min_length=4, max_length=16)]
    json_type = str
    to_wire = staticmethod(parse_ip)
    to_json = staticmethod(format_ip)


class Prefix(Codec):
    """A CIDR prefix such as 10.1.0.0/16; on the wire [packed network, length]."""

    wire_type = PrefixW
    json_type = Annotated[str, msgspec.Meta(max_length=MAX_PREFIX_TEXT)]
    to_wire = staticmethod(parse_prefix)
    to_json = staticmethod(format_prefix)


# --- composites ------------------------------------------------------------------------


class Nullable(Codec):
    inline = "nullable"  # how schemagen inlines its conversion

    def __init__(self, inner: Codec) -> None:
        self.inner = inner
        self.wire_type = inner.wire_type | None
        self.json_type = inner.json_type | None
        fw, fj = inner.to_wire, inner.to_json
        if fw is not None:
            self.to_wire = lambda v: None if v is None else fw(v)
        if fj is not None:
            self.to_json = lambda w: None if w is None else fj(w)
