"""The primary's backlog (hasyncd.core.backlog): what it holds, trims and hands to a resume."""

from __future__ import annotations

import gc
import random

import pytest

from hasyncd.core.backlog import COMPACT_AFTER, ENTRY_OVERHEAD, Backlog
from hasyncd.store import pack_version


def _rid(rng: random.Random, i: int) -> str:
    return f"esp-{rng.getrandbits(32):08x}@192.0.2.{i % 250}"


@pytest.mark.parametrize("seed", range(4))
def test_it_holds_exactly_the_newest_writes_within_bytes_and_age(seed: int) -> None:
    rng = random.Random(seed)
    backlog = Backlog(400_000, 5.0)
    backlog.reset(pack_version(9, 0))  # as a promotion to epoch 9 does
    model: list[tuple[int, int, str, float]] = []
    now = 0.0
    for i in range(1, 4 * COMPACT_AFTER):
        now += rng.choice((0.0001, 0.001, 0.01))
        entry = (pack_version(9, i), rng.choice((1, 2, 3)), _rid(rng, i), now)
        backlog.append(*entry)
        model.append(entry)
        if i % 613 == 0:
            backlog.trim(now)
        if i % 97 and i % 613:
            continue
        held = model[len(model) - len(backlog) :]
        # what it holds: the newest writes, charged as documented, none beyond the limits
        assert backlog.size == sum(ENTRY_OVERHEAD + len(e[2]) for e in held)
        assert backlog.size <= backlog.max_bytes
        if i % 613 == 0:
            assert all(e[3] >= now - 5.0 for e in held)
        # the floor is the newest write dropped: everything after it is held
        dropped = model[: len(model) - len(backlog)]
        assert backlog.floor == (dropped[-1][0] if dropped else pack_version(9, 0))
        if i % 97 == 0:
            k = rng.randint(0, len(held))
            after = held[k - 1][0] if k else backlog.floor
            assert backlog.holds_after(after)
            assert backlog.since(after, 64) == held[k : k + 64]
    assert backlog.status(now)["entries"] == len(backlog)


def test_reset_starts_a_new_epoch_empty() -> None:
    backlog = Backlog(1 << 20, 60.0)
    for i in range(1, 100):
        backlog.append(pack_version(3, i), 1, f"id{i}", float(i))
    backlog.reset(pack_version(4, 0))
    assert len(backlog) == 0 and backlog.size == 0
    assert backlog.holds_after(pack_version(4, 0)) and not backlog.holds_after(pack_version(3, 99))
    backlog.append(pack_version(4, 1), 2, "after", 100.0)
    assert backlog.since(pack_version(4, 0), 10) == [(pack_version(4, 1), 2, "after", 100.0)]


def test_it_holds_no_object_per_write_for_the_collector_to_walk() -> None:
    """A list of (version, kind, id, time) tuples cost every full collection 16-20 ms at 590,000."""
    backlog = Backlog(1 << 30, 600.0)
    tracked_before = len(gc.get_objects())
    for i in range(1, 50_001):
        backlog.append(pack_version(5, i), 1, f"esp-{i:08x}@198.51.100.{i % 250}", float(i))
    gc.collect()
    assert len(gc.get_objects()) - tracked_before < 100
    assert sum(len(gc.get_referents(x)) for x in gc.get_referents(backlog)) < 100
