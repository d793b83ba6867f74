"""Unit tests for the versioned record store."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hasyncd.policy import KIND_CODES
from hasyncd.store import SEQ_MASK, Entry, Store, pack_version, unpack_version

SA = KIND_CODES["ipsec_sa"]
IKE = KIND_CODES["ike_sa"]
WEB = KIND_CODES["sslvpn_web_session"]
# The internal kinds (promotion history, data-plane counters) have tables too: empty here.
ZERO = {KIND_CODES["promotion"]: 0, KIND_CODES["sa_counters"]: 0}
T0 = 1_000_000.0

HYPOTHESIS = settings(derandomize=True, database=None, deadline=None, max_examples=200)


def rec(version: int = 1, expires: float | None = None, blob: bytes = b"blob") -> Entry:
    return Entry(version, expires, blob)


def tomb(version: int = 1, expires: float | None = T0 + 3600) -> Entry:
    return Entry(version, expires, None)


# --- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "seq"),
    [(0, 0), (0, 1), (1, 0), (1, SEQ_MASK), (7, 12345), (2**32, 2**63), (2**64 - 1, 2**64 - 1)],
)
def test_pack_unpack_roundtrip(epoch: int, seq: int) -> None:
    v = pack_version(epoch, seq)
    assert unpack_version(v) == (epoch, seq)
    assert v >= 0


def test_version_order_is_epoch_then_seq() -> None:
    assert pack_version(0, SEQ_MASK) < pack_version(1, 0)
    assert pack_version(1, 5) < pack_version(1, 6)
    assert pack_version(2, 0) > pack_version(1, 2**63)
    assert pack_version(0, 0) == 0
    assert SEQ_MASK == 2**64 - 1


@HYPOTHESIS
@given(
    a=st.tuples(st.integers(0, 2**32), st.integers(0, SEQ_MASK)),
    b=st.tuples(st.integers(0, 2**32), st.integers(0, SEQ_MASK)),
)
def test_version_order_matches_tuple_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    va, vb = pack_version(*a), pack_version(*b)
    assert (va < vb) == (a < b)
    assert (va == vb) == (a == b)
    assert unpack_version(va) == a


# --- put / get / discard -------------------------------------------------------------------------


def test_put_get_and_previous_entry() -> None:
    s = Store()
    e1 = rec(pack_version(1, 1), None, b"one")
    assert s.put(SA, "a", e1) is None
    assert s.get(SA, "a", T0) == e1
    assert s.get_raw(SA, "a") == e1
    e2 = rec(pack_version(1, 2), None, b"two")
    assert s.put(SA, "a", e2) == e1
    assert s.get(SA, "a", T0) == e2
    assert s.get(SA, "b", T0) is None
    assert s.get_raw(SA, "b") is None
    assert len(s) == 1


def test_kinds_are_independent() -> None:
    s = Store()
    s.put(SA, "x", rec(1, None, b"sa"))
    s.put(IKE, "x", rec(2, None, b"ike"))
    assert s.get(SA, "x", T0) == rec(1, None, b"sa")
    assert s.get(IKE, "x", T0) == rec(2, None, b"ike")
    assert s.get(WEB, "x", T0) is None
    assert s.counts() == {SA: 1, IKE: 1, WEB: 0, **ZERO}
    s.discard(SA, "x")
    assert s.get(IKE, "x", T0) is not None
    assert s.counts() == {SA: 0, IKE: 1, WEB: 0, **ZERO}


def test_tombstones_are_stored_but_not_gettable() -> None:
    s = Store()
    s.put(SA, "a", rec(1))
    t = tomb(2)
    assert s.put(SA, "a", t) == rec(1)
    assert s.get(SA, "a", T0) is None
    assert s.get_raw(SA, "a") == t
    assert len(s) == 1
    assert s.ids_after(SA, None, 10) == ["a"]


def test_discard() -> None:
    s = Store()
    s.put(SA, "a", rec(1))
    s.put(SA, "b", tomb(2))
    assert s.discard(SA, "a") == rec(1)
    assert s.discard(SA, "a") is None
    assert s.discard(SA, "b") == tomb(2)
    assert s.discard(SA, "zzz") is None
    assert s.get_raw(SA, "a") is None
    assert s.get_raw(SA, "b") is None
    assert len(s) == 0
    assert s.ids_after(SA, None, 10) == []
    assert s.page(SA, None, 10, T0) == []
    # a discarded id can come back
    s.put(SA, "a", rec(3))
    assert s.ids_after(SA, None, 10) == ["a"]
    assert s.counts()[SA] == 1


def test_live_counts_with_tombstones() -> None:
    s = Store()
    assert s.counts() == {SA: 0, IKE: 0, WEB: 0, **ZERO}
    s.put(SA, "a", rec(1))
    s.put(SA, "b", rec(2))
    assert s.counts()[SA] == 2
    s.put(SA, "a", rec(3))  # overwrite: still one live record
    assert s.counts()[SA] == 2
    s.put(SA, "a", tomb(4))
    assert s.counts()[SA] == 1
    s.put(SA, "a", tomb(5))  # tombstone over tombstone
    assert s.counts()[SA] == 1
    s.put(SA, "c", tomb(6))  # tombstone for an id never seen
    assert s.counts()[SA] == 1
    s.put(SA, "a", rec(7))  # resurrected
    assert s.counts()[SA] == 2
    s.discard(SA, "c")  # discarding a tombstone changes nothing
    assert s.counts()[SA] == 2
    s.discard(SA, "b")
    assert s.counts()[SA] == 1
    assert len(s) == 1
    s.put(SA, "d", tomb(8))
    assert len(s) == 2  # len counts tombstones too


def test_expired_records_count_until_swept() -> None:
    s = Store()
    s.put(SA, "a", rec(1, T0 - 1))
    assert s.get(SA, "a", T0) is None
    assert s.counts()[SA] == 1
    assert s.sweep(T0, 100) == 1
    assert s.counts()[SA] == 0


# --- expiry -----------------------------------------------------------------------------------


def test_get_honours_expiry() -> None:
    s = Store()
    s.put(SA, "a", rec(1, T0 + 10))
    s.put(SA, "forever", rec(2, None))
    assert s.get(SA, "a", T0) is not None
    assert s.get(SA, "a", T0 + 9.999) is not None
    assert s.get(SA, "a", T0 + 10) is None  # expires at that instant
    assert s.get(SA, "a", T0 + 11) is None
    assert s.get_raw(SA, "a") == rec(1, T0 + 10)
    assert s.get(SA, "forever", 2.0**40) is not None


def test_entry_live() -> None:
    assert rec(1, None).live(T0)
    assert rec(1, T0 + 1).live(T0)
    assert not rec(1, T0).live(T0)
    assert not tomb(1, None).live(T0)
    assert not tomb(1, T0 + 100).live(T0)
    assert rec(1, None, b"").live(T0)  # an empty blob is still a record


def test_page_skips_expired_records_and_tombstones() -> None:
    s = Store()
    s.put(SA, "a", rec(1))
    s.put(SA, "b", rec(2, T0 - 1))
    s.put(SA, "c", tomb(3))
    s.put(SA, "d", rec(4, T0 + 5))
    s.put(SA, "e", rec(5))
    assert [rid for rid, _ in s.page(SA, None, 10, T0)] == ["a", "d", "e"]
    assert [rid for rid, _ in s.page(SA, None, 10, T0 + 5)] == ["a", "e"]
    # the limit counts live entries only
    assert [rid for rid, _ in s.page(SA, None, 2, T0)] == ["a", "d"]
    assert [rid for rid, _ in s.page(SA, "a", 1, T0)] == ["d"]
    assert s.page(SA, None, 10, T0)[1] == ("d", rec(4, T0 + 5))


def test_page_ordering_after_and_limit() -> None:
    s = Store()
    ids = [f"id{i:03d}" for i in range(50)]
    shuffled = ids[:]
    random.Random(7).shuffle(shuffled)
    for n, rid in enumerate(shuffled):
        s.put(WEB, rid, rec(n))
    assert [rid for rid, _ in s.page(WEB, None, 100, T0)] == ids
    walked: list[str] = []
    after: str | None = None
    while True:
        page = s.page(WEB, after, 7, T0)
        walked.extend(rid for rid, _ in page)
        if len(page) < 7:
            break
        after = page[-1][0]
    assert walked == ids
    assert [rid for rid, _ in s.page(WEB, "id010", 3, T0)] == ["id011", "id012", "id013"]
    # `after` need not be a stored id
    assert [rid for rid, _ in s.page(WEB, "id010x", 2, T0)] == ["id011", "id012"]
    assert [rid for rid, _ in s.page(WEB, "id", 1, T0)] == ["id000"]
    assert s.page(WEB, "id049", 10, T0) == []
    assert s.page(WEB, "zzz", 10, T0) == []
    assert s.page(SA, None, 10, T0) == []


def test_page_uses_string_order() -> None:
    s = Store()
    for rid in ("b", "a10", "a9", "A", "a"):
        s.put(SA, rid, rec(1))
    assert [rid for rid, _ in s.page(SA, None, 10, T0)] == sorted(["b", "a10", "a9", "A", "a"])


# --- ids_after --------------------------------------------------------------------------------


def test_ids_after_basic() -> None:
    s = Store()
    for rid in ("c", "a", "e", "b", "d"):
        s.put(IKE, rid, rec(1))
    s.put(IKE, "f", tomb(2))
    assert s.ids_after(IKE, None, 3) == ["a", "b", "c"]
    assert s.ids_after(IKE, "c", 10) == ["d", "e", "f"]  # tombstones are walked too
    assert s.ids_after(IKE, "cc", 1) == ["d"]
    assert s.ids_after(IKE, "f", 10) == []
    assert s.ids_after(IKE, None, 0) == []
    assert s.ids_after(IKE, "", 2) == ["a", "b"]


def test_ids_after_walk_survives_concurrent_writes() -> None:
    s = Store()
    stable = {f"k{i:03d}" for i in range(0, 200, 2)}
    doomed = {f"k{i:03d}" for i in range(1, 200, 4)}
    for rid in stable | doomed:
        s.put(SA, rid, rec(1))
    rng = random.Random(11)
    walked: list[str] = []
    inserted_ahead: set[str] = set()
    deleted: set[str] = set()
    cursor: str | None = None
    while True:
        ids = s.ids_after(SA, cursor, 5)
        if not ids:
            break
        walked.extend(ids)
        cursor = ids[-1]
        # writes between two steps: new ids behind and ahead of the cursor, deletes ahead
        for _ in range(2):
            new = f"k{rng.randrange(200):03d}x"
            if new not in stable and s.get_raw(SA, new) is None:
                s.put(SA, new, rec(2))
                if new > cursor:
                    inserted_ahead.add(new)
        ahead = sorted(d for d in doomed - deleted if d > cursor)
        if ahead:
            victim = ahead[0]
            s.discard(SA, victim)
            deleted.add(victim)
        # a tombstone write for an already-walked id does not disturb the walk
        s.put(SA, walked[0], tomb(3))
    assert walked == sorted(walked)
    assert len(walked) == len(set(walked))
    assert stable <= set(walked)  # everything present throughout the walk was visited
    assert inserted_ahead <= set(walked)  # ids inserted ahead of the cursor are picked up
    assert not (deleted & set(walked))  # ids deleted before the walk got there are not
    assert inserted_ahead
    assert deleted


# --- sweep ------------------------------------------------------------------------------------


def test_sweep_removes_expired_records_and_tombstones() -> None:
    s = Store()
    s.put(SA, "expired", rec(1, T0 - 1))
    s.put(SA, "expires-now", rec(2, T0))
    s.put(SA, "live", rec(3, T0 + 1))
    s.put(SA, "forever", rec(4, None))
    s.put(SA, "old-tomb", tomb(5, T0 - 1))
    s.put(SA, "new-tomb", tomb(6, T0 + 100))
    s.put(SA, "eternal-tomb", tomb(7, None))
    assert s.sweep(T0, 100) == 3
    assert s.ids_after(SA, None, 100) == sorted(["live", "forever", "new-tomb", "eternal-tomb"])
    assert s.counts()[SA] == 2
    assert s.sweep(T0, 100) == 0
    assert s.sweep(T0 + 100, 100) == 2
    assert s.ids_after(SA, None, 100) == ["eternal-tomb", "forever"]


def test_sweep_respects_the_budget_and_resumes() -> None:
    s = Store()
    ids = [f"e{i}" for i in range(10)]
    for rid in ids:
        s.put(SA, rid, rec(1, T0 - 1))
    assert s.sweep(T0, 4) == 4
    assert s.ids_after(SA, None, 100) == ids[4:]
    assert s.tables[SA].sweep_cursor == "e3"
    assert s.sweep(T0, 4) == 4
    assert s.ids_after(SA, None, 100) == ids[8:]
    assert s.sweep(T0, 4) == 2
    assert s.ids_after(SA, None, 100) == []
    assert s.tables[SA].sweep_cursor is None
    # the pass is over: the next one starts from the beginning again
    s.put(SA, "a-first", rec(1, T0 - 1))
    assert s.sweep(T0, 4) == 1


def test_sweep_budget_counts_entries_looked_at_not_removed() -> None:
    s = Store()
    for i in range(6):
        s.put(SA, f"k{i}", rec(1, T0 - 1 if i % 2 else None))
    assert s.sweep(T0, 2) == 1  # looked at k0 (kept) and k1 (removed)
    assert s.sweep(T0, 2) == 1
    assert s.sweep(T0, 2) == 1
    assert s.ids_after(SA, None, 10) == ["k0", "k2", "k4"]


def test_sweep_cursor_resumes_after_a_full_batch_of_live_entries() -> None:
    s = Store()
    for i in range(3):
        s.put(SA, f"a{i}", rec(1, None))
    s.put(SA, "b", rec(1, T0 - 1))
    assert s.sweep(T0, 3) == 0  # a0..a2 looked at, budget exhausted
    assert s.sweep(T0, 3) == 1  # resumed after a2


def test_sweep_budget_is_per_kind() -> None:
    s = Store()
    for kind in (SA, IKE, WEB):
        for i in range(5):
            s.put(kind, f"x{i}", rec(1, T0 - 1))
    assert s.sweep(T0, 2) == 6
    assert s.counts() == {SA: 3, IKE: 3, WEB: 3, **ZERO}
    assert s.sweep(T0, 10) == 9
    assert len(s) == 0


def test_sweep_resumes_when_the_cursor_id_was_removed() -> None:
    s = Store()
    for i in range(6):
        s.put(SA, f"k{i}", rec(1, T0 - 1 if i == 2 else None))
    assert s.sweep(T0, 3) == 1  # k0..k2 looked at; k2 (the cursor) removed
    s.put(SA, "k4", rec(1, T0 - 1))
    s.discard(SA, "k3")
    assert s.sweep(T0, 3) == 1  # continues after "k2": k4, k5
    assert s.ids_after(SA, None, 10) == ["k0", "k1", "k5"]


def test_sweep_with_an_empty_store() -> None:
    s = Store()
    assert s.sweep(T0, 10) == 0
    assert all(t.sweep_cursor is None for t in s.tables.values())


# --- resynchronization ------------------------------------------------------------------------


def test_resync_purges_exactly_the_unseen_ids() -> None:
    s = Store()
    for rid in ("a", "b", "c", "d"):
        s.put(SA, rid, rec(1))
    s.put(SA, "t1", tomb(1))
    s.put(SA, "t2", tomb(1))
    s.put(IKE, "a", rec(1))
    assert not s.resyncing
    s.begin_resync()
    assert s.resyncing
    s.put(SA, "b", rec(2))
    s.put(SA, "d", tomb(2))
    s.put(SA, "t1", tomb(2))
    s.put(SA, "new", rec(2))
    assert s.end_resync() == 4  # a, c, t2 in SA and a in IKE
    assert not s.resyncing
    assert s.ids_after(SA, None, 10) == ["b", "d", "new", "t1"]
    assert s.ids_after(IKE, None, 10) == []
    assert s.counts() == {SA: 2, IKE: 0, WEB: 0, **ZERO}
    assert s.get(SA, "b", T0) == rec(2)


def test_resync_seen_is_per_kind() -> None:
    s = Store()
    s.put(SA, "same", rec(1))
    s.put(WEB, "same", rec(1))
    s.begin_resync()
    s.put(WEB, "same", rec(2))
    assert s.end_resync() == 1
    assert s.get_raw(SA, "same") is None
    assert s.get_raw(WEB, "same") == rec(2)


def test_resync_that_delivers_nothing_empties_the_store() -> None:
    s = Store()
    for i in range(5):
        s.put(IKE, f"i{i}", rec(1))
    s.begin_resync()
    assert s.end_resync() == 5
    assert len(s) == 0
    assert s.counts()[IKE] == 0


def test_restarting_a_resync_forgets_what_was_seen() -> None:
    s = Store()
    s.put(SA, "a", rec(1))
    s.begin_resync()
    s.put(SA, "a", rec(2))
    s.begin_resync()  # the snapshot restarted
    assert s.end_resync() == 1
    assert len(s) == 0


def test_discard_during_resync() -> None:
    s = Store()
    s.put(SA, "a", rec(1))
    s.put(SA, "b", rec(1))
    s.begin_resync()
    s.put(SA, "a", rec(2))
    s.discard(SA, "a")
    assert s.end_resync() == 1  # only b: a is already gone
    assert len(s) == 0


def test_end_resync_without_begin() -> None:
    s = Store()
    s.put(SA, "a", rec(1))
    assert s.end_resync() == 0
    assert s.get(SA, "a", T0) == rec(1)


def test_abort_resync_keeps_everything() -> None:
    s = Store()
    for rid in ("a", "b"):
        s.put(SA, rid, rec(1))
    s.put(SA, "t", tomb(1))
    s.begin_resync()
    s.put(SA, "c", rec(2))
    s.abort_resync()
    assert not s.resyncing
    assert s.ids_after(SA, None, 10) == ["a", "b", "c", "t"]
    assert s.end_resync() == 0  # nothing left to purge after an abort
    assert len(s) == 4
    # writes after the abort are not tracked
    s.put(SA, "d", rec(3))
    assert len(s) == 5


# --- Entry repr -------------------------------------------------------------------------------


def test_entry_repr_never_shows_the_blob() -> None:
    key = bytes.fromhex("deadbeefcafebabe0123456789abcdef")
    blob = b"\x92\xa3esp\xc4\x10" + key
    e = Entry(pack_version(3, 42), 123.5, blob)
    for text in (repr(e), str(e), f"{e}", f"{e!r}", repr([e]), repr(("id", e)), format(e)):
        assert key.hex() not in text
        assert repr(key) not in text
        assert "deadbeef" not in text
        assert "\\xde\\xad" not in text
        assert "esp" not in text
    assert repr(e) == f"Entry(v=3.42, expires=123.5, {len(blob)} bytes)"
    assert repr(Entry(pack_version(1, 2), None, None)) == "Entry(v=1.2, expires=None, tombstone)"


def test_entry_is_a_plain_tuple() -> None:
    e = Entry(5, None, b"x")
    assert e == (5, None, b"x")
    assert e.version == 5
    assert e.expires is None
    assert e.blob == b"x"


def test_items_walks_in_id_order_including_tombstones() -> None:
    s = Store()
    s.put(SA, "b", rec(1))
    s.put(SA, "a", tomb(2))
    s.put(SA, "c", rec(3, T0 - 1))
    assert list(s.items(SA)) == [("a", tomb(2)), ("b", rec(1)), ("c", rec(3, T0 - 1))]


# --- stateful model test ----------------------------------------------------------------------

KIND_LIST = (SA, IKE, WEB)
IDS = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "ab", "b0"])
KINDS_ST = st.sampled_from(KIND_LIST)
EXPIRY = st.none() | st.integers(-5, 30)


class StoreModel(RuleBasedStateMachine):
    """The Store against a dict of dicts."""

    @initialize()
    def setup(self) -> None:
        self.store = Store()
        self.model: dict[int, dict[str, Entry]] = {k: {} for k in KIND_LIST}
        self.seen: dict[int, set[str]] | None = None
        self.wall = T0
        self.version = 0

    def _entry(self, delta: int | None, blob: bytes | None) -> Entry:
        self.version += 1
        return Entry(self.version, None if delta is None else self.wall + delta, blob)

    # A blob is 1..MAX_RECORD_BYTES bytes (PROTOCOL.md 7.5.5); the store refuses an empty one.
    @rule(kind=KINDS_ST, rid=IDS, delta=EXPIRY, blob=st.binary(min_size=1, max_size=4))
    def put_record(self, kind: int, rid: str, delta: int | None, blob: bytes) -> None:
        e = self._entry(delta, blob)
        assert self.store.put(kind, rid, e) == self.model[kind].get(rid)
        self.model[kind][rid] = e
        if self.seen is not None:
            self.seen[kind].add(rid)

    @rule(kind=KINDS_ST, rid=IDS, delta=EXPIRY)
    def put_tombstone(self, kind: int, rid: str, delta: int | None) -> None:
        e = self._entry(delta, None)
        assert self.store.put(kind, rid, e) == self.model[kind].get(rid)
        self.model[kind][rid] = e
        if self.seen is not None:
            self.seen[kind].add(rid)

    @rule(kind=KINDS_ST, rid=IDS)
    def discard(self, kind: int, rid: str) -> None:
        assert self.store.discard(kind, rid) == self.model[kind].pop(rid, None)

    @rule(dt=st.integers(0, 10))
    def advance(self, dt: int) -> None:
        self.wall += dt

    @rule(budget=st.integers(1, 6))
    def sweep(self, budget: int) -> None:
        removed = self.store.sweep(self.wall, budget)
        gone = 0
        for kind in KIND_LIST:
            stored = dict(self.store.items(kind))
            for rid in list(self.model[kind]):
                if rid not in stored:
                    e = self.model[kind].pop(rid)
                    assert e.expires is not None and e.expires <= self.wall
                    gone += 1
            assert len(stored) == len(self.model[kind])
        assert removed == gone
        assert removed <= budget * len(KIND_LIST)

    @rule()
    def sweep_everything(self) -> None:
        self.store.sweep(self.wall, 1000)
        for kind in KIND_LIST:
            self.store.tables[kind].sweep_cursor = None
        self.store.sweep(self.wall, 1000)
        for kind in KIND_LIST:
            self.model[kind] = {
                rid: e
                for rid, e in self.model[kind].items()
                if e.expires is None or e.expires > self.wall
            }

    @precondition(lambda self: self.seen is None)
    @rule()
    def begin_resync(self) -> None:
        self.store.begin_resync()
        self.seen = {k: set() for k in KIND_LIST}

    @precondition(lambda self: self.seen is not None)
    @rule()
    def end_resync(self) -> None:
        assert self.seen is not None
        expected = 0
        for kind in KIND_LIST:
            stale = set(self.model[kind]) - self.seen[kind]
            expected += len(stale)
            for rid in stale:
                del self.model[kind][rid]
        assert self.store.end_resync() == expected
        self.seen = None

    @precondition(lambda self: self.seen is not None)
    @rule()
    def abort_resync(self) -> None:
        self.store.abort_resync()
        self.seen = None

    @rule(kind=KINDS_ST, after=st.none() | IDS, limit=st.integers(1, 4))
    def page(self, kind: int, after: str | None, limit: int) -> None:
        live = sorted(
            (rid, e)
            for rid, e in self.model[kind].items()
            if e.blob is not None
            and (e.expires is None or e.expires > self.wall)
            and (after is None or rid > after)
        )
        assert self.store.page(kind, after, limit, self.wall) == live[:limit]

    @rule(kind=KINDS_ST, after=st.none() | IDS, n=st.integers(0, 5))
    def ids_after(self, kind: int, after: str | None, n: int) -> None:
        ids = sorted(rid for rid in self.model[kind] if after is None or rid > after)
        assert self.store.ids_after(kind, after, n) == ids[:n]

    @invariant()
    def counts_match(self) -> None:
        if not hasattr(self, "store"):
            return
        expected = {k: sum(e.blob is not None for e in m.values()) for k, m in self.model.items()}
        expected.update(ZERO)
        assert self.store.counts() == expected
        assert len(self.store) == sum(len(m) for m in self.model.values())
        assert self.store.resyncing == (self.seen is not None)

    @invariant()
    def reads_match(self) -> None:
        if not hasattr(self, "store"):
            return
        for kind in KIND_LIST:
            assert list(self.store.items(kind)) == sorted(self.model[kind].items())
            for rid, e in self.model[kind].items():
                assert self.store.get_raw(kind, rid) == e
                live = e.blob is not None and (e.expires is None or e.expires > self.wall)
                assert self.store.get(kind, rid, self.wall) == (e if live else None)


StoreModel.TestCase.settings = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=120,
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreModel = StoreModel.TestCase
