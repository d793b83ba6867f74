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
