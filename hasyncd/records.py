"""The replicated record kinds: schemas, ids, expiry, merge and promotion rules.

A record lives in three forms: the JSON object of the local API, the wire
value (a frozen msgspec Struct, positional, see ``hasyncd.schema``) and the
blob (the wire value's msgpack encoding), which is what the store keeps and
the link sends.  A ``Kind`` converts between them and owns the kind's domain
rules:

* its id, derived from its fields (an id that does not match is refused);
* when it expires (each node expires records on its own clock);
* how two versions merge after a split brain (counters never go backwards);
* what a promotion changes (outbound ESP sequence jump, IKE message-ID sync).

Every path into the store goes through a ``Record``: the only way to make
one is a validating constructor of its ``Kind`` (``parse_json`` and
``from_json`` for the API, ``from_blob`` for the link, ``from_wire`` for
merges and promotions), which computes the blob, the id check and the
expiry once.  ``NodeCore.write`` accepts nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from hasyncd.counterkinds import (
    PROMOTION,
    SA_COUNTERS,
    _counters_expiry,
    _counters_merge,
    _never,
    _no_check,
    _promotion_id,
    _promotion_merge,
)
from hasyncd.errors import IdMismatch, ReadOnlyKind, RecordError
from hasyncd.kinds import (
    ALG,
    IKE_SA,
    IPSEC_SA,
    MAX_GROUP_LEN,
    MAX_GROUPS,
    MAX_KEY_BYTES,
    MAX_RECORD_BYTES,
    MAX_REPLAY_WINDOW,
    MAX_SELECTORS,
    MAX_TIME,
    U32,
    U64,
    WEB_SESSION,
    _ike_check,
    _ike_expiry,
    _ike_id,
    _ike_merge,
    _sa_check,
    _sa_expiry,
    _sa_id,
    _sa_merge,
    _web_check,
    _web_expiry,
    _web_merge,
    advance_outbound_seq,
    require_mid_sync,
)
from hasyncd.policy import BY_NAME, KIND_CODES, require_replicated
from hasyncd.schema import (
    Struct,
    conversion_error,
    find_unencodable,
    name_path,
    validation_error,
)
from hasyncd.schemaerrors import Bad

__all__ = [
    "ALG",
    "IKE_SA",
    "IPSEC_SA",
    "KINDS",
    "KINDS_BY_CODE",
    "MAX_GROUPS",
    "MAX_GROUP_LEN",
    "MAX_KEY_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_REPLAY_WINDOW",
    "MAX_SELECTORS",
    "MAX_TIME",
    "U32",
    "U64",
    "WEB_SESSION",
    "Kind",
    "Record",
    "advance_outbound_seq",
    "kind_for_api",
    "kind_for_write",
    "require_mid_sync",
]

_TOKEN = object()
_encode = msgspec.msgpack.Encoder().encode
_json_encode = msgspec.json.Encoder().encode


class Record:
    """A validated record: its wire value, blob, id and expiry, computed once.

    Made only by a ``Kind``'s validating constructors; ``NodeCore.write``
    takes nothing else, so nothing unchecked reaches the store.
    """

    __slots__ = ("blob", "expires", "id", "kind", "value")

    def __init__(
        self, token: object, kind: Kind, rid: str, *, value: Any, blob: bytes, expires: float | None
    ) -> None:
        if token is not _TOKEN:
            raise TypeError("a Record is made by a Kind's validating constructors only")
        self.kind, self.id, self.value, self.blob, self.expires = kind, rid, value, blob, expires

    def __repr__(self) -> str:  # the value holds key material
        return f"Record({self.kind.name} {self.id}, {len(self.blob)} bytes)"


class Kind:
    def __init__(
        self,
        name: str,
        schema: Struct,
        *,
        make_id: Callable[[Any], str | None],  # None: the id is not derived (web sessions)
        id_pattern: str,
        # (wire, lists): lists=False skips the CachedList checks a conversion already ran
        check: Callable[[Any, bool], None],
        expiry: Callable[[Any], float | None],
        merge: Callable[[Any, Any], Any],  # (winner, loser) -> merged
    ) -> None:
        self.name = name
        self.code = KIND_CODES[name]
        self.api_writable = not BY_NAME[name].internal
        self.schema = schema
        self.make_id = make_id
        self.id_pattern = re.compile(id_pattern + r"\Z")
        check_strings = schema.check_strings

        def full_check(w: Any) -> None:
            check_strings(w)
            check(w, True)

        def converted_check(w: Any) -> None:
            """``full_check`` of a value ``to_wire`` made: its lists were checked by it."""
            check_strings(w)
            check(w, False)

        self.check = full_check
        self._converted_check = converted_check
        self._check_strings, self._rules = check_strings, check
        self.expiry = expiry
        self.merge = merge
        self._json_decoder = msgspec.json.Decoder(schema.api)
        # Lists kept as JSON text first (schema.api_raw); None: the kind has none.
        self._text_type = schema.api_raw if schema.api_raw is not schema.api else None
        self._text_decoder = msgspec.json.Decoder(schema.api_raw)
        self._to_wire_text = schema.to_wire_raw
        self._wire_decoder = msgspec.msgpack.Decoder(schema.wire)
        assert schema.to_wire is not None and schema.to_json is not None
        self._to_wire = schema.to_wire
        self._to_json = schema.to_json

    def __repr__(self) -> str:
        return f"Kind({self.name})"

    # -- validating constructors ------------------------------------------------------

    def parse_json(self, raw: bytes, rid: str) -> Record:
        """Validate one record's API JSON text (bytes) for record ``rid``."""
        if self._text_type is not None:
            try:
                api = self._text_decoder.decode(raw)
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass  # the full decode below names the refusal
            else:
                return self._from_api_text(api, rid)
        return self._parse_json_full(raw, rid)

    def _parse_json_full(self, raw: bytes, rid: str) -> Record:
        try:
            api = self._json_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise validation_error(exc) from None
        except msgspec.DecodeError:
            raise RecordError("record is not valid JSON", field="record") from None
        return self._from_api(api, rid)

    def from_json(self, body: Any, rid: str) -> Record:
        """Validate an API body already decoded to Python values (a msgpack batch, tests)."""
        try:
            api = msgspec.convert(body, self.schema.api)
        except msgspec.ValidationError as exc:
            raise validation_error(exc) from None
        return self._from_api(api, rid)

    def from_api(self, api: Any, rid: str) -> Record:
        """Validate a value of the kind's API Struct, or of ``schema.api_raw`` (its lists
        still JSON text), decoded as part of a batch."""
        if type(api) is self._text_type:
            return self._from_api_text(api, rid)
        return self._from_api(api, rid)

    def _from_api_text(self, api: Any, rid: str) -> Record:
        """A value whose lists are still JSON text: converted by the lists' caches.

        Any refusal decodes the record again in full (its JSON is the value
        re-encoded, lists verbatim), so it is named exactly as ``_from_api``
        names it; a list the cache has not seen is decoded and checked once.
        """
        try:
            wire = self._to_wire_text(api)
        except (Bad, ValueError, RecordError, msgspec.MsgspecError, RecursionError):
            return self._parse_json_full(_json_encode(api), rid)
        return self._from_api(api, rid, wire)

    def _from_api(self, api: Any, rid: str, wire: Any = None) -> Record:
        # Refusals come in this order: the id's pattern, the value, the derived id.
        # A derived id that equals ``rid`` matches the pattern: no regex then.
        try:
            if wire is None:
                wire = self._to_wire(api)
            self._converted_check(wire)
        except Bad as exc:
            self.check_id_pattern(rid)
            raise conversion_error(exc) from None
        except RecordError:
            self.check_id_pattern(rid)
            raise
        if self.make_id(wire) != rid:
            self.check_id_pattern(rid)
            self._check_derived_id(wire, rid)
        return Record(
            _TOKEN, self, rid, value=wire, blob=self.encode(wire), expires=self.expiry(wire)
        )

    def from_blob(self, blob: bytes, rid: str) -> Record:
        """Validate a blob (from a peer): types, ranges, rules and id; the link's check."""
        wire = self.decode(blob)
        self.check_id(wire, rid)
        return Record(_TOKEN, self, rid, value=wire, blob=blob, expires=self.expiry(wire))

    def validate_blob(self, blob: bytes, rid: str) -> float | None:
        """The link's check of a replicated blob for record ``rid``; returns its expiry.

        The same checks as ``from_blob``, flattened: this runs once per
        replicated record on a secondary.
        """
        try:
            wire = self._wire_decoder.decode(blob)
        except (msgspec.ValidationError, msgspec.DecodeError):
            self.decode(blob)  # raises the RecordError that names the field
            raise  # pragma: no cover - decode raised
        self._check_strings(wire)  # self.check, inlined
        self._rules(wire, True)
        expected = self.make_id(wire)
        if expected is None:
            if not self.id_pattern.match(rid):
                raise RecordError(f"invalid {self.name} id", field="id")
        elif expected != rid:  # a derived id always matches the id pattern
            self.check_id(wire, rid)
        return self.expiry(wire)

    def from_wire(self, wire: Any, rid: str) -> Record:
        """Validate a wire value made by a rule (merge, promotion) and encode it.

        The value is checked by decoding its encoding, exactly like a blob from
        a peer: a Struct built in Python is not checked by msgspec on its own.
        """
        return self.from_blob(self.encode(wire), rid)

    def from_checked(self, wire: Any, rid: str) -> Record:
        """A value a rule built from inputs it range-checked itself (the counter path).

        Encoded (types and the size limit checked by the encoder) but not
        decoded again: the cheap path of ``POST /v1/counters``.  The link still
        validates it fully on every secondary.
        """
        return Record(
            _TOKEN, self, rid, value=wire, blob=self.encode(wire), expires=self.expiry(wire)
        )

    # -- conversions ------------------------------------------------------------------

    def to_json(self, wire: Any) -> dict[str, Any]:
        return self._to_json(wire)  # type: ignore[no-any-return]

    def encode(self, wire: Any) -> bytes:
        try:
            blob = _encode(wire)
        except (OverflowError, UnicodeEncodeError) as exc:
            path = find_unencodable(wire) or "record"
            what = (
                f"an integer in [0, {U64}]"
                if isinstance(exc, OverflowError)
                else "a string of valid Unicode (no lone surrogates)"
            )
            raise RecordError(f"field {path}: expected {what}", field=path) from None
        if len(blob) > MAX_RECORD_BYTES:
            raise RecordError(
                f"{self.name} encodes to {len(blob)} bytes, more than the limit of "
                f"{MAX_RECORD_BYTES}",
                field="record",
            )
        return blob

    def decode(self, blob: bytes) -> Any:
        """Decode and fully validate a blob (from a peer or the store)."""
        try:
            wire = self._wire_decoder.decode(blob)
        except msgspec.ValidationError as exc:
            err = validation_error(exc)
            path = name_path(self.schema, err.field or "")
            detail = err.message.split(": ", 1)[-1]
            raise RecordError(
                f"{self.name}: invalid record blob: field {path}: {detail}", field=path
            ) from None
        except msgspec.DecodeError:
            raise RecordError(f"{self.name}: undecodable record blob") from None
        self.check(wire)
        return wire

    # -- ids ----------------------------------------------------------------------------

    def check_id_pattern(self, rid: str) -> None:
        if not self.id_pattern.match(rid):
            raise RecordError(f"invalid {self.name} id", field="id")

    def _check_derived_id(self, wire: Any, rid: str) -> None:
        expected = self.make_id(wire)
        if expected is not None and expected != rid:
            raise IdMismatch(
                f"id {rid!r} does not match the record's fields (expected {expected!r})",
                field="id",
            )

    def check_id(self, wire: Any, rid: str) -> None:
        self.check_id_pattern(rid)
        self._check_derived_id(wire, rid)


KINDS: dict[str, Kind] = {
    "ipsec_sa": Kind(
        "ipsec_sa",
        IPSEC_SA,
        make_id=_sa_id,
        id_pattern=r"(esp|ah)-[0-9a-f]{8}@[0-9a-f.:]{2,45}",
        check=_sa_check,
        expiry=_sa_expiry,
        merge=_sa_merge,
    ),
    "ike_sa": Kind(
        "ike_sa",
        IKE_SA,
        make_id=_ike_id,
        id_pattern=r"[0-9a-f]{32}",
        check=_ike_check,
        expiry=_ike_expiry,
        merge=_ike_merge,
    ),
    "sslvpn_web_session": Kind(
        "sslvpn_web_session",
        WEB_SESSION,
        make_id=lambda _w: None,
        # The id is the SHA-256 of the cookie: the raw cookie never reaches hasyncd.
        id_pattern=r"[0-9a-f]{64}",
        check=_web_check,
        expiry=_web_expiry,
        merge=_web_merge,
    ),
    "promotion": Kind(
        "promotion",
        PROMOTION,
        make_id=_promotion_id,
        id_pattern=r"[0-9a-f]{16}",
        check=_no_check,
        expiry=_never,
        merge=_promotion_merge,
    ),
    "sa_counters": Kind(
        "sa_counters",
        SA_COUNTERS,
        make_id=lambda _w: None,  # the id is its ipsec_sa's id
        id_pattern=r"(esp|ah)-[0-9a-f]{8}@[0-9a-f.:]{2,45}",
        check=_no_check,
        expiry=_counters_expiry,
        merge=_counters_merge,
    ),
}
KINDS_BY_CODE: dict[int, Kind] = {k.code: k for k in KINDS.values()}


def kind_for_api(name: str) -> Kind:
    """The Kind for an API path segment; raises UnknownKind / NotReplicated per policy."""
    require_replicated(name)
    return KINDS[name]


def kind_for_write(name: str) -> Kind:
    """``kind_for_api`` for PUT, DELETE and batch ops: internal kinds are refused."""
    kind = kind_for_api(name)
    if not kind.api_writable:
        raise ReadOnlyKind(
            f"{name} records are written by hasyncd itself (see /v1/policy); "
            "the records API only reads them",
            field="kind",
        )
    return kind
