"""How a configuration section is declared and checked: msgspec over frozen dataclasses.

A section is a frozen, keyword-only dataclass (``hasyncd.config``) whose
fields carry their constraints as ``Annotated`` msgspec ``Meta`` built by the
helpers here (``Int``, ``Num``, ``Pattern``, ``Choice``, ``BOOL``, ``List``);
a field's default is its TOML default and a field without one is required.
``convert_section`` checks one TOML table against its dataclass with
``msgspec.convert`` (the same library that checks link messages and records)
and turns msgspec's errors into ConfigErrors naming ``[section].key`` (and
the list index), what was expected (the Meta's ``description``) and what was
found.  ``Path`` and ``Address`` fields are converted by ``_dec_hook``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from hasyncd.errors import ConfigError

# A value's repr in an error is cut here: a config line, not a dump.
MAX_SHOWN = 80


def Int(lo: int, hi: int) -> Meta:  # noqa: N802 (reads as a type in the declarations)
    return Meta(ge=lo, le=hi, description=f"an integer in {lo}..{hi}")


def Num(lo: float, hi: float) -> Meta:  # noqa: N802
    return Meta(ge=lo, le=hi, description=f"a number in {lo:g}..{hi:g}")


def Pattern(regex: re.Pattern[str], expected: str) -> Meta:  # noqa: N802
    """A string matching ``regex`` in full (msgspec searches: anchored here)."""
    return Meta(pattern="^" + regex.pattern.removesuffix(r"\Z") + r"\Z", description=expected)


def Choice(*choices: str) -> Meta:  # noqa: N802
    alternatives = "|".join(re.escape(c) for c in choices)
    return Meta(pattern=rf"^(?:{alternatives})\Z", description=f"one of {', '.join(choices)}")


def List(expected: str, *, min_length: int = 0, max_length: int) -> Meta:  # noqa: N802
    return Meta(min_length=min_length, max_length=max_length, description=expected)


BOOL = Meta(description="true or false")


# --- addresses --------------------------------------------------------------------------


class Address:
    """An IP-literal host and a port: immutable, hashable, parsed from "host:port" text."""

    __slots__ = ("host", "port")
    host: str
    port: int

    def __init__(self, host: str, port: int) -> None:
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)

    def __setattr__(self, name: str, value: object) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Address:
            return NotImplemented
        return self.host == other.host and self.port == other.port

    def __hash__(self) -> int:
        return hash((self.host, self.port))

    def __repr__(self) -> str:
        return f"Address(host={self.host!r}, port={self.port})"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_ADDRESS_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})")


def address(value: object) -> Address:
    """host:port or [v6]:port, with an IP literal host (no DNS at failover time).

    Raises TypeError or ValueError with the reason (no key name: the caller adds it).
    """
    if not isinstance(value, str):
        raise TypeError(f'expected "host:port", got {type(value).__name__}')
    m = _ADDRESS_RE.fullmatch(value)
    if not m:
        raise ValueError(f"{value!r} is not host:port or [v6]:port with an IP address")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1..65535")
    return Address(str(ip), port)


def _dec_hook(tp: type, value: Any) -> Any:
    if tp is Path:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ValueError("expected a file path")
        return Path(value)
    if tp is Address:
        return address(value)
    raise NotImplementedError(tp)  # pragma: no cover (a declaration error)


# --- checking a section -------------------------------------------------------------------

T = TypeVar("T")
_AT = re.compile(r" - at `\$\.([A-Za-z0-9_]+)((?:\[\d+\])*)`\Z")
_MISSING = re.compile(r"Object missing required field `(.*)`")


def keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def convert_section(section: str, cls: type[T], raw: dict[str, Any]) -> T:
    """``raw`` (one TOML table) checked and converted into the section's dataclass."""
    known = keys(cls)
    for key in raw:
        if key not in known:
            raise ConfigError(f"[{section}]: unknown key {key!r}")
    try:
        return msgspec.convert(raw, cls, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise _error(section, cls, raw, str(exc)) from None


def _error(section: str, cls: type, raw: dict[str, Any], text: str) -> ConfigError:
    m = _MISSING.match(text)
    if m is not None:
        return ConfigError(f"[{section}].{m.group(1)} is required")
    m = _AT.search(text)
    if m is None:  # pragma: no cover (msgspec always locates a field error)
        return ConfigError(f"[{section}]: {text}")
    key, indexes = m.group(1), [int(i) for i in re.findall(r"\d+", m.group(2))]
    where = f"[{section}].{key}" + "".join(f"[{i}]" for i in indexes)
    tp = typing.get_type_hints(cls, include_extras=True)[key]
    value = raw[key]
    for i in indexes:
        tp, value = _element(tp), value[i]
    expected = _description(tp)
    if expected is None:  # a Path or Address: the conversion said what is wrong
        return ConfigError(f"{where}: {text[: m.start()]}")
    return ConfigError(f"{where}: expected {expected}, got {_shown(value)}")


def _strip(tp: Any) -> tuple[Any, list[Any]]:
    """The type without ``| None`` and ``Annotated``, and its metadata."""
    if isinstance(tp, UnionType) or typing.get_origin(tp) is typing.Union:
        rest = [a for a in typing.get_args(tp) if a is not NoneType]
        if len(rest) == 1:
            tp = rest[0]
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        return base, extras
    return tp, []


def _description(tp: Any) -> str | None:
    for extra in _strip(tp)[1]:
        if isinstance(extra, Meta) and extra.description:
            return extra.description
    return None


def _element(tp: Any) -> Any:
    return typing.get_args(_strip(tp)[0])[0]  # tuple[X, ...]: X


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
