"""The store's id index (hasyncd.idindex): a sorted set the cycle collector does not walk."""

from __future__ import annotations

import gc
import random
from bisect import bisect_right
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hasyncd.idindex import RUN, SortedIds
from hasyncd.store import Store, pack_value

ids = st.text(alphabet="0123456789abcdef.:@-", min_size=1, max_size=12)
ops = st.lists(st.tuples(st.booleans(), ids), max_size=600)


@settings(max_examples=200, deadline=None)
@given(ops, ids)
def test_it_behaves_like_a_sorted_list_of_distinct_ids(
    script: list[tuple[bool, str]], probe: str
) -> None:
    index, model = SortedIds(), set[str]()
    for add, rid in script:
        if add and rid not in model:
            index.add(rid)
            model.add(rid)
        elif not add:
            if rid in model:
                index.remove(rid)
                model.discard(rid)
            else:
                with pytest.raises(ValueError):
                    index.remove(rid)
        assert len(index) == len(model)
    expected = sorted(model)
    assert list(index) == expected
    assert list(index.after(probe)) == expected[bisect_right(expected, probe) :]
    assert (probe in index) == (probe in model)


def test_runs_split_and_merge_away_at_any_size() -> None:
    rng = random.Random(7)
    all_ids = [f"esp-{rng.getrandbits(32):08x}@192.0.2.{i % 250}" for i in range(20 * RUN)]
    index = SortedIds()
    for rid in all_ids:
        index.add(rid)
    assert list(index) == sorted(all_ids)
    rng.shuffle(all_ids)
    for rid in all_ids[: len(all_ids) // 2]:
        index.remove(rid)
    assert list(index) == sorted(all_ids[len(all_ids) // 2 :])
    for rid in all_ids[len(all_ids) // 2 :]:
        index.remove(rid)
    assert len(index) == 0 and list(index) == [] and list(index.after("")) == []


def test_a_full_iteration_sees_the_index_as_it_was_when_it_started() -> None:
    index = SortedIds()
    for i in range(5 * RUN):
        index.add(f"{i:05d}")
    walk = iter(index)
    first = next(walk)
    index.add("00010a")  # a write during the walk: Store.items() may interleave them
    late = f"{4 * RUN:05d}"
    index.remove(late)
    rest = list(walk)
    assert first == "00000" and "00010a" not in rest and late in rest
    assert len(rest) == 5 * RUN - 1


def _visits(root: object) -> int:
    """Pointers a full collection follows in what ``root`` reaches through tracked containers
    (its data: classes, modules and functions are shared by every object and left out)."""
    seen: set[int] = set()
    todo, visits = [root], 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or not gc.is_tracked(obj) or isinstance(obj, type | ModuleType):
            continue
        if callable(obj):
            continue
        seen.add(id(obj))
        refs = gc.get_referents(obj)
        visits += len(refs)
        todo.extend(refs)
    return visits


def test_a_full_collection_visits_a_runs_worth_not_every_id_of_a_large_table() -> None:
    """18 ms per full collection at a million ids with SortedList (one visit per id)."""
    store = Store()
    n = 20_000
    for i in range(n):
        store.put_value(1, f"esp-{i:08x}@198.51.100.{i % 250}", pack_value(i + 1, None, b"\x90"))
    gc.collect()  # the collector untracks each run (a tuple of str) the first time it sees one
    visits = _visits(store)
    assert visits < n // 10, f"{visits} pointers followed for {n} records"


def test_a_resync_of_a_large_table_adds_nothing_for_the_collector_to_walk() -> None:
    """Store.begin_resync keeps the ids still to be delivered: a set was walked per id."""
    store = Store()
    n = 20_000
    for i in range(n):
        store.put_value(1, f"esp-{i:08x}@198.51.100.{i % 250}", pack_value(i + 1, None, b"\x90"))
    gc.collect()
    before = _visits(store)
    store.begin_resync()
    store.put_value(1, "esp-00000001@198.51.100.1", pack_value(n + 1, None, b"\x90"))
    assert _visits(store) - before < 100
    assert store.end_resync() == n - 1  # the undelivered ones are dropped


@settings(max_examples=200, deadline=None)
@given(st.lists(ids, max_size=300, unique=True), st.lists(ids, max_size=300, unique=True))
def test_extend_appends_exactly_what_add_would_have(before: list[str], batch: list[str]) -> None:
    """``extend`` (the snapshot into a fresh node) keeps the index a sorted set."""
    index, model = SortedIds(), set(before)
    for rid in before:
        index.add(rid)
    batch = sorted(batch)
    fits = bool(batch) and (not before or batch[0] > max(before))
    assert index.appends(batch) is fits
    if fits:
        index.extend(batch)
        model.update(batch)
    else:
        for rid in batch:
            if rid not in model:
                index.add(rid)
                model.add(rid)
    expected = sorted(model)
    assert list(index) == expected and len(index) == len(expected)
    for probe in expected[:: max(1, len(expected) // 10)]:
        assert probe in index
        assert list(index.after(probe)) == expected[expected.index(probe) + 1 :]
    index.add("\uffff")  # adds and removes still work on runs that extend built
    index.remove(expected[0] if expected else "\uffff")


def test_appends_refuses_an_unsorted_repeated_or_overlapping_batch() -> None:
    index = SortedIds()
    index.extend(["b", "c"])
    assert not index.appends([])
    assert not index.appends(["e", "d"])
    assert not index.appends(["d", "d"])
    assert not index.appends(["c", "d"])  # "c" is held
    assert not index.appends(["a", "z"])
    assert index.appends(["d", "e"])


def test_put_values_stores_what_put_value_would_on_both_paths() -> None:
    """A snapshot message in one pass, anything else one record at a time: same store."""
    one, many = Store(), Store()
    tomb = pack_value(99, 5.0, None)
    batches = [
        [(f"{i:04d}", pack_value(i + 1, None, b"\x91\x01")) for i in range(0, 150)],  # fresh
        [(f"{i:04d}", pack_value(i + 1, None, b"\x91\x02")) for i in range(150, 300)],  # past it
        [(f"{i:04d}", pack_value(i + 500, 9.0, b"\x91\x03")) for i in range(100, 200, 7)],
        [("0003", tomb), ("0001", pack_value(600, None, b"\x91\x04"))],  # unsorted: one by one
        [("9999", tomb)],  # a tombstone past the end
    ]
    for batch in batches:
        for rid, value in batch:
            one.put_value(1, rid, value)
        many.put_values(1, [rid for rid, _ in batch], [v for _, v in batch])
    assert many.tables[1].entries == one.tables[1].entries
    assert list(many.tables[1].order) == list(one.tables[1].order)
    assert many.counts() == one.counts() == {**one.counts(), 1: 299}
    with pytest.raises(ValueError):
        many.put_values(1, ["a"], [])


def test_a_record_swept_during_a_resync_and_delivered_again_past_the_end_is_kept() -> None:
    store = Store()
    store.put_value(1, "0005", pack_value(1, 10.0, b"\x90"))
    store.begin_resync()
    assert store.sweep(20.0, 10) == 1  # expired meanwhile: the table is empty again
    store.put_values(1, ["0005", "0006"], [pack_value(2, None, b"\x90")] * 2)
    assert store.end_resync() == 0
    assert sorted(store.tables[1].entries) == ["0005", "0006"]
