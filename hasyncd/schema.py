"""Record schemas declared once, checked by msgspec: API JSON, positional msgpack on the wire.

A schema is a tree of *codecs*: the leaves (``Str``, ``Int``, ``Hex``, ``IP``,
``Prefix`` ...) are ``hasyncd.codecs``; this module adds lists (``ListOf``,
``CachedList``) and ``Struct``.  From one declaration ``Struct`` builds two
msgspec types:

* the **wire** type: a frozen ``array_like`` Struct whose msgpack encoding is
  the record's blob (positional arrays, enums as small integers, addresses as
  packed bytes, hex as raw bytes); decoding a blob into it is the C-level type
  and range check a secondary runs on every replicated record;
* the **API** type: a Struct of the JSON form (names, hex text, address text,
  defaults for optional fields, unknown fields refused) that JSON bytes decode
  straight into.

``Struct.to_wire`` converts an API value into the wire value (hex and address
text to bytes, with caches for the prefixes and addresses that repeat from
record to record), ``Struct.to_json`` back.  ``Struct.api_raw`` is the API
type with its top-level lists kept as JSON text, which ``to_wire_raw``
converts through each list's cache of texts it has seen.  Two checks msgspec cannot express
are done by ``check_ip`` / ``check_prefix`` (called by each kind's rules): an
address is 4 or 16 bytes; a prefix length fits its address and no host bit is
set.

Errors name the field path and the expectation, never the offending value,
so key material cannot leak into an error body or a log line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from hasyncd.addresses import (
    check_ip,
    format_ip,
    format_prefix,
    parse_ip,
    parse_prefix,
    prefix_error,
    prefix_ok,
)
from hasyncd.codecs import IP, Bool, Codec, Enum, Hex, Int, Nullable, Num, Prefix, Str
from hasyncd.errors import RecordError
from hasyncd.schemaerrors import (
    Bad,
    conversion_error,
    field_error,
    find_unencodable,
    join_path,
    validation_error,
)
from hasyncd.schemagen import compile_to_wire

__all__ = [
    "IP",
    "Bad",
    "Bool",
    "Codec",
    "Enum",
    "Hex",
    "Int",
    "Nullable",
    "Num",
    "Prefix",
    "Str",
    "check_ip",
    "conversion_error",
    "find_unencodable",
    "format_ip",
    "format_prefix",
    "parse_ip",
    "parse_prefix",
    "prefix_error",
    "prefix_ok",
    "validation_error",
]

# Distinct list encodings (selector sets, group lists) remembered as checked:
# at ~150 B each, bounds the cache to a few MiB; it is emptied when full.
LIST_CACHE_SIZE = 16384
# Distinct list JSON texts remembered with their wire encoding (``CachedList.to_wire_json``):
# at ~500 B of text each (six selectors), a few MiB at most; emptied when full.
JSON_LIST_CACHE_SIZE = 4096

REQUIRED: Any = msgspec.NODEFAULT
_EMPTY_LIST_TEXT = msgspec.Raw(b"[]")
_encode = msgspec.msgpack.Encoder().encode


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
                        exc.path = join_path(i, exc.path)
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
                        exc.path = join_path(i, exc.path)
                        raise
            return msgspec.Raw(self._checked(_encode(items), items, self.name))

        def to_json(raw: msgspec.Raw) -> list[Any]:
            items = self._decoder.decode(raw)
            return items if fj is None else [fj(x) for x in items]

        json_cache: dict[bytes, msgspec.Raw] = {}
        json_decoder = msgspec.json.Decoder(self.json_type)

        def to_wire_json(raw: msgspec.Raw) -> msgspec.Raw:
            """``to_wire`` of the list's JSON text: one lookup for a text seen before.

            A list that fails raises whatever its decode or check raises; the
            caller then decodes the whole record again, which names the field.
            """
            key = bytes(raw)
            out = json_cache.get(key)
            if out is None:
                out = to_wire(json_decoder.decode(key))
                if len(json_cache) >= JSON_LIST_CACHE_SIZE:
                    json_cache.clear()
                json_cache[key] = out
            return out

        self.to_wire = to_wire
        self.to_wire_json = to_wire_json
        self.to_json = to_json

    def items(self, raw: msgspec.Raw) -> list[Any]:
        items: list[Any] = self._decoder.decode(raw)
        return items

    def _checked(self, data: bytes, items: list[Any], path: str) -> bytes:
        inner = self.inner
        if isinstance(inner, Str):
            for i, x in enumerate(items):
                if not inner.ok(x):
                    raise field_error(f"{path}[{i}]", inner.expected)
        elif isinstance(inner, Struct):
            for i, x in enumerate(items):
                try:
                    inner.check_strings(x)
                except RecordError as exc:
                    where = f"{path}[{i}].{exc.field}"
                    raise field_error(where, exc.message.split(": expected ", 1)[-1]) from None
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
            raise field_error(path, "a list") from None
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

    inline = "struct"  # how schemagen inlines its conversion

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
        # The API type with each top-level CachedList kept as its JSON text: lists
        # repeat from record to record, so most are converted by one cache lookup
        # instead of being decoded into Structs (``Kind.parse_json``).  The same
        # type as ``api`` when there is no such list.
        raw_lists = {f.name: f.codec for f in fields if isinstance(f.codec, CachedList)}
        self.api_raw: type[msgspec.Struct] = api
        if raw_lists:
            text_fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
            for f, jf in zip(fields, json_fields, strict=True):
                if f.name not in raw_lists:
                    text_fields.append(jf)
                elif f.required:
                    text_fields.append((f.name, msgspec.Raw))
                else:
                    assert f.default == [], "a list field's default is the empty list"
                    text_fields.append((f.name, msgspec.Raw, _EMPTY_LIST_TEXT))
            self.api_raw = msgspec.defstruct(
                f"{name}JsonText",
                text_fields,
                forbid_unknown_fields=True,
                kw_only=True,
                frozen=True,
                gc=False,
            )
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
                        exc.path = join_path(n, exc.path)
                        raise
                args.append(x)
            return wire(*args)

        fast = compile_to_wire(self)
        # Only a fast path: any failure means "decode the record in full" (Kind.parse_json).
        self.to_wire_raw = (
            compile_to_wire(self, {n: c.to_wire_json for n, c in raw_lists.items()})
            if raw_lists
            else fast
        )

        def to_wire(v: Any) -> Any:
            try:
                return fast(v)
            except (Bad, ValueError):  # the slow path names the field
                return slow(v)

        def to_json(w: Any) -> dict[str, Any]:
            return {n: getattr(w, n) if c is None else c(getattr(w, n)) for n, c in back}

        self.to_wire = to_wire
        self.to_json = to_json


def _string_fail(path: str, codec: Str) -> None:
    raise field_error(path, codec.expected)


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
