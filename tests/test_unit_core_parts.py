"""Unit tests of core parts only the simulator exercised: FlapDamper and the promotion work.

The promotion tests keep to its public behaviour (what the new primary's
store holds once the work is done, and the numbers it reports), since the
promotion is being rewritten.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from hasyncd import samples
from hasyncd.core.damping import FlapDamper
from hasyncd.core.promotion import SLICE, PromotionRule, PromotionWork, promotion_record
from hasyncd.core.seqview import History, view
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


RULE = PromotionRule(margin=16384, safety=2.0, detection_s=0.5, inbound="replicated")


def promote(store: Store, rule: PromotionRule = RULE) -> tuple[PromotionWork, int]:
    """Write the NEW epoch's promotion record, then run the read-only scan to its end."""
    put(store, promotion_record(NEW, time.time(), rule), version(NEW, 1))
    work = PromotionWork(epoch=NEW, reason="test", started=0.0, rule=rule)
    history = History(store)
    slices = 0
    while not work.done:
        work.run_slice(store, history)
        slices += 1
    return work, slices


def sa(i: int, direction: str, now: float, **changes: object) -> Record:
    rid, body = samples.ipsec_sa(i, direction, now)
    body.update(changes)
    return SA.from_json(body, rid)


def test_promotion_writes_nothing_per_sa_and_the_view_advances_outbound_counters() -> None:
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
    stored = [(SA.code, x.id) for x in (out, inb, near_wrap, fresh)] + [(IKE.code, ike.id)]
    before = {key: store.get_raw(*key) for key in stored}

    work, _ = promote(store)

    # The scan only reads: every stored record is what it was.
    assert {key: store.get_raw(*key) for key in stored} == before
    history = History(store)

    def viewed(rec: Record) -> Any:
        entry = store.get(rec.kind.code, rec.id, now)
        assert entry is not None and entry.blob is not None
        return view(history, rec.kind.code, rec.id, entry.version, rec.kind.decode(entry.blob))

    assert viewed(out).seq >= out.value.seq + RULE.margin
    assert viewed(inb).seq == inb.value.seq  # inbound, "replicated": untouched
    assert viewed(fresh).seq == fresh.value.seq  # newer than the promotion: left alone
    assert viewed(near_wrap).seq == 2**32 - 1  # pinned at the 32-bit limit, never wrapped
    assert viewed(near_wrap).rekey_required
    assert viewed(ike).mid_sync_required
    assert (work.esp_advanced, work.esp_rekey_required, work.ike_flagged) == (2, 1, 1)
    assert sorted(work.rekey) == sorted([("ipsec_sa", near_wrap.id), ("ike_sa", ike.id)])


def test_promotion_scans_a_table_larger_than_one_slice_in_slices() -> None:
    now = time.time()
    store = Store()
    n = SLICE + 7
    for i in range(n):
        put(store, sa(i, "out", now), version(OLD, i + 1))
    work, slices = promote(store)
    assert work.esp_advanced == n  # each SA counted once
    assert slices >= 2  # in slices, not one pass
