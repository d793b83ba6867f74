"""Flap damping (``hasyncd.core.damping.FlapDamper``): when it suspends, when it resumes."""

from __future__ import annotations

import logging

import pytest

from hasyncd.core.damping import FlapDamper

WINDOW = 900.0


def test_a_new_damper_holds_nothing() -> None:
    d = FlapDamper(3, WINDOW)
    assert (d.max_flaps, d.window) == (3, WINDOW)
    assert list(d.changes) == []
    assert d.suspended_since is None
    assert d.deadline() is None
    assert d.status(10.0) is None


def test_suspends_on_the_change_beyond_max_flaps_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = FlapDamper(3, WINDOW)
    caplog.set_level(logging.INFO, logger="hasyncd.roles")
    assert [d.note(t) for t in (1.0, 2.0, 3.0)] == [False, False, False]
    assert d.suspended_since is None
    assert caplog.records == []
    assert d.note(4.0) is True  # the 4th change within the window
    assert d.suspended_since == 4.0
    assert caplog.record_tuples == [
        (
            "hasyncd.roles",
            logging.ERROR,
            "SUSPENDED automatic promotion: 4 role changes within 900 s (node.max_flaps = 3)",
        )
    ]
    # Further changes while suspended do not suspend again (nor move the start).
    assert d.note(5.0) is False
    assert d.suspended_since == 4.0
    assert len(caplog.records) == 1


def test_status_while_suspended() -> None:
    d = FlapDamper(1, WINDOW)
    d.note(10.0)
    d.note(20.0)
    assert d.status(21.23456) == {"since_s": 1.235, "role_changes": 2, "window_s": WINDOW}


def test_changes_older_than_the_window_are_forgotten() -> None:
    d = FlapDamper(2, 10.0)
    d.note(0.0)
    d.note(5.0)
    assert d.deadline() == 10.0  # when the oldest change leaves the window
    d.expire(10.0)  # exactly one window old: still inside it
    assert list(d.changes) == [0.0, 5.0]
    d.expire(10.5)
    assert list(d.changes) == [5.0]
    assert d.deadline() == 15.0
    # Changes spread wider than the window never add up to a suspension.
    assert d.note(16.0) is False
    assert d.note(27.0) is False
    assert list(d.changes) == [27.0]
    assert d.suspended_since is None


def test_resumes_by_itself_once_the_window_holds_no_more_than_max_flaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = FlapDamper(2, 10.0)
    for t in (0.0, 1.0, 2.0):
        d.note(t)
    assert d.suspended_since == 2.0
    caplog.set_level(logging.INFO, logger="hasyncd.roles")
    caplog.clear()
    d.expire(10.0)  # nothing left the window yet
    assert d.suspended_since == 2.0
    d.expire(10.5)  # the change at 0.0 left it: 2 changes, not more than max_flaps
    assert d.suspended_since is None
    assert d.status(10.5) is None
    assert caplog.record_tuples == [
        (
            "hasyncd.roles",
            logging.WARNING,
            "automatic promotion resumed: role changes back under node.max_flaps",
        )
    ]
    d.expire(11.5)  # resumed once, not again
    assert len(caplog.records) == 1


def test_note_expires_before_counting() -> None:
    d = FlapDamper(2, 10.0)
    d.note(0.0)
    d.note(1.0)
    # At 10.5 the change at 0.0 is out of the window: 2 changes, no suspension.
    assert d.note(10.5) is False
    assert list(d.changes) == [1.0, 10.5]
    assert d.suspended_since is None


def test_max_flaps_zero_suspends_on_the_first_change() -> None:
    d = FlapDamper(0, 10.0)
    assert d.note(3.0) is True
    assert d.status(3.0) == {"since_s": 0.0, "role_changes": 1, "window_s": 10.0}
