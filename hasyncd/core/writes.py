"""The write path: API writes and deletes on the primary, replicated changes on a secondary.

Every write is of a validated record (``hasyncd.records``); the primary
stores it under the next version of its epoch, appends it to the backlog and
queues it on every outbound session (``local_write``); a secondary applies
what its primary sent, validating each record (``apply_from_primary``).
"""

from __future__ import annotations

import logging

from hasyncd.core.apply import apply_changes
from hasyncd.core.events import RecordChanged
from hasyncd.core.nodebase import NodeParts
from hasyncd.core.seqview import CTR, PROMO
from hasyncd.core.seqview import SA as SA_CODE
from hasyncd.errors import HasyncdError, RecordError, RecordExpired
from hasyncd.policy import KIND_BY_CODE
from hasyncd.records import KINDS_BY_CODE, Record
from hasyncd.store import pack_value, unpack_version, value_is_record
from hasyncd.wire.messages import Change

log = logging.getLogger("hasyncd.core")


def _validated(record: Record) -> Record:
    if type(record) is not Record:
        raise TypeError("NodeCore writes take a hasyncd.records.Record (validated), nothing else")
    return record


def _check_expiry(record: Record, wall: float) -> None:
    if record.expires is not None and record.expires <= wall:
        raise RecordExpired("the record has already expired", field="expires")


class WriteResult:
    __slots__ = ("created", "version")

    def __init__(self, version: int, created: bool) -> None:
        self.version = version
        self.created = created


class WritePath(NodeParts):
    """Writes into the store: the API's on the primary, the primary's on a secondary."""

    def check_writable(self, now: float) -> None:
        """Raise ``WriteRefused`` unless this node takes writes now (it may fence itself)."""
        try:
            self.roles.check_writable(now)
        finally:
            self.apply_effects()

    # -- applying replicated changes (secondary) ----------------------------------

    def apply_from_primary(self, changes: tuple[Change, ...]) -> int:
        result = apply_changes(self.store, changes, self.wall, self.s.tombstone_ttl)
        if any(c.kind == PROMO for c in changes):
            self.promotions.invalidate()
        self.count("records_applied", "", result.applied)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "applied %d replicated changes, newest %s",
                result.applied,
                unpack_version(result.max_version),
            )
        if result.invalid:
            self.count("records_invalid", "replicated", result.invalid)
            log.error(
                "skipped %d invalid replicated records (first: %s)",
                result.invalid,
                result.first_error,
            )
        if self.record_events:
            for c in changes:
                op = "put" if c.blob is not None else "delete"
                self.emit(RecordChanged(KIND_BY_CODE[c.kind], c.id, op, c.epoch, c.seq))
        return result.max_version

    # -- local writes (primary) ---------------------------------------------------

    def write(self, record: Record, now: float, *, wall: float) -> WriteResult:
        """An API write of a validated record (made by ``hasyncd.records``, nothing else)."""
        self._clock(now, wall)
        _validated(record)
        self.check_writable(now)
        _check_expiry(record, self.wall)
        return self.local_write(record.kind.code, record.id, record)

    def delete(self, kind: int, rid: str, now: float, *, wall: float) -> WriteResult | None:
        """An API delete; None if there is no live record ``rid``."""
        self._clock(now, wall)
        KINDS_BY_CODE[kind].check_id_pattern(rid)
        self.check_writable(now)
        if self.store.get(kind, rid, self.wall) is None:
            return None
        return self.local_write(kind, rid, None)

    def write_batch(
        self, ops: list[tuple[int, str, Record | None]], now: float, *, wall: float
    ) -> list[WriteResult | HasyncdError | None]:
        """Puts (a Record) and deletes (None) in one store pass; a result per op, in order.

        Writability is checked once (nothing can change it within one call);
        an op that fails (expired record, refused id) fails alone, a delete of
        an absent record gives None.
        """
        self._clock(now, wall)
        self.check_writable(now)
        out: list[WriteResult | HasyncdError | None] = []
        for kind, rid, record in ops:
            try:
                if record is None:
                    KINDS_BY_CODE[kind].check_id_pattern(rid)
                    if self.store.get(kind, rid, wall) is None:
                        out.append(None)
                        continue
                else:
                    _check_expiry(_validated(record), wall)
                out.append(self.local_write(kind, rid, record))
            except RecordError as exc:
                out.append(exc)
        return out

    def local_write(
        self, kind: int, rid: str, record: Record | None, *, quiet: bool = False
    ) -> WriteResult:
        """Store and replicate a validated record (or a delete) in this node's epoch.

        ``quiet``: no ``record_changed`` event (counter updates: many a second).
        """
        version = self.roles.next_version()
        if record is None:
            value = pack_value(version, self.wall + self.s.tombstone_ttl, None)
        else:
            value = pack_value(version, record.expires, record.blob)
        old = self.store.put_value(kind, rid, value)
        self.backlog.append(version, kind, rid, self.now)
        if kind == PROMO:
            self.promotions.invalidate()
        for peer in self.peers.values():
            if peer.session is not None:
                peer.session.enqueue(kind, rid, version)
                peer.lag.wrote(version, self.now)
        self._pump_needed = True
        if self.record_events and not quiet:
            epoch, seq = unpack_version(version)
            self.emit(
                RecordChanged(KIND_BY_CODE[kind], rid, "put" if record else "delete", epoch, seq)
            )
        if record is None and kind == SA_CODE and self.store.get(CTR, rid, self.wall):
            self.local_write(CTR, rid, None)  # its counters go with it (a reused id starts afresh)
        return WriteResult(version, old is None or not value_is_record(old))
