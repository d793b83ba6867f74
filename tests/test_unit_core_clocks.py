"""Both clocks are inputs of the node core (issue 9): it holds no clock callable.

``now`` (monotonic) and ``wall`` (Unix time) come with every input call; the
status and every expiry decision use the ``wall`` passed in, and nothing else.
"""

from __future__ import annotations

import inspect

import pytest

from hasyncd.core.node import NodeCore
from hasyncd.core.settings import CoreSettings
from hasyncd.errors import RecordExpired
from hasyncd.records import KINDS_BY_CODE
from hasyncd.secret import Secret
from hasyncd.sim import Sim
from hasyncd.store import Store

from .simutil import WEB, pair, record

SETTINGS = CoreSettings(name="a", tag=1, priority=100, group_id=1, psk=Secret(bytes(32)))


def test_a_core_built_from_plain_numbers_runs_and_dates_its_status_by_the_wall_passed() -> None:
    core = NodeCore(SETTINGS, Store(), now=10.0, wall=5_000.0, boot_id=bytes(16))
    assert not any(callable(v) for v in vars(core).values())  # no clock callable anywhere
    core.handle_timer(core.next_timer(), wall=6_000.0)
    core.transmit(12.0, wall=6_001.0)
    assert core.status(12.0, wall=7_000.5)["clock"] == 7_000.5
    assert core.status(12.0, wall=8_000.0)["clock"] == 8_000.0  # a read: nothing cached
    assert core.status(12.0, wall=8_000.0)["uptime_s"] == 2.0


def test_every_input_takes_both_clocks() -> None:
    inputs = [
        "connection_made",
        "connect_failed",
        "connection_lost",
        "receive_data",
        "handle_timer",
        "transmit",
        "write",
        "delete",
        "write_batch",
        "request_failover",
        "set_monitors",
        "begin_shutdown",
        "reconfigure",
        "finish_shutdown",
        "status",
    ]
    for name in inputs:
        params = inspect.signature(getattr(NodeCore, name)).parameters
        assert {"now", "wall"} <= params.keys(), name
        assert params["wall"].default is inspect.Parameter.empty, name


def test_expiry_is_decided_by_the_wall_passed_with_the_write() -> None:
    sim = Sim(seed=71)
    primary, _ = pair(sim)
    core = sim.nodes[primary].core
    expires = int(sim.wall) + 100
    rid, blob, _ = record(WEB, 1, expires_at=expires)
    rec = KINDS_BY_CODE[WEB].from_blob(blob, rid)
    with pytest.raises(RecordExpired):
        core.write(rec, sim.now, wall=expires + 1.0)  # the simulator's own wall is earlier
    assert core.store.get(WEB, rid, sim.wall) is None  # refused whole: nothing written
    core.write(rec, sim.now, wall=expires - 1.0)
    assert core.delete(WEB, rid, sim.now, wall=expires + 1.0) is None  # expired at that wall
    assert core.delete(WEB, rid, sim.now, wall=expires - 1.0) is not None
