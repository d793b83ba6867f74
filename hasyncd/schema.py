"""A small declarative schema language for records: JSON in the API, positional msgpack on the wire.

Each field type knows three things:

* ``from_json``  validate an API value and convert it to its wire form;
* ``to_json``    convert a wire value back (the inverse, canonicalized);
* ``check_wire`` validate a value decoded from a peer before it is applied.

Wire forms are compact on purpose (a stored record is one msgpack blob, and
the store's memory budget is counted in hundreds of bytes): structs are
positional arrays, enums are small integers, addresses are packed bytes and
hex strings are raw bytes.  Error messages name the field path and the
expectation, never the offending value, so key material cannot leak into an
error body or a log line.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hasyncd.errors import RecordError, UnknownField

# No C0/C1 control characters and no Unicode line/paragraph separators:
# these strings end up in logs and data-plane hook input.
_NO_CONTROL = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z")
_HEX = re.compile(r"[0-9a-fA-F]*\Z")


def _err(path: str, expected: str) -> RecordError:
    return RecordError(f"field {path}: expected {expected}", field=path)


class FieldType:
    """Base: subclasses implement the three conversions."""

    expected = "a value"

    def from_json(self, v: Any, path: str) -> Any:
        raise NotImplementedError

    def to_json(self, w: Any) -> Any:
        raise NotImplementedError

    def check_wire(self, w: Any, path: str) -> None:
        raise NotImplementedError


class Scalar(FieldType):
    """A type whose wire form is its JSON form: validating is all there is to convert."""

    def from_json(self, v: Any, path: str) -> Any:
        self.check_wire(v, path)
        return v

    def to_json(self, w: Any) -> Any:
        return w


class Str(Scalar):
    def __init__(self, min_len: int = 1, max_len: int = 255, pattern: str | None = None) -> None:
        self.min_len, self.max_len = min_len, max_len
        self.pattern = re.compile(pattern + r"\Z") if pattern else _NO_CONTROL
        what = f"matching {pattern}" if pattern else "without control characters"
        self.expected = f"a string of {min_len}..{max_len} characters {what}"

    def check_wire(self, w: Any, path: str) -> None:
        if type(w) is not str or not self.min_len <= len(w) <= self.max_len:
            raise _err(path, self.expected)
        if not self.pattern.match(w):
            raise _err(path, self.expected)
        if not w.isascii():
            try:
                w.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: valid JSON, not valid text
                raise _err(path, self.expected + " (valid Unicode)") from None


class Int(Scalar):
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.expected = f"an integer in [{lo}, {hi}]"

    def check_wire(self, w: Any, path: str) -> None:
        if type(w) is not int or not self.lo <= w <= self.hi:
            raise _err(path, self.expected)


class Num(Scalar):
    """A number of seconds: integer or finite float, kept as given (round trips exactly)."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self.expected = f"a number in [{lo:g}, {hi:g}]"

    def check_wire(self, w: Any, path: str) -> None:
        t = type(w)
        if t is not int and (t is not float or not math.isfinite(w)):
            raise _err(path, self.expected)
        if not self.lo <= w <= self.hi:
            raise _err(path, self.expected)


class Bool(Scalar):
    expected = "true or false"

    def check_wire(self, w: Any, path: str) -> None:
        if type(w) is not bool:
            raise _err(path, self.expected)


class Enum(FieldType):
    """A string from a fixed list; on the wire its index."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        self.expected = "one of " + ", ".join(f'"{n}"' for n in names)

    def from_json(self, v: Any, path: str) -> Any:
        if type(v) is not str or v not in self.index:
            raise _err(path, self.expected)
        return self.index[v]

    def to_json(self, w: Any) -> Any:
        return self.names[w]

    def check_wire(self, w: Any, path: str) -> None:
        if type(w) is not int or not 0 <= w < len(self.names):
            raise _err(path, f"an enum index below {len(self.names)}")


class IP(FieldType):
    """An IPv4 or IPv6 address; on the wire its 4 or 16 packed bytes."""

    expected = "an IPv4 or IPv6 address"

    def from_json(self, v: Any, path: str) -> Any:
        if type(v) is not str or len(v) > 45 or "%" in v:
            raise _err(path, self.expected)
        try:
            return ipaddress.ip_address(v).packed
        except ValueError:
            raise _err(path, self.expected) from None

    def to_json(self, w: Any) -> Any:
        return str(ipaddress.ip_address(w))

    def check_wire(self, w: Any, path: str) -> None:
        if type(w) is not bytes or len(w) not in (4, 16):
            raise _err(path, "4 or 16 address bytes")


class Prefix(FieldType):
    """A CIDR prefix such as 10.1.0.0/16; on the wire [packed network, length]."""

    expected = "a CIDR prefix like 10.0.0.0/24 (no host bits set)"

    def from_json(self, v: Any, path: str) -> Any:
        if type(v) is not str or len(v) > 49 or "%" in v or "/" not in v:
            raise _err(path, self.expected)
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError:
            raise _err(path, self.expected) from None
        return [net.network_address.packed, net.prefixlen]

    def to_json(self, w: Any) -> Any:
        return f"{ipaddress.ip_address(w[0])}/{w[1]}"

    def check_wire(self, w: Any, path: str) -> None:
        if type(w) is not list or len(w) != 2 or type(w[0]) is not bytes or type(w[1]) is not int:
            raise _err(path, "[network bytes, prefix length]")
        addr, plen = w
        if len(addr) not in (4, 16) or not 0 <= plen <= len(addr) * 8:
            raise _err(path, "a network of 4 or 16 bytes and a prefix length that fits it")
        host_bits = len(addr) * 8 - plen
        if host_bits and int.from_bytes(addr, "big") & ((1 << host_bits) - 1):
            raise _err(path, "a network address without host bits")

    @staticmethod
    def family(w: Any) -> int:
        return len(w[0])


class Hex(FieldType):
    """Binary data written as hex in JSON (keys, SPIs); raw bytes on the wire."""

    def __init__(self, min_bytes: int, max_bytes: int) -> None:
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        size = f"{min_bytes}" if min_bytes == max_bytes else f"{min_bytes}..{max_bytes}"
        self.expected = f"a hex string of {size} bytes"

    def from_json(self, v: Any, path: str) -> Any:
        if type(v) is not str or not 2 * self.min_bytes <= len(v) <= 2 * self.max_bytes:
            raise _err(path, self.expected)
        if len(v) % 2 or not _HEX.match(v):
            raise _err(path, self.expected)
        return bytes.fromhex(v)

    def to_json(self, w: Any) -> Any:
        return w.hex()

    def check_wire(self, w: Any, path: str) -> None:
        if type(w) is not bytes or not self.min_bytes <= len(w) <= self.max_bytes:
            raise _err(path, f"{self.min_bytes}..{self.max_bytes} bytes")


class Nullable(FieldType):
    def __init__(self, inner: FieldType) -> None:
        self.inner = inner
        self.expected = f"null or {inner.expected}"

    def from_json(self, v: Any, path: str) -> Any:
        return None if v is None else self.inner.from_json(v, path)

    def to_json(self, w: Any) -> Any:
        return None if w is None else self.inner.to_json(w)

    def check_wire(self, w: Any, path: str) -> None:
        if w is not None:
            self.inner.check_wire(w, path)


class ListOf(FieldType):
    def __init__(self, inner: FieldType, max_items: int) -> None:
        self.inner, self.max_items = inner, max_items
        self.expected = f"a list of at most {max_items} items"

    def from_json(self, v: Any, path: str) -> Any:
        if type(v) is not list or len(v) > self.max_items:
            raise _err(path, self.expected)
        return [self.inner.from_json(x, f"{path}[{i}]") for i, x in enumerate(v)]

    def to_json(self, w: Any) -> Any:
        return [self.inner.to_json(x) for x in w]

    def check_wire(self, w: Any, path: str) -> None:
        if type(w) is not list or len(w) > self.max_items:
            raise _err(path, self.expected)
        for i, x in enumerate(w):
            self.inner.check_wire(x, f"{path}[{i}]")


_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: FieldType
    default: Any = _REQUIRED  # a JSON value; converted once when the Struct is built

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


class Struct(FieldType):
    """A JSON object with a fixed set of fields; on the wire a positional array."""

    def __init__(self, *fields: Field) -> None:
        self.fields = fields
        self.names = tuple(f.name for f in fields)
        self.pos = {f.name: i for i, f in enumerate(fields)}
        self.expected = "an object"
        self._wire_defaults: list[Any] = [
            None if f.required else f.type.from_json(f.default, f.name) for f in fields
        ]

    def from_json(self, v: Any, path: str) -> Any:
        if type(v) is not dict:
            raise _err(path or "record", "a JSON object")
        prefix = f"{path}." if path else ""
        for key in v:
            if key not in self.pos:
                name = key[:64] if isinstance(key, str) else "?"
                raise UnknownField(f"unknown field {prefix}{name}", field=f"{prefix}{name}")
        out: list[Any] = []
        for f, default in zip(self.fields, self._wire_defaults, strict=True):
            if f.name in v:
                out.append(f.type.from_json(v[f.name], prefix + f.name))
            elif f.required:
                raise RecordError(f"missing field {prefix}{f.name}", field=prefix + f.name)
            else:
                out.append(_copy(default))
        return out

    def to_json(self, w: Any) -> Any:
        return {f.name: f.type.to_json(x) for f, x in zip(self.fields, w, strict=True)}

    def check_wire(self, w: Any, path: str) -> None:
        if type(w) is not list or len(w) != len(self.fields):
            raise _err(path or "record", f"an array of {len(self.fields)} fields")
        prefix = f"{path}." if path else ""
        for f, x in zip(self.fields, w, strict=True):
            f.type.check_wire(x, prefix + f.name)

    def getter(self, dotted: str) -> Callable[[Sequence[Any]], Any]:
        """A fast accessor for a (possibly nested) field of a wire value."""
        idx: list[int] = []
        struct: Struct = self
        for part in dotted.split("."):
            idx.append(struct.pos[part])
            ftype = struct.fields[struct.pos[part]].type
            if isinstance(ftype, Nullable):
                ftype = ftype.inner
            if isinstance(ftype, Struct):
                struct = ftype

        def get(w: Any) -> Any:
            for i in idx:
                if w is None:
                    return None
                w = w[i]
            return w

        return get


def _copy(w: Any) -> Any:
    # Defaults may be lists (selectors, lifetime); never share them between records.
    if type(w) is list:
        return [_copy(x) for x in w]
    return w
