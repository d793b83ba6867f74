"""Errors of the record schemas: field paths, and messages that never carry a value.

``Bad`` is raised by a Python-level conversion (hex, address text) and gets
its path filled in on the way out; ``validation_error`` turns msgspec's
messages into RecordErrors naming the field (an invalid enum value, which
msgspec quotes, is never repeated); ``find_unencodable`` locates what the
msgpack encoder refused.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from hasyncd.errors import RecordError, UnknownField


class Bad(Exception):
    """A value failed a Python-level conversion; ``path`` is filled in on the way out."""

    def __init__(self, expected: str, path: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.path = path


def field_error(path: str, expected: str) -> RecordError:
    path = path or "record"
    return RecordError(f"field {path}: expected {expected}", field=path)


def join_path(name: str | int, path: str) -> str:
    head = f"[{name}]" if isinstance(name, int) else name
    if not path:
        return head
    return head + path if path.startswith("[") else f"{head}.{path}"


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
        name = join_path(m.group(1)[:64], "") if not path else f"{path}.{m.group(1)[:64]}"
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
    return field_error(exc.path, exc.expected)
