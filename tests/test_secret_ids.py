"""Web-session ids (cookie digests) never appear whole in logs or error messages."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from hasyncd import samples
from hasyncd.policy import SHOWN_ID_CHARS, shown_id
from hasyncd.sim import Sim

from .simutil import WEB, pair, put, settled


def test_shown_id_keeps_a_short_prefix_of_digests_only() -> None:
    digest = "ab" * 32
    assert shown_id("sslvpn_web_session", digest) == digest[:SHOWN_ID_CHARS] + "..."
    assert shown_id(WEB, digest) == digest[:SHOWN_ID_CHARS] + "..."
    assert shown_id("ipsec_sa", "esp-c0000001@203.0.113.1") == "esp-c0000001@203.0.113.1"


def test_merge_conflict_logs_name_a_session_by_its_prefix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    sim = Sim(seed=61)
    a, b = pair(sim)
    rid, _ = put(sim, a, WEB, 7)
    sim.run_for(0.1)
    sim.partition(a, b)
    sim.run_until_true(lambda: len(sim.primaries()) == 2, limit=5)
    put(sim, a, WEB, 7, last_seen=1_700_000_100.0)
    put(sim, b, WEB, 7, last_seen=1_700_000_200.0)
    sim.heal(a, b)
    sim.run_until_true(lambda: settled(sim, ["a", "b"]), limit=10)
    sim.run_for(0.2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "merge conflict on sslvpn_web_session " + rid[:SHOWN_ID_CHARS] in text
    assert rid not in text


@pytest.mark.integration
def test_not_found_errors_do_not_echo_a_session_id(make_cluster: Any) -> None:
    cluster = make_cluster()
    a, _ = cluster.wait_pair()
    rid, _ = samples.web_session(3, time.time())
    code, body = a.client.get(f"/v1/records/sslvpn_web_session/{rid}")
    assert (code, body["error"]) == (404, "not_found")
    assert rid not in body["message"] and rid[:SHOWN_ID_CHARS] in body["message"]
    assert a.client.delete(f"/v1/records/sslvpn_web_session/{rid}")[1]["message"].count(rid) == 0
