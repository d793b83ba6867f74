"""The API -> wire conversion of a record schema, generated as one straight-line function.

``hasyncd.schema.Struct`` declares a record as a tree of codecs; converting an
API value into the wire value field by field (one Python call per codec, per
nesting level) was a third of the primary's CPU per record.  ``compile_to_wire``
flattens the tree into one function per top-level Struct: enum names become a
dict lookup, hex text ``bytes.fromhex`` with its length check, address text a
cache lookup (``addresses.parse_ip`` only on a miss), nullable fields an
``if``, nested Structs their wire constructors, all inline.  Lists keep their
own (cached) conversion.

The generated function only has a fast path: any failure raises ``Bad`` (or
``ValueError`` from ``fromhex``) without a field path, and the caller then
runs the field-by-field conversion, which names the field.  Codecs are told
apart by their ``inline`` attribute, so this module does not import
``hasyncd.schema`` (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from typing import Any

from hasyncd.addresses import ip_cache_get, parse_ip
from hasyncd.schemaerrors import Bad


def compile_to_wire(
    struct: Any, lists: dict[str, Callable[[Any], Any]] | None = None
) -> Callable[[Any], Any]:
    """One function converting a value of ``struct``'s API type into its wire type.

    ``lists`` names top-level list fields converted by another function (the
    API type whose lists stay JSON text, ``Struct.api_raw``).
    """
    override = lists or {}
    env: dict[str, Any] = {"fromhex": bytes.fromhex, "Bad": Bad, "ipget": ip_cache_get}
    env["parse_ip"] = parse_ip
    lines = ["def fast(v):"]
    ids = count()

    def emit(codec: Any, src: str, depth: int) -> str:
        """Emit the statements converting ``src``; return the expression of its wire value."""
        pad = "    " * depth
        how = getattr(codec, "inline", None)
        if how != "struct" and codec.to_wire is None:
            return src  # the API value is the wire value
        k = next(ids)
        if how == "enum":
            env[f"e{k}"] = {n: i for i, n in enumerate(codec.names)}
            return f"e{k}[{src}]"
        if how == "hex":
            lines.append(f"{pad}x{k} = {src}")
            lines.append(f"{pad}h{k} = fromhex(x{k})")
            lines.append(f"{pad}if 2 * len(h{k}) != len(x{k}):")  # fromhex skips whitespace
            lines.append(f"{pad}    raise Bad('')")
            return f"h{k}"
        if how == "ip":
            lines.append(f"{pad}x{k} = {src}")
            lines.append(f"{pad}a{k} = ipget(x{k})")
            lines.append(f"{pad}if a{k} is None:")
            lines.append(f"{pad}    a{k} = parse_ip(x{k})")
            return f"a{k}"
        if how == "nullable":
            lines.append(f"{pad}n{k} = {src}")
            lines.append(f"{pad}if n{k} is not None:")
            inner = emit(codec.inner, f"n{k}", depth + 1)
            lines.append(f"{pad}    n{k} = {inner}")
            return f"n{k}"
        if how == "struct":
            lines.append(f"{pad}s{k} = {src}")
            env[f"W{k}"] = codec.wire
            args = []
            for f in codec.fields:
                if codec is struct and f.name in override:
                    env[f"r{k}_{f.name}"] = override[f.name]
                    args.append(f"r{k}_{f.name}(s{k}.{f.name})")
                else:
                    args.append(emit(f.codec, f"s{k}.{f.name}", depth))
            return f"W{k}({', '.join(args)})"
        env[f"c{k}"] = codec.to_wire  # lists: their own cached conversion
        return f"c{k}({src})"

    for f in struct.fields:
        assert f.name.isidentifier()
    result = emit(struct, "v", 1)
    lines.append(f"    return {result}")
    exec("\n".join(lines) + "\n", env)  # noqa: S102 - generated from the schema's own field names, not from input
    return env["fast"]  # type: ignore[no-any-return]
