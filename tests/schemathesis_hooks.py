"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks): the batch body formats.

The batch endpoint takes NDJSON and msgpack; schemathesis knows neither, so
the generated op lists are serialized here, and msgpack replies decoded.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: Any, value: Any) -> bytes:
    ops = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(op).encode() + b"\n" for op in ops)


# 0xc1 is never valid msgpack: what a client sends when its value cannot be encoded.
NEVER_USED = b"\xc1"


@schemathesis.serializer("application/msgpack")
def to_msgpack(ctx: Any, value: Any) -> bytes:
    try:
        return bytes(msgpack.packb(value, use_bin_type=True))
    except (OverflowError, ValueError, TypeError):  # integers past 64 bits, say
        return NEVER_USED


@schemathesis.deserializer("application/msgpack")
def from_msgpack(ctx: Any, response: Any) -> Any:
    return msgpack.unpackb(response.content, raw=False)
