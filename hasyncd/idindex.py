"""The store's ordered index of record ids, built so the cycle collector never walks it.

A table's ids are kept sorted for API paging, the snapshot walk and the
sweep (a cursor is just the last id).  sortedcontainers' ``SortedList``
did that with Python lists, and a list is always tracked by CPython's
cycle collector: every full collection visited each of the million ids of
a million-record table, a cache miss each, 18 ms on an idle development
machine and 60-70 ms on a busy one, every few seconds while a primary took
writes.  That is an event-loop stall long enough to delay heartbeats.

``SortedIds`` keeps the same shape (a short outer list of sorted runs, a
list of each run's largest id for bisection) but each run is a *tuple* of
str.  CPython untracks a tuple of atomic objects the first time a
collection sees it, so a full collection visits one pointer per run
(``RUN``..``2 * RUN`` ids), not one per id.  An insert rebuilds one run
(at most ``2 * RUN`` pointers copied); runs stay short for that reason.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from itertools import chain, islice
from operator import lt as _lt

# Ids per run after a split (a run splits past 2 * RUN).  An insert copies
# its run, so this bounds an insert's work (measured: 15-25 % more per add
# than SortedList at 32, about twice at 64); the collector visits about
# n / (1.5 * RUN) runs, so a full collection over a million ids follows
# about 21,000 pointers instead of a million.
RUN = 32


class SortedIds:
    """A sorted set of str ids: add, remove, iteration from the start or after an id."""

    __slots__ = ("_len", "_maxes", "_runs")

    def __init__(self) -> None:
        self._runs: list[tuple[str, ...]] = []
        self._maxes: list[str] = []  # the last (largest) id of each run
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, rid: object) -> bool:
        if not isinstance(rid, str):
            return False
        k = bisect_left(self._maxes, rid)
        if k == len(self._maxes):
            return False
        run = self._runs[k]
        i = bisect_left(run, rid)
        return i < len(run) and run[i] == rid

    def add(self, rid: str) -> None:
        """Insert ``rid``; the store adds only ids it does not hold (no check here)."""
        maxes, runs = self._maxes, self._runs
        k = bisect_left(maxes, rid)
        if k == len(maxes):  # past the last id: the snapshot's case, ids arrive in order
            if not maxes:
                runs.append((rid,))
                maxes.append(rid)
                self._len = 1
                return
            k -= 1
            run = runs[k] + (rid,)
            maxes[k] = rid
        else:
            run = runs[k]
            i = bisect_left(run, rid)
            run = run[:i] + (rid,) + run[i:]  # noqa: RUF005 - measured faster than unpacking
        self._len += 1
        if len(run) > 2 * RUN:
            runs[k : k + 1] = [run[:RUN], run[RUN:]]
            maxes.insert(k, run[RUN - 1])
        else:
            runs[k] = run

    def extend(self, ids: list[str]) -> None:
        """Append ``ids``: ascending, new, and past the largest id held (``appends``).

        The snapshot into a fresh node: a run is built once from a slice,
        instead of the last run being copied once per id.
        """
        if not ids:
            return
        runs, maxes = self._runs, self._maxes
        start = 0
        if runs and len(runs[-1]) < RUN:  # top up the last run to RUN first
            start = RUN - len(runs[-1])
            runs[-1] += tuple(ids[:start])
            maxes[-1] = runs[-1][-1]
        for i in range(start, len(ids), RUN):
            run = tuple(ids[i : i + RUN])
            runs.append(run)
            maxes.append(run[-1])
        self._len += len(ids)

    def appends(self, ids: list[str]) -> bool:
        """Whether ``extend(ids)`` applies: ``ids`` strictly ascending, all past the last id."""
        if not ids or (self._maxes and ids[0] <= self._maxes[-1]):
            return False
        return all(map(_lt, ids, islice(ids, 1, None)))

    def remove(self, rid: str) -> None:
        """Remove ``rid``; ValueError if it is not there."""
        maxes, runs = self._maxes, self._runs
        k = bisect_left(maxes, rid)
        if k == len(maxes):
            raise ValueError(rid)
        run = runs[k]
        i = bisect_left(run, rid)
        if i == len(run) or run[i] != rid:
            raise ValueError(rid)
        run = run[:i] + run[i + 1 :]
        self._len -= 1
        if run:
            runs[k] = run
            maxes[k] = run[-1]
        else:
            del runs[k], maxes[k]

    def __iter__(self) -> Iterator[str]:
        """Every id in order, as the index was when the iteration started."""
        for run in list(self._runs):
            yield from run

    def after(self, rid: str) -> Iterator[str]:
        """The ids greater than ``rid`` in order.

        Consume it before the next write (as the store's walks and pages do,
        with ``islice``): it reads the live list of runs rather than a copy,
        so a resumable walk costs no copy of the whole index per step.
        """
        runs = self._runs
        k = bisect_right(self._maxes, rid)
        if k == len(runs):
            return
        run = runs[k]
        yield from run[bisect_right(run, rid) :]
        yield from chain.from_iterable(islice(runs, k + 1, None))
