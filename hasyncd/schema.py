"""Record schemas declared once, checked by msgspec: API JSON, positional msgpack on the wire.

A schema is a tree of *codecs* (``Str``, ``Int``, ``Hex``, ``IP``, ``Prefix``,
``Struct`` ...).  From one declaration ``Struct`` builds two msgspec types:

* the **wire** type: a frozen ``array_like`` Struct whose msgpack encoding is
  the record's blob (positional arrays, enums as small integers, addresses as
  packed bytes, hex as raw bytes); decoding a blob into it is the C-level type
  and range check a secondary runs on every replicated record;
* the **API** type: a Struct of the JSON form (names, hex text, address text,
  defaults for optional fields, unknown fields refused) that JSON bytes decode
  straight into.

``Struct.to_wire`` converts an API value into the wire value (hex and address
text to bytes, with caches for the prefixes and addresses that repeat from
record to record), ``Struct.to_json`` back.  Two checks msgspec cannot express
are done by ``check_ip`` / ``check_prefix`` (called by each kind's rules): an
address is 4 or 16 bytes; a prefix length fits its address and no host bit is
set.

Errors name the field path and the expectation, never the offending value,
so key material cannot leak into an error body or a log line.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from hasyncd.errors import RecordError, UnknownField

# No C0/C1 control characters and no Unicode line/paragraph separators:
# these strings end up in logs and data-plane hook input (``Str.ok``).
# Distinct address and prefix texts remembered with their packed form: the
# same gateway addresses and site subnets recur in most records.  Bounds the
# cache's memory (about 200 B an entry); it is emptied when full.
TEXT_CACHE_SIZE = 8192
MAX_IP_TEXT = 45  # the longest IPv6 text form (with an embedded IPv4 address)
MAX_PREFIX_TEXT = 49

# Distinct list encodings (selector sets, group lists) remembered as checked:
# at ~150 B each, bounds the cache to a few MiB; it is emptied when full.
LIST_CACHE_SIZE = 16384

REQUIRED: Any = msgspec.NODEFAULT
_encode = msgspec.msgpack.Encoder().encode


class Bad(Exception):
    """A value failed a Python-level conversion; ``path`` is filled in on the way out."""

    def __init__(self, expected: str, path: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.path = path


def _err(path: str, expected: str) -> RecordError:
    path = path or "record"
    return RecordError(f"field {path}: expected {expected}", field=path)


def _join(name: str | int, path: str) -> str:
    head = f"[{name}]" if isinstance(name, int) else name
    if not path:
        return head
    return head + path if path.startswith("[") else f"{head}.{path}"


class Codec:
    """One schema type: its wire and API annotations and the conversions between them."""

    wire_type: Any
    json_type: Any
    expected = "a value"
    # None: the API value is the wire value (no conversion at all).
    to_wire: Callable[[Any], Any] | None = None
    to_json: Callable[[Any], Any] | None = None


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

    def __init__(self, *names: str) -> None:
        self.names = names
        index = {n: i for i, n in enumerate(names)}
        self.wire_type = Annotated[int, msgspec.Meta(ge=0, le=len(names) - 1)]
        self.json_type = Literal[names]
        self.to_wire = index.__getitem__
        self.to_json = names.__getitem__


class Hex(Codec):
    """Binary data written as hex in JSON (keys, SPIs); raw bytes on the wire."""

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


# --- addresses -------------------------------------------------------------------------

_IP_EXPECTED = "an IPv4 or IPv6 address"
_PREFIX_EXPECTED = "a CIDR prefix like 10.0.0.0/24 (no host bits set)"
_ip_cache: dict[str, bytes] = {}
_prefix_cache: dict[str, Any] = {}
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
        raise _err(path, "4 or 16 address bytes")


class IP(Codec):
    """An IPv4 or IPv6 address; on the wire its 4 or 16 packed bytes."""

    wire_type = Annotated[bytes, msgspec.Meta(min_length=4, max_length=16)]
    json_type = str
    to_wire = staticmethod(parse_ip)
    to_json = staticmethod(format_ip)


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
    return _err(
        path, "a network of 4 or 16 bytes, a prefix length that fits it and no host bits set"
    )


class Prefix(Codec):
    """A CIDR prefix such as 10.1.0.0/16; on the wire [packed network, length]."""

    wire_type = PrefixW
    json_type = Annotated[str, msgspec.Meta(max_length=MAX_PREFIX_TEXT)]
    to_wire = staticmethod(parse_prefix)
    to_json = staticmethod(format_prefix)


# --- composites ------------------------------------------------------------------------


class Nullable(Codec):
    def __init__(self, inner: Codec) -> None:
        self.inner = inner
        self.wire_type = inner.wire_type | None
        self.json_type = inner.json_type | None
        fw, fj = inner.to_wire, inner.to_json
        if fw is not None:
            self.to_wire = lambda v: None if v is None else fw(v)
        if fj is not None:
            self.to_json = lambda w: None if w is None else fj(w)


class ListOf(Codec):
    def __init__(self, inner: Codec, max_items: int) -> None:
        self.inner, self.max_items = inner, max_items
        self.wire_type = Annotated[list[inner.wire_type], msgspec.Meta(max_length=max_items)]  # type: ignore[name-defined]
        self.json_type = Annotated[list[inner.json_type], msgspec.Meta(max_length=max_items)]  # type: ignore[name-defined]
        fw, fj = inner.to_wire, inner.to_json
        if fw is not None:

            def to_wire(v: list[Any]) -> list[Any]:
                out = []
                for i, x in enumerate(v):
                    try:
                        out.append(fw(x))
                    except Bad as exc:
                        exc.path = _join(i, exc.path)
                        raise
                return out

            self.to_wire = to_wire
        if fj is not None:
            self.to_json = lambda w: [fj(x) for x in w]


class CachedList(ListOf):
    """A list kept as its raw msgpack on the wire, checked once per distinct encoding.

    Lists such as an SA's traffic selectors or a session's groups repeat from
    record to record (every SA of a tunnel, every user of a group): the wire
    value is a ``msgspec.Raw`` (no objects are built for it when a blob is
    decoded) and ``check`` decodes and checks an encoding only when it has
    not seen it before.  ``check_items`` adds the rules msgspec cannot
    express (raising RecordError with the item's path).
    """

    def __init__(
        self,
        name: str,
        inner: Codec,
        max_items: int,
        check_items: Callable[[list[Any], str], None] | None = None,
    ) -> None:
        self.name = name
        self.inner, self.max_items = inner, max_items
        typ = Annotated[list[inner.wire_type], msgspec.Meta(max_length=max_items)]  # type: ignore[name-defined]
        self._decoder = msgspec.msgpack.Decoder(typ)
        self._check_items = check_items
        self._seen: set[bytes] = set()
        self.wire_type = msgspec.Raw
        self.json_type = Annotated[list[inner.json_type], msgspec.Meta(max_length=max_items)]  # type: ignore[name-defined]
        fw, fj = inner.to_wire, inner.to_json

        api_cache: dict[tuple[Any, ...], msgspec.Raw] = {}

        def to_wire(v: list[Any]) -> msgspec.Raw:
            key = tuple(v)  # API values are frozen Structs: hashable
            out = api_cache.get(key)
            if out is None:
                out = convert(v)
                if len(api_cache) >= LIST_CACHE_SIZE:
                    api_cache.clear()
                api_cache[key] = out
            return out

        def convert(v: list[Any]) -> msgspec.Raw:
            items = v
            if fw is not None:
                items = []
                for i, x in enumerate(v):
                    try:
                        items.append(fw(x))
                    except Bad as exc:
                        exc.path = _join(i, exc.path)
                        raise
            return msgspec.Raw(self._checked(_encode(items), items, self.name))

        def to_json(raw: msgspec.Raw) -> list[Any]:
            items = self._decoder.decode(raw)
            return items if fj is None else [fj(x) for x in items]

        self.to_wire = to_wire
        self.to_json = to_json

    def items(self, raw: msgspec.Raw) -> list[Any]:
        items: list[Any] = self._decoder.decode(raw)
        return items

    def _checked(self, data: bytes, items: list[Any], path: str) -> bytes:
        inner = self.inner
        if isinstance(inner, Str):
            for i, x in enumerate(items):
                if not inner.ok(x):
                    raise _err(f"{path}[{i}]", inner.expected)
        elif isinstance(inner, Struct):
            for i, x in enumerate(items):
                try:
                    inner.check_strings(x)
                except RecordError as exc:
                    where = f"{path}[{i}].{exc.field}"
                    raise _err(where, exc.message.split(": expected ", 1)[-1]) from None
        if self._check_items is not None:
            self._check_items(items, path)
        if len(self._seen) >= LIST_CACHE_SIZE:
            self._seen.clear()
        self._seen.add(data)
        return data

    def check(self, raw: msgspec.Raw, path: str) -> None:
        """Check a list decoded from a blob (raises RecordError naming the item)."""
        data = bytes(raw)
        if data in self._seen:
            return
        try:
            items = self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            err = validation_error(exc)
            inner = (err.field or "").removeprefix("record")
            where = path + (name_path(self, inner) if inner else "")
            detail = err.message.split(": ", 1)[-1]
            raise RecordError(f"field {where}: {detail}", field=where) from None
        except msgspec.DecodeError:
            raise _err(path, "a list") from None
        self._checked(data, items, path)


class Field:
    __slots__ = ("codec", "default", "name")

    def __init__(self, name: str, codec: Codec, default: Any = REQUIRED) -> None:
        self.name, self.codec, self.default = name, codec, default

    @property
    def type(self) -> Codec:
        return self.codec

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Struct(Codec):
    """A JSON object with a fixed set of fields; on the wire a positional array."""

    def __init__(self, name: str, *fields: Field) -> None:
        self.fields = fields
        self.names = tuple(f.name for f in fields)
        self.pos = {f.name: i for i, f in enumerate(fields)}
        wire: type[msgspec.Struct] = msgspec.defstruct(
            name,
            [(f.name, f.codec.wire_type) for f in fields],
            array_like=True,
            frozen=True,
            forbid_unknown_fields=True,
            gc=False,  # atomic fields and lists only: no cycles, no collector work
        )
        json_fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for f in fields:
            if f.required:
                json_fields.append((f.name, f.codec.json_type))
            else:
                json_fields.append((f.name, f.codec.json_type, _json_default(f)))
        api: type[msgspec.Struct] = msgspec.defstruct(
            f"{name}Json",
            json_fields,
            forbid_unknown_fields=True,
            kw_only=True,
            frozen=True,
            gc=False,
        )
        self.wire_type = self.wire = wire
        self.json_type = self.api = api
        self.check_strings = _compile_string_checks(self)
        plan = [(f.name, f.codec.to_wire) for f in fields]
        back = [(f.name, f.codec.to_json) for f in fields]

        def slow(v: Any) -> Any:
            """Convert field by field, naming the field that fails."""
            args = []
            for n, conv in plan:
                x = getattr(v, n)
                if conv is not None:
                    try:
                        x = conv(x)
                    except Bad as exc:
                        exc.path = _join(n, exc.path)
                        raise
                args.append(x)
            return wire(*args)

        fast = _compile_to_wire(wire, plan)

        def to_wire(v: Any) -> Any:
            try:
                return fast(v)
            except Bad:
                return slow(v)

        def to_json(w: Any) -> dict[str, Any]:
            return {n: getattr(w, n) if c is None else c(getattr(w, n)) for n, c in back}

        self.to_wire = to_wire
        self.to_json = to_json


def _compile_to_wire(
    wire: type[msgspec.Struct], plan: list[tuple[str, Callable[[Any], Any] | None]]
) -> Callable[[Any], Any]:
    """One straight-line function for a Struct's API -> wire conversion (the hot path)."""
    env: dict[str, Any] = {"wire": wire}
    args = []
    for i, (name, conv) in enumerate(plan):
        assert name.isidentifier()
        if conv is None:
            args.append(f"v.{name}")
        else:
            env[f"c{i}"] = conv
            args.append(f"c{i}(v.{name})")
    src = f"def fast(v):\n    return wire({', '.join(args)})\n"
    exec(src, env)  # noqa: S102 - generated from the schema's own field names, not from input
    return env["fast"]  # type: ignore[no-any-return]


def _string_fail(path: str, codec: Str) -> None:
    raise _err(path, codec.expected)


def _compile_string_checks(struct: Struct) -> Callable[[Any], None]:
    """One straight-line function checking every string of a wire value (``Str.ok``).

    Lists kept raw (``CachedList``) check their items themselves.
    """
    env: dict[str, Any] = {"fail": _string_fail}
    lines = ["def check(w):"]
    counter = iter(range(10_000))

    def gen(codec: Struct, expr: str, path: str, depth: int) -> None:
        pad = "    " * depth
        for f in codec.fields:
            c = f.codec
            nullable = isinstance(c, Nullable)
            while isinstance(c, Nullable):
                c = c.inner
            here = f"{path}.{f.name}" if path else f.name
            if isinstance(c, Str):
                k = next(counter)
                env[f"s{k}"] = c
                env[f"ok{k}"] = c.ok
                var = f"v{k}"
                lines.append(f"{pad}{var} = {expr}.{f.name}")
                cond = f"{var} is not None and " if nullable else ""
                lines.append(f"{pad}if {cond}not ok{k}({var}):")
                lines.append(f"{pad}    fail({here!r}, s{k})")
            elif isinstance(c, Struct) and _has_strings(c):
                var = f"n{next(counter)}"
                lines.append(f"{pad}{var} = {expr}.{f.name}")
                if nullable:
                    lines.append(f"{pad}if {var} is not None:")
                    gen(c, var, here, depth + 1)
                else:
                    gen(c, var, here, depth)
            else:
                assert not isinstance(c, ListOf) or isinstance(c, CachedList)

    gen(struct, "w", "", 1)
    lines.append("    return None")
    exec("\n".join(lines) + "\n", env)  # noqa: S102 - generated from the schema, not from input
    return env["check"]  # type: ignore[no-any-return]


def _has_strings(codec: Codec) -> bool:
    while isinstance(codec, Nullable):
        codec = codec.inner
    if isinstance(codec, Str):
        return True
    return isinstance(codec, Struct) and any(_has_strings(f.codec) for f in codec.fields)


def _json_default(f: Field) -> Any:
    d = f.default
    if isinstance(d, list):
        return msgspec.field(default_factory=list)
    if isinstance(d, dict):
        codec = f.codec
        assert isinstance(codec, Struct)
        return msgspec.field(default_factory=lambda: msgspec.convert(d, codec.api))
    return d


# --- error mapping ---------------------------------------------------------------------

_AT = re.compile(r" - at `\$(.*)`\Z")
_UNKNOWN = re.compile(r"Object contains unknown field `(.*)`")
_MISSING = re.compile(r"Object missing required field `(.*)`")
# msgspec quotes an invalid enum value: never let a value through.
_ENUM_VALUE = re.compile(r"Invalid enum value .*")


def validation_error(exc: msgspec.ValidationError) -> RecordError:
    """A RecordError naming the field of a msgspec ValidationError, without any value."""
    text = str(exc)
    path = ""
    m = _AT.search(text)
    if m is not None:
        path = m.group(1).removeprefix(".")
        text = text[: m.start()]
    m = _UNKNOWN.match(text)
    if m is not None:
        name = _join(m.group(1)[:64], "") if not path else f"{path}.{m.group(1)[:64]}"
        return UnknownField(f"unknown field {name}", field=name)
    m = _MISSING.match(text)
    if m is not None:
        name = m.group(1) if not path else f"{path}.{m.group(1)}"
        return RecordError(f"missing field {name}", field=name)
    if _ENUM_VALUE.match(text):
        text = "expected one of the names the schema lists"
    elif text.startswith("Expected `object`") and not path:
        text = "expected a JSON object"
    path = path or "record"
    return RecordError(f"field {path}: {text[:1].lower() + text[1:]}", field=path)


_INDEX = re.compile(r"\[(\d+)\]")


def name_path(codec: Codec, positional: str) -> str:
    """A wire value's positional path ("[15][1]") in field names ("lifetime.hard_s")."""
    out = ""
    for index_text in _INDEX.findall(positional):
        i = int(index_text)
        while isinstance(codec, Nullable):
            codec = codec.inner
        if isinstance(codec, Struct) and i < len(codec.fields):
            f = codec.fields[i]
            out = f"{out}.{f.name}" if out else f.name
            codec = f.codec
        elif isinstance(codec, ListOf):
            out = f"{out}[{i}]"
            codec = codec.inner
        else:
            break
    return out or "record"


def find_unencodable(w: Any, path: str = "") -> str | None:
    """The path of the first value msgpack cannot hold (slow; for errors): a lone
    surrogate in a string (valid JSON, not valid text) or an integer beyond u64."""
    if type(w) is str:
        try:
            w.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(w, msgspec.Raw):
        return None
    if type(w) is int:
        return path if w > 2**64 - 1 else None
    return _find_in(w, path)


def _find_in(w: Any, path: str) -> str | None:
    if isinstance(w, list):
        items: list[tuple[str, Any]] = [(f"{path}[{i}]", x) for i, x in enumerate(w)]
    elif isinstance(w, msgspec.Struct):
        items = [(f"{path}.{n}" if path else n, getattr(w, n)) for n in w.__struct_fields__]
    else:
        return None
    for p, x in items:
        found = find_unencodable(x, p)
        if found is not None:
            return found
    return None


def conversion_error(exc: Bad) -> RecordError:
    return _err(exc.path, exc.expected)
