"""Two real daemons: a secondary stopped past the link timeout resumes from the backlog.

SIGSTOP keeps the secondary's process (and its store) while the primary
declares it lost and closes their link; writes and deletes go on meanwhile.
After SIGCONT the secondary must reconnect, resume (no second snapshot) and
hold exactly what the primary holds.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from hasyncd import samples
from hasyncd.statusview import render_status

from .test_integration_spine import (
    caught_up,
    check_records,
    counts,
    metric,
    put_ops,
    start_pair,
    status,
    tail,
    user_records,
    wait,
    write_samples,
    write_via_batch,
)

pytestmark = pytest.mark.integration


def test_secondary_stopped_past_the_link_timeout_resumes_partially(make_cluster: Any) -> None:
    cluster = make_cluster()
    primary, secondary = start_pair(cluster)
    epoch = status(primary)["epoch"]
    now = time.time()
    written, sas, _ikes, webs = write_samples(primary, 500, 50, 500, now)
    wait(cluster, caught_up(primary, secondary), "the initial writes to replicate")
    assert metric(primary, "hasyncd_resyncs_total", outcome="full") == 1

    secondary.signal(signal.SIGSTOP)
    try:
        # The primary declares it lost (500 ms) and closes the link.
        wait(
            cluster,
            lambda: status(primary)["peers"][0]["link"] == "down",
            "the primary to drop the stopped secondary",
        )
        more = [samples.web_session(1000 + i, now) for i in range(300)]
        write_via_batch(primary, written, put_ops("sslvpn_web_session", more))
        gone = [("ipsec_sa", rid) for rid, _ in sas[:40]] + [
            ("sslvpn_web_session", rid) for rid, _ in webs[:40]
        ]
        code, body = primary.client.batch([{"op": "delete", "kind": k, "id": r} for k, r in gone])
        assert code == 200 and {r["status"] for r in body["results"]} == {200}, body
        for key in gone:
            del written[key]
    finally:
        secondary.signal(signal.SIGCONT)

    wait(cluster, caught_up(primary, secondary), "the stopped secondary to catch up")
    assert metric(primary, "hasyncd_resyncs_total", outcome="partial") == 1, tail(primary)
    assert metric(primary, "hasyncd_snapshots_started_total") == 1, tail(primary)
    assert metric(primary, "hasyncd_resyncs_total", outcome="full") == 1
    backlog = status(primary)["backlog"]
    assert backlog is not None and backlog["entries"] > 0, backlog
    assert status(secondary)["backlog"] is None
    assert f"  backlog: {backlog['entries']} writes, " in render_status(status(primary))
    pst, sst = status(primary), status(secondary)
    assert (pst["role"], sst["role"], pst["epoch"]) == ("primary", "secondary", epoch)
    assert sst["in_sync"] is True
    for node in (primary, secondary):
        assert user_records(status(node)) == counts(written)
        check_records(node, written)
    for kind, rid in gone:
        code, body = secondary.client.get(f"/v1/records/{kind}/{rid}")
        assert (code, body["error"]) == (404, "not_found"), (kind, rid, body)
