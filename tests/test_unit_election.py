"""The election's rules, one stage at a time, through ``elect`` (a pure function).

Each test pins one rule of ``hasyncd.core.election`` and the reason the status
shows for it, so that breaking the rule (or mislabelling it) fails here in
milliseconds, not in a simulator campaign.
"""

from __future__ import annotations

import itertools

import pytest

from hasyncd.core.election import Candidate, Decision, Rules, elect


def c(name: str, priority: int = 100, uptime: float = 0.0, **kw: object) -> Candidate:
    return Candidate(name, priority, uptime, **kw)  # type: ignore[arg-type]


def test_candidate_and_rule_defaults() -> None:
    x = Candidate("x", 1, 2.0)
    assert (x.monitors_down, x.in_sync, x.eligible, x.version) == (0, True, True, 0)
    r = Rules()
    assert (r.override, r.uptime_margin_s, r.prefer_newest) == (False, 300.0, False)


def test_no_eligible_candidate() -> None:
    assert elect([], Rules()) == Decision(None, "no eligible candidate (all suspended or fenced)")
    fenced = [c("a", eligible=False), c("b", eligible=False)]
    assert elect(fenced, Rules()).winner is None


def test_ineligible_nodes_never_win_and_a_lone_eligible_one_does() -> None:
    best = c("z", 255, 9999.0, eligible=False)
    assert elect([best, c("a", 1, 0.0)], Rules()) == Decision("a", "only eligible candidate")
    assert elect([best, c("a", 1, 0.0)], Rules(override=True), incumbent="z").winner == "a"


def test_fewer_monitored_interfaces_down_wins_first() -> None:
    sick = c("z", 255, 9999.0, monitors_down=1, version=99)
    healthy = c("a", 1, 0.0, in_sync=False)
    d = elect([sick, healthy], Rules(prefer_newest=True), incumbent="z")
    assert d == Decision("a", "selected by monitored interfaces (0 down) over z")
    # Among sick nodes, the least sick one; the label gives its count.
    d = elect([c("x", monitors_down=3), c("y", monitors_down=2)], Rules())
    assert d == Decision("y", "selected by monitored interfaces (2 down) over x")


def test_a_complete_copy_beats_a_partial_one() -> None:
    partial = c("z", 255, 9999.0, in_sync=False, version=99)
    d = elect([partial, c("a", 1, 0.0)], Rules(prefer_newest=True), incumbent="z")
    assert d == Decision("a", "selected by holding a complete copy (in sync) over z")
    # Among partial copies only, the election goes on to the next stages.
    d = elect([c("x", 1, in_sync=False), c("y", 2, in_sync=False)], Rules())
    assert d.winner == "y"


def test_newest_copy_wins_only_in_a_failover() -> None:
    old = c("z", 255, 9999.0, version=5)
    new = c("a", 1, 0.0, version=6)
    d = elect([old, new], Rules(prefer_newest=True))
    assert d == Decision("a", "selected by holding the newest copy over z")
    # Outside a failover (no prefer_newest) the version is not looked at.
    assert elect([old, new], Rules()).winner == "z"
    # Equal versions go on to uptime and priority.
    assert elect([c("a", 1, version=6), c("b", 2, version=6)], Rules(prefer_newest=True)) == (
        Decision("b", "selected by priority 2 over a")
    )


def test_without_override_the_incumbent_keeps_its_role() -> None:
    inc = c("b", 1, 0.0)
    challenger = c("a", 255, 9999.0)
    d = elect([challenger, inc], Rules(), incumbent="b")
    assert d == Decision("b", "incumbent primary keeps its role (no preemption)")
    # An incumbent that is not a candidate (lost) does not block the election.
    assert elect([challenger, c("c", 2, 0.0)], Rules(), incumbent="b").winner == "a"
    # Without an incumbent the better node wins.
    assert elect([challenger, inc], Rules()).winner == "a"


def test_with_override_the_incumbent_is_preempted_by_priority() -> None:
    inc = c("b", 1, 9999.0)
    d = elect([c("a", 255, 0.0), inc], Rules(override=True), incumbent="b")
    assert d == Decision("a", "selected by priority 255 over b")


def test_the_incumbent_still_loses_to_a_healthier_or_complete_node() -> None:
    inc = c("b", 255, 9999.0, monitors_down=1)
    assert elect([c("a"), inc], Rules(), incumbent="b").winner == "a"
    inc = c("b", 255, 9999.0, in_sync=False)
    assert elect([c("a"), inc], Rules(), incumbent="b").winner == "a"


def test_uptime_first_without_override() -> None:
    d = elect([c("a", 100, 1000.0), c("b", 200, 10.0)], Rules())
    assert d == Decision("a", "selected by uptime (margin 300 s) over b")


def test_uptime_differences_within_the_margin_are_ignored() -> None:
    # 299.5 s apart: within the margin, so priority decides.
    d = elect([c("a", 100, 300.0), c("b", 200, 0.5)], Rules())
    assert d == Decision("b", "selected by priority 200 over a")
    # Exactly the margin apart is not within it.
    d = elect([c("a", 100, 300.0), c("b", 200, 0.0)], Rules())
    assert d.winner == "a"
    # A custom margin is used and shown.
    d = elect([c("a", 100, 300.0), c("b", 200, 0.0)], Rules(uptime_margin_s=0.5))
    assert d == Decision("a", "selected by uptime (margin 0.5 s) over b")


def test_uptime_keeps_every_candidate_within_the_margin_of_the_longest() -> None:
    pool = [c("a", 1, 1000.0), c("b", 2, 800.0), c("x", 3, 100.0)]
    d = elect(pool, Rules())
    assert d == Decision("b", "selected by priority 2 over a")


def test_override_orders_priority_before_uptime() -> None:
    d = elect([c("a", 100, 1000.0), c("b", 200, 10.0)], Rules(override=True))
    assert d == Decision("b", "selected by priority 200 over a")
    # Equal priorities: uptime decides, then the name.
    d = elect([c("a", 100, 1000.0), c("b", 100, 10.0)], Rules(override=True))
    assert d == Decision("a", "selected by uptime (margin 300 s) over b")


def test_equal_on_all_else_the_highest_name_wins() -> None:
    pool = [c("b", 100, 5.0), c("c", 100, 9.0), c("a", 100, 1.0)]
    assert elect(pool, Rules()) == Decision("c", "selected by name (equal on all else) over a, b")


def test_runner_ups_are_listed_sorted() -> None:
    pool = [c("b", 1), c("z", 5), c("a", 1), c("m", 1)]
    assert elect(pool, Rules()) == Decision("z", "selected by priority 5 over a, b, m")


def test_only_the_stage_that_decided_names_its_runner_ups() -> None:
    # b is dropped by monitors, x and y by uptime; only y is the priority stage's runner-up.
    pool = [c("b", monitors_down=1), c("x", 9, 0.0), c("y", 1, 900.0), c("z", 2, 1000.0)]
    assert elect(pool, Rules()) == Decision("z", "selected by priority 2 over y")


@pytest.mark.parametrize("rules", [Rules(), Rules(override=True), Rules(prefer_newest=True)])
def test_the_result_does_not_depend_on_candidate_order(rules: Rules) -> None:
    pool = [
        c("n1", 10, 0.0, version=1),
        c("n2", 10, 250.0, version=2),
        c("n3", 20, 100.0, version=2),
        c("n4", 20, 500.0, version=1),
        c("n5", 5, 700.0, version=2),
    ]
    results = {elect(list(p), rules) for p in itertools.permutations(pool)}
    assert len(results) == 1
