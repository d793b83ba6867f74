"""The versioned record store: one table per replicated kind, ids kept sorted.

An entry is ``(version, expires, blob)``:

* ``version`` packs the primary-assigned ``(epoch, seq)`` into one integer
  (``epoch << 64 | seq``) so comparisons are single integer comparisons;
* ``expires`` is the wall-clock time after which the record reads as absent
  (each node expires on its own clock, no replication traffic), or, for a
  tombstone, when the tombstone itself may be purged;
* ``blob`` is the record's msgpack encoding, exactly what the link sends; a
  tombstone has ``None``.

Compactness: a table maps each id to ONE bytes object, a 24-byte header
(seq, epoch, expires as two u64 and a float64; no expiry is +inf) followed
by the blob (nothing for a tombstone).  That is one object per record
instead of a tuple, a 128-bit int, a float and the blob, and the collector
never tracks it.  ``Entry`` tuples are built only when a caller reads.

Tombstones are kept for a while after a delete so that a split-brain merge
can tell "deleted on the other side" from "never existed".  Ids are also kept
in a sorted index (``hasyncd.idindex``, built so the cycle collector never
walks it per id), which makes API paging and the bulk snapshot walk ordered
and resumable (a cursor is just the last id) while writes continue.

The store is passive and single-threaded: it never looks at a clock; callers
pass the wall-clock time where expiry matters.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from itertools import islice
from typing import NamedTuple

from hasyncd.idindex import SortedIds
from hasyncd.policy import KIND_BY_CODE

SEQ_BITS = 64
SEQ_MASK = (1 << SEQ_BITS) - 1


def pack_version(epoch: int, seq: int) -> int:
    return (epoch << SEQ_BITS) | seq


def unpack_version(version: int) -> tuple[int, int]:
    return version >> SEQ_BITS, version & SEQ_MASK


class Entry(NamedTuple):
    version: int
    expires: float | None
    blob: bytes | None

    def __repr__(self) -> str:  # blobs hold key material
        e, s = unpack_version(self.version)
        what = "tombstone" if self.blob is None else f"{len(self.blob)} bytes"
        return f"Entry(v={e}.{s}, expires={self.expires}, {what})"

    def live(self, wall: float) -> bool:
        return self.blob is not None and (self.expires is None or self.expires > wall)


# One stored value: header (seq, epoch, expires) then the blob.
HEADER = struct.Struct("<QQd")
HEADER_LEN = HEADER.size
_pack, _unpack_from = HEADER.pack, HEADER.unpack_from
_INF = math.inf


def pack_value(version: int, expires: float | None, blob: bytes | None) -> bytes:
    head = _pack(version & SEQ_MASK, version >> SEQ_BITS, _INF if expires is None else expires)
    if blob is None:
        return head
    if not blob:
        raise ValueError("a record blob is never empty (an empty value is a tombstone)")
    return head + blob


def unpack_value(value: bytes) -> Entry:
    seq, epoch, expires = _unpack_from(value)
    return tuple.__new__(
        Entry,
        (
            epoch << SEQ_BITS | seq,
            None if expires == _INF else expires,
            value[HEADER_LEN:] if len(value) > HEADER_LEN else None,
        ),
    )


def value_expires(value: bytes) -> float:
    """The expiry in a stored value (+inf: none)."""
    return _unpack_from(value)[2]  # type: ignore[no-any-return]


def value_is_record(value: bytes) -> bool:
    return len(value) > HEADER_LEN


class Table:
    __slots__ = ("entries", "live", "order", "sweep_cursor")

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}
        self.order = SortedIds()
        self.live = 0  # entries that are not tombstones (expired ones included until swept)
        self.sweep_cursor: str | None = None


class Store:
    def __init__(self) -> None:
        self.tables: dict[int, Table] = {code: Table() for code in KIND_BY_CODE}
        # During a resync: ids stored before it began that the snapshot has not
        # delivered yet.  A fresh node has none, so its resync costs nothing here.
        # A dict of str -> None rather than a set: CPython never tracks it, so
        # the cycle collector does not walk a million ids during a resync.
        self._unseen: dict[int, dict[str, None]] | None = None

    # -- reads -------------------------------------------------------------------

    def get(self, kind: int, rid: str, wall: float) -> Entry | None:
        """The live entry (not deleted, not expired) or None."""
        raw = self.tables[kind].entries.get(rid)
        if raw is None or len(raw) <= HEADER_LEN or _unpack_from(raw)[2] <= wall:
            return None
        return unpack_value(raw)

    def get_raw(self, kind: int, rid: str) -> Entry | None:
        """The entry as stored, tombstones and expired records included."""
        raw = self.tables[kind].entries.get(rid)
        return None if raw is None else unpack_value(raw)

    def get_value(self, kind: int, rid: str) -> bytes | None:
        """The stored value (see ``pack_value``) as is: the cheap read of the hot paths."""
        return self.tables[kind].entries.get(rid)

    def page(
        self, kind: int, after: str | None, limit: int, wall: float
    ) -> list[tuple[str, Entry]]:
        """Up to ``limit`` live entries with ids greater than ``after``, sorted by id."""
        if limit <= 0:
            return []
        table = self.tables[kind]
        out: list[tuple[str, Entry]] = []
        ids = table.order.after(after) if after else iter(table.order)
        for rid in ids:
            raw = table.entries[rid]
            if len(raw) > HEADER_LEN and _unpack_from(raw)[2] > wall:
                out.append((rid, unpack_value(raw)))
                if len(out) >= limit:
                    break
        return out

    def ids_after(self, kind: int, after: str | None, n: int) -> list[str]:
        """The next ``n`` stored ids after ``after`` (a resumable walk that survives writes)."""
        order = self.tables[kind].order
        it: Iterator[str] = order.after(after) if after is not None else iter(order)
        return list(islice(it, n))

    def counts(self) -> dict[int, int]:
        return {kind: t.live for kind, t in self.tables.items()}

    def __len__(self) -> int:
        return sum(len(t.entries) for t in self.tables.values())

    def items(self, kind: int) -> Iterator[tuple[str, Entry]]:
        table = self.tables[kind]
        for rid in table.order:
            yield rid, unpack_value(table.entries[rid])

    # -- writes ------------------------------------------------------------------

    def put(self, kind: int, rid: str, entry: Entry) -> Entry | None:
        """Store ``entry`` (a record or a tombstone); returns the previous entry."""
        old = self.put_value(kind, rid, pack_value(entry[0], entry[1], entry[2]))
        return None if old is None else unpack_value(old)

    def put_value(self, kind: int, rid: str, value: bytes) -> bytes | None:
        """Store a packed value (``pack_value``); returns the previous one."""
        table = self.tables[kind]
        entries = table.entries
        old = entries.get(rid)
        entries[rid] = value
        if old is None:
            table.order.add(rid)
        elif len(old) > HEADER_LEN:
            table.live -= 1
        if len(value) > HEADER_LEN:
            table.live += 1
        if self._unseen is not None:
            self._unseen[kind].pop(rid, None)
        return old

    def put_values(self, kind: int, ids: list[str], values: list[bytes]) -> None:
        """``put_value`` of each pair, in order.

        A snapshot's message into a node that holds none of its ids (ids
        ascending, all past the last one held, as the walk sends them to a
        fresh node) is stored in one pass: one dict update and whole index
        runs, instead of a lookup, an index insert and a count per record.
        """
        if len(ids) != len(values):
            raise ValueError("put_values needs one value per id")
        table = self.tables[kind]
        if not table.order.appends(ids):
            for rid, value in zip(ids, values, strict=True):
                self.put_value(kind, rid, value)
            return
        # Ids past the last one held are new to the table (the index holds every id stored).
        table.entries.update(zip(ids, values, strict=True))  # lengths checked above
        table.order.extend(ids)
        table.live += len(values) - list(map(len, values)).count(HEADER_LEN)
        unseen = self._unseen[kind] if self._unseen is not None else None
        if unseen:  # one may have been held when the resync began, and swept since
            for rid in ids:
                unseen.pop(rid, None)

    def discard(self, kind: int, rid: str) -> Entry | None:
        """Remove an entry without leaving a tombstone (local expiry, resync purge)."""
        table = self.tables[kind]
        raw = table.entries.pop(rid, None)
        if raw is None:
            return None
        table.order.remove(rid)
        if len(raw) > HEADER_LEN:
            table.live -= 1
        return unpack_value(raw)

    def sweep(self, wall: float, budget: int) -> int:
        """Look at up to ``budget`` entries per kind; drop expired records and old tombstones."""
        removed = 0
        if budget <= 0:
            return 0
        for kind, table in self.tables.items():
            ids = self.ids_after(kind, table.sweep_cursor, budget)
            table.sweep_cursor = ids[-1] if len(ids) == budget else None
            for rid in ids:
                if _unpack_from(table.entries[rid])[2] <= wall:
                    self.discard(kind, rid)
                    removed += 1
        return removed

    # -- resynchronization -------------------------------------------------------------

    @property
    def resyncing(self) -> bool:
        return self._unseen is not None

    def begin_resync(self) -> None:
        """A snapshot starts: every entry stored now must be delivered again or is stale."""
        self._unseen = {kind: dict.fromkeys(table.entries) for kind, table in self.tables.items()}

    def end_resync(self) -> int:
        """The snapshot ended: drop every entry it did not deliver; returns how many."""
        unseen, self._unseen = self._unseen, None
        if unseen is None:
            return 0
        purged = 0
        for kind, stale in unseen.items():
            for rid in stale:
                if self.discard(kind, rid) is not None:
                    purged += 1
        return purged

    def abort_resync(self) -> None:
        """The snapshot was cut short: keep everything (the state is marked not in sync)."""
        self._unseen = None
