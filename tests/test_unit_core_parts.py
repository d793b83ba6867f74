"""Unit tests of core parts only the simulator exercised: FlapDamper and the promotion work.

The promotion tests keep to its public behaviour (what the new primary's
store holds once the work is done, and the numbers it reports), since the
promotion is being rewritten.
"""

from __future__ import annotations

import logging
import time

import pytest

from hasyncd import samples
from hasyncd.core.damping import FlapDamper
from hasyncd.core.promotion import SLICE, PromotionWork
from hasyncd.records import Record, kind_for_api
from hasyncd.store import Store, pack_value

WINDOW = 900.0  # 15 minutes, as the node uses


# -- FlapDamper ----------------------------------------------------------------------------


def test_damper_suspends_on_the_change_past_max_flaps_once() -> None:
    d = FlapDamper(max_flaps=3, window=WINDOW)
    assert [d.note(t) for t in (0.0, 10.0, 20.0)] == [False, False, False]
    assert d.suspended_since is None
    assert d.note(30.0) is True  # the fourth change in the window
    assert d.suspended_since == 30.0
    assert d.note(40.0) is False  # already suspended: reported once
    assert d.suspended_since == 30.0
    st = d.status(50.0)
    assert st == {"since_s": 20.0, "role_changes": 5, "window_s": WINDOW}


def test_damper_counts_a_change_exactly_one_window_old_and_resumes_after() -> None:
    d = FlapDamper(max_flaps=1, window=WINDOW)
    d.note(0.0)
    assert d.note(100.0) is True
    assert d.deadline() == WINDOW  # when the oldest change leaves the window
    d.expire(WINDOW)  # the first change is exactly one window old: still counted
    assert d.suspended_since is not None
    d.expire(WINDOW + 0.001)
    assert d.suspended_since is None  # one change left: back under max_flaps
    assert d.status(WINDOW + 1) is None
    assert d.deadline() == 100.0 + WINDOW


def test_a_fresh_damper_is_not_suspended_and_has_no_deadline() -> None:
    d = FlapDamper(max_flaps=3, window=WINDOW)
    assert d.suspended_since is None
    assert d.status(0.0) is None
    assert d.deadline() is None


def test_damper_logs_suspension_and_resumption_for_the_operator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = FlapDamper(max_flaps=1, window=WINDOW)
    with caplog.at_level(logging.INFO, logger="hasyncd.roles"):
        d.note(0.0)
        d.note(30.0)
        d.expire(WINDOW + 1)
    (suspended, resumed) = caplog.records
    assert suspended.levelno == logging.ERROR
    # journalctl -p err shows it; the README and the lifecycle tests look for this word.
    assert suspended.getMessage().startswith("SUSPENDED automatic promotion: 2 role changes")
    assert resumed.levelno == logging.WARNING
    assert resumed.getMessage().startswith("automatic promotion resumed")


def test_damper_status_gives_milliseconds() -> None:
    d = FlapDamper(max_flaps=0, window=WINDOW)
    d.note(30.0)
    st = d.status(50.12345)
    assert st is not None
    assert st["since_s"] == 20.123


def test_damper_spread_out_changes_never_suspend() -> None:
    d = FlapDamper(max_flaps=2, window=WINDOW)
    assert not any(d.note(t * (WINDOW / 2 + 1)) for t in range(20))
    assert d.deadline() is not None


# -- promotion work ------------------------------------------------------------------------

SA = kind_for_api("ipsec_sa")
IKE = kind_for_api("ike_sa")
OLD, NEW = 4, 5  # epochs


def version(epoch: int, seq: int) -> int:
    return epoch << 64 | seq


def put(store: Store, rec: Record, v: int) -> None:
    store.put_value(rec.kind.code, rec.id, pack_value(v, rec.expires, rec.blob))


def promote(store: Store, margin: int) -> tuple[PromotionWork, list[tuple[int, str]], int]:
    work = PromotionWork(epoch=NEW, reason="test", started=0.0, margin=margin)
    written: list[tuple[int, str]] = []
    slices = 0

    def write(kind: int, rid: str, rec: Record) -> None:
        written.append((kind, rid))
        put(store, rec, version(NEW, len(written)))

    while not work.done:
        work.run_slice(store, write)
        slices += 1
    return work, written, slices


def sa(i: int, direction: str, now: float, **changes: object) -> Record:
    rid, body = samples.ipsec_sa(i, direction, now)
    body.update(changes)
    return SA.from_json(body, rid)


def test_promotion_advances_outbound_counters_and_flags_ike_sas() -> None:
    now = time.time()
    store = Store()
    out, inb = sa(1, "out", now), sa(1, "in", now)
    near_wrap = sa(3, "out", now, esn=False, seq=2**32 - 10)
    fresh = sa(5, "out", now)  # already written in the new epoch (by the IKE daemon)
    for i, rec in enumerate((out, inb, near_wrap)):
        put(store, rec, version(OLD, i + 1))
    put(store, fresh, version(NEW, 99))
    rid, body = samples.ike_sa(1, now)
    ike = IKE.from_json(body, rid)
    put(store, ike, version(OLD, 10))

    work, written, _ = promote(store, margin=16384)

    def seq_of(rec: Record) -> int:
        entry = store.get(rec.kind.code, rec.id, now)
        assert entry is not None and entry.blob is not None
        return int(SA.decode(entry.blob).seq)

    assert seq_of(out) == out.value.seq + 16384
    assert seq_of(inb) == inb.value.seq  # inbound: untouched
    assert seq_of(fresh) == fresh.value.seq  # newer: left alone
    assert seq_of(near_wrap) == 2**32 - 1  # pinned at the 32-bit limit, never wrapped
    entry = store.get(SA.code, near_wrap.id, now)
    assert entry is not None and entry.blob is not None
    assert SA.decode(entry.blob).rekey_required
    ike_entry = store.get(IKE.code, ike.id, now)
    assert ike_entry is not None and ike_entry.blob is not None
    assert IKE.decode(ike_entry.blob).mid_sync_required
    assert (work.esp_advanced, work.esp_rekey_required, work.ike_flagged) == (2, 1, 1)
    assert sorted(written) == sorted(
        [(SA.code, out.id), (SA.code, near_wrap.id), (IKE.code, ike.id)]
    )
    done = work.finish(2.5)
    assert (done.epoch, done.esp_advanced, done.esp_rekey_required, done.ike_flagged) == (
        NEW,
        2,
        1,
        1,
    )

    # Running it again (a second promotion) advances again but flags nothing twice.
    again, _, _ = promote(store, margin=16384)
    assert again.ike_flagged == 0


def test_promotion_covers_a_table_larger_than_one_slice() -> None:
    now = time.time()
    store = Store()
    n = SLICE + 7
    for i in range(n):
        put(store, sa(i, "out", now), version(OLD, i + 1))
    work, written, slices = promote(store, margin=100)
    assert work.esp_advanced == n
    assert len(set(written)) == n  # each SA once
    assert slices >= 2  # in slices, not one pass
