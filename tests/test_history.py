"""Role history and replication lag: what ``hasyncd status``/``history`` and the metrics show."""

from __future__ import annotations

from hasyncd.core.history import LAG_RESOLUTION, ROLE_HISTORY, LagClock, RoleChange, RoleHistory
from hasyncd.sim import Sim
from hasyncd.wire.messages import Role

from .simutil import WEB, in_sync, pair, put, role


def test_lag_clock_reports_the_oldest_unacknowledged_write() -> None:
    lag = LagClock()
    assert lag.lag(10.0) == 0.0
    lag.wrote(1, 1.0)
    lag.wrote(2, 1.0 + LAG_RESOLUTION / 2)  # within the resolution: not sampled
    lag.wrote(3, 1.1)
    assert lag.lag(1.5) == 0.5
    lag.acked(2)  # acknowledges the first sample's write, not the one at 1.1
    assert round(lag.lag(1.5), 9) == 0.4
    lag.acked(3)
    assert lag.lag(1.5) == 0.0


def test_role_history_is_bounded_and_newest_first() -> None:
    h = RoleHistory()
    for i in range(ROLE_HISTORY + 5):
        h.add(RoleChange(float(i), "secondary", "primary", i, "a", f"r{i}"))
    recent = h.recent()
    assert len(recent) == ROLE_HISTORY
    assert recent[0]["reason"] == f"r{ROLE_HISTORY + 4}"
    assert [r["reason"] for r in h.recent(2)] == [f"r{ROLE_HISTORY + 4}", f"r{ROLE_HISTORY + 3}"]


def test_status_shows_lag_while_a_secondary_is_cut_off_and_the_history_of_roles() -> None:
    sim = Sim(seed=50)
    primary, secondary = pair(sim)
    sim.freeze(secondary)  # it stops acknowledging
    for i in range(5):
        put(sim, primary, WEB, i)
        sim.run_for(0.02)
    st = sim.nodes[primary].core.status(sim.now, wall=sim.wall)
    (peer,) = st["peers"]
    assert peer["replication"]["lag_records"] == 5
    assert 0.08 <= peer["replication"]["lag_ms"] / 1000 <= 0.11
    sim.thaw(secondary)
    sim.run_until_true(
        lambda: (
            sim.nodes[primary].core.status(sim.now, wall=sim.wall)["peers"][0]["replication"][
                "lag_records"
            ]
            == 0
        ),
        limit=2,
    )
    assert (
        sim.nodes[primary].core.status(sim.now, wall=sim.wall)["peers"][0]["replication"]["lag_ms"]
        == 0
    )
    sim.kill(primary)
    sim.run_until_true(lambda: role(sim, secondary) is Role.PRIMARY, limit=5)
    history = sim.nodes[secondary].core.status(sim.now, wall=sim.wall)["role_history"]
    assert [(h["old"], h["new"]) for h in history] == [
        ("secondary", "primary"),
        ("starting", "secondary"),
    ]
    assert "no primary reachable" in history[0]["reason"]
    assert in_sync(sim, secondary)
