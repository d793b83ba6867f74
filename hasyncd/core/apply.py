"""The secondary's side of replication: every change checked, then stored in one pass.

``apply_changes`` validates each record of a RECORDS message before it is
stored (``Kind.validate_blob``: one msgspec decode of the blob into the
kind's wire Struct, the kind's rules and the id; the blob is then stored as
received, behind the expiry that check computed).  A record that fails is
skipped and counted, never stored.  What passes is stored a run of one kind
at a time (``Store.put_values``): a snapshot message into a fresh node, ids
ascending past the last one held, is one dict update and whole index runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hasyncd.errors import RecordError
from hasyncd.policy import shown_id
from hasyncd.records import KINDS_BY_CODE
from hasyncd.store import HEADER, Store, pack_version
from hasyncd.wire.messages import Change

_pack_header = HEADER.pack
_INF = math.inf  # a stored value without expiry (see hasyncd.store.pack_value)


@dataclass(slots=True)
class ApplyResult:
    applied: int = 0
    invalid: int = 0
    max_version: int = 0
    first_error: str | None = None


def _check_tombstone_id(kind_code: int, rid: str) -> None:
    kind = KINDS_BY_CODE[kind_code]
    if not kind.id_pattern.match(rid):
        raise RecordError(f"invalid {kind.name} id in a tombstone", field="id")


def decode_change(change: Change) -> float | None:
    """Validate a change (record or tombstone); returns the record's expiry."""
    if change.blob is None:
        _check_tombstone_id(change.kind, change.id)
        return None
    return KINDS_BY_CODE[change.kind].validate_blob(change.blob, change.id)


def apply_changes(
    store: Store, changes: tuple[Change, ...], wall: float, tombstone_ttl: float
) -> ApplyResult:
    """Apply changes from the primary (bulk or stream) after validating each record.

    A record that fails validation is skipped and counted, never stored: it can
    only come from a peer running a different schema, and storing it would
    corrupt what this node would serve after a failover.  The others are
    stored in the order they came, one run of a kind at a time.
    """
    result = ApplyResult()
    kinds = KINDS_BY_CODE
    pack = _pack_header  # (seq, epoch, expires): what pack_value writes, without the version int
    tomb_expires = wall + tombstone_ttl
    top_epoch = top_seq = 0
    run_kind = 0
    ids: list[str] = []
    values: list[bytes] = []
    for kind_code, rid, epoch, seq, blob in changes:
        try:
            if blob is None:
                _check_tombstone_id(kind_code, rid)
                value = pack(seq, epoch, tomb_expires)
            else:
                expires = kinds[kind_code].validate_blob(blob, rid)
                value = pack(seq, epoch, _INF if expires is None else expires) + blob
        except RecordError as exc:
            result.invalid += 1
            if result.first_error is None:
                result.first_error = f"{shown_id(kind_code, rid)}: {exc.message}"
            continue
        if kind_code != run_kind:
            if ids:
                store.put_values(run_kind, ids, values)
                ids, values = [], []
            run_kind = kind_code
        ids.append(rid)
        values.append(value)
        if epoch > top_epoch or (epoch == top_epoch and seq > top_seq):
            top_epoch, top_seq = epoch, seq
    if ids:
        store.put_values(run_kind, ids, values)
    result.applied = len(changes) - result.invalid
    result.max_version = pack_version(top_epoch, top_seq)
    return result
